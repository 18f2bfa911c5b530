"""kopf handlers: translate kopf's events into controller calls, and nothing more.

Namespaces, ServiceAccounts and Secrets are only watched with `@kopf.on.event`, so kopf
never writes annotations or finalizers on them; the finalizer, the progress annotations
and the resync timer live on RegistryCredentials only. Their events run on kopf's event
loop: they update the caches and queue work, never calling the API there.

Nothing is registered on import: `register(registry, settings)` does it, so every setting
(the resync interval included) comes from the `Settings` it is given.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import kopf

from regcred.core.spec import GROUP, MANAGED_BY_LABEL, MANAGED_BY_VALUE, PLURAL, VERSION
from regcred.kube.client import Kube
from regcred.kube.config import api_client
from regcred.kube.errors import KubeError
from regcred.metrics import Metrics
from regcred.settings import Settings
from regcred.sync.caches import Caches
from regcred.sync.controller import Controller, build
from regcred.sync.reconciler import CleanupIncomplete

CRD = (GROUP, VERSION, PLURAL)
MANAGED = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
PEERING_LIFETIME_SECONDS = 15
WORKER_IDLE_SECONDS = 0.5


class SharedMemo(kopf.Memo):
    """The operator's one memo. kopf gives each watched object a shallow copy of it for state
    of its own (0.2 KB apiece, 5 MB at 25,000 objects); regcred keeps no per-object state
    there, so every object shares this one."""

    def __copy__(self) -> SharedMemo:
        return self


def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    """Register every handler with `registry`; the resync interval is `settings.resync_seconds`."""
    kopf.on.login(registry=registry)(kopf.login_via_client)
    kopf.index(*CRD, registry=registry)(credential_index)
    # kopf passes indexes to handlers as keyword arguments its ActivityFn protocol cannot name.
    kopf.on.startup(registry=registry)(start)  # type: ignore[arg-type]
    kopf.on.cleanup(registry=registry)(stop)
    for on_change in (kopf.on.resume(*CRD, registry=registry),
                      kopf.on.create(*CRD, registry=registry),
                      kopf.on.update(*CRD, field="spec", registry=registry)):
        on_change(credential_changed)
    kopf.timer(*CRD, interval=settings.resync_seconds, initial_delay=settings.resync_seconds,
               registry=registry)(resync)
    kopf.on.delete(*CRD, registry=registry)(credential_deleted)
    kopf.on.event("namespaces", registry=registry)(namespace_event)
    kopf.on.event("serviceaccounts", registry=registry)(service_account_event)
    kopf.on.event("secrets", labels=MANAGED, registry=registry)(copy_event)


# --- RegistryCredentials: the one kopf index (namespaces, ServiceAccounts and copies live in
# regcred/sync/caches.py, which says why) -------------------------------------------------------

def credential_index(body: Mapping[str, Any], name: str, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: {key: body.get(key) for key in ("metadata", "spec", "status")}}


# --- start-up: one step, since each part needs the one before ---------------------------------

def start(settings: kopf.OperatorSettings, memo: kopf.Memo,
          credential_index: kopf.Index[str, dict[str, Any]], **_: Any) -> None:
    """Configure kopf, build the operator, fill the caches (before any watch event), then
    start the workers and the source watches. kopf retries the step while the API is down."""
    options: Settings = memo.settings
    kopf_threads = configure_kopf(settings, options)
    if "controller" not in memo:
        # Threads that may call the API at once: our fan-out pool and queue workers, kopf's
        # handler threads, and one long watch per source namespace.
        threads = 2 * options.workers + kopf_threads + len(options.source_namespaces)
        metrics: Metrics = memo.metrics
        memo.kube = Kube(api_client(memo.api_configuration, threads), on_error=metrics.api_error)
        memo.caches = Caches(credential_index)
        memo.controller = build(memo.kube, memo.caches, options, metrics)
        memo.listed = set()  # uids seen in a listing: seeing one listed again means a re-list
        memo.stop = threading.Event()
    try:
        memo.caches.fill(memo.kube)
    except KubeError as error:
        raise kopf.TemporaryError(f"cannot list the cluster yet: {error}", delay=5) from None
    controller: Controller = memo.controller
    controller.start()
    for namespace in sorted(options.source_namespaces):
        threading.Thread(
            target=memo.kube.watch_secrets, args=(namespace, controller.source_changed, memo.stop),
            name=f"source-watch-{namespace}", daemon=True,
        ).start()


def configure_kopf(settings: kopf.OperatorSettings, options: Settings) -> int:
    """Set kopf up for regcred; returns the number of kopf's handler threads."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.enabled = False  # we post our own events, only on news
    settings.watching.label_selectors["secrets"] = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
    kopf_threads = max(8, options.workers)
    settings.execution.max_workers = kopf_threads
    # kopf keeps a worker per object for this long after its last event, holding that event's
    # whole body; a start-up listing of 25,000 objects held them all (docs/performance.md).
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    # A killed leader's peering entry expires after `lifetime`: that is the failover time.
    settings.peering.lifetime = PEERING_LIFETIME_SECONDS
    return kopf_threads


def stop(memo: kopf.Memo, **_: Any) -> None:
    if "controller" in memo:
        memo.stop.set()
        memo.controller.shutdown()


# --- the custom resource -------------------------------------------------------------------

def credential_changed(name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.controller.credential_changed(name)


def resync(name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.controller.resync(name)


def credential_deleted(name: str, memo: kopf.Memo, **_: Any) -> None:
    try:
        memo.controller.credential_deleted(name)
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
            memo.controller.relisted()
        memo.listed.add(uid)


async def namespace_event(name: str, type: str | None, uid: str | None, body: kopf.Body,
                          memo: kopf.Memo, **_: Any) -> None:
    memo.metrics.watch_event("Namespace")
    _relisted(memo, type, uid)
    if memo.caches.namespace_seen(body, deleted=type == "DELETED"):
        memo.controller.namespace_changed(name)


# Listing events (type None) count too: after a lost watch (an API server or etcd restart)
# kopf lists again, and a ServiceAccount or copy changed in the gap shows up only there.
# Events that change nothing in the caches (the same resourceVersion: a listing of what is
# cached, or the echo of our own write, already taken in) need no sync.

async def service_account_event(namespace: str | None, type: str | None, uid: str | None,
                                body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.metrics.watch_event("ServiceAccount")
    _relisted(memo, type, uid)
    if memo.caches.service_account_seen(body, deleted=type == "DELETED") and namespace:
        memo.controller.namespace_changed(namespace)


async def copy_event(namespace: str | None, type: str | None, uid: str | None, body: kopf.Body,
                     memo: kopf.Memo, **_: Any) -> None:
    memo.metrics.watch_event("Secret")
    _relisted(memo, type, uid)
    if memo.caches.copy_seen(body, deleted=type == "DELETED") and namespace:
        memo.controller.namespace_changed(namespace)
