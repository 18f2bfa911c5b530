"""The controller's dispatch and retries, and the one cache check (regcred/sync/controller.py,
regcred/sync/cachecheck.py), over fakes."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from regcred.kube.errors import ApiRefused, ApiUnavailable
from regcred.sync.cachecheck import CacheChecker
from regcred.sync.controller import CacheCheckKey, Controller, CredentialKey, Key, NamespaceKey
from regcred.workqueue import RETRY_DELAYS, WorkQueue
from support.fakes import CREDENTIAL, NAMESPACE, Api, Wired


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Cached:
    """Cache entries (uid -> namespace) and a listing of the uids the API has."""

    def __init__(self, cached: dict[str, str], live: set[str]) -> None:
        self.cached, self.live, self.listings = cached, live, 0
        self.error: Exception | None = None

    def cached_uids(self) -> dict[str, str]:
        return dict(self.cached)

    def drop_uids(self, uids: Iterable[str]) -> None:
        for uid in list(uids):
            self.cached.pop(uid, None)

    def live_uids(self) -> set[str]:
        self.listings += 1
        if self.error is not None:
            raise self.error
        return set(self.live)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def wired():
    made = Wired(Api())
    yield made
    made.close()


def controller_for(wired: Wired, clock: Clock, cached: Cached | None = None
                   ) -> tuple[Controller, WorkQueue[Key]]:
    queue: WorkQueue[Key] = WorkQueue(clock=clock)
    cached = cached or Cached({}, set())
    checker = CacheChecker(cached, cached, min_interval=150, clock=clock)
    return Controller(queue, wired.reconciler, checker, workers=0), queue


def run_ready(controller: Controller, queue: WorkQueue[Key]) -> list[Key]:
    ran = []
    while (key := queue.get(block=False)) is not None:
        controller.process(key)
        ran.append(key)
    return ran


def test_events_become_typed_keys(wired, clock):
    controller, queue = controller_for(wired, clock)
    controller.namespace_changed(NAMESPACE)
    controller.credential_changed(CREDENTIAL)
    controller.source_changed("regcred-system", "robot")  # the CR using it: already queued
    controller.resync(CREDENTIAL)
    assert run_ready(controller, queue) == [
        NamespaceKey(NAMESPACE), CredentialKey(CREDENTIAL), CacheCheckKey(periodic=True)]


def test_a_transient_failure_comes_back_after_its_backoff_and_success_resets_it(wired, clock):
    controller, queue = controller_for(wired, clock)
    wired.api.error = ApiUnavailable("create", "secret team-a/harbor", 503, "Unavailable")
    controller.credential_changed(CREDENTIAL)
    run_ready(controller, queue)
    assert queue.failures(CredentialKey(CREDENTIAL)) == 1
    assert run_ready(controller, queue) == []
    clock.now += RETRY_DELAYS[0]
    wired.api.error = None
    assert run_ready(controller, queue) == [CredentialKey(CREDENTIAL)]
    assert queue.failures(CredentialKey(CREDENTIAL)) == 0
    clock.now += 3600
    assert run_ready(controller, queue) == []


def test_a_permanent_failure_is_reported_not_retried(wired, clock):
    controller, queue = controller_for(wired, clock)
    wired.api.error = ApiRefused("create", "secret team-a/harbor", 403, "Forbidden")
    controller.namespace_changed(NAMESPACE)
    run_ready(controller, queue)
    clock.now += 3600
    assert run_ready(controller, queue) == []


def test_an_unexpected_error_is_logged_and_retried(wired, clock):
    controller, queue = controller_for(wired, clock)

    def broken(name):
        raise RuntimeError("a bug")

    wired.reconciler.sync_namespace = broken
    controller.namespace_changed(NAMESPACE)
    run_ready(controller, queue)
    assert queue.failures(NamespaceKey(NAMESPACE)) == 1


def test_the_cache_check_drops_what_the_api_lost_and_resyncs_those_namespaces(wired, clock):
    cached = Cached({"ns-uid": NAMESPACE, "copy-uid": NAMESPACE, "kept": "other"}, {"ns-uid", "kept"})
    controller, queue = controller_for(wired, clock, cached)
    controller.relisted()
    clock.now += 1
    assert run_ready(controller, queue) == [CacheCheckKey(), NamespaceKey(NAMESPACE)]
    assert cached.cached == {"ns-uid": NAMESPACE, "kept": "other"}


def test_periodic_checks_run_once_per_half_interval_however_many_credentials_ask(wired, clock):
    cached = Cached({}, set())
    controller, queue = controller_for(wired, clock, cached)
    for _ in range(3):
        controller.resync(CREDENTIAL)
        run_ready(controller, queue)
    assert cached.listings == 1
    clock.now += 150
    controller.resync(CREDENTIAL)
    run_ready(controller, queue)
    assert cached.listings == 2
    controller.relisted()  # after a re-list the check is never skipped
    clock.now += 1
    run_ready(controller, queue)
    assert cached.listings == 3


def test_a_cache_check_the_api_fails_is_retried(wired, clock):
    cached = Cached({}, set())
    cached.error = ApiUnavailable("list", "namespaces", 0, "MaxRetryError")
    controller, queue = controller_for(wired, clock, cached)
    controller.relisted()
    clock.now += 1
    run_ready(controller, queue)
    assert queue.failures(CacheCheckKey()) == 1
