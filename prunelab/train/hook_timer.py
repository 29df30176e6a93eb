"""The seconds a callback spends inside its training hooks (``on_*``): the pruner's own cost,
which epoch wall times on a shared machine cannot resolve."""
from __future__ import annotations

import time


class HookTimer:
    """Stands in for ``callbacks`` in a loop's callback list: forwards every attribute, timing the
    ``on_*`` hooks; ``seconds`` adds them up, ``lap()`` returns those since the previous lap."""

    def __init__(self, callbacks) -> None:
        self.callbacks = callbacks
        self.seconds = 0.0
        self._lapped = 0.0

    def __getattr__(self, name: str):
        attribute = getattr(self.callbacks, name)
        if not name.startswith("on_"):
            return attribute

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed

    def lap(self) -> float:
        seconds, self._lapped = self.seconds - self._lapped, self.seconds
        return seconds
