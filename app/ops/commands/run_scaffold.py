"""One run of a command that changes the database (migrate, rollback, stamp, restore): the
database's lock, a restore an earlier run left unfinished finished first, the run's outcome,
and its audit event, whatever happens.

`locked_run` is written once for all of them; each command hands it what differs, as hooks on
the `Run` it yields: the words of a lock found lost, what an error adds to the event (or the
error it becomes), what a stop leaves to settle, the event's fields as they stand at the end,
and what comes after the event (a restore's drill record).

The outcomes: the block's own (`run.outcome`, "succeeded" when it sets none), or "stopped"
(Ctrl-C, SIGTERM or SIGHUP: app/ops/signals.py), "lock lost" (another session ended the
lock's; the run stops before its change), "failed", or what the `failed` hook says.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterator

from app.ops.catalog import audit
from app.ops.errors import LockLost, OpsError
from app.ops.methods.registry import finish_interrupted_restores
from app.ops.report import Reporter

SUCCEEDED, FAILED, STOPPED, LOCK_LOST = "succeeded", "failed", "stopped", "lock lost"


@dataclass
class Run:
    """What the block and the hooks share. The block fills in `details` as it learns them,
    and sets `audited` once it gets to the part that is audited (a guard that refuses before
    anything is done is not: it said why, and nothing happened)."""
    lock: object
    started: float                 # time.monotonic() before the lock was asked for
    finished_earlier: bool         # a restore an earlier run left unfinished was finished
    details: dict = field(default_factory=dict)
    outcome: str | None = None     # the block's own; None: succeeded, unless the block raised
    audited: bool = False
    result: object = None          # what the block has made so far, for the hooks


@contextlib.contextmanager
def locked_run(target, action: str, now: datetime, reporter: Reporter, *,
               lock_lost: Callable[[Run, LockLost], str],
               failed: Callable[[Run, OpsError], tuple[str, Exception | None]] | None = None,
               stopped: Callable[[Run], None] | None = None,
               details: Callable[[Run], dict] | None = None,
               afterwards: Callable[[Run], None] | None = None,
               **fields) -> Iterator[Run]:
    """The lock, then the block; from the moment the block sets `run.audited`, its outcome is
    audited whatever happens: `fields`, the run's duration, then `details(run)` (default:
    `run.details`); then `afterwards(run)`, still under the lock.

    `lock_lost(run, exc)`: the message of the LockLost the run ends with. `failed(run, exc)`,
    for any other OpsError: (the outcome, the error to raise instead or None for `exc`).
    `stopped(run)`: what a stop settles before it goes on."""
    started = time.monotonic()
    with target.database.lock(action, now) as lock:
        # A restore an earlier run left unfinished is finished first (app/ops/catalog/restore_intent.py).
        run = Run(lock, started, finish_interrupted_restores(target, now=now, reporter=reporter))
        outcome = FAILED
        try:
            yield run
            outcome = run.outcome or SUCCEEDED
        except KeyboardInterrupt:
            outcome = STOPPED
            if stopped is not None:
                stopped(run)
            raise
        except LockLost as exc:
            outcome = LOCK_LOST
            raise LockLost(lock_lost(run, exc)) from None
        except OpsError as exc:
            outcome, instead = failed(run, exc) if failed is not None else (FAILED, None)
            if instead is None:
                raise
            raise instead from None
        finally:
            run.outcome = outcome
            if run.audited:
                audit.record(target, action=action, now=now, outcome=outcome, reporter=reporter,
                             **{**fields, "duration_seconds": round(time.monotonic() - started, 3),
                                **(run.details if details is None else details(run))})
                if afterwards is not None:
                    afterwards(run)
