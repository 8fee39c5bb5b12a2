"""A minimal deterministic discrete-event loop.

Events are ``(time, seq, fn, args)`` tuples in a binary heap. ``seq`` is a global counter, so
events at equal times run in the order they were scheduled and the handler is never compared:
the same inputs always give the same order, whatever the handlers are. Handlers may schedule
further events (never in the past: a time before ``now`` is clamped to ``now``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

__all__ = ["EventLoop"]

Handler = Callable[..., None]


class EventLoop:
    """Virtual clock plus event heap; ``run_until`` pops events in (time, seq) order."""

    __slots__ = ("_heap", "_seq", "events_run", "now")

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Handler, tuple[Any, ...]]] = []
        self._seq = 0
        self.events_run = 0

    def schedule(self, t: float, fn: Handler, *args: Any) -> None:
        """Run ``fn(*args)`` at virtual time ``t`` (clamped to now)."""
        if t < self.now:
            t = self.now
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn, args))

    def __len__(self) -> int:
        return len(self._heap)

    def peek_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def run_until(self, t_end: float) -> None:
        """Run every event with time <= ``t_end``; afterwards ``now == t_end``."""
        heap = self._heap
        pop = heapq.heappop
        n = 0
        while heap and heap[0][0] <= t_end:
            t, _, fn, args = pop(heap)
            self.now = t
            fn(*args)
            n += 1
        self.events_run += n
        self.now = max(self.now, t_end)
