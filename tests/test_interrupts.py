"""``StopOnSignal`` and a cluster launcher's signal: in a submitit job, submitit's preemption
signal stops the run like SIGTERM, then reaches submitit's own handler (requeue and exit)."""
import os
import signal

import pytest

from prunelab.errors import RunInterrupted
from prunelab.train.interrupts import StopOnSignal


@pytest.fixture
def submitit_handler(monkeypatch):
    """A stand-in for submitit's SIGUSR2 handler: records the call and exits as submitit does."""
    events = []

    def requeue(signum, frame):
        events.append(f"submitit: {signal.Signals(signum).name}")
        raise SystemExit(144)

    previous = signal.signal(signal.SIGUSR2, requeue)
    yield events
    signal.signal(signal.SIGUSR2, previous)


def test_submitits_signal_waits_for_the_checkpoint_then_reaches_submitit(monkeypatch, submitit_handler):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    with pytest.raises(SystemExit) as exited:
        with StopOnSignal() as stop:
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGUSR2)
                submitit_handler.append("step finished")
            submitit_handler.append("checkpoint written")
            raise RunInterrupted(stop.signum, "stopped after writing a checkpoint")  # what the loop does next
    assert exited.value.code == 144 and stop.signum == signal.SIGUSR2
    assert submitit_handler == ["step finished", "checkpoint written", "submitit: SIGUSR2"]
    assert signal.getsignal(signal.SIGUSR2).__name__ == "requeue"  # submitit's handler is back


def test_a_run_that_ends_keeps_submitits_signal_to_itself(monkeypatch, submitit_handler):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    with StopOnSignal() as stop:
        with stop.deferred():
            os.kill(os.getpid(), signal.SIGUSR2)
    assert stop.requested and submitit_handler == []  # finished anyway: nothing to requeue


def test_outside_submitit_its_signal_is_not_ours(monkeypatch, submitit_handler):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    with pytest.raises(SystemExit):
        with StopOnSignal() as stop:
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGUSR2)
    assert submitit_handler == ["submitit: SIGUSR2"] and not stop.requested
