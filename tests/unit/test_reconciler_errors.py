"""Error paths of the reconciler: what it records when the API refuses or fails.

The Kubernetes layer is replaced by a fake here (tests/support/fakes.py): these are the failure
paths a real API server will not produce on demand. Happy paths run against the real
control plane in tests/integration.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from regcred.core.errors import InvalidInput
from regcred.core.plan import (
    AddPullSecret,
    CreateCopy,
    DeleteCopy,
    ObservedCopy,
    ObservedServiceAccount,
    RemovePullSecret,
)
from regcred.kube.errors import ApiConflict, ApiRefused, ApiUnavailable, KubeError
from regcred.sync.executor import Applied
from support.builders import cr_body
from support.fakes import CREDENTIAL, NAMESPACE, PASSWORD, Api, Wired, World

NOT_OURS = Applied(wrote=False, not_ours="secret harbor exists and is not managed by regcred")


@pytest.fixture
def reconcile() -> Iterator[Callable[..., Wired]]:
    """`reconcile(error=..., applied=...)`: a full sync of the one CR with copy writes failing
    (or answered) as given."""
    made: list[Wired] = []

    def run(error: Exception | None = None, applied: Applied | None = None) -> Wired:
        wired = Wired(Api(error, applied))
        made.append(wired)
        wired.reconciler.sync_credential(CREDENTIAL)
        return wired

    yield run
    for wired in made:
        wired.close()


@pytest.mark.parametrize(
    ("error", "applied", "reason"),
    [
        (ApiUnavailable("create", "secret team-a/harbor", 500, "InternalError"), None, "ApiError"),
        (ApiRefused("create", "secret team-a/harbor", 403, "Forbidden"), None, "ApiError"),
        (None, NOT_OURS, "Conflict"),
    ],
)
def test_a_failed_copy_is_reported_and_its_entry_not_added(reconcile, error, applied, reason):
    api = reconcile(error, applied).api
    assert not any(isinstance(action, AddPullSecret) for action in api.actions)
    status = api.statuses[-1]
    assert status["conditions"][0]["status"] == "False"
    assert status["conditions"][0]["reason"] == reason
    assert status["failedNamespaces"][0]["namespace"] == NAMESPACE
    assert (status["matchedNamespaces"], status["syncedNamespaces"]) == (1, 0)
    assert api.events and api.events[0][:2] == ("Warning", reason)


@pytest.mark.parametrize(
    ("error", "transient"),
    [(ApiUnavailable("create", "x", 503, "ServiceUnavailable"), True),
     (ApiConflict("create", "x", 409, "Conflict"), True),
     (ApiRefused("create", "x", 403, "Forbidden"), False)],
)
def test_only_a_transient_failure_asks_for_a_retry(error: KubeError, transient: bool):
    wired = Wired(Api(error))
    try:
        assert wired.reconciler.sync_credential(CREDENTIAL).transient is transient
    finally:
        wired.close()


def test_an_unreadable_source_is_reported_retried_and_keeps_the_copies_frozen(reconcile):
    wired = reconcile()
    wired.api.actions.clear()
    wired.api.source_error = ApiUnavailable("get", "secret regcred-system/robot", 0, "MaxRetryError")
    outcome = wired.reconciler.sync_credential(CREDENTIAL)
    assert outcome.transient
    ready = wired.api.statuses[-1]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "SourceUnreadable")
    assert wired.api.statuses[-1]["sourceResourceVersion"] == "7"  # the version last rendered
    assert not any(isinstance(action, CreateCopy) for action in wired.api.actions[1:])


def test_a_refused_create_is_remembered_until_the_next_resync(reconcile):
    wired = reconcile(applied=NOT_OURS)
    wired.api.actions.clear()
    wired.reconciler.sync_namespace(NAMESPACE)
    assert not any(isinstance(action, CreateCopy) for action in wired.api.actions)
    wired.reconciler.forget_foreign(CREDENTIAL)
    wired.reconciler.sync_credential(CREDENTIAL)
    assert any(isinstance(action, CreateCopy) for action in wired.api.actions)


def test_success_after_failure_clears_the_failure(reconcile):
    wired = reconcile(ApiUnavailable("create", "secret team-a/harbor", 500, "InternalError"))
    wired.api.error = None
    wired.reconciler.sync_credential(CREDENTIAL)
    assert wired.api.statuses[-1]["conditions"][0]["status"] == "True"
    assert wired.api.statuses[-1]["failedNamespaces"] == []


def test_reading_credentials_has_no_side_effects_and_a_sync_asks_for_unsynced_ones():
    wired = Wired(Api())
    try:
        wired.reconciler.credentials()
        wired.reconciler.credentials_using_source("regcred-system", "robot")
        assert wired.requested == []
        wired.reconciler.sync_namespace(NAMESPACE)
        assert wired.requested == [CREDENTIAL]
        wired.reconciler.sync_credential(CREDENTIAL)
        wired.requested.clear()
        wired.reconciler.sync_namespace(NAMESPACE)
        assert wired.requested == []
    finally:
        wired.close()


def test_no_secret_material_reaches_status_or_events(reconcile):
    api = reconcile(ApiUnavailable("create", "secret team-a/harbor", 500, "InternalError")).api
    assert PASSWORD not in repr(api.statuses)
    assert PASSWORD not in repr(api.events)
    assert PASSWORD not in repr(api.actions)


class ResumedWorld(World):
    """What a replica resuming after a pause sees: a copy and an entry of CR "newer", created
    while it was paused, whose body kopf has not listed into the index yet."""

    def copies(self, namespace: str) -> list[ObservedCopy]:
        return [ObservedCopy(namespace, "newer", "newer", ("uid-newer",), "digest", "meta", "uid-c", "5")]

    def service_accounts(self, namespace: str) -> list[ObservedServiceAccount]:
        return [ObservedServiceAccount(namespace, "default", ("newer",), frozenset({"newer"}), "1")]


@pytest.mark.parametrize(("live", "undone"), [([CREDENTIAL, "newer"], False), ([CREDENTIAL], True)])
def test_nothing_is_undone_for_a_cr_the_index_has_not_seen_yet(live, undone):
    api = Api()
    api.live_credentials = live
    wired = Wired(api, ResumedWorld())
    try:
        outcome = wired.reconciler.sync_namespace(NAMESPACE)
    finally:
        wired.close()
    removals = [a for a in api.actions if isinstance(a, DeleteCopy | RemovePullSecret)]
    assert bool(removals) is undone
    assert outcome.transient is not undone  # deferred: tried again once kopf has listed the CRs


class IndexedDuringThePlan(ResumedWorld):
    """kopf's index takes in "newer" right after the plan has read the CRs (its relist is
    under way while the namespace syncs)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def credential_bodies(self) -> list[Mapping[str, Any]]:
        self.reads += 1
        if self.reads > 2:
            self.bodies["newer"] = cr_body("newer", generation=1)
        return super().credential_bodies()


