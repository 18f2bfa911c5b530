"""The webhook's answer to an AdmissionReview (regcred/admission/webhook.py `Reviewer`) and the
CRs it decides from (`LiveCredentials`), without a cluster: the decision itself is the core's
(test_core_admission.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from test_core_admission import parse, synced

from regcred.admission.webhook import LiveCredentials, Reviewer
from regcred.core.spec import PULL_SECRETS_ANNOTATION
from regcred.kube.errors import ApiUnavailable
from support.builders import cr_body, json_patch, sa_body


class FakeDecider:
    def __init__(self, answer: tuple[str, ...] | Exception) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str]] = []

    def entries_for(self, namespace: str, service_account: str) -> tuple[str, ...]:
        self.asked.append((namespace, service_account))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def review(account: dict[str, Any], operation: str = "CREATE",
           resource: str = "serviceaccounts") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "operation": operation, "namespace": "team-a",
                        "resource": {"group": "", "version": "v1", "resource": resource},
                        "object": account}}


def answer(decider: FakeDecider, request: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(Reviewer(decider)(request))  # type: ignore[arg-type]


def test_a_new_service_account_is_admitted_with_our_entries_as_a_json_patch():
    account = sa_body(pull_secrets=["foreign"])
    decider = FakeDecider(("harbor",))
    response = answer(decider, review(account))
    assert response["kind"] == "AdmissionReview" and response["apiVersion"] == "admission.k8s.io/v1"
    payload = response["response"]
    assert (payload["uid"], payload["allowed"], payload["patchType"]) == ("u-1", True, "JSONPatch")
    admitted = json_patch(account, json.loads(base64.b64decode(payload["patch"])))
    assert [e["name"] for e in admitted["imagePullSecrets"]] == ["foreign", "harbor"]
    assert admitted["metadata"]["annotations"][PULL_SECRETS_ANNOTATION] == "harbor"
    assert decider.asked == [("team-a", "default")]


def test_nothing_to_add_is_an_allowed_answer_without_a_patch():
    payload = answer(FakeDecider(()), review(sa_body()))["response"]
    assert payload == {"uid": "u-1", "allowed": True}


def test_other_requests_are_allowed_unasked():
    decider = FakeDecider(("harbor",))
    allowed = {"uid": "u-1", "allowed": True}
    assert answer(decider, review(sa_body(), operation="UPDATE"))["response"] == allowed
    assert answer(decider, review({}, resource="pods"))["response"] == allowed
    assert decider.asked == []


def test_an_api_failure_or_a_bug_admits_unchanged_never_refuses():
    for failure in (ApiUnavailable("get", "namespace team-a", 503, "ServiceUnavailable"), KeyError("bug")):
        assert answer(FakeDecider(failure), review(sa_body()))["response"] == {"uid": "u-1", "allowed": True}


def test_live_credentials_follow_the_listing_and_each_change():
    credentials = LiveCredentials(parse)
    assert credentials.usable() is None  # not listed yet: the Decider asks the API
    credentials.listed([synced(cr_body("a")), cr_body("b")])  # b never synced: not usable
    assert [c.spec.name for c in credentials.usable() or []] == ["a"]
    credentials.changed("MODIFIED", synced(cr_body("b")))
    assert sorted(c.spec.name for c in credentials.usable() or []) == ["a", "b"]
    credentials.changed("DELETED", cr_body("a"))
    assert [c.spec.name for c in credentials.usable() or []] == ["b"]
