"""The admission decision (`regcred.core.admission`): what a ServiceAccount carries at creation."""

from __future__ import annotations

import copy
import functools
import itertools
from typing import Any

import pytest

from regcred.core.admission import (
    AdmissionCredential,
    add_pull_secrets,
    admission_credentials,
    admission_patch,
    pull_secrets_at_creation,
    webhook_namespace_selector,
)
from regcred.core.matching import NamespaceInfo
from regcred.core.plan import AddPullSecret, observe_service_account, plan_namespace
from regcred.core.spec import PULL_SECRETS_ANNOTATION, parse_credential
from support.builders import OPERATOR_NAMESPACE, cr_body, credential, json_patch, ns, sa_body, selector

parse = functools.partial(parse_credential, default_source_namespace=OPERATOR_NAMESPACE,
                          allowed_source_namespaces=frozenset({OPERATOR_NAMESPACE}))


def synced(body: dict[str, Any], *, ready: str = "True", reason: str = "Synced",
           generation: int | None = None, failed: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """`body` with the status the active replica writes after a sync of `generation`."""
    observed = body["metadata"]["generation"] if generation is None else generation
    body = copy.deepcopy(body)
    body["status"] = {
        "observedGeneration": observed,
        "conditions": [{"type": "Ready", "status": ready, "reason": reason,
                        "observedGeneration": observed}],
        "failedNamespaces": failed or [],
    }
    return body


def usable(*bodies: dict[str, Any]) -> list[str]:
    return [c.spec.name for c in admission_credentials(bodies, parse)]


# --- which CRs the webhook may act on ------------------------------------------------------

def test_a_synced_cr_is_used():
    assert usable(synced(cr_body("a"))) == ["a"]


@pytest.mark.parametrize("why, body", [
    ("never synced (no status yet)", cr_body("a")),
    ("synced at an older generation", synced(cr_body("a"), generation=2)),
    ("its source is broken", synced(cr_body("a"), ready="False", reason="SourceNotFound")),
    ("suspended", synced(cr_body("a", suspend=True), ready="False", reason="Suspended")),
    ("invalid", synced(cr_body("a", registries=[]))),
    ("delivered by the credential provider only", synced(cr_body("a", delivery="CredentialProvider"))),
    ("being deleted", {**synced(cr_body("a")), "metadata": {
        **cr_body("a")["metadata"], "deletionTimestamp": "2024-01-02T00:00:00Z"}}),
])
def test_a_cr_that_is_not_ready_adds_nothing(why, body):
    assert usable(body) == [], why


def test_a_cr_failing_in_some_namespaces_still_counts_but_not_where_it_conflicts():
    body = synced(cr_body("a"), ready="False", reason="Conflict",
                  failed=[{"namespace": "team-b", "reason": "Conflict", "message": "taken"}])
    [candidate] = admission_credentials([body], parse)
    assert pull_secrets_at_creation(ns("team-a"), [candidate], "default") == ("a",)
    assert pull_secrets_at_creation(ns("team-b"), [candidate], "default") == ()


# --- one rule, two callers: the webhook agrees with the plan -------------------------------

SPECS = [
    {},
    {"namespaces": ("team-*",)},
    {"namespace_selector": selector({"tenant": "x"})},
    {"namespaces": ("team-*",), "exclude_namespaces": ("*-sandbox",)},
    {"service_accounts": ("*",)},
    {"service_accounts": ()},
    {"service_accounts": ("builder", "ci-*")},
    {"namespaces": ("kube-system",)},
]
NAMESPACES = [
    ns("team-a"), ns("team-a-sandbox"), ns("other", {"tenant": "x"}), ns("other"),
    ns("team-b", {"regcred.dev/ignore": "true"}), ns("kube-system"), ns("kube-public"),
]
ACCOUNTS = ["default", "builder", "ci-runner", "app"]


@pytest.mark.parametrize("spec_a, spec_b", list(itertools.combinations(SPECS, 2)))
def test_a_new_service_account_gets_what_the_plan_would_add(spec_a, spec_b):
    # Two CRs, one of them sharing a Secret name with a senior one: the senior decides in both.
    credentials = [credential("a", **spec_a), credential("b", **spec_b),
                   credential("c", secret_name="a", created="2023-01-01T00:00:00Z")]
    candidates = [AdmissionCredential(c) for c in credentials]
    for namespace, account in itertools.product(NAMESPACES, ACCOUNTS):
        plan = plan_namespace(namespace, credentials, [],
                              [observe_service_account(sa_body(account, namespace.name))])
        planned = tuple(sorted(a.secret_name for a in plan.service_account_actions
                               if isinstance(a, AddPullSecret)))
        assert pull_secrets_at_creation(namespace, candidates, account) == planned, (namespace, account)


def test_a_terminating_namespace_gets_nothing():
    [candidate] = admission_credentials([synced(cr_body("a"))], parse)
    info = NamespaceInfo.from_body(
        {"metadata": {"name": "team-a", "deletionTimestamp": "2024-01-01T00:00:00Z"}})
    assert pull_secrets_at_creation(info, [candidate], "default") == ()


# --- the mutation ---------------------------------------------------------------------------

def test_entries_are_appended_after_foreign_ones_in_order_and_listed_as_ours():
    body = sa_body(pull_secrets=["zeta", "alpha"])
    assert add_pull_secrets(body, ["b", "a"]) == ["b", "a"]
    assert [e["name"] for e in body["imagePullSecrets"]] == ["zeta", "alpha", "b", "a"]
    assert body["metadata"]["annotations"][PULL_SECRETS_ANNOTATION] == "a,b"


def test_an_entry_already_given_is_neither_duplicated_nor_claimed():
    body = sa_body(pull_secrets=["a"], annotations={"team": "x"})
    assert add_pull_secrets(body, ["a", "b"]) == ["b"]
    assert [e["name"] for e in body["imagePullSecrets"]] == ["a", "b"]
    assert body["metadata"]["annotations"] == {"team": "x", PULL_SECRETS_ANNOTATION: "b"}
    before = copy.deepcopy(body)
    assert add_pull_secrets(body, ["a", "b"]) == []
    assert body == before


def test_the_mutation_goes_out_as_a_json_patch_the_server_applies():
    raw = sa_body(pull_secrets=["foreign"])
    admitted = json_patch(raw, admission_patch(raw, ["ours"]))
    assert [e["name"] for e in admitted["imagePullSecrets"]] == ["foreign", "ours"]
    assert admitted["metadata"]["annotations"] == {PULL_SECRETS_ANNOTATION: "ours"}


@pytest.mark.parametrize("account", [
    {"metadata": {"name": "default"}},
    {"metadata": {"name": "default", "annotations": {"team": "a"}}, "imagePullSecrets": [{"name": "mine"}]},
    {"metadata": {"name": "default", "annotations": {PULL_SECRETS_ANNOTATION: "old"}},
     "imagePullSecrets": [{"name": "old"}, {"name": "harbor"}]},
])
def test_the_admission_patch_makes_what_add_pull_secrets_makes(account):
    expected = copy.deepcopy(account)
    add_pull_secrets(expected, ["harbor", "quay"])
    assert json_patch(account, admission_patch(account, ["harbor", "quay"])) == expected


def test_no_patch_when_every_entry_is_there():
    account = {"metadata": {"name": "default"}, "imagePullSecrets": [{"name": "harbor"}]}
    assert admission_patch(account, ["harbor"]) == []
    assert admission_patch(account, []) == []


# --- the webhook's namespaceSelector -------------------------------------------------------

def test_the_selector_skips_ignored_and_unnamed_system_namespaces():
    [ignore, system] = webhook_namespace_selector([])["matchExpressions"]
    assert ignore == {"key": "regcred.dev/ignore", "operator": "NotIn", "values": ["true"]}
    assert system["values"] == ["kube-node-lease", "kube-public", "kube-system"]
    named = webhook_namespace_selector([parse(cr_body(namespaces=["kube-system", "team-*"]))])
    assert named["matchExpressions"][1]["values"] == ["kube-node-lease", "kube-public"]
