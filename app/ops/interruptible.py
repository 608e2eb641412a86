"""Statements the server is running, canceled when the run is stopped.

psycopg2 waits for a statement's result inside libpq, where Python's signal handlers cannot
run: SIGTERM or Ctrl-C during a long `ALTER TABLE` would wait until the statement ends, hours
on a big table. With a wait callback (psycopg2's documented way to make statements
interruptible) the wait happens in Python's `select()` instead, so the KeyboardInterrupt that
app/ops/signals.py raises surfaces there: the callback asks the server to cancel the statement
(`connection.cancel()`, libpq's PQcancel), waits for the server's answer, and raises the
interrupt again, so the run rolls back and stops as it does anywhere else.
"""
from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def cancellable_statements() -> Iterator[None]:
    """Inside: every psycopg2 statement of this process ends at once, canceled, on an interrupt."""
    from psycopg2 import extensions

    previous = extensions.get_wait_callback()
    extensions.set_wait_callback(wait_or_cancel)
    try:
        yield
    finally:
        extensions.set_wait_callback(previous)


def wait_or_cancel(conn) -> None:
    """psycopg2's wait callback: wait_select of psycopg2.extras, except that an interrupt is
    raised again once the server has answered the cancel (wait_select turns it into the
    server's QueryCanceled error, which would read as a failed migration)."""
    import select

    from psycopg2.extensions import POLL_OK, POLL_READ, POLL_WRITE

    interrupt = None
    while True:
        try:
            state = conn.poll()
            if state == POLL_OK:
                break
            if state == POLL_READ:
                select.select([conn.fileno()], [], [])
            elif state == POLL_WRITE:
                select.select([], [conn.fileno()], [])
            else:
                raise conn.OperationalError(f"bad state from poll: {state}")
        except KeyboardInterrupt as exc:
            if interrupt is None:  # a second one (a second Ctrl-C) changes nothing
                interrupt = exc
                try:
                    conn.cancel()
                except Exception:  # still connecting: nothing runs yet, the wait ends soon
                    pass
        except Exception:
            if interrupt is None:
                raise
            break  # the server's answer to the cancel: the interrupt is what happened
    if interrupt is not None:
        raise interrupt
