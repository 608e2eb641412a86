"""What one run reads once, for its guards and its backup: the database's facts, the env's
backups (on S3 a LIST and a GET per manifest), the parsed window, how a backup would rest,
the store's free room, past rehearsals, and another env's revision. Each is read when first
needed; the guards (app/ops/guards/) are handed this object and fetch nothing themselves.
"""
from __future__ import annotations

from functools import cached_property

from app.ops.catalog.backups import list_backups
from app.ops.guards.preflight import load_window
from app.ops.commands.drills import past_rehearsals
from app.ops.errors import ConfigError
from app.ops.schema.migrations import Migrations


class RunFacts:
    def __init__(self, target):
        self.target = target

    @cached_property
    def database(self):
        """The database's DatabaseFacts (app/ops/databases/)."""
        return self.target.database.facts()

    @cached_property
    def backups(self) -> list:
        return list_backups(self.target)

    @cached_property
    def window(self):
        """The parsed MAINTENANCE_WINDOW (read only where one is configured)."""
        return load_window(self.target.settings)

    @cached_property
    def at_rest(self) -> str | None:
        """How this run's backup would be encrypted at rest, as its method says."""
        return self.target.method.at_rest(self.target.settings)

    @property
    def encryption_advice(self) -> str:
        """What to set so that this run's backup is encrypted at rest, as its method says."""
        return self.target.method.encryption_advice(self.target.settings)

    @cached_property
    def room_needed(self) -> int | None:
        """Bytes the store needs for this run's backup (None: the method writes none)."""
        return self.target.method.room_needed(self)

    @cached_property
    def store_room(self):
        """(folder, free bytes) of a store on disk; None for one that cannot fill (S3)."""
        return self.target.storage.free_room()

    @cached_property
    def rehearsals(self) -> list:
        return past_rehearsals(self.target)

    def revision_of_env(self, env: str) -> str | None:
        """Where another env's database is (REQUIRE_STAGING_FIRST); OpsError if unreadable, or
        if it is this env's own database: a DATABASE_URL or SQLITE_PATH in the process
        environment outranks every env's files, so it names the same database for both, and
        this env's revision would be read as the other's."""
        other = self.target.for_env(env)
        if other.database.masked_url == self.target.database.masked_url:
            raise ConfigError(
                f"env '{env}' resolves to the same database as env '{self.target.env}' "
                f"({self.target.database.masked_url}), so its revision cannot be told apart: "
                "a database setting in the process environment (DATABASE_URL, SQLITE_PATH, "
                "POSTGRES_*) applies to every env; put it in each env's .env.NAME instead")
        return Migrations(other).current()
