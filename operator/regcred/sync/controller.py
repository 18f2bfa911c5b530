"""The controller: what happened becomes work in one queue, and workers turn work into syncs.

Every way into regcred lands here and becomes a typed key in one `WorkQueue`:
- a namespace, ServiceAccount or copy changed -> `NamespaceKey`;
- a CR was created, changed or resumed, or its source Secret changed -> `CredentialKey`;
- the periodic resync -> `CredentialKey` and a periodic `CacheCheckKey`; a re-listed watch ->
  a `CacheCheckKey` a second later.
`settings.workers` threads drain the queue. A key that failed transiently comes back after its
backoff; one that succeeded has its backoff reset. Deleting a CR is the one synchronous call:
kopf's finalizer waits for its result.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, assert_never

import structlog

from regcred.kube.client import Kube
from regcred.kube.config import api_client
from regcred.kube.errors import OPERATOR_ROLE, KubeError
from regcred.metrics import Metrics
from regcred.settings import Settings
from regcred.sync.activity import Activity
from regcred.sync.cachecheck import CacheChecker
from regcred.sync.caches import Caches
from regcred.sync.executor import Executor
from regcred.sync.ledger import Ledger, StatusPublisher, utc_now
from regcred.sync.reconciler import NamespaceOutcome, Reconciler
from regcred.sync.watches import Watches
from regcred.verification.verifier import Verification
from regcred.workqueue import WorkQueue

log = structlog.get_logger("regcred.controller")


@dataclass(frozen=True, slots=True)
class NamespaceKey:
    """Converge one namespace against every credential."""

    name: str


@dataclass(frozen=True, slots=True)
class CredentialKey:
    """Re-render one credential from its source and converge every namespace."""

    name: str


@dataclass(frozen=True, slots=True)
class CacheCheckKey:
    """Check the caches against the API for objects whose DELETED event was lost.

    `periodic` checks may be skipped when one ran recently; a check asked for after a
    re-list never is.
    """

    periodic: bool = False


# Every way into the controller; `Controller.process` runs namespaces, `_run` the rest (it ends in
# assert_never).
Key = NamespaceKey | CredentialKey | CacheCheckKey

RELIST_CHECK_DELAY = 1.0  # after a re-list, give the listing a moment before checking


class Controller:
    def __init__(self, queue: WorkQueue[Key], reconciler: Reconciler, checker: CacheChecker,
                 workers: int, verification: Verification | None = None,
                 publisher: StatusPublisher | None = None) -> None:
        self._queue = queue
        self.reconciler = reconciler
        self.publisher = publisher  # features publishing status of their own extend it
        self._checker = checker
        self._verification = verification
        self._workers = [
            threading.Thread(target=self._work, name=f"regcred-worker-{index}", daemon=True)
            for index in range(workers)
        ]

    # --- what happened ------------------------------------------------------------------------

    def namespace_changed(self, namespace: str) -> None:
        """Never blocks, so kopf can call it from its event loop."""
        self._queue.add(NamespaceKey(namespace))

    def credential_changed(self, name: str) -> None:
        self._queue.add(CredentialKey(name))

    def source_changed(self, namespace: str, name: str) -> None:
        for credential in self.reconciler.credentials_using_source(namespace, name):
            self.credential_changed(credential)

    def resync(self, name: str) -> None:
        """The periodic safety net: look again at conflicts, the caches and every namespace."""
        self.reconciler.forget_foreign(name)
        self._queue.add(CacheCheckKey(periodic=True))
        self._queue.add(CredentialKey(name))

    def relisted(self) -> None:
        """A watch was listed again: entries deleted in the gap may linger in the caches."""
        self._queue.add_after(CacheCheckKey(), RELIST_CHECK_DELAY)

    def credential_deleted(self, name: str) -> None:
        """Remove the CR's copies and entries now; raises `CleanupIncomplete` if some remain."""
        self.reconciler.forget_credential(name)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    def shutdown(self) -> None:
        self._queue.shutdown()
        self.reconciler.shutdown()
        if self._verification is not None:
            self._verification.shutdown()

    # --- the workers ------------------------------------------------------------------------

    def _work(self) -> None:
        while (key := self._queue.get()) is not None:
            self.process(key)

    def process(self, key: Key) -> None:
        """Run one key, then retry it later if it failed transiently, or reset its backoff.

        A namespace's status publish comes after the key is done: an event that arrived
        during the sync (the namespace's new ServiceAccount, while its copy's POST was under
        way) is picked up by the next free worker at once, not after a status write."""
        synced: NamespaceOutcome | None = None
        try:
            if isinstance(key, NamespaceKey):
                synced = self.reconciler.sync_namespace(key.name)
                transient = synced.transient
            else:
                transient = self._run(key)
        except Exception:  # never lose a key, nor a worker, to an unexpected error
            log.exception("sync failed", key=repr(key))
            transient = True
        finally:
            self._queue.done(key)
        if synced is not None:
            try:
                self.reconciler.publish_changed(synced)
            except Exception:  # the next sync publishes again; the worker goes on
                log.exception("status publish failed", key=repr(key))
        if not transient:
            self._queue.reset_backoff(key)
            return
        delay = self._queue.retry_later(key)
        log.info("retrying after a transient API failure", key=repr(key), seconds=delay)

    def _run(self, key: CredentialKey | CacheCheckKey) -> bool:
        """Whether `key` failed in a way worth retrying soon."""
        match key:
            case CredentialKey(name):
                return self.reconciler.sync_credential(name).transient
            case CacheCheckKey(periodic):
                try:
                    result = self._checker.check(periodic=periodic)
                except KubeError as error:
                    log.warning("cannot check the caches", error=str(error))
                    return error.transient
                for namespace in result.stale_namespaces:
                    self._queue.add(NamespaceKey(namespace))
                return False
        assert_never(key)


