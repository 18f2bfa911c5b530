"""Finding cache entries whose DELETED event was lost with a watch.

kopf re-lists after a lost watch (an API server or etcd restart), but a listing cannot show
what was deleted in the gap: such namespaces and copies would linger in the caches, and a
copy deleted meanwhile would never be created again. The check lists the uids the API has
now and drops the cached entries it lacks; the caller then syncs their namespaces.

It runs after a re-list (always) and as part of the periodic resync (at most once per half
resync interval, however many credentials ask for it: see `CacheCheckKey.periodic`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import structlog

log = structlog.get_logger("regcred.cachecheck")


class CheckableCaches(Protocol):
    # uid -> namespace of the cached namespaces and copies
    def cached_uids(self) -> dict[str, str]: ...
    def drop_uids(self, uids: Iterable[str]) -> None: ...


class LiveUids(Protocol):
    def live_uids(self) -> set[str]: ...


@dataclass(frozen=True)
class CheckResult:
    """Namespaces that had stale entries (to sync again); `checked` False: skipped, not due."""

    stale_namespaces: tuple[str, ...] = ()
    checked: bool = True


class CacheChecker:
    def __init__(self, caches: CheckableCaches, kube: LiveUids, min_interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._caches = caches
        self._kube = kube
        self._min_interval = min_interval
        self._clock = clock
        self._last: float | None = None  # clock time of the last check that reached the API

    def check(self, *, periodic: bool) -> CheckResult:
        """Drop the entries the API no longer has; raises `KubeError` if it cannot list.

        A periodic check is skipped if the last one is younger than `min_interval`.
        """
        if periodic and self._last is not None and self._clock() - self._last < self._min_interval:
            return CheckResult(checked=False)
        cached = self._caches.cached_uids()  # before the listing: newer entries are not judged
        live = self._kube.live_uids()
        self._last = self._clock()
        gone = {uid: namespace for uid, namespace in cached.items() if uid not in live}
        if not gone:
            return CheckResult()
        self._caches.drop_uids(gone)
        log.warning("dropped cache entries deleted while a watch was down", objects=len(gone))
        return CheckResult(tuple(sorted(set(gone.values()))))
