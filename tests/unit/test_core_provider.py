"""Pull-time delivery's pure core: who asks (token claims, the Pod) and what they get."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from regcred.core.plan import Credential
from regcred.core.provider import (
    INVALID_IMAGE,
    NO_CREDENTIAL,
    NODE_MISMATCH,
    NOT_BOUND_TO_POD,
    NOT_MATCHED,
    POD_NOT_FOUND,
    SERVICE_ACCOUNT_MISMATCH,
    TOKEN_REJECTED,
    Answer,
    Login,
    PodIdentity,
    Refusal,
    TokenClaims,
    check_pod,
    logins_of,
    resolve,
    token_claims,
)
from regcred.core.source import DOCKERCONFIGJSON_TYPE, render
from support.builders import PASSWORD, b64, credential, ns, raw_source

AUDIENCE = "regcred.dev/credential-provider"
IMAGE = "harbor.example.com/team/app:1"


def review(*, authenticated: bool = True, audiences=(AUDIENCE,),
           username="system:serviceaccount:team-a:default", pod=("app-1", "uid-1"),
           node: str | None = "node-1") -> dict[str, Any]:
    extra = {}
    if pod:
        extra["authentication.kubernetes.io/pod-name"] = [pod[0]]
        extra["authentication.kubernetes.io/pod-uid"] = [pod[1]]
    if node:
        extra["authentication.kubernetes.io/node-name"] = [node]
    return {"authenticated": authenticated, "audiences": list(audiences),
            "user": {"username": username, "extra": extra}}


def pod(uid="uid-1", account: str | None = "default", node="node-1") -> dict[str, Any]:
    spec = {"nodeName": node}
    if account:
        spec["serviceAccountName"] = account
    return {"metadata": {"name": "app-1", "namespace": "team-a", "uid": uid}, "spec": spec}


# --- the token ------------------------------------------------------------------------------

def test_a_pod_bound_token_gives_its_claims():
    assert token_claims(review(), AUDIENCE) == TokenClaims("team-a", "default", "app-1", "uid-1", "node-1")


def test_a_token_without_a_node_claim_has_none():
    claims = token_claims(review(node=None), AUDIENCE)
    assert isinstance(claims, TokenClaims)
    assert claims.node is None


@pytest.mark.parametrize("status, reason", [
    (review(authenticated=False), TOKEN_REJECTED),
    (review(audiences=("https://kubernetes.default.svc",)), TOKEN_REJECTED),
    (review(audiences=()), TOKEN_REJECTED),
    (review(username="alice"), TOKEN_REJECTED),
    (review(username="system:serviceaccount:team-a"), TOKEN_REJECTED),
    (review(pod=None), NOT_BOUND_TO_POD),
    ({"authenticated": True, "audiences": [AUDIENCE], "user": {
        "username": "system:serviceaccount:team-a:default",
        "extra": {"authentication.kubernetes.io/pod-name": ["a", "b"],
                  "authentication.kubernetes.io/pod-uid": ["u"]}}}, NOT_BOUND_TO_POD),
    ({}, TOKEN_REJECTED),
])
def test_tokens_that_prove_nothing_are_refused(status, reason):
    refusal = token_claims(status, AUDIENCE)
    assert isinstance(refusal, Refusal) and refusal.reason == reason


# --- the Pod --------------------------------------------------------------------------------

CLAIMS = TokenClaims("team-a", "default", "app-1", "uid-1", "node-1")


def test_the_live_pod_under_the_account_on_the_node_is_who_asks():
    assert check_pod(CLAIMS, pod()) == PodIdentity("team-a", "default", "app-1")


def test_a_pod_without_service_account_name_runs_under_default():
    assert isinstance(check_pod(CLAIMS, pod(account=None)), PodIdentity)


def test_no_node_claim_means_no_node_check():
    assert isinstance(check_pod(replace(CLAIMS, node=None), pod(node="elsewhere")), PodIdentity)


@pytest.mark.parametrize("body, reason", [
    (None, POD_NOT_FOUND),
    (pod(uid="uid-2"), POD_NOT_FOUND),  # deleted and recreated under the same name
    (pod(account="builder"), SERVICE_ACCOUNT_MISMATCH),
    (pod(node="node-2"), NODE_MISMATCH),
])
def test_a_pod_that_does_not_back_the_token_is_refused(body, reason):
    refusal = check_pod(CLAIMS, body)
    assert isinstance(refusal, Refusal) and refusal.reason == reason
    assert "app-1" in refusal.message


# --- which credential -----------------------------------------------------------------------

def served(name="harbor-prod", **overrides) -> Credential:
    return credential(name, delivery=overrides.pop("delivery", "CredentialProvider"), **overrides)


def test_a_matched_pod_gets_the_login():
    result = resolve([served(password="pw")], ns("team-a"), "default", IMAGE)
    assert result == Answer({"harbor.example.com": Login("robot", "pw")}, ("harbor-prod",))


@pytest.mark.parametrize("delivery, answered", [("Secrets", False), ("Both", True),
                                                 ("CredentialProvider", True)])
def test_only_credentials_delivered_by_the_provider_answer(delivery, answered):
    result = resolve([served(delivery=delivery)], ns("team-a"), "default", IMAGE)
    assert isinstance(result, Answer) == answered


@pytest.mark.parametrize("frozen", ["suspended", "config", "spec"])
def test_a_frozen_credential_answers_nothing(frozen):
    result = resolve([served(frozen=frozen)], ns("team-a"), "default", IMAGE)
    assert isinstance(result, Refusal) and result.reason == NO_CREDENTIAL


@pytest.mark.parametrize("namespace, account", [
    (ns("other"), "default"),  # not in spec.namespaces
    (ns("team-a", {"regcred.dev/ignore": "true"}), "default"),
    (ns("team-a", terminating=True), "default"),
    (ns("kube-system"), "default"),
    (ns("team-a"), "builder"),  # not in spec.serviceAccounts
    (None, "default"),  # namespace not (yet) in the caches
])
def test_unmatched_namespace_or_account_is_refused_and_names_the_credential(namespace, account):
    cred = served(namespaces=("team-*",))
    result = resolve([cred], namespace, account, IMAGE)
    assert isinstance(result, Refusal)
    assert result == Refusal(NOT_MATCHED, result.message, ("harbor-prod",))
    assert PASSWORD not in result.message and "pw-" not in result.message


@pytest.mark.parametrize("image", [
    "harbor.example.com/team/app:1",
    "harbor.example.com/app",
    "harbor.example.com/a/b/c@sha256:" + "a" * 64,
])
def test_keys_match_images_as_the_kubelet_matches_them(image):
    assert isinstance(resolve([served()], ns("team-a"), "default", image), Answer)


@pytest.mark.parametrize("server, image, matches", [
    ("harbor.example.com:5000", "harbor.example.com/app:1", False),  # ports must agree
    ("harbor.example.com", "harbor.example.com:5000/app:1", False),
    ("*.example.com", "harbor.example.com/app:1", True),  # one label deep
    ("*.example.com", "a.harbor.example.com/app:1", False),
    ("harbor.example.com/team", "harbor.example.com/team/app:1", True),  # path prefix
    ("harbor.example.com/team", "harbor.example.com/other/app:1", False),
    ("docker.io", "busybox", True),  # Docker Hub's key covers official images
    ("docker.io", "docker.io/library/busybox:1", True),
])
def test_registry_matching(server, image, matches):
    result = resolve([served(servers=(server,))], ns("team-a"), "default", image)
    assert isinstance(result, Answer) == matches, result


def test_no_credential_for_the_registry():
    result = resolve([served()], ns("team-a"), "default", "quay.io/x/y:1")
    assert isinstance(result, Refusal) and result.reason == NO_CREDENTIAL and result.credentials == ()


def test_an_image_the_kubelet_cannot_parse_is_refused():
    result = resolve([served()], ns("team-a"), "default", "Harbor.example.com/UPPER:1")
    assert isinstance(result, Refusal) and result.reason == INVALID_IMAGE


def test_two_credentials_for_one_key_the_senior_wins():
    older = served("b-older", password="old", created="2023-01-01T00:00:00Z")
    newer = served("a-newer", password="new")
    result = resolve([newer, older], ns("team-a"), "default", IMAGE)
    assert result == Answer({"harbor.example.com": Login("robot", "old")}, ("b-older",))


def test_a_more_specific_key_comes_first_and_both_are_given():
    wide = served("wide", password="wide")
    narrow = served("narrow", password="narrow", servers=("harbor.example.com/team",))
    result = resolve([wide, narrow], ns("team-a"), "default", IMAGE)
    assert isinstance(result, Answer)
    assert list(result.auths) == ["harbor.example.com/team", "harbor.example.com"]
    assert result.credentials == ("narrow", "wide")


def test_a_credential_that_does_not_match_the_pod_leaves_the_others():
    other_team = served("other-team", namespaces=("team-b",), password="b")
    ours = served("ours", namespaces=("team-a",), password="a")
    result = resolve([other_team, ours], ns("team-a"), "default", IMAGE)
    assert result == Answer({"harbor.example.com": Login("robot", "a")}, ("ours",))


def test_logins_of_a_dockerconfigjson_source_with_auth_only():
    spec = served().valid_spec
    config = {"auths": {"harbor.example.com": {"auth": b64("robot:pa:ss")},
                        "https://index.docker.io/v1/": {"username": "u", "password": "p"}}}
    source = raw_source(DOCKERCONFIGJSON_TYPE, {".dockerconfigjson": b64(json.dumps(config))})
    rendered = render(replace(spec, servers=("harbor.example.com", "docker.io")), source)
    assert logins_of(rendered) == {"harbor.example.com": Login("robot", "pa:ss"),
                                   "https://index.docker.io/v1/": Login("u", "p")}


def test_no_secret_in_reprs():
    result = resolve([served(password=PASSWORD)], ns("team-a"), "default", IMAGE)
    assert PASSWORD not in repr(result) and "robot" not in repr(result)
