"""`invoke create`: autogenerate a revision from app/models/ and prepare it for human review.

Refuses a vague message (fewer than three words) and an empty autogenerate unless `--empty`;
warns about operations that drop data and about a downgrade() that does nothing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from app.ops.errors import ConfigError
from app.ops.schema.migrations import Migrations
from app.ops.schema.review import downgrade_does_nothing, risky_operations

MIN_WORDS = 3


@dataclass
class CreatedRevision:
    path: str
    review: str
    warnings: list[str] = field(default_factory=list)


def create_revision(target, message: str, *, empty: bool = False) -> CreatedRevision:
    words = re.findall(r"\w+", message or "")
    if len(words) < MIN_WORDS:
        raise ConfigError(f"revision message '{message}' says too little: describe the change in "
                          f"{MIN_WORDS} words or more, e.g. \"Add phone_number to users\"")
    from alembic import command
    from alembic.util import CommandError

    migrations = Migrations(target)
    migrations.single_head()

    def inspect(context, revision, directives):
        script = directives[0]
        if not empty and script.upgrade_ops.is_empty():
            directives[:] = []  # nothing written: the models match the database

    try:
        script = command.revision(migrations.config, message=message, autogenerate=not empty,
                                  process_revision_directives=inspect)
    except CommandError as exc:
        raise ConfigError(f"cannot autogenerate: {exc}; run `invoke migrate` first if the "
                          "database is behind") from None
    if isinstance(script, list):  # Alembic returns a list of the scripts it wrote
        script = script[0] if script else None
    if script is None:
        raise ConfigError("autogenerate found no difference between app/models/ and the "
                          "database: nothing to write (use --empty for a hand-written revision)")
    warnings = [str(f) for f in risky_operations(script.path, script.revision)]
    if downgrade_does_nothing(script.path):
        warnings.append(f"{script.revision}: downgrade() does nothing: write it before release, "
                        "or `invoke rollback` cannot undo this revision")
    return CreatedRevision(script.path, _functions(Path(script.path).read_text()), warnings)


def _functions(source: str) -> str:
    """The upgrade() and downgrade() bodies: what a reviewer has to read."""
    start = source.find("def upgrade()")
    return source[start:].rstrip() if start >= 0 else source
