"""kopf handlers: translate watch events into reconciler calls, and nothing more.

Namespaces, ServiceAccounts and Secrets are only watched with `@kopf.on.event` and
indexed, so kopf never writes annotations or finalizers on them; the finalizer, the
progress annotations and the resync timer live on RegistryCredentials only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from regcred.core.matching import NamespaceInfo
from regcred.core.plan import (
    ObservedCopy,
    ObservedServiceAccount,
    observe_copy,
    observe_service_account,
)
from regcred.core.spec import GROUP, MANAGED_BY_LABEL, MANAGED_BY_VALUE, PLURAL, VERSION
from regcred.kube import Kube, connect
from regcred.metrics import Metrics
from regcred.reconciler import CleanupIncomplete, Reconciler, Seen, snapshot
from regcred.settings import Settings

CRD = (GROUP, VERSION, PLURAL)
MANAGED = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
RESYNC_SECONDS = float(os.environ.get("REGCRED_RESYNC_SECONDS", "300"))
PEERING_LIFETIME_SECONDS = 15


class SharedMemo(kopf.Memo):
    """The operator's one memo. kopf gives each watched object a shallow copy of it for state
    of its own (0.2 KB apiece, 5 MB at 25,000 objects); regcred keeps no per-object state
    there, so every object shares this one."""

    def __copy__(self) -> SharedMemo:
        return self


# --- caches (kopf indexes) -----------------------------------------------------------------

@kopf.index("namespaces")
def namespace_index(name: str, uid: str, labels: Mapping[str, str], meta: Mapping[str, Any],
                    **_: Any) -> dict[str, tuple[str, NamespaceInfo]]:
    return {name: (uid, NamespaceInfo(name, dict(labels), bool(meta.get("deletionTimestamp"))))}


@kopf.index("secrets", labels=MANAGED)
def copy_index(body: Mapping[str, Any], namespace: str, **_: Any) -> dict[str, ObservedCopy]:
    return {namespace: observe_copy(body)}


@kopf.index("serviceaccounts")
def service_account_index(body: Mapping[str, Any], namespace: str,
                          **_: Any) -> dict[str, ObservedServiceAccount]:
    return {namespace: observe_service_account(body)}


@kopf.index(*CRD)
def credential_index(body: Mapping[str, Any], name: str, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: {key: body.get(key) for key in ("metadata", "spec", "status")}}


class IndexedWorld:
    """The `World` the reconciler reads, backed by the kopf indexes above.

    kopf drops an object from an index only on its DELETED event. After a lost watch it lists
    again but keeps what the new listing lacks, so an object deleted while the watch was down
    stays in the index; `forget` hides such entries (by uid) once the API confirms they are gone.
    """

    def __init__(self, namespaces: kopf.Index, copies: kopf.Index, accounts: kopf.Index,
                 credentials: kopf.Index) -> None:
        self._namespaces, self._copies = namespaces, copies
        self._accounts, self._credentials = accounts, credentials
        self._gone: set[str] = set()

    def _namespace_entries(self, name: str) -> list[tuple[str, NamespaceInfo]]:
        return [entry for entry in snapshot(self._namespaces.get(name, ())) if entry[0] not in self._gone]

    def namespace_names(self) -> list[str]:
        return [name for name in snapshot(self._namespaces) if self._namespace_entries(name)]

    def namespace(self, name: str) -> NamespaceInfo | None:
        return next((info for _, info in self._namespace_entries(name)), None)

    def copies(self, namespace: str) -> list[ObservedCopy]:
        return [c for c in snapshot(self._copies.get(namespace, ())) if c.uid not in self._gone]

    def cached_uids(self) -> dict[str, str]:
        """uid -> namespace of every namespace and copy in the caches."""
        found = {uid: name for name in snapshot(self._namespaces)
                 for uid, _ in self._namespace_entries(name)}
        found.update((c.uid, ns) for ns in snapshot(self._copies) for c in self.copies(ns))
        return found

    def forget(self, uids: Iterable[str]) -> None:
        self._gone.update(uids)

    def service_accounts(self, namespace: str) -> list[ObservedServiceAccount]:
        return snapshot(self._accounts.get(namespace, ()))

    def credential_bodies(self) -> list[Mapping[str, Any]]:
        return [body for name in snapshot(self._credentials)
                for body in snapshot(self._credentials.get(name, ()))]

    def credential_body(self, name: str) -> Mapping[str, Any] | None:
        return next(iter(snapshot(self._credentials.get(name, ()))), None)


# --- start-up ----------------------------------------------------------------------------

@kopf.on.startup()
def start(settings: kopf.OperatorSettings, memo: kopf.Memo, namespace_index: kopf.Index,
          copy_index: kopf.Index, service_account_index: kopf.Index,
          credential_index: kopf.Index, **_: Any) -> None:
    options: Settings = memo.settings
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.enabled = False  # we post our own events, only on news
    settings.watching.label_selectors["secrets"] = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
    settings.execution.max_workers = max(8, options.workers)
    # A killed leader's peering entry expires after `lifetime`: that is the failover time.
    settings.peering.lifetime = PEERING_LIFETIME_SECONDS

    # Threads that may call the API at once: our fan-out pool, kopf's handler threads and
    # one long watch per source namespace.
    threads = options.workers + settings.execution.max_workers + len(options.source_namespaces)
    metrics: Metrics = memo.metrics
    kube = Kube(connect(options.kubeconfig, threads), on_error=metrics.api_error)
    world = IndexedWorld(namespace_index, copy_index, service_account_index, credential_index)
    memo.reconciler = Reconciler(kube, world, options, metrics)
    memo.listed = set()  # uids seen in a listing: seeing one listed again means a re-list
    memo.stop = threading.Event()
    for namespace in sorted(options.source_namespaces):
        threading.Thread(
            target=kube.watch_secrets,
            args=(namespace, lambda ns, name: _source_changed(memo.reconciler, ns, name), memo.stop),
            name=f"source-watch-{namespace}", daemon=True,
        ).start()


@kopf.on.cleanup()
def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.stop.set()
    memo.reconciler.shutdown()


def _source_changed(reconciler: Reconciler, namespace: str, name: str) -> None:
    for credential in reconciler.credentials_using_source(namespace, name):
        reconciler.sync_credential(credential)


# --- the custom resource -------------------------------------------------------------------

@kopf.on.resume(*CRD)
@kopf.on.create(*CRD)
@kopf.on.update(*CRD, field="spec")
def credential_changed(name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.sync_credential(name)


@kopf.timer(*CRD, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def resync(name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.verify_caches(max_age=RESYNC_SECONDS / 2)
    memo.reconciler.sync_credential(name, resync=True)


@kopf.on.delete(*CRD)
def credential_deleted(name: str, memo: kopf.Memo, **_: Any) -> None:
    try:
        memo.reconciler.forget_credential(name)
    except CleanupIncomplete as error:
        raise kopf.TemporaryError(str(error), delay=2) from None


# --- what the copies depend on ------------------------------------------------------------

def _relisted(memo: kopf.Memo, type: str | None, uid: str | None) -> None:
    """kopf re-lists after a lost watch without saying so; an object listed a second time
    tells. Objects deleted meanwhile linger in its indexes: have the caches checked."""
    if type == "DELETED":
        memo.listed.discard(uid)
    elif type is None and uid:
        if uid in memo.listed:
            memo.reconciler.verify_caches_soon()
        memo.listed.add(uid)


@kopf.on.event("namespaces")
def namespace_event(name: str, type: str | None, uid: str | None, memo: kopf.Memo, **_: Any) -> None:
    _relisted(memo, type, uid)
    memo.reconciler.namespace_changed(name)


# Listing events (type None) count too: after a lost watch (an API server or etcd restart)
# kopf lists again, and a ServiceAccount or copy changed in the gap shows up only there.

@kopf.on.event("serviceaccounts")
def service_account_event(namespace: str, name: str, type: str | None, uid: str | None,
                          meta: Mapping[str, Any], memo: kopf.Memo, **_: Any) -> None:
    _relisted(memo, type, uid)
    memo.reconciler.namespace_changed(namespace, _seen("ServiceAccount", name, meta))


@kopf.on.event("secrets", labels=MANAGED)
def copy_event(namespace: str, name: str, type: str | None, uid: str | None,
               meta: Mapping[str, Any], memo: kopf.Memo, **_: Any) -> None:
    _relisted(memo, type, uid)
    memo.reconciler.namespace_changed(namespace, _seen("Secret", name, meta))


def _seen(kind: str, name: str, meta: Mapping[str, Any]) -> Seen:
    return Seen(kind, name, str(meta.get("resourceVersion") or ""))
