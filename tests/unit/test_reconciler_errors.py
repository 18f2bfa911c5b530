"""Error paths of the reconciler: what it records when the API refuses or fails.

The Kubernetes layer is replaced by a stub here, and only here: these are the failure
paths a real API server will not produce on demand. Happy paths run against the real
control plane in tests/integration.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from regcred.core import plan
from regcred.core.matching import NamespaceInfo
from regcred.core.plan import AddPullSecret, CreateCopy, ObservedServiceAccount
from regcred.core.source import SourceSecret
from regcred.kube import Applied, KubeError, NotOurs
from regcred.metrics import Metrics
from regcred.reconciler import Reconciler
from regcred.settings import Settings

PASSWORD = "s3cr3t-Pa55-XYZ"
NAMESPACE = "team-a"


class World:
    """An in-memory cache: one namespace, its default ServiceAccount, one CR."""

    def __init__(self) -> None:
        self.credential = {
            "metadata": {"name": "harbor", "uid": "uid-1", "generation": 1,
                         "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"registries": [{"server": "harbor.example.com"}],
                     "sourceSecretRef": {"name": "robot"}},
        }

    def namespace_names(self) -> list[str]:
        return [NAMESPACE]

    def namespace(self, name: str) -> NamespaceInfo | None:
        return NamespaceInfo(name) if name == NAMESPACE else None

    def copies(self, namespace: str) -> list[Any]:
        return []

    def service_accounts(self, namespace: str) -> list[ObservedServiceAccount]:
        return [ObservedServiceAccount(namespace, "default", resource_version="1")]

    def credential_bodies(self) -> list[dict[str, Any]]:
        return [self.credential]

    def credential_body(self, name: str) -> dict[str, Any] | None:
        return self.credential if name == "harbor" else None

    def wrote(self, written: Any, planned_from: str | None) -> None:
        """Stays as it is: every sync here plans from the same observed state."""


class Kube:
    """Serves the source Secret; every write raises `error` (or succeeds if None)."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.applied: list[Any] = []
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []

    def read_source(self, namespace: str, name: str) -> SourceSecret:
        data = {"username": base64.b64encode(b"robot").decode(),
                "password": base64.b64encode(PASSWORD.encode()).decode()}
        return SourceSecret(namespace, name, "kubernetes.io/basic-auth", "7", data)

    def apply(self, action: Any) -> Applied:
        self.applied.append(action)
        if self.error is not None and isinstance(action, CreateCopy):
            raise self.error
        return Applied(wrote=True)

    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    def post_event(self, credential: str, uid: str, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))


@pytest.fixture
def reconcile():
    """`reconcile(error)`: a full sync of the one CR with writes failing as given."""
    made: list[Reconciler] = []

    def run(error: Exception | None) -> tuple[Kube, Reconciler]:
        kube = Kube(error)
        settings = Settings(operator_namespace="regcred-system",
                            source_namespaces=frozenset({"regcred-system"}), workers=2)
        reconciler = Reconciler(kube, World(), settings, Metrics(),
                                clock=lambda: "2024-01-02T00:00:00Z")
        made.append(reconciler)
        reconciler.sync_credential("harbor")
        return kube, reconciler

    yield run
    for reconciler in made:
        reconciler.shutdown()


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (KubeError("create", "secret team-a/harbor", 500, "InternalError"), "ApiError"),
        (KubeError("create", "secret team-a/harbor", 403, "Forbidden"), "ApiError"),
        (NotOurs("secret harbor exists and is not managed by regcred"), "Conflict"),
    ],
)
def test_a_failed_copy_is_reported_and_its_entry_not_added(reconcile, error, reason):
    kube, _ = reconcile(error)
    assert not any(isinstance(action, AddPullSecret) for action in kube.applied)
    status = kube.statuses[-1]
    assert status["conditions"][0]["status"] == "False"
    assert status["conditions"][0]["reason"] == reason
    assert status["failedNamespaces"][0]["namespace"] == NAMESPACE
    assert (status["matchedNamespaces"], status["syncedNamespaces"]) == (1, 0)
    assert kube.events and kube.events[0][:2] == ("Warning", reason)


def test_a_refused_create_is_remembered_until_the_next_resync(reconcile):
    kube, reconciler = reconcile(NotOurs("secret harbor exists and is not managed by regcred"))
    kube.applied.clear()
    reconciler.sync_namespace(NAMESPACE)
    assert not any(isinstance(action, CreateCopy) for action in kube.applied)
    reconciler.sync_credential("harbor", resync=True)
    assert any(isinstance(action, CreateCopy) for action in kube.applied)


def test_success_after_failure_clears_the_failure(reconcile):
    kube, reconciler = reconcile(KubeError("create", "secret team-a/harbor", 500, "InternalError"))
    kube.error = None
    reconciler.sync_credential("harbor")
    assert kube.statuses[-1]["conditions"][0]["status"] == "True"
    assert kube.statuses[-1]["failedNamespaces"] == []


def test_no_secret_material_reaches_status_or_events(reconcile):
    kube, _ = reconcile(KubeError("create", "secret team-a/harbor", 500, "InternalError"))
    assert PASSWORD not in repr(kube.statuses)
    assert PASSWORD not in repr(kube.events)
    assert PASSWORD not in repr(kube.applied)


class ResumedWorld(World):
    """What a replica resuming after a pause sees: a copy and an entry of CR "newer", created
    while it was paused, whose body kopf has not listed into the index yet."""

    def copies(self, namespace: str) -> list[Any]:
        return [plan.ObservedCopy(namespace, "newer", "newer", ("uid-2",), "digest", "meta", "uid-c", "5")]

    def service_accounts(self, namespace: str) -> list[ObservedServiceAccount]:
        return [ObservedServiceAccount(namespace, "default", ("newer",), frozenset({"newer"}), "1")]


class ListingKube(Kube):
    def __init__(self, live: list[str]) -> None:
        super().__init__(None)
        self.live = live

    def list_credentials(self, from_watch_cache: bool = False) -> list[dict[str, Any]]:
        return [{"metadata": {"name": name}} for name in self.live]


@pytest.mark.parametrize(("live", "undone"), [(["harbor", "newer"], False), (["harbor"], True)])
def test_nothing_is_undone_for_a_cr_the_index_has_not_seen_yet(live, undone):
    kube = ListingKube(live)
    settings = Settings(operator_namespace="regcred-system",
                        source_namespaces=frozenset({"regcred-system"}), workers=2)
    reconciler = Reconciler(kube, ResumedWorld(), settings, Metrics())
    try:
        outcome = reconciler.sync_namespace(NAMESPACE)
    finally:
        reconciler.shutdown()
    removals = [a for a in kube.applied if isinstance(a, plan.DeleteCopy | plan.RemovePullSecret)]
    assert bool(removals) is undone
    assert outcome.transient is not undone  # deferred: tried again once kopf has listed the CRs
