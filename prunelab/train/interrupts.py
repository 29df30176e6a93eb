"""SIGTERM / SIGINT during a run: what clusters send before they take a node away.

``StopOnSignal`` installs handlers for the duration of a run. By default a signal raises
``RunInterrupted`` at once. Inside ``deferred()`` (the training loop, when it checkpoints) the
signal is only recorded, so the loop can finish its optimizer step, write a checkpoint and stop
cleanly; a second signal raises at once.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from prunelab.errors import RunInterrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal:
    def __init__(self):
        self.signum: int | None = None
        self._deferring = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopOnSignal":
        # Python delivers signals to the main thread only; elsewhere (a launcher thread) keep defaults.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

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
