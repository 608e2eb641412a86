"""SIGTERM and SIGHUP, handled like Ctrl-C.

Supervisors (systemd, Kubernetes, CI runners) stop a process with SIGTERM, and a closed SSH
session sends SIGHUP; by default either ends Python at once, leaving children running, partial
files on disk and no audit record. Inside `stop_on_signals()` they raise `Stopped`, a
KeyboardInterrupt, in the main thread, so the clean-up that already runs for Ctrl-C (kill the
child, remove the partial file, write the audit record, roll the transaction back) runs for
them too. The exit code follows the shell's convention: 128 + the signal's number.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator

HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = f"stopped by {signal.Signals(signum).name}"
        self.exit_code = 128 + signum


def _raise_stopped(signum, frame) -> None:
    # Once is enough: a second signal while cleaning up must not cut the clean-up short.
    for handled in HANDLED:
        signal.signal(handled, signal.SIG_IGN)
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
