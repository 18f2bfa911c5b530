"""kopf handlers: translate kopf's events into controller calls, and nothing more.

kopf watches only the RegistryCredentials: the finalizer, the progress annotations and the
resync timer live on them. Namespaces, ServiceAccounts and our copies are listed and watched
by regcred itself (regcred/sync/watches.py says why), so kopf writes nothing on them.

Nothing is registered on import: `register(registry, settings)` does it, so every setting
(the resync interval included) comes from the `Settings` it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from regcred.core.spec import GROUP, PLURAL, VERSION
from regcred.kube.errors import KubeError
from regcred.runtime import runtime_of
from regcred.settings import Settings
from regcred.sync.controller import SyncLoop, build
from regcred.sync.reconciler import CleanupIncomplete

CRD = (GROUP, VERSION, PLURAL)
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


# --- RegistryCredentials: the one kopf index (namespaces, ServiceAccounts and copies live in
# regcred/sync/caches.py, fed by regcred/sync/watches.py) -------------------------------------

def credential_index(body: Mapping[str, Any], name: str, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: {key: body.get(key) for key in ("metadata", "spec", "status")}}


# --- start-up: one step, since each part needs the one before ---------------------------------

def start(settings: kopf.OperatorSettings, memo: kopf.Memo,
          credential_index: kopf.Index[str, dict[str, Any]], retry: int = 0, **_: Any) -> None:
    """Configure kopf, build the sync feature once, then start it (`SyncLoop.start`). kopf
    retries the step while the API is down."""
    runtime = runtime_of(memo)
    kopf_threads = configure_kopf(settings, runtime.settings)
    sync = runtime.get(SyncLoop)
    if sync is None:
        sync = build(runtime.api_configuration, credential_index, runtime.settings,
                     runtime.metrics, runtime.priority, kopf_threads)
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
    kopf_threads = max(8, settings.workers)
    kopf_settings.execution.max_workers = kopf_threads
    # kopf keeps a worker per object for this long after its last event, holding that event's
    # whole body (only CRs and the peering object are kopf's now; docs/performance.md).
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