class SyncLoop:
    """The sync feature as kopf's start-up step builds it: the client, the caches and the
    watches that fill them, whether this replica acts, the controller and its workers, and one
    watch per allow-listed source namespace; stopped by kopf's clean-up step."""

    def __init__(self, kube: Kube, caches: Caches, controller: Controller, settings: Settings,
                 metrics: Metrics, priority: int) -> None:
        self.kube = kube
        self.caches = caches
        self.controller = controller
        self._source_namespaces = sorted(settings.source_namespaces)
        self._stop = threading.Event()
        self.activity = Activity(settings.peering, priority, on_resumed=self._look_at_every_namespace)
        self._watches = Watches(kube, caches, controller, metrics.watch_event, self.activity)

    def start(self) -> None:
        """Fill the caches (before any work is queued: nothing is planned on a half-filled
        cache), learn whether this replica acts, then start the workers and the watches.
        Raises `KubeError` while the API cannot be listed; the caller tries again."""
        self.kube.check_crd()
        versions = self._watches.fill()
        self.activity.start(self.kube, self._stop)
        self.controller.start()
        self._watches.start(versions, self._stop)
        for namespace in self._source_namespaces:
            threading.Thread(
                target=self.kube.watch_secrets,
                args=(namespace, self.controller.source_changed, self._stop),
                name=f"source-watch-{namespace}", daemon=True,
            ).start()

    def stop(self) -> None:
        self._stop.set()
        self.controller.shutdown()

    def _look_at_every_namespace(self) -> None:
        """This replica took over (or started alone): whatever it saw while paused was left to
        the other one; every namespace is looked at once (a plan is empty where nothing is
        missing)."""
        for namespace in self.caches.namespace_names():
            self.controller.namespace_changed(namespace)


def api_threads(settings: Settings, kopf_threads: int) -> int:
    """Threads that may call the API at once, which the client's connection pool is sized for:
    our fan-out pool and queue workers, kopf's handler threads, and one long watch per source
    namespace."""
    return 2 * settings.workers + kopf_threads + len(settings.source_namespaces)


def build(api_configuration: Any, credential_index: Mapping[str, Iterable[Mapping[str, Any]]],
          settings: Settings, metrics: Metrics, priority: int, kopf_threads: int) -> SyncLoop:
    """Wire the operator: the client, the caches, one queue, the ledger and its publisher, the
    reconciler and its executor, the check, verification."""
    kube = Kube(api_client(api_configuration, api_threads(settings, kopf_threads)),
                on_error=metrics.api_error, role=OPERATOR_ROLE)
    caches = Caches(credential_index)
    queue: WorkQueue[Key] = WorkQueue()
    ledger = Ledger()
    publisher = StatusPublisher(kube, caches, ledger, metrics)
    reconciler = Reconciler(kube, Executor(kube), caches, settings, metrics, ledger, publisher,
                            request_credential_sync=lambda name: queue.add(CredentialKey(name)))
    checker = CacheChecker(caches, kube, min_interval=settings.resync_seconds / 2)
    # spec.verify: checks at the registries on threads of their own; its results join the
    # status at each publish, and a finished check publishes again.
    verification = Verification(kube, metrics, rendered=reconciler.rendered,
                                exists=lambda name: caches.credential_body(name) is not None,
                                republish=lambda name: publisher.publish(name, wrote=False),
                                clock=utc_now,
                                # an active replica publishes every CR at least once per resync
                                stale_after=2 * settings.resync_seconds + 60)
    publisher.extend(verification)
    controller = Controller(queue, reconciler, checker, settings.workers, verification, publisher)
    return SyncLoop(kube, caches, controller, settings, metrics, priority)
