"""The RegistryCredential status block (`regcred.core.status.build_status`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from regcred.core.errors import InvalidInput
from regcred.core.status import MAX_FAILED_NAMESPACES, MAX_MESSAGE, Failure, build_status, status_differs

T1 = "2024-05-01T10:00:00Z"
T2 = "2024-05-01T10:05:00Z"
T3 = "2024-05-01T10:10:00Z"


def build(previous=None, now=T1, **kwargs):
    kwargs.setdefault("generation", 4)
    return build_status(previous=previous or {}, now=now, **kwargs)


def ready(status) -> dict[str, Any]:
    (condition,) = status["conditions"]
    assert condition["type"] == "Ready"
    assert isinstance(condition, dict)
    return condition


def conflict(namespace: str) -> Failure:
    return Failure(namespace, "Conflict", f"secret harbor-prod exists in {namespace} and is not managed")


def test_synced():
    status = build(matched=12, source_resource_version="81234", wrote=True)
    assert ready(status) == {
        "type": "Ready", "status": "True", "reason": "Synced", "message": "12/12 namespaces",
        "observedGeneration": 4, "lastTransitionTime": T1,
    }
    assert status["observedGeneration"] == 4
    assert status["matchedNamespaces"] == 12
    assert status["syncedNamespaces"] == 12
    assert status["failedNamespaces"] == []
    assert status["sourceResourceVersion"] == "81234"
    assert status["lastSyncTime"] == T1
    assert "lastRotationTime" not in status


def test_synced_with_no_namespace():
    assert ready(build(matched=0))["message"] == "0/0 namespaces"


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("InvalidSpec", "spec.registries needs at least one {server: ...} entry"),
        ("SourceNotAllowed", "source secret namespace 'x' is not on the operator's allow-list"),
        ("MissingKey", "source secret a/b has no key 'password'"),
    ],
)
def test_problem_is_ready_false_with_its_reason(reason, message):
    status = build(problem=InvalidInput(reason, message), matched=3, suspended=True)
    condition = ready(status)
    assert (condition["status"], condition["reason"], condition["message"]) == ("False", reason, message)


def test_problem_message_is_capped():
    condition = ready(build(problem=InvalidInput("ApiError", "x" * 5000)))
    assert len(condition["message"]) == MAX_MESSAGE


def test_suspended():
    condition = ready(build(suspended=True, matched=5))
    assert condition["status"] == "False"
    assert condition["reason"] == "Suspended"
    assert "spec.suspend" in condition["message"]


def test_all_conflicts_is_reason_conflict():
    status = build(matched=5, failures=(conflict("team-b"), conflict("team-a")))
    condition = ready(status)
    assert condition["status"] == "False"
    assert condition["reason"] == "Conflict"
    assert condition["message"].startswith("3/5 namespaces synced; 2 failed")
    assert status["syncedNamespaces"] == 3
    assert status["failedNamespaces"] == [
        {"namespace": "team-a", "reason": "Conflict", "message": conflict("team-a").message},
        {"namespace": "team-b", "reason": "Conflict", "message": conflict("team-b").message},
    ]


def test_mixed_failures_is_sync_failed():
    failures = (conflict("team-a"), Failure("team-b", "ApiError", "forbidden"))
    assert ready(build(matched=2, failures=failures))["reason"] == "SyncFailed"


def test_one_kind_of_failure_gives_its_reason():
    # Decision in the core: when every failure has the same reason, that reason is the condition's.
    failures = (Failure("team-a", "ApiError", "boom"), Failure("team-b", "ApiError", "boom"))
    assert ready(build(matched=2, failures=failures))["reason"] == "ApiError"


def test_failed_namespaces_capped_and_sorted():
    failures = tuple(conflict(f"team-{i:02d}") for i in reversed(range(45)))
    status = build(matched=50, failures=failures)
    listed = [entry["namespace"] for entry in status["failedNamespaces"]]
    assert len(listed) == MAX_FAILED_NAMESPACES == 20
    assert listed == [f"team-{i:02d}" for i in range(20)]
    assert status["syncedNamespaces"] == 5
    assert ready(status)["message"].startswith("5/50 namespaces synced; 45 failed")


def test_failure_messages_are_capped():
    status = build(matched=1, failures=(Failure("a", "ApiError", "y" * 4000),))
    assert len(status["failedNamespaces"][0]["message"]) == MAX_MESSAGE


def test_last_transition_time_kept_while_status_unchanged():
    first = build(matched=2, now=T1)
    # reason and message change, status stays True: no transition
    second = build(previous=first, matched=3, now=T2)
    assert ready(second)["lastTransitionTime"] == T1
    assert ready(second)["message"] == "3/3 namespaces"
    # True -> False is a transition
    third = build(previous=second, matched=3, failures=(conflict("x"),), now=T3)
    assert ready(third)["lastTransitionTime"] == T3
    # False (Conflict) -> False (Suspended) is not
    fourth = build(previous=third, suspended=True, now="2024-05-02T00:00:00Z")
    assert ready(fourth)["lastTransitionTime"] == T3


def test_last_sync_time_kept_unless_wrote():
    first = build(matched=1, now=T1, wrote=True)
    assert first["lastSyncTime"] == T1
    idle = build(previous=first, matched=1, now=T2)
    assert idle["lastSyncTime"] == T1
    wrote = build(previous=idle, matched=1, now=T3, wrote=True)
    assert wrote["lastSyncTime"] == T3


def test_last_sync_time_set_on_first_status_even_without_writes():
    assert build(matched=0, now=T1)["lastSyncTime"] == T1


def test_rotation_time_and_source_version():
    first = build(matched=1, now=T1, source_resource_version="10", wrote=True, rotated=True)
    assert first["lastRotationTime"] == T1
    idle = build(previous=first, matched=1, now=T2)
    assert idle["lastRotationTime"] == T1
    assert idle["sourceResourceVersion"] == "10"  # kept when not rendered this pass
    rotated = build(previous=idle, matched=1, now=T3, source_resource_version="11", wrote=True, rotated=True)
    assert rotated["lastRotationTime"] == T3
    assert rotated["sourceResourceVersion"] == "11"


@pytest.mark.parametrize(
    "inputs",
    [
        {"matched": 12, "source_resource_version": "81234"},
        {"matched": 5, "failures": (conflict("b"), conflict("a")), "source_resource_version": "1"},
        {"matched": 2, "failures": (conflict("a"), Failure("b", "ApiError", "x"))},
        {"suspended": True, "matched": 3},
        {"problem": InvalidInput("MissingKey", "source secret a/b has no key 'password'")},
    ],
)
def test_idle_pass_changes_nothing(inputs):
    first = build(now=T1, wrote=True, rotated=True, **inputs)
    stored = json.loads(json.dumps(first))  # as read back from the API server
    stored["kopf"] = {"progress": {}}  # kopf's own bookkeeping lives next to ours
    again = build(previous=stored, now=T2, **inputs)
    assert not status_differs(again, stored)
    assert again == first


def test_status_differs_sees_real_changes():
    first = build(matched=1, now=T1)
    assert status_differs(build(previous=first, matched=2, now=T2), first)
    assert status_differs(build(previous=first, matched=1, now=T2, generation=5), first)
    stale = dict(first, extraField=1)
    assert status_differs(first, stale)  # a key we no longer write is removed
    assert not status_differs(first, dict(first, kopf={"x": 1}))


def test_status_is_json_and_holds_no_secret_fields():
    status = build(matched=1, source_resource_version="9", wrote=True, rotated=True,
                   failures=(conflict("a"),))
    text = json.dumps(status)
    assert set(status) == {
        "observedGeneration", "conditions", "matchedNamespaces", "syncedNamespaces",
        "failedNamespaces", "sourceResourceVersion", "lastSyncTime", "lastRotationTime",
    }
    for word in ("digest", "password", "auth", "dockerconfigjson"):
        assert word not in text
