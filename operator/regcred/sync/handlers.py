"""kopf handlers: translate kopf's events into controller calls, and nothing more.

kopf watches only the RegistryCredentials: the finalizer, the progress annotations and the
resync timer live on them. Namespaces, ServiceAccounts and our copies are listed and watched
by regcred itself (regcred/sync/watches.py says why), so kopf writes nothing on them.

Nothing is registered on import: `register(registry, settings)` does it, so every setting
(the resync interval included) comes from the `Settings` it is given.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import kopf

from regcred.core.spec import GROUP, PLURAL, VERSION
from regcred.kube.client import Kube
from regcred.kube.config import api_client
from regcred.kube.errors import OPERATOR_ROLE, KubeError
from regcred.metrics import Metrics
from regcred.settings import Settings
from regcred.sync.activity import Activity
from regcred.sync.caches import Caches
from regcred.sync.controller import Controller, build
from regcred.sync.reconciler import CleanupIncomplete
from regcred.sync.watches import Watches

CRD = (GROUP, VERSION, PLURAL)
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


# --- RegistryCredentials: the one kopf index (namespaces, ServiceAccounts and copies live in
# regcred/sync/caches.py, fed by regcred/sync/watches.py) -------------------------------------

def credential_index(body: Mapping[str, Any], name: str, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: {key: body.get(key) for key in ("metadata", "spec", "status")}}


# --- start-up: one step, since each part needs the one before ---------------------------------

def start(settings: kopf.OperatorSettings, memo: kopf.Memo,
          credential_index: kopf.Index[str, dict[str, Any]], retry: int = 0, **_: Any) -> None:
    """Configure kopf, build the operator, fill the caches (before any work is queued), then
    start the workers and the watches. kopf retries the step while the API is down."""
    options: Settings = memo.settings
    kopf_threads = configure_kopf(settings, options)
    if "controller" not in memo:
        # Threads that may call the API at once: our fan-out pool and queue workers, kopf's
        # handler threads, and one long watch per source namespace.
        threads = 2 * options.workers + kopf_threads + len(options.source_namespaces)
        metrics: Metrics = memo.metrics
        memo.kube = Kube(api_client(memo.api_configuration, threads), on_error=metrics.api_error,
                         role=OPERATOR_ROLE)
        memo.caches = Caches(credential_index)
        memo.controller = build(memo.kube, memo.caches, options, metrics)
        memo.stop = threading.Event()
        memo.activity = Activity(options.peering, memo.priority,
                                 on_resumed=lambda: _queue_every_namespace(memo))
        memo.watches = Watches(memo.kube, memo.caches, memo.controller, metrics.watch_event, memo.activity)
    try:
        memo.kube.check_crd()
        versions = memo.watches.fill()
        memo.activity.start(memo.kube, memo.stop)
    except KubeError as error:
        # kopf logs each attempt: 5, 10, then every 15 s while the outage lasts
        raise kopf.TemporaryError(f"cannot list the cluster yet: {error}",
                                  delay=min(15, 5 * 2 ** retry)) from None
    controller: Controller = memo.controller
    controller.start()
    memo.watches.start(versions, memo.stop)
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
    kopf_threads = max(8, options.workers)
    settings.execution.max_workers = kopf_threads
    # kopf keeps a worker per object for this long after its last event, holding that event's
    # whole body (only CRs and the peering object are kopf's now; docs/performance.md).
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


def _queue_every_namespace(memo: kopf.Memo) -> None:
    """This replica took over: whatever it saw while paused was left to the other one; every
    namespace is looked at once (a plan is empty where nothing is missing)."""
    for namespace in memo.caches.namespace_names():
        memo.controller.namespace_changed(namespace)