def test_a_cr_indexed_while_the_plan_was_made_still_defers_the_undoing():
    api = Api()
    api.live_credentials = [CREDENTIAL, "newer"]
    wired = Wired(api, IndexedDuringThePlan())
    try:
        outcome = wired.reconciler.sync_namespace(NAMESPACE)
    finally:
        wired.close()
    assert not [a for a in api.actions if isinstance(a, DeleteCopy | RemovePullSecret)]
    assert outcome.transient


def test_a_cr_is_parsed_again_at_a_new_version_and_an_invalid_one_keeps_failing_alike():
    """Parses are kept per resourceVersion: a changed CR must not be planned from its old
    spec, and an invalid one raises the same error each time without its traceback growing."""
    wired = Wired(Api())
    body = cr_body(CREDENTIAL)
    body["metadata"]["resourceVersion"] = "1"
    assert wired.reconciler.parse(body).secret_name == CREDENTIAL
    changed = cr_body(CREDENTIAL, target={"secretName": "renamed"})
    changed["metadata"]["resourceVersion"] = "2"
    assert wired.reconciler.parse(changed).secret_name == "renamed"
    invalid = cr_body(CREDENTIAL)
    invalid["metadata"]["resourceVersion"] = "3"
    del invalid["spec"]
    depths = []
    for _ in range(3):
        with pytest.raises(InvalidInput, match="spec is missing") as caught:
            wired.reconciler.parse(invalid)
        depths.append(len(list(traceback.walk_tb(caught.value.__traceback__))))
    assert depths[0] == depths[-1]
    wired.close()
