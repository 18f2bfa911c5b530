"""kopf handlers: translate kopf's events into controller calls, and nothing more.

Namespaces, ServiceAccounts and Secrets are only watched with `@kopf.on.event`, so kopf
never writes annotations or finalizers on them; the finalizer, the progress annotations
and the resync timer live on RegistryCredentials only. Their events run on kopf's event
loop: they update the caches and queue work, never calling the API there.

Nothing is registered on import: `register(registry, settings)` does it, so every setting
(the resync interval included) comes from the `Settings` it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from regcred.core.spec import GROUP, MANAGED_BY_LABEL, MANAGED_BY_VALUE, PLURAL, VERSION
from regcred.kube.errors import KubeError
from regcred.runtime import runtime_of
from regcred.settings import Settings
from regcred.sync.controller import SyncLoop, build
from regcred.sync.reconciler import CleanupIncomplete

CRD = (GROUP, VERSION, PLURAL)
MANAGED = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
PEERING_LIFETIME_SECONDS = 15
WORKER_IDLE_SECONDS = 0.5


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
          credential_index: kopf.Index[str, dict[str, Any]], retry: int = 0, **_: Any) -> None:
    """Configure kopf, build the operator once, then start it (caches, workers, source
    watches). kopf retries the step while the API is down."""
    runtime = runtime_of(memo)
    kopf_threads = configure_kopf(settings, runtime.settings)
    sync = runtime.get(SyncLoop)
    if sync is None:
        sync = build(runtime.api_configuration, credential_index, runtime.settings,
                     runtime.metrics, kopf_threads)
        runtime.add(sync)
    try:
        sync.start()
    except KubeError as error:
        # kopf logs each attempt: 5, 10, then every 15 s while the outage lasts
        raise kopf.TemporaryError(f"cannot list the cluster yet: {error}",
                                  delay=min(15, 5 * 2 ** retry)) from None


def configure_kopf(kopf_settings: kopf.OperatorSettings, settings: Settings) -> int:
    """Set kopf up for regcred; returns the number of kopf's handler threads."""
    kopf_settings.persistence.finalizer = f"{GROUP}/finalizer"
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    kopf_settings.posting.enabled = False  # we post our own events, only on news
    kopf_settings.watching.label_selectors["secrets"] = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
    kopf_threads = max(8, settings.workers)
    kopf_settings.execution.max_workers = kopf_threads
    # kopf keeps a worker per object for this long after its last event, holding that event's
    # whole body; a start-up listing of 25,000 objects held them all (docs/performance.md).
    kopf_settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    # A killed leader's peering entry expires after `lifetime`: that is the failover time.
    kopf_settings.peering.lifetime = PEERING_LIFETIME_SECONDS
    return kopf_threads


def stop(memo: kopf.Memo, **_: Any) -> None:
    sync = runtime_of(memo).get(SyncLoop)
    if sync is not None:
        sync.stop()


def _started(memo: kopf.Memo) -> SyncLoop:
    return runtime_of(memo).started(SyncLoop)  # kopf watches only once start-up succeeded


# --- the custom resource -------------------------------------------------------------------

def credential_changed(name: str, memo: kopf.Memo, **_: Any) -> None:
    _started(memo).controller.credential_changed(name)


def resync(name: str, memo: kopf.Memo, **_: Any) -> None:
    _started(memo).controller.resync(name)


def credential_deleted(name: str, memo: kopf.Memo, **_: Any) -> None:
    try:
        _started(memo).controller.credential_deleted(name)
    except CleanupIncomplete as error:
        raise kopf.TemporaryError(str(error), delay=2) from None


# --- what the copies depend on ------------------------------------------------------------
# Listing events (type None) count too: after a lost watch (an API server or etcd restart)
# kopf lists again, and a ServiceAccount or copy changed in the gap shows up only there.
# Events that change nothing in the caches (the same resourceVersion: a listing of what is
# cached, or the echo of our own write, already taken in) need no sync.

def _event_seen(memo: kopf.Memo, kind: str, type: str | None, uid: str | None) -> SyncLoop:
    """Count a watch event; a re-list it shows gets the caches checked."""
    runtime_of(memo).metrics.watch_event(kind)
    sync = _started(memo)
    if sync.caches.relisted(type, uid):
        sync.controller.relisted()
    return sync


async def namespace_event(name: str, type: str | None, uid: str | None, body: kopf.Body,
                          memo: kopf.Memo, **_: Any) -> None:
    sync = _event_seen(memo, "Namespace", type, uid)
    if sync.caches.namespace_seen(body, deleted=type == "DELETED"):
        sync.controller.namespace_changed(name)


async def service_account_event(namespace: str | None, type: str | None, uid: str | None,
                                body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    sync = _event_seen(memo, "ServiceAccount", type, uid)
    if sync.caches.service_account_seen(body, deleted=type == "DELETED") and namespace:
        sync.controller.namespace_changed(namespace)


async def copy_event(namespace: str | None, type: str | None, uid: str | None, body: kopf.Body,
                     memo: kopf.Memo, **_: Any) -> None:
    sync = _event_seen(memo, "Secret", type, uid)
    if sync.caches.copy_seen(body, deleted=type == "DELETED") and namespace:
        sync.controller.namespace_changed(namespace)
