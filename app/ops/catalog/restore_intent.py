"""The intent record of a restore by swap: written to the backup store before the live database
is touched, so a restore cut short at the swap (kill -9, a server restart) is known afterwards.

It says what is swapped for what: the live database (and its oid, which a rename keeps), the
copy holding the backup, the name the old database gets, the backup, and which run (user, host,
pid, run id) does it. The record stays until the restore is finished: audited, and either its
safety backup taken or, when the swap did not happen, what it closed reopened and its copy
dropped. `invoke status` and `invoke check` show a record still there; the next migrate,
rollback, backup or restore of the env finishes it (app/ops/methods/dump/postgres_swap.py).

What happened is read from the server, never guessed from the error the run saw: the database
with the old oid tells whether the rename committed. Like audit events, records live beside
the backups, where restoring the database cannot erase them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from app.ops.catalog import records
from app.ops.catalog.audit import RUN_ID, who

INTENT_SUFFIX = ".restore-intent.json"

# What the server says about a swap (`swap_state`).
NOT_SWAPPED = "not swapped"     # the live name still holds the old database
SWAPPED = "swapped"             # the old database holds the kept name: the backup is in service
OLD_GONE = "swapped, previous database gone"  # live name on another database, kept name absent
UNKNOWN = "unknown"


@dataclass
class RestoreIntent:
    env: str
    database: str          # the live database's name
    backup_id: str
    copy: str              # DB__restoring_STAMP: the restored copy, renamed to the live name
    kept: str              # DB__pre_restore_STAMP: what the live database is renamed to
    live_oid: int          # the live database's oid before the swap (a rename keeps it)
    from_revision: str | None
    to_revision: str | None
    at: str
    disconnect: bool = False
    phase: str = "swapping"  # then "swapped", once this run saw the rename commit
    safety_backup_id: str | None = None  # the id its safety backup is being taken under
    run: dict = field(default_factory=dict)
    name: str = ""         # the record's object name in the store

    def describe(self, cut_short: bool = True) -> str:
        run = self.run
        what = (f"restore of backup {self.backup_id} over {self.database} by run "
                f"{run.get('run', '?')} ({run.get('user', '?')}@{run.get('host', '?')}, pid "
                f"{run.get('pid', '?')}) at {self.at}")
        if not cut_short:
            return what
        return what + (", cut short after the swap, before its safety backup of " + self.kept
                       if self.phase == "swapped" else ", cut short at the swap")

    def as_json(self) -> dict:
        return asdict(self)


def write_intent(target, *, backup_id: str, copy: str, kept: str, live_oid: int,
                 from_revision: str | None, to_revision: str | None, now: datetime,
                 disconnect: bool) -> RestoreIntent:
    utc = now.astimezone(timezone.utc)
    intent = RestoreIntent(
        env=target.env, database=target.database.name, backup_id=backup_id, copy=copy,
        kept=kept, live_oid=int(live_oid), from_revision=from_revision,
        to_revision=to_revision, disconnect=disconnect,
        at=utc.isoformat(timespec="milliseconds").replace("+00:00", "Z"), run=who(),
        name=records.new_name(utc, INTENT_SUFFIX, tail=RUN_ID))
    _store(target, intent)
    return intent


def mark_intent(target, intent: RestoreIntent, **changes) -> None:
    """Record how far the run got (the phase, the safety backup's id), in the same object."""
    for key, value in changes.items():
        setattr(intent, key, value)
    _store(target, intent)


def clear_intent(target, intent: RestoreIntent) -> None:
    target.storage.delete(intent.name)


def _store(target, intent: RestoreIntent) -> None:
    data = {k: v for k, v in intent.as_json().items() if k != "name"}
    target.storage.put_bytes(intent.name, records.as_bytes(data))


def pending_intents(target) -> list[RestoreIntent]:
    """The env's unfinished restores, oldest first. A record that cannot be read is skipped:
    `read_intents` keeps it for status and check to name."""
    return [i for i in read_intents(target) if isinstance(i, RestoreIntent)]


def read_intents(target) -> list[RestoreIntent | str]:
    """Each record of this env's database, or the object name of one that cannot be read."""
    found: list[RestoreIntent | str] = []
    for name, intent in records.each(target.storage, INTENT_SUFFIX, _intent, newest_first=False,
                                     invalid=(ValueError, TypeError, FileNotFoundError)):
        if intent is records.UNREADABLE:
            found.append(name)
            continue
        intent.name = name
        if intent.database == target.database.name:
            found.append(intent)
    return found


def _intent(data: dict) -> RestoreIntent:
    """Named by the caller: a record that holds a "name" of its own is refused (TypeError)."""
    return RestoreIntent(**{k: v for k, v in data.items()
                            if k in RestoreIntent.__dataclass_fields__}, name="")


def swap_state(server, intent: RestoreIntent) -> tuple[str, dict]:
    """What the server says: NOT_SWAPPED, SWAPPED, OLD_GONE or UNKNOWN, and {name: (oid,
    accepts connections)} of the live, kept and copy names. Raises DatabaseUnreachable while
    the server is away."""
    found = server.databases_named([intent.database, intent.kept, intent.copy])
    live, kept = found.get(intent.database), found.get(intent.kept)
    if live and live[0] == intent.live_oid:
        return NOT_SWAPPED, found
    if kept and kept[0] == intent.live_oid:
        return SWAPPED, found
    if live and not kept:
        return OLD_GONE, found
    return UNKNOWN, found


def undo_unswapped(server, intent: RestoreIntent, found: dict) -> list[str]:
    """A restore that did not swap: reopen the live database if it closed it, drop its copy.
    What was done, in sentences for the engineer."""
    done = []
    live = found.get(intent.database)
    if live and not live[1]:
        server.allow_connections(intent.database)
        done.append(f"{intent.database} was left closed to new connections by the restore of "
                    f"backup {intent.backup_id} (run {intent.run.get('run', '?')}), which did "
                    "not swap; it accepts them again")
    if intent.copy in found:
        server.drop(intent.copy)
        done.append(f"dropped {intent.copy}, the copy that restore had built")
    return done


def unknown_state_warning(intent: RestoreIntent, found: dict) -> str:
    names = ", ".join(f"{name} (oid {oid})" for name, (oid, _) in sorted(found.items())) or "none"
    return (f"the {intent.describe()}, but its databases are not as it left them (expected "
            f"oid {intent.live_oid} under {intent.database} or {intent.kept}; found: {names}): "
            f"nothing was done; once a person has put them right, remove the record "
            f"{intent.name} from the backup store")
