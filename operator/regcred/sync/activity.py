"""Whether this replica acts: always when standalone; with kopf peering, while no live peer
of higher priority exists (regcred/core/peering.py), as kopf itself decides."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import structlog

from regcred.core.peering import pausing_deadlines

log = structlog.get_logger("regcred.activity")

RECHECK_SECONDS = 5.0  # at most this long between two looks at the peers' deadlines


class Activity:
    """Callable: True while this replica should queue work. With peering it starts paused
    (as kopf does) until the peering object has been read."""

    def __init__(self, peering: str | None, priority: int, on_resumed: Callable[[], None]) -> None:
        self._peering = peering
        self._priority = priority
        self._on_resumed = on_resumed
        self._status: dict[str, Any] = {}
        self._active = peering is None
        self._changed = threading.Event()

    def __call__(self) -> bool:
        return self._active

    def start(self, kube: Any, stop: threading.Event) -> None:
        if self._peering is None:
            # Active from the start: every namespace is looked at once, as by a replica taking
            # over, so entries of a CR deleted while regcred was down are removed at start.
            self._on_resumed()
            return
        listing = kube.listing("peering", name=self._peering)
        self._took_in(listing)
        threading.Thread(target=kube.follow, name="watch-peering", daemon=True,
                         args=("peering", listing.resource_version, self._on_event, self._took_in, stop),
                         kwargs={"name": self._peering}).start()
        threading.Thread(target=self._decide, args=(stop,), name="activity", daemon=True).start()

    def _on_event(self, type: str, body: dict[str, Any]) -> None:
        self._status = {} if type == "DELETED" else dict(body.get("status") or {})
        self._changed.set()

    def _took_in(self, listing: Iterable[dict[str, Any]]) -> None:
        bodies = list(listing)
        self._status = dict(bodies[0].get("status") or {}) if bodies else {}
        self._changed.set()

    def _decide(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._changed.clear()
            now = datetime.now(UTC)
            deadlines = pausing_deadlines(self._status, self._priority, now)
            active = not deadlines
            if active != self._active:
                self._active = active
                log.info("acting: no live peer of higher priority" if active
                         else "paused: a peer of higher priority is live")
                if active:
                    self._on_resumed()
            wait = min([RECHECK_SECONDS, *((d - now).total_seconds() for d in deadlines)])
            self._changed.wait(max(wait, 0.05))
