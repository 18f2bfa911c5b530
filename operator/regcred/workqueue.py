"""A work queue with the semantics client-go's workqueue made standard for controllers.

- A key is queued at most once: adding one that waits already does nothing (the work reads
  the caches when it runs, so it covers every change made before it starts).
- A key being processed is never handed out again until `done`; adding it meanwhile marks it
  dirty, and `done` queues it once more, so the change made during the run is not lost.
- `add_after` delays an add; of two delayed adds of one key, the earlier wins.
- `retry_later` delays by the key's own backoff (`RETRY_DELAYS`, the last one repeating), and
  `reset_backoff` resets that backoff after a success.
- `shutdown` wakes every waiting worker; `get` then returns None and adds are ignored.

Keys are opaque to the queue (anything hashable), as in client-go: the sync controller's are
typed (`sync/controller.py`: its workers dispatch on the type, never on a string), and
verification's are CR names. The clock is injected, so tests run it by hand, with no sleeps.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

# After a transient API failure the work is done again after these delays (the last one
# repeats) instead of waiting for the periodic resync: doubling, capped at 30 s.
RETRY_DELAYS: tuple[float, ...] = (2.0, 4.0, 8.0, 15.0, 30.0)


K = TypeVar("K", bound=Hashable)


@dataclass(order=True)
class _Delayed(Generic[K]):
    ready_at: float
    sequence: int
    key: K = field(compare=False)


class WorkQueue(Generic[K]):
    """Thread-safe; any number of producers and worker threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 delays: Sequence[float] = RETRY_DELAYS) -> None:
        if not delays:
            raise ValueError("a work queue needs at least one retry delay")
        self._clock = clock
        self._delays = tuple(delays)
        self._condition = threading.Condition()
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()  # queued, or added again while being processed
        self._processing: set[K] = set()
        self._waiting: list[_Delayed[K]] = []  # heap of delayed adds
        self._ready_at: dict[K, float] = {}  # earliest delayed add per key
        self._sequence = itertools.count()
        self._failures: dict[K, int] = {}
        self._shutting_down = False

    # --- producers ------------------------------------------------------------------------

    def add(self, key: K) -> None:
        with self._condition:
            self._add(key)

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._condition:
            if self._shutting_down:
                return
            ready_at = self._clock() + delay
            if self._ready_at.get(key, float("inf")) <= ready_at:
                return
            self._ready_at[key] = ready_at
            heapq.heappush(self._waiting, _Delayed(ready_at, next(self._sequence), key))
            self._condition.notify()

    def retry_later(self, key: K) -> float:
        """Add `key` again after its next backoff delay; returns that delay."""
        with self._condition:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        delay = self._delays[min(failures, len(self._delays) - 1)]
        self.add_after(key, delay)
        return delay

    def reset_backoff(self, key: K) -> None:
        """`key` succeeded: its next failure starts the backoff from the first delay again."""
        with self._condition:
            self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        with self._condition:
            return self._failures.get(key, 0)

    # --- workers --------------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> K | None:
        """The next key to process (mark it `done` afterwards); None after `shutdown`, or
        when nothing is ready (`block=False`, or `timeout` seconds passed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while True:
                self._promote_due()
                if self._queue:
                    key = self._queue.popleft()
                    self._processing.add(key)
                    self._dirty.discard(key)
                    return key
                if self._shutting_down or not block:
                    return None
                wait = self._until_next_due()
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._condition.wait(wait)

    def done(self, key: K) -> None:
        """Processing of `key` finished; if it was added meanwhile, it is queued once more."""
        with self._condition:
            self._processing.discard(key)
            if key in self._dirty and not self._shutting_down:
                self._queue.append(key)
                self._condition.notify()

    def shutdown(self) -> None:
        with self._condition:
            self._shutting_down = True
            self._queue.clear()
            self._waiting.clear()
            self._ready_at.clear()
            self._condition.notify_all()

    @property
    def shutting_down(self) -> bool:
        with self._condition:
            return self._shutting_down

    def __len__(self) -> int:
        """Keys ready to be handed out (not the delayed ones, nor those being processed)."""
        with self._condition:
            self._promote_due()
            return len(self._queue)

    # --- inside the lock -------------------------------------------------------------------

    def _add(self, key: K) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # `done` queues it again
        self._queue.append(key)
        self._condition.notify()

    def _promote_due(self) -> None:
        now = self._clock()
        while self._waiting and self._waiting[0].ready_at <= now:
            entry = heapq.heappop(self._waiting)
            if self._ready_at.get(entry.key) == entry.ready_at:
                del self._ready_at[entry.key]
                self._add(entry.key)

    def _until_next_due(self) -> float | None:
        if not self._waiting:
            return None
        return max(0.0, self._waiting[0].ready_at - self._clock())
