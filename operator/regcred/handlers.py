"""kopf handlers: translate watch events into reconciler calls, and nothing more.

Namespaces, ServiceAccounts and Secrets are only watched with `@kopf.on.event`, so kopf
never writes annotations or finalizers on them; the finalizer, the progress annotations
and the resync timer live on RegistryCredentials only. Their events run on kopf's event
loop: they update the caches and queue a namespace sync, never calling the API there.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import kopf

from regcred.caches import Caches
from regcred.core.spec import GROUP, MANAGED_BY_LABEL, MANAGED_BY_VALUE, PLURAL, VERSION
from regcred.kube import Kube, KubeError, connect
from regcred.metrics import Metrics
from regcred.reconciler import CleanupIncomplete, Reconciler
from regcred.settings import Settings

CRD = (GROUP, VERSION, PLURAL)
MANAGED = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
RESYNC_SECONDS = float(os.environ.get("REGCRED_RESYNC_SECONDS", "300"))
PEERING_LIFETIME_SECONDS = 15
WORKER_IDLE_SECONDS = 0.5


class SharedMemo(kopf.Memo):
    """The operator's one memo. kopf gives each watched object a shallow copy of it for state
    of its own (0.2 KB apiece, 5 MB at 25,000 objects); regcred keeps no per-object state
    there, so every object shares this one."""

    def __copy__(self) -> SharedMemo:
        return self


# --- RegistryCredentials: the one kopf index (namespaces, ServiceAccounts and copies live in
# regcred/caches.py, which says why) -------------------------------------------------------

@kopf.index(*CRD)
def credential_index(body: Mapping[str, Any], name: str, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: {key: body.get(key) for key in ("metadata", "spec", "status")}}


# --- start-up ----------------------------------------------------------------------------

@kopf.on.startup()
def start(settings: kopf.OperatorSettings, memo: kopf.Memo, credential_index: kopf.Index,
          **_: Any) -> None:
    options: Settings = memo.settings
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.enabled = False  # we post our own events, only on news
    settings.watching.label_selectors["secrets"] = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
    settings.execution.max_workers = max(8, options.workers)
    # kopf keeps a worker per object for this long after its last event, holding that event's
    # whole body; a start-up listing of 25,000 objects held them all (docs/performance.md).
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    # A killed leader's peering entry expires after `lifetime`: that is the failover time.
    settings.peering.lifetime = PEERING_LIFETIME_SECONDS

    # Threads that may call the API at once: our fan-out and event pools, kopf's handler
    # threads, and one long watch per source namespace.
    threads = 2 * options.workers + settings.execution.max_workers + len(options.source_namespaces)
    metrics: Metrics = memo.metrics
    memo.kube = Kube(connect(options.kubeconfig, threads), on_error=metrics.api_error)
    memo.caches = Caches(credential_index)
    memo.reconciler = Reconciler(memo.kube, memo.caches, options, metrics)
    memo.listed = set()  # uids seen in a listing: seeing one listed again means a re-list
    memo.stop = threading.Event()


@kopf.on.startup()
def fill_caches(memo: kopf.Memo, **_: Any) -> None:
    """Before any watch event: the caches take in the cluster, then source watches begin."""
    try:
        memo.caches.fill(memo.kube)
    except KubeError as error:
        raise kopf.TemporaryError(f"cannot list the cluster yet: {error}", delay=5) from None
    for namespace in sorted(memo.settings.source_namespaces):
        threading.Thread(
            target=memo.kube.watch_secrets,
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
    tells. Objects deleted meanwhile linger in the caches: have them checked."""
    if type == "DELETED":
        memo.listed.discard(uid)
    elif type is None and uid:
        if uid in memo.listed:
            memo.reconciler.verify_caches_soon()
        memo.listed.add(uid)


@kopf.on.event("namespaces")
async def namespace_event(name: str, type: str | None, uid: str | None, body: kopf.Body,
                          memo: kopf.Memo, **_: Any) -> None:
    memo.metrics.watch_event("Namespace")
    _relisted(memo, type, uid)
    if memo.caches.namespace_seen(body, deleted=type == "DELETED"):
        memo.reconciler.enqueue(name)


# Listing events (type None) count too: after a lost watch (an API server or etcd restart)
# kopf lists again, and a ServiceAccount or copy changed in the gap shows up only there.
# Events that change nothing in the caches (the same resourceVersion: a listing of what is
# cached, or the echo of our own write, already taken in) need no sync.

@kopf.on.event("serviceaccounts")
async def service_account_event(namespace: str, type: str | None, uid: str | None, body: kopf.Body,
                                memo: kopf.Memo, **_: Any) -> None:
    memo.metrics.watch_event("ServiceAccount")
    _relisted(memo, type, uid)
    if memo.caches.service_account_seen(body, deleted=type == "DELETED"):
        memo.reconciler.enqueue(namespace)


@kopf.on.event("secrets", labels=MANAGED)
async def copy_event(namespace: str, type: str | None, uid: str | None, body: kopf.Body,
                     memo: kopf.Memo, **_: Any) -> None:
    memo.metrics.watch_event("Secret")
    _relisted(memo, type, uid)
    if memo.caches.copy_seen(body, deleted=type == "DELETED"):
        memo.reconciler.enqueue(namespace)

