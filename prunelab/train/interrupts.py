"""SIGTERM / SIGINT during a run: what clusters send before they take a node away.

``StopOnSignal`` installs handlers for the duration of a run. By default a signal raises
``RunInterrupted`` at once. Inside ``deferred()`` (the training loop, when it checkpoints) the
signal is only recorded, so the loop can finish its optimizer step, write a checkpoint and stop
cleanly; a second signal raises at once.

In a submitit job (Hydra's submitit launcher) its preemption / timeout signal (USR2 unless
SUBMITIT_PREEMPT_SIGNAL says otherwise) stops the run the same way, and once the run has stopped
it goes to submitit's own handler, which requeues the job and exits: the requeued job resumes
from the checkpoint of the step the signal ended (with ``resume_from_checkpoint=auto``).
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

from prunelab.errors import RunInterrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def launcher_signals() -> tuple[int, ...]:
    """The signals whose handler (a cluster launcher's) must still run after the run stops."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return ()
    signum = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    return () if signum is None or signum in SIGNALS else (signum,)


class StopOnSignal:
    def __init__(self):
        self.signum: int | None = None
        self._deferring = False
        self._previous: dict[int, object] = {}
        self._handed_over: tuple[int, ...] = ()

    def __enter__(self) -> "StopOnSignal":
        # Python delivers signals to the main thread only; elsewhere (a launcher thread) keep defaults.
        if threading.current_thread() is threading.main_thread():
            self._handed_over = launcher_signals()
            self._previous = {s: signal.signal(s, self._handle) for s in (*SIGNALS, *self._handed_over)}
        return self

    def __exit__(self, exc_type, *exc) -> None:
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        launcher = previous.get(self.signum)
        stopped = exc_type is not None and issubclass(exc_type, RunInterrupted)
        if stopped and self.signum in self._handed_over and callable(launcher):
            launcher(self.signum, None)  # submitit: requeue the job, then exit

    @contextmanager
    def deferred(self):
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        self.signum = signum
        if not (self._deferring and first):
            raise RunInterrupted(signum, f"{signal.Signals(signum).name} received: run stopped")
