"""SIGTERM and SIGHUP, handled like Ctrl-C.

Supervisors (systemd, Kubernetes, CI runners) stop a process with SIGTERM, and a closed SSH
session sends SIGHUP; by default either ends Python at once, leaving children running, partial
files on disk and no audit record. Inside `stop_on_signals()` they raise `Stopped`, a
KeyboardInterrupt, in the main thread, so the clean-up that already runs for Ctrl-C (kill the
child, remove the partial file, write the audit record, roll the transaction back) runs for
them too. The exit code follows the shell's convention: 128 + the signal's number.

A child process must never outlive the run, however the signal falls: the handler kills every
live child started through `spawn` before it raises, and a signal that lands while `spawn` is
starting one (after the fork, before the caller holds the child) waits until the child is
registered, so even that child is killed.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import weakref
from typing import Iterator

HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = f"stopped by {signal.Signals(signum).name}"
        self.exit_code = 128 + signum


_children: "weakref.WeakSet[subprocess.Popen]" = weakref.WeakSet()
_spawning = False           # the main thread is inside spawn(): a signal waits in _pending
_pending: int | None = None


def spawn(argv, **kwargs) -> subprocess.Popen:
    """subprocess.Popen, with the child registered so that a signal always kills it."""
    global _spawning, _pending
    main = threading.current_thread() is threading.main_thread()
    if main:
        _spawning = True
    try:
        proc = subprocess.Popen(argv, **kwargs)
        proc.own_group = bool(kwargs.get("start_new_session") or kwargs.get("process_group") == 0)
        _children.add(proc)
    finally:
        if main:
            _spawning = False
    if main and _pending is not None:
        signum, _pending = _pending, None
        _stop(signum)
    return proc


def _raise_stopped(signum, frame) -> None:
    global _pending
    # Once is enough: a second signal while cleaning up must not cut the clean-up short.
    for handled in HANDLED:
        signal.signal(handled, signal.SIG_IGN)
    if _spawning:
        _pending = signum
        return
    _stop(signum)


def _stop(signum: int) -> None:
    for proc in list(_children):
        if proc.returncode is None:  # not reaped yet, so its pid is still its own
            with contextlib.suppress(OSError):
                if proc.own_group:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
