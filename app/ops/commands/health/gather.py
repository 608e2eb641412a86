"""`invoke check`'s one pass over the environment: the facts (app/ops/commands/health/report.py),
read from the same sources `invoke status` reads (Alembic's scripts, one connection to the
database, the backup store, the audit trail). Nothing here writes to the database or the store:
no connection creates an SQLite file, no manifest or audit event is written."""
from __future__ import annotations

from datetime import datetime

from app.ops.catalog import records
from app.ops.catalog.audit import AUDIT_SUFFIX
from app.ops.catalog.backups import list_backups
from app.ops.catalog.dates import is_future
from app.ops.catalog.drill_records import read_drills
from app.ops.catalog.restore_intent import read_intents
from app.ops.commands.key_health import key_findings
from app.ops.databases.connection import first_line, revision_of
from app.ops.databases.lock import advisory_key
from app.ops.errors import ConfigError, DatabaseUnreachable, OpsError
from app.ops.leftovers import abandoned
from app.ops.methods.registry import method_of
from app.ops.schema.migrations import Migrations
from app.ops.storage import unaborted_uploads
from app.ops.commands.health.report import AUDITED_RUNS, WATCH_ACTION, Facts


def gather(target, now: datetime | None = None) -> Facts:
    """`now`: a backup dated later than it never counts as the newest (app/ops/catalog/dates.py)."""
    # Settings first: a bad one is the check's UNKNOWN, not a finding.
    settings = target.settings
    target.storage  # opened first too: a bad store setting is the check's UNKNOWN
    migrations = Migrations(target)
    facts = Facts(env=settings.env, production=settings.production,
                  database=target.database.masked_url, engine=target.database.kind,
                  heads=migrations.heads(), unknown_keys=settings.unknown_keys)
    _read_database(facts, target.database)
    if not facts.reachable:
        facts.pending_error = "the database cannot be read"
    elif len(facts.heads) > 1:
        facts.pending_error = "several heads"
    else:
        try:
            head = facts.heads[0] if facts.heads else None
            facts.pending = [r.id for r in migrations.pending(facts.current, head)]
        except ConfigError as exc:  # the database is at a revision the scripts do not lead to
            facts.pending_error = str(exc)
    _read_store(facts, target, now)
    _read_keys(facts, target)
    _read_owners(facts, target.database)
    return facts


def _read_owners(facts: Facts, database) -> None:
    """Could this role restore the newest verified backup, owners and all? (A restore of it
    would refuse before any work: app/ops/databases/postgres/owners.py.)"""
    from sqlalchemy.exc import DBAPIError

    newest = facts.newest_verified
    if not facts.reachable or newest is None or not newest.owners:
        return
    try:
        facts.owners_refusal = database.owners_refusal(newest.owners)
    except (OpsError, DBAPIError):
        pass  # the database check reports a server that cannot be read


def _read_keys(facts: Facts, target) -> None:
    newest = facts.backups[0] if facts.backups else None
    try:
        facts.key_warnings = key_findings(target.settings, target.storage, newest)
    except ConfigError:
        raise  # BACKUP_ENCRYPTION itself is wrong: the check's own settings
    except (OpsError, OSError) as exc:
        facts.key_warnings = [f"the newest backup's age header cannot be read: {exc}"]


def _read_database(facts: Facts, database) -> None:
    """The revision and the databases an interrupted run left (PostgreSQL's), over one
    connection. An SQLite file that is not there is not created to find that out."""
    from sqlalchemy.exc import DBAPIError


    if not database.exists():
        facts.database_error = f"SQLite database {database.url.database} does not exist"
        return
    try:
        with database.connect() as conn:
            facts.current = revision_of(conn)
            facts.reachable = True
            facts.leftover_databases = database.leftover_copies(conn)
            facts.lock_held = _lock_held(conn, database)
        _read_maintenance(facts, database)
    except DatabaseUnreachable as exc:
        facts.database_error = str(exc)
    except OpsError as exc:  # several stamped revisions: reachable, but not sound
        facts.reachable, facts.database_error = False, str(exc)
    except DBAPIError as exc:
        facts.reachable, facts.database_error = False, first_line(exc.orig)


def _read_maintenance(facts: Facts, database) -> None:
    maintenance = database.maintenance  # PostgreSQL's; None for SQLite
    if maintenance is not None:
        try:
            facts.maintenance = maintenance.reachable(database.url)
        except DatabaseUnreachable as exc:
            facts.maintenance_error = str(exc)


def _lock_held(conn, database) -> bool:
    """Whether a run holds the env's lock now: a restore's intent record is then that run's,
    in progress, not one left unfinished."""
    from sqlalchemy import text

    if database.kind != "postgresql":
        return False
    return bool(conn.execute(text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND ((classid::bigint << 32) | objid::bigint) = :k"),
        {"k": advisory_key(database.name)}).scalar())


def _read_store(facts: Facts, target, now: datetime | None) -> None:
    settings, storage = target.settings, target.storage
    try:
        facts.partial_files = sorted((p.name, abandoned(p)) for p in storage.leftovers()
                                     if p.is_file())
    except OSError:
        pass  # an unreadable folder is reported once, by the backup check below
    try:
        facts.unaborted_uploads = unaborted_uploads(settings)
    except (OSError, ValueError):
        pass  # a record that cannot be read is the S3 store's to report, not a check failure
    try:
        facts.backups = [m for m in list_backups(target) if m.engine == facts.engine]
        facts.future = [m for m in facts.backups if is_future(m, now)]
        for manifest in facts.backups:
            if not manifest.verified or manifest in facts.future:
                continue
            # The listing saw the artifact (no stat or HEAD per backup); a restore point's data
            # is in pgBackRest's repository.
            if not method_of(manifest).has_artifact or manifest.stored_size is not None:
                facts.newest_verified = manifest
                break
            facts.lost.append(manifest)
    except (OpsError, OSError) as exc:  # OSError: a local folder this user may not read
        facts.backups, facts.store_error = None, str(exc)
    try:
        facts.interrupted_restores = read_intents(target)
    except (OpsError, OSError):
        pass  # the store's own failure is reported by the backup check
    try:
        facts.last_runs, facts.newest_run = _last_runs(storage)
        facts.first_event_at = _first_event_at(storage)
    except (OpsError, OSError) as exc:
        facts.audit_error = str(exc)
    try:
        facts.drills = read_drills(storage)
    except (OpsError, OSError) as exc:
        facts.drill_error = str(exc)


def _first_event_at(storage) -> datetime | None:
    """An audit event is named by its time (app/ops/catalog/audit.py): the oldest name says it."""
    names = records.names(storage, AUDIT_SUFFIX, newest_first=False)
    return records.written_at(names[0]) if names else None


def _last_runs(storage) -> tuple[dict[str, dict], dict | None]:
    """The newest audit event of each audited action, reading newest first and stopping once
    each is found (on S3 every event is a GET)."""
    found: dict[str, dict] = {}
    newest = None
    for _, event in records.each(storage, AUDIT_SUFFIX, invalid=(ValueError, FileNotFoundError)):
        action = event.get("action") if isinstance(event, dict) else None  # None: UNREADABLE
        if action == WATCH_ACTION and newest is None:
            # Only a watch after every migrate, rollback and restore speaks for the database.
            found.setdefault(action, event)
        if action not in AUDITED_RUNS:
            continue
        newest = newest or event
        found.setdefault(action, event)
        if all(a in found for a in AUDITED_RUNS):
            break
    return found, newest
