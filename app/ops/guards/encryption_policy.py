"""The encryption policy (BACKUP_ENCRYPTION): may a backup of this env rest unencrypted?

`required` (the default in production) refuses, before anything runs, a run whose backup would
be stored in the clear; `optional` (the default elsewhere) lets it through, and in production
each such backup is audited and `invoke check` warns. Encrypted at rest means one of: age
recipients (BACKUP_ENCRYPTION_RECIPIENTS, either store), S3 server-side encryption
(BACKUP_S3_SSE), or, with BACKUP_METHOD=pgbackrest, a repository whose cipher is not `none`
(read from `pgbackrest info --output=json`, since pgBackRest holds the data). How a method's
backup rests is the method's to say (`at_rest` in app/ops/methods/); this module only judges it.

restore is never refused by it: its safety backup is skipped instead, and the database it
replaces is kept (`safety_backup_refusal`).
"""
from __future__ import annotations

from app.ops.encryption import dump_at_rest
from app.ops.errors import GuardRefused

REQUIRED, OPTIONAL = "required", "optional"


def policy(settings) -> str:
    return settings.backup_encryption


def check_policy(settings, facts, *, action: str) -> None:
    """Refuse `action` under `required` when its backup would rest unencrypted. `facts`: the
    run's facts; `facts.at_rest` (how the method's backup would rest) is read only under
    `required`, and `facts.encryption_advice` (what the method needs set) only on a refusal."""
    if policy(settings) != REQUIRED or facts.at_rest is not None:
        return
    optional = ("or set BACKUP_ENCRYPTION=optional to accept unencrypted backups (audited, "
                "and `invoke check` warns)")
    raise GuardRefused(f"{action} on env '{settings.env}' is refused: BACKUP_ENCRYPTION is "
                       f"required{' (the default in production)' if settings.production else ''}"
                       f" and its backup would be stored unencrypted; "
                       f"{facts.encryption_advice}, {optional}")


def safety_backup_refusal(settings) -> str | None:
    """Why restore writes no safety backup of the database it replaces (None: it writes one).
    The safety backup is a dump in our store, whatever the env's method."""
    if policy(settings) != REQUIRED or dump_at_rest(settings) is not None:
        return None
    return (f"BACKUP_ENCRYPTION is required and it could not be encrypted (no "
            f"BACKUP_ENCRYPTION_RECIPIENTS"
            f"{' or BACKUP_S3_SSE' if settings.backup_storage == 's3' else ''})")
