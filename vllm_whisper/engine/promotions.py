"""Latency budgets of deferred requests: a request queued at a less urgent priority (a realtime turn's final pass,
which yields to uploads) that carries `urgent_after` counts as priority 0 once that many seconds have passed since
it arrived, so uploads go first only while the deferred work is within its budget and can never starve it.

The scheduler asks for the requests due at the start of every step; keeping only the pending ones in a heap makes
that check cost nothing while no deferred request waits.
"""

from __future__ import annotations

import heapq
import itertools

from vllm_whisper.engine.request import Request


class Promotions:
    """Deferred requests not yet promoted, by the time their budget runs out."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Request]] = []
        self._order = itertools.count()  # ties broken by insertion, never by comparing requests

    def __len__(self) -> int:
        return len(self._heap)

    def track(self, request: Request) -> None:
        """Remember a request whose priority is to be raised later; requests without a budget are ignored."""
        if request.urgent_at is not None:
            heapq.heappush(self._heap, (request.urgent_at, next(self._order), request))

    def due(self, now: float) -> list[Request]:
        """Promote to priority 0 and return the tracked requests whose budget has run out by `now`, oldest first;
        finished ones are dropped without promotion."""
        promoted = []
        while self._heap and self._heap[0][0] <= now:
            _, _, request = heapq.heappop(self._heap)
            if request.status.finished:
                continue
            request.priority = 0
            promoted.append(request)
        return promoted
