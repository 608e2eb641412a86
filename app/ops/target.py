"""What a task acts on: one env's settings, its database, its backup store and its backup method,
each opened once.

tasks.py opens one `Target` per task (`open_target(settings)`) and passes it down: nothing below
decides the kind of database again or opens a second store (one S3 client per task). A restore's
previous database and a scratch copy are targets too (`at`): another database, the same store.
"""
from __future__ import annotations

from functools import cached_property
from app.ops.databases import open_database
from app.ops.methods.registry import configured_method
from app.ops.storage import open_storage
from app.settings import load_settings


class Target:
    def __init__(self, settings, database, storage=None):
        self.settings = settings
        self.database = database
        if storage is not None:
            self.storage = storage

    @cached_property
    def storage(self):
        """Opened on first use: `migrate --sql` never needs one, and a bad store setting is
        reported by the step that needs the store."""
        return open_storage(self.settings)

    @cached_property
    def method(self):
        """BACKUP_METHOD's object (app/ops/methods/registry.py): how this env's backups are taken."""
        return configured_method(self.settings)

    @property
    def env(self) -> str:
        return self.settings.env

    def at(self, database) -> "Target":
        """The same env and store, another database (of the same kind)."""
        return Target(self.settings, database, self.storage)

    def for_env(self, env: str) -> "Target":
        """Another env of the same project (REQUIRE_STAGING_FIRST reads staging's revision),
        its settings layered as any env's: the process environment, then `.env.NAME` and
        `.env` (so a DATABASE_URL exported for this run is staging's too, as it always was)."""
        return open_target(load_settings(env, environ=None, root=self.settings.root))


def open_target(settings) -> Target:
    return Target(settings, open_database(settings))
