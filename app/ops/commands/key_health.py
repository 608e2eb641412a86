"""Key health, for `invoke check` in production: what would keep the env's backups from being
read, or from being private, before an incident finds out.

- backups allowed unencrypted (BACKUP_ENCRYPTION=optional);
- the identity file (BACKUP_ENCRYPTION_IDENTITY_FILE) readable by others than its owner;
- the identity cannot open the newest backup: only its age header is read (the header and the
  first chunk's nonce: a matching key then fails on "truncated", a wrong one on "no matching
  keys"), never the archive;
- the newest backup is encrypted to none of the current BACKUP_ENCRYPTION_RECIPIENTS (a key
  was rotated and `invoke rekey` has not run).

Each finding is one sentence; health/checks.py makes them WARNINGs. Nothing here writes anything.
"""
from __future__ import annotations

from pathlib import Path

from app.ops.encryption import parse_identities
from app.ops.guards.encryption_policy import OPTIONAL, policy
from app.ops.methods.registry import method_of

HEADER_END = b"\n--- "
HEADER_MAX = 64 << 10   # an age header with a few recipients is a few hundred bytes
NONCE_SIZE = 16


def key_findings(settings, storage, newest) -> list[str]:
    """The warnings about keys; `newest`: the env's newest backup (a manifest) or None."""
    if not settings.production:
        return []
    found = []
    if policy(settings) == OPTIONAL:
        found.append("backups are allowed unencrypted in production (BACKUP_ENCRYPTION="
                     "optional): set age recipients or BACKUP_S3_SSE, then "
                     "BACKUP_ENCRYPTION=required")
    identity = settings.BACKUP_ENCRYPTION_IDENTITY_FILE
    identities = _identity_findings(Path(identity).expanduser(), found) if identity else None
    if newest is None or not method_of(newest).has_artifact:
        return found
    recipients = settings.BACKUP_ENCRYPTION_RECIPIENTS
    if recipients and not set(recipients) & set(newest.recipients or []):
        found.append(f"the newest backup {newest.id} is encrypted to none of the current "
                     f"BACKUP_ENCRYPTION_RECIPIENTS: run `invoke rekey --env={settings.env}`")
    if newest.encryption == "age" and identities:
        why = cannot_open(storage, newest.artifact, identities)
        if why:
            found.append(f"the identity in BACKUP_ENCRYPTION_IDENTITY_FILE cannot open the "
                         f"newest backup {newest.id} ({why}): restore would fail; set it to "
                         "the private key of one of its recipients")
    return found


def _identity_findings(path: Path, found: list[str]) -> list:
    try:
        mode = path.stat().st_mode
        identities = parse_identities(path.read_text().splitlines())
    except OSError as exc:
        found.append(f"BACKUP_ENCRYPTION_IDENTITY_FILE {path} cannot be read "
                     f"({exc.strerror}): verify and restore would fail")
        return []
    if mode & 0o077:
        found.append(f"BACKUP_ENCRYPTION_IDENTITY_FILE {path} is readable by others than its "
                     f"owner (mode {mode & 0o777:04o}): run `chmod 600 {path}`")
    if not identities:
        found.append(f"BACKUP_ENCRYPTION_IDENTITY_FILE {path} holds no age identity "
                     "(AGE-SECRET-KEY-1...)")
    return identities


def cannot_open(storage, artifact: str, identities) -> str | None:
    """Why `identities` cannot open the age file `artifact` (None: they can), from its header."""
    import pyrage

    try:
        with storage.reader(artifact) as source:
            head = source.read(HEADER_MAX)
    except FileNotFoundError:
        return None  # a missing artifact is the backup check's finding
    end = head.find(HEADER_END)
    line_end = head.find(b"\n", end + 1) if end >= 0 else -1
    if line_end < 0:
        return "its age header is unreadable"
    try:
        pyrage.decrypt(head[:line_end + 1 + NONCE_SIZE], identities)
    except pyrage.DecryptError as exc:
        if "no matching keys" in str(exc).lower():
            return "no matching key"
        return None  # past the header: the key matched, and the rest was not read
    return None
