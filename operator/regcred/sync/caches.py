"""The `World` the reconciler reads: namespaces, ServiceAccounts and our copies as watched.

regcred keeps these itself instead of in kopf indexes: before it runs any handler, kopf holds
every listed object of an indexed resource in memory until all of them are indexed, about
33 KB apiece (a restart on 25,000 objects peaked at 820 MB; docs/performance.md). Entries are
the planner's reduced views, never bodies. regcred/sync/watches.py fills them from a paged
listing at start-up, before any work is queued, and its watch events keep them current; each
event's call says whether it changed anything. Our own writes go in
as soon as the API answers (write-through), so no plan works from a version we replaced,
and the watch event echoing a write changes nothing and starts no sync.

Only RegistryCredentials, a handful of objects, stay in a kopf index.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from regcred.core.matching import NamespaceInfo
from regcred.core.plan import (
    ObservedCopy,
    ObservedServiceAccount,
    observe_copy,
    observe_service_account,
)

Entry = TypeVar("Entry", ObservedCopy, ObservedServiceAccount)


@dataclass(frozen=True, slots=True)
class CachedNamespace:
    uid: str
    resource_version: str
    info: NamespaceInfo


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body.get("metadata") or {}


class Caches:
    """Thread-safe: kopf's event loop writes, the reconciler's threads read."""

    def __init__(self, credentials: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
        self._lock = threading.Lock()
        self._namespaces: dict[str, CachedNamespace] = {}
        # namespace -> its entries: a tuple (64 bytes for three) rather than a dict by name
        # (200): a namespace holds a few, and 20,000 namespaces hold 40,000 of these.
        self._copies: dict[str, tuple[ObservedCopy, ...]] = {}
        self._accounts: dict[str, tuple[ObservedServiceAccount, ...]] = {}
        self._credentials = credentials  # kopf's index of RegistryCredential bodies, by name

    # --- kept current by watch events; each returns whether the event changed anything ---

    def namespace_seen(self, body: Mapping[str, Any], deleted: bool = False) -> bool:
        meta = _meta(body)
        name, uid, version = meta.get("name", ""), meta.get("uid", ""), meta.get("resourceVersion", "")
        with self._lock:
            cached = self._namespaces.get(name)
            if deleted:
                if cached is None or cached.uid != uid:  # an older namespace of that name
                    return False
                del self._namespaces[name]
                return True
            if cached is not None and (cached.uid, cached.resource_version) == (uid, version):
                return False
            self._namespaces[name] = CachedNamespace(uid, version, NamespaceInfo.from_body(body))
            return True

    def copy_seen(self, body: Mapping[str, Any], deleted: bool = False) -> bool:
        return self._seen(self._copies, body, deleted, observe_copy)

    def service_account_seen(self, body: Mapping[str, Any], deleted: bool = False) -> bool:
        return self._seen(self._accounts, body, deleted, observe_service_account)

    def _seen(self, cache: dict[str, tuple[Entry, ...]], body: Mapping[str, Any], deleted: bool,
              observe: Callable[[Mapping[str, Any]], Entry]) -> bool:
        meta = _meta(body)
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        with self._lock:
            cached = _entry(cache, namespace, name)
            if deleted:
                if cached is None:
                    return False
                _put(cache, namespace, name, None)
                return True
            if cached is not None and cached.resource_version == meta.get("resourceVersion"):
                return False
            _put(cache, namespace, name, observe(body))
            return True

    def take_in(self, written: ObservedCopy | ObservedServiceAccount, planned_from: str | None) -> None:
        """Take in an object as regcred just wrote it, so that a plan made before its watch
        event arrives sees it, and the event then changes nothing. Only if the entry still
        shows the version the write was planned from (None: absent): a watch event that has
        moved it on already is as new as the write, or newer."""
        with self._lock:
            if isinstance(written, ObservedCopy):
                _compare_and_set(self._copies, written, planned_from)
            else:
                _compare_and_set(self._accounts, written, planned_from)

    # --- the World protocol ---------------------------------------------------------------

    def namespace_names(self) -> list[str]:
        with self._lock:
            return list(self._namespaces)

    def namespace(self, name: str) -> NamespaceInfo | None:
        cached = self._namespaces.get(name)
        return cached.info if cached else None

    def copies(self, namespace: str) -> list[ObservedCopy]:
        with self._lock:
            return list(self._copies.get(namespace, ()))

    def service_accounts(self, namespace: str) -> list[ObservedServiceAccount]:
        with self._lock:
            return list(self._accounts.get(namespace, ()))

    def credential_bodies(self) -> list[Mapping[str, Any]]:
        return [body for name in snapshot(self._credentials)
                for body in snapshot(self._credentials.get(name, ()))]

    def credential_body(self, name: str) -> Mapping[str, Any] | None:
        return next(iter(snapshot(self._credentials.get(name, ()))), None)

    def cached_uids(self) -> dict[str, str]:
        """uid -> namespace of every cached namespace and copy."""
        with self._lock:
            found = {cached.uid: name for name, cached in self._namespaces.items()}
            found.update((copy.uid, namespace) for namespace, entries in self._copies.items()
                         for copy in entries)
        return found

    def drop_uids(self, uids: Iterable[str]) -> None:
        """Drop entries whose DELETED event was lost with a watch (found by `CacheChecker.check`)."""
        gone = set(uids)
        with self._lock:
            for name in [n for n, cached in self._namespaces.items() if cached.uid in gone]:
                del self._namespaces[name]
            for namespace, entries in list(self._copies.items()):
                for copy in entries:
                    if copy.uid in gone:
                        _put(self._copies, namespace, copy.name, None)


def _entry(cache: dict[str, tuple[Entry, ...]], namespace: str, name: str) -> Entry | None:
    return next((entry for entry in cache.get(namespace, ()) if entry.name == name), None)


def _put(cache: dict[str, tuple[Entry, ...]], namespace: str, name: str, entry: Entry | None) -> None:
    """Replace (or with None, remove) the entry `name` of `namespace`, keeping the others."""
    entries = tuple(e for e in cache.get(namespace, ()) if e.name != name)
    if entry is not None:
        entries += (entry,)
    if entries:
        cache[namespace] = entries
    else:
        cache.pop(namespace, None)


def _compare_and_set(cache: dict[str, tuple[Entry, ...]], written: Entry, planned_from: str | None) -> None:
    """Put `written` in if the cache still shows the version it was planned from."""
    cached = _entry(cache, written.namespace, written.name)
    if (cached.resource_version if cached else None) == planned_from:
        _put(cache, written.namespace, written.name, written)


def snapshot(values: Iterable[Any]) -> list[Any]:
    """Copy a kopf index store that the event loop may be changing in another thread."""
    for _ in range(10):
        try:
            return list(values)
        except RuntimeError:  # "changed size during iteration": try again
            continue
    return list(values)
