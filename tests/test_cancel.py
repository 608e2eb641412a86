"""app.ops.cancel: what a worker registers runs once, on cancel, or at once if too late."""
from __future__ import annotations

from app.ops.cancel import Cancellation


def test_actions_run_once_when_cancelled():
    calls = []
    cancel = Cancellation()
    cancel.on_cancel(lambda: calls.append("kill"))
    assert calls == [] and not cancel.cancelled
    cancel.cancel()
    cancel.cancel()
    assert calls == ["kill"] and cancel.cancelled


def test_an_action_registered_after_the_cancel_runs_at_once():
    calls = []
    cancel = Cancellation()
    cancel.cancel()
    cancel.on_cancel(lambda: calls.append("kill"))
    assert calls == ["kill"]


def test_a_forgotten_action_does_not_run():
    calls = []
    cancel = Cancellation()

    def kill():
        calls.append("kill")

    cancel.on_cancel(kill)
    cancel.forget(kill)
    cancel.forget(kill)  # forgetting twice is harmless
    cancel.cancel()
    assert calls == []
