"""A backup's manifest: what it is, where its artifact is, how it was taken and verified.

It holds no secret (the database URL in it has its password masked). A manifest read back is
input like any other: its fields are type-checked, and its artifact's name must be derived from
its id inside the env's folder or prefix, so a forged one can make nothing read or delete a file
elsewhere.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone

from app.ops.databases.postgres.dumper import PostgresDumper
from app.ops.databases.sqlite.dumper import SqliteDumper
from app.ops.errors import ConfigError

MANIFEST_SUFFIX = ".manifest.json"
TOOL_NAME = "mida-db-tasks 1.0"
BACKUP_ID_RE = re.compile(r"\d{8}T\d{6}(\.\d{3})?Z-[0-9a-f]{6}")
ARTIFACT_SUFFIXES = (PostgresDumper.suffix, SqliteDumper.suffix)  # each dumper names its own
SHA256_RE = re.compile(r"[0-9a-f]{64}")

@dataclass
class BackupManifest:
    id: str
    env: str
    engine: str
    database: str
    created_at: str
    revision: str | None
    size: int
    raw_size: int
    sha256: str
    artifact: str
    location: str
    format: str
    reason: str
    label: str | None = None
    duration_seconds: float | None = None
    database_size: int | None = None
    row_counts: dict | None = None
    # PostgreSQL: the roles that own objects in it (a restore by the owner role must be able
    # to give them theirs back: app/ops/databases/postgres/owners.py); None: not recorded.
    owners: list | None = None
    encryption: str | None = None
    recipients: list | None = None
    # S3: the server-side encryption S3 reported applying when the artifact was stored
    # (AES256, aws:kms, aws:kms:dsse, or "none"); None: a local store, or not recorded (a
    # backup taken before this field, or a pgBackRest restore point).
    sse: str | None = None
    rekeyed_at: str | None = None   # when `invoke rekey` last re-encrypted it (app/ops/commands/rekey.py)
    tool: str = TOOL_NAME
    versions: dict = field(default_factory=dict)
    verified: bool = True
    verified_at: str | None = None
    verify_error: str | None = None
    # "dump" (an artifact in our store) or "pgbackrest" (a restore point; see app/ops/methods/pgbackrest/command.py)
    method: str = "dump"
    pgbackrest: dict | None = None
    # Seen in the store by the listing, never written into the manifest: None = no artifact.
    stored_size: int | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> str:
        data = asdict(self)
        del data["stored_size"]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "BackupManifest":
        """Parse and check a manifest; ValueError says what is wrong with it."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a backup manifest")
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        for name, kinds in _FIELD_TYPES.items():
            if name not in data and (name in _OPTIONAL or None in kinds):
                continue
            value = data.get(name)
            if not any(value is None if kind is None else
                       isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
                       for kind in kinds):
                raise ValueError(f"its {name} is {value!r}")
        shown = [data.get(name) for name in ("reason", "label", "revision", "location")]
        if any(isinstance(text, str) and has_control_characters(text) for text in shown):
            raise ValueError("its reason, label, revision or location holds control characters")
        if not BACKUP_ID_RE.fullmatch(data["id"]):
            raise ValueError(f"its id {data['id']!r} is not a backup id")
        if data.get("method", "dump") == "pgbackrest":
            return cls._restore_point(data)
        if data.get("method", "dump") != "dump":
            raise ValueError(f"its method {data['method']!r} is not dump or pgbackrest")
        if not is_artifact_of(data["id"], data["artifact"]):
            raise ValueError(f"its artifact {data['artifact']!r} is not named after its id")
        if not SHA256_RE.fullmatch(data["sha256"]) or data["size"] < 0 or data["raw_size"] < 0:
            raise ValueError("its sha256 or size is not one")
        if datetime.fromisoformat(data["created_at"]).tzinfo is None:  # ValueError: unreadable
            raise ValueError("created_at has no time zone")
        return cls(**data)

    @classmethod
    def _restore_point(cls, data: dict) -> "BackupManifest":
        """A pgBackRest restore point has no artifact of ours: its data is in pgBackRest's
        repository, and what it needs to be found again is checked here."""
        record = data.get("pgbackrest")
        if data["artifact"] != "" or not isinstance(record, dict) or not all(
                isinstance(record.get(k), str) and record.get(k)
                for k in ("restore_point", "lsn", "segment", "backup_label", "stanza")):
            raise ValueError("its pgbackrest restore point record is incomplete")
        if datetime.fromisoformat(data["created_at"]).tzinfo is None:
            raise ValueError("created_at has no time zone")
        return cls(**data)

    @property
    def is_restore_point(self) -> bool:
        return self.method == "pgbackrest"

    @property
    def intact(self) -> bool:
        """The artifact is in the store at the recorded size (as the listing saw it)."""
        if self.is_restore_point:
            return True  # in pgBackRest's repository; verify asks pgBackRest
        return self.stored_size == self.size

    @property
    def artifact_state(self) -> str:
        if self.is_restore_point:
            return "present"
        if self.stored_size is None:
            return "missing"
        return "present" if self.intact else f"wrong size ({self.stored_size} bytes)"

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at)


_OPTIONAL = {"stored_size", "tool", "versions", "verified", "verified_at", "verify_error",
             "label", "duration_seconds", "database_size", "row_counts", "encryption",
             "recipients", "method", "pgbackrest", "rekeyed_at", "owners", "sse"}
_FIELD_TYPES = {
    **{name: (str,) for name in ("id", "env", "engine", "database", "created_at", "sha256",
                                 "artifact", "location", "format", "reason", "tool")},
    **{name: (str, None) for name in ("revision", "label", "verified_at", "verify_error",
                                      "encryption", "rekeyed_at", "sse")},
    "size": (int,), "raw_size": (int,), "database_size": (int, None),
    "duration_seconds": (int, float, None), "row_counts": (dict, None),
    "recipients": (list, None), "owners": (list, None), "versions": (dict,), "verified": (bool,),
    "method": (str,), "pgbackrest": (dict, None),
}


def artifact_re(backup_id: str) -> re.Pattern:
    """The names a backup's artifact may have: `ID.pgdump.zst[.age]`, and after `invoke rekey`
    `ID.kN.pgdump.zst.age` (N: how many times re-keyed in place), so an old and a new artifact
    can be in the store side by side."""
    suffixes = "|".join(re.escape(s) for s in ARTIFACT_SUFFIXES)
    return re.compile(rf"(?P<id>{re.escape(backup_id)})(?:\.k(?P<generation>[1-9]\d{{0,5}}))?"
                      rf"(?P<suffix>{suffixes})(?P<age>\.age)?")


def is_artifact_of(backup_id: str, name: str) -> bool:
    match = artifact_re(backup_id).fullmatch(name)
    return bool(match) and not (match["generation"] and not match["age"])


def check_label(label: str | None) -> None:
    """A label is shown in tables and terminals: a newline would split the table and an escape
    sequence would reach the terminal raw."""
    if label is not None and has_control_characters(label):
        raise ConfigError("--label may not hold control characters (newlines, tabs, escape "
                          "sequences): give it as one line of plain text")


def has_control_characters(text: str) -> bool:
    import unicodedata
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def new_backup_id(now: datetime) -> str:
    # Sortable by time to the millisecond, so a backup taken right after another (the one
    # migrate takes before a rollback, say) still lists first; the random tail keeps two
    # backups in one millisecond apart.
    utc = now.astimezone(timezone.utc)
    return f"{utc:%Y%m%dT%H%M%S}.{utc.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def iso(now: datetime) -> str:
    return now.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
