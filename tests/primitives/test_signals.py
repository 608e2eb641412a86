"""app.ops.signals, in this process: the handler itself kills every child started through
`spawn`, even where no caller is there to clean up (a child started with no `try` around it,
or a signal landing while `spawn` is still starting one). Real children, real signals."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from app.ops.signals import Stopped, spawn, stop_on_signals
from fake_tools import gone


def ended_soon(pid: int, timeout: float = 10) -> bool:
    """SIGKILL is delivered asynchronously: poll the child's state until it has ended."""
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def killed_afterwards(pid: int) -> None:
    """A child a broken handler left behind must not outlive the test."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_signal_kills_a_child_that_no_caller_cleans_up():
    with stop_on_signals():
        proc = spawn(["sleep", "600"], stdin=subprocess.DEVNULL)
        try:
            with pytest.raises(Stopped) as stopped:
                os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before kill returns
            assert stopped.value.exit_code == 128 + signal.SIGTERM
            assert proc.wait(timeout=10) == -signal.SIGKILL
        finally:
            killed_afterwards(proc.pid)


def test_a_signal_while_spawn_starts_the_child_still_kills_it(tmp_path):
    """The signal lands inside spawn (sent by the child itself, after the fork and before its
    exec): spawn registers the child first, then stops, killing it."""
    said = tmp_path / "child.pid"

    def signal_the_parent():  # runs in the child, between fork and exec
        said.write_text(str(os.getpid()))
        os.kill(os.getppid(), signal.SIGTERM)

    with stop_on_signals():
        with pytest.raises(Stopped):
            spawn(["sleep", "600"], stdin=subprocess.DEVNULL, preexec_fn=signal_the_parent)
    pid = int(said.read_text())
    try:
        assert ended_soon(pid), "the child started while the signal landed is still running"
    finally:
        killed_afterwards(pid)
