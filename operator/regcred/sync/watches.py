"""Namespaces, ServiceAccounts and our copies: listed and watched by regcred itself.

These are the high-cardinality kinds (one namespace, its ServiceAccounts and a copy per CR
each: 100,000 objects at 20,000 namespaces and 3 CRs). kopf kept a record per object it
had seen, a worker per object with a recent event holding its whole body, and at start-up
the whole listing of a kind at once; at 20,000 namespaces that was 453 MB running and an
873 MB peak at a restart, and most of the time from a ServiceAccount's ADDED to our entry
(docs/performance.md). Here each kind is one thread: a paged listing into the caches
(each page let go before the next), then a watch from that listing's version, each event
parsed from its JSON line and handed to the caches, which say whether it changed anything;
only then is the namespace queued. kopf still watches the CRs (handlers, finalizer, timer).

With peering, only the active replica queues work: the standby's watches keep its caches
current (so it takes over warm) while `Activity` says it is paused; when it resumes, every
namespace is queued once (their plans are empty where nothing changed meanwhile).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from regcred.kube.client import Listing
from regcred.sync.caches import Caches

log = structlog.get_logger("regcred.watches")


class Follower(Protocol):
    """What the watches call (`Kube`)."""

    def listing(self, kind: str, name: str | None = None) -> Listing: ...

    def follow(self, kind: str, resource_version: str, on_event: Callable[[str, dict[str, Any]], None],
               on_listed: Callable[[Listing], None], stop: threading.Event,
               name: str | None = None) -> None: ...


class Reacting(Protocol):
    """What the watches tell (`Controller`)."""

    def namespace_changed(self, namespace: str) -> None: ...

    def relisted(self) -> None: ...


@dataclass(frozen=True)
class Kind:
    name: str  # as `Kube.follow` knows it
    metric: str  # the `kind` label of regcred_watch_events_total
    seen: Callable[..., bool]  # the caches' `*_seen(body, deleted=...)`
    cluster_scoped: bool = False

    def namespace_of(self, body: Mapping[str, Any]) -> str:
        meta = body.get("metadata") or {}
        return str(meta.get("name" if self.cluster_scoped else "namespace") or "")


class Watches:
    def __init__(self, kube: Follower, caches: Caches, controller: Reacting,
                 count: Callable[[str], None], active: Callable[[], bool]) -> None:
        self._kube = kube
        self._controller = controller
        self._count = count
        self._active = active
        self.kinds = (Kind("namespaces", "Namespace", caches.namespace_seen, cluster_scoped=True),
                      Kind("serviceaccounts", "ServiceAccount", caches.service_account_seen),
                      Kind("copies", "Secret", caches.copy_seen))

    def fill(self) -> dict[str, str]:
        """List every kind into the caches, a page at a time, before any work is queued
        (nothing is planned on a half-filled cache); the versions to watch from, by kind."""
        versions = {}
        for kind in self.kinds:
            listing = self._kube.listing(kind.name)
            self._take_in(kind, listing, queue=False)
            versions[kind.name] = listing.resource_version
        return versions

    def start(self, versions: Mapping[str, str], stop: threading.Event) -> None:
        for kind in self.kinds:
            threading.Thread(
                target=self._kube.follow,
                args=(kind.name, versions[kind.name], self._on_event(kind), self._on_listed(kind), stop),
                name=f"watch-{kind.name}", daemon=True,
            ).start()

    def _on_event(self, kind: Kind) -> Callable[[str, dict[str, Any]], None]:
        def on_event(type: str, body: dict[str, Any]) -> None:
            self._count(kind.metric)
            if kind.seen(body, deleted=type == "DELETED") and self._active():
                self._controller.namespace_changed(kind.namespace_of(body))
        return on_event

    def _on_listed(self, kind: Kind) -> Callable[[Listing], None]:
        """A re-list after a lost watch: what changed in the gap is queued, and entries
        deleted in the gap (no DELETED event) are looked for."""
        def on_listed(listing: Listing) -> None:
            log.info("listed again after a lost watch", kind=kind.name)
            self._take_in(kind, listing, queue=True)
            if self._active():
                self._controller.relisted()
        return on_listed

    def _take_in(self, kind: Kind, listing: Iterable[dict[str, Any]], queue: bool) -> None:
        for body in listing:
            self._count(kind.metric)
            if kind.seen(body) and queue and self._active():
                self._controller.namespace_changed(kind.namespace_of(body))
