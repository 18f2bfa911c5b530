"""Parsing and validating a RegistryCredential (`regcred.core.spec.parse_credential`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from regcred.core.errors import InvalidInput
from regcred.core.spec import CredentialSpec, SourceRef, parse_credential
from support.builders import OPERATOR_NAMESPACE, T0, cr_body, req, selector

ALLOWED = frozenset({OPERATOR_NAMESPACE, "shared-secrets"})


def parse(body, *, default_source_namespace=OPERATOR_NAMESPACE, allowed=ALLOWED) -> CredentialSpec:
    return parse_credential(
        body, default_source_namespace=default_source_namespace, allowed_source_namespaces=allowed
    )


def refused(body, **kwargs) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse(body, **kwargs)
    return info.value


def test_full_cr():
    body = cr_body(
        "harbor-prod",
        registries=[{"server": "harbor.example.com"}, {"server": "registry.local:5000/team"}],
        sourceSecretRef={"name": "harbor-robot", "namespace": "shared-secrets"},
        email="ops@example.com",
        target={
            "secretName": "harbor-pull",
            "labels": {"team": "platform"},
            "annotations": {"note": "managed"},
        },
        namespaceSelector={
            "matchLabels": {"registry-access": "harbor"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["prod", "stage"]},
                {"key": "frozen", "operator": "DoesNotExist"},
            ],
        },
        namespaces=["team-*", "ci"],
        excludeNamespaces=["*-sandbox"],
        serviceAccounts=["default", "build-*"],
        suspend=True,
    )
    spec = parse(body)
    assert spec == CredentialSpec(
        name="harbor-prod",
        uid="uid-harbor-prod",
        created=T0,
        generation=3,
        servers=("harbor.example.com", "registry.local:5000/team"),
        source=SourceRef("shared-secrets", "harbor-robot"),
        email="ops@example.com",
        secret_name="harbor-pull",
        labels={"team": "platform"},
        annotations={"note": "managed"},
        namespace_selector=selector(
            {"registry-access": "harbor"},
            req("tier", "In", "prod", "stage"),
            req("frozen", "DoesNotExist"),
        ),
        namespaces=("team-*", "ci"),
        exclude_namespaces=("*-sandbox",),
        service_accounts=("default", "build-*"),
        suspend=True,
    )


def test_spec_is_immutable():
    spec = parse(cr_body())
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.secret_name = "other"  # type: ignore[misc]


def test_defaults():
    spec = parse(cr_body("harbor-prod"))
    assert spec.secret_name == "harbor-prod"  # metadata.name
    assert spec.service_accounts == ("default",)
    assert spec.source == SourceRef(OPERATOR_NAMESPACE, "harbor-robot")
    assert spec.email is None
    assert spec.labels == {} and spec.annotations == {}
    assert spec.namespace_selector is None
    assert spec.namespaces == () and spec.exclude_namespaces == ()
    assert spec.suspend is False
    assert spec.delivery == "Secrets" and spec.copies and not spec.served_at_pull


@pytest.mark.parametrize(("delivery", "copies", "served"), [
    ("Secrets", True, False), ("CredentialProvider", False, True), ("Both", True, True)])
def test_delivery(delivery, copies, served):
    spec = parse(cr_body(delivery=delivery))
    assert (spec.delivery, spec.copies, spec.served_at_pull) == (delivery, copies, served)


def test_default_source_namespace_is_the_operators():
    spec = parse(cr_body(), default_source_namespace="shared-secrets")
    assert spec.source.namespace == "shared-secrets"


@pytest.mark.parametrize("target", [None, {}, {"secretName": ""}, {"secretName": None}])
def test_secret_name_defaults_to_cr_name(target):
    assert parse(cr_body("my-cred", target=target)).secret_name == "my-cred"


def test_service_accounts_empty_list_means_none():
    assert parse(cr_body(serviceAccounts=[])).service_accounts == ()


def test_service_accounts_null_means_default():
    # The API server prunes a null and applies the schema default; the parser agrees.
    assert parse(cr_body(serviceAccounts=None)).service_accounts == ("default",)


def test_service_accounts_star():
    assert parse(cr_body(serviceAccounts=["*"])).service_accounts == ("*",)


@pytest.mark.parametrize("email", [None, ""])
def test_no_email(email):
    assert parse(cr_body(email=email)).email is None


@pytest.mark.parametrize("selector_body", [{}, {"matchLabels": {}, "matchExpressions": []}])
def test_empty_selector_is_no_selector(selector_body):
    assert parse(cr_body(namespaceSelector=selector_body)).namespace_selector is None


@pytest.mark.parametrize(
    "server",
    [
        "harbor.example.com",
        "harbor.example.com:8443",
        "harbor.example.com:8443/project/sub",
        "localhost:5000",
        "10.0.0.1:5000",
        "docker.io",
        "ghcr.io/org",
    ],
)
def test_valid_servers(server):
    assert parse(cr_body(registries=[{"server": server}])).servers == (server,)


# --- refusals: (spec overrides, reason, words the message must contain) ----------------------

INVALID: dict[str, tuple[dict[str, Any] | None, str, list[str]]] = {
    "spec missing": (None, "InvalidSpec", ["spec.registries", "spec.sourceSecretRef"]),
    "registries missing": ({"registries": ...}, "InvalidSpec", ["spec.registries", "at least one"]),
    "registries empty": ({"registries": []}, "InvalidSpec", ["spec.registries", "at least one"]),
    "registries not a list": ({"registries": "harbor.example.com"}, "InvalidSpec", ["spec.registries"]),
    "registry not an object": ({"registries": ["harbor.example.com"]}, "InvalidSpec",
                               ["spec.registries[0]", "object"]),
    "server missing": ({"registries": [{}]}, "InvalidSpec", ["spec.registries[0].server", "host[:port]"]),
    "server with scheme": ({"registries": [{"server": "https://harbor.example.com"}]}, "InvalidSpec",
                           ["spec.registries[0].server", "no scheme"]),
    "server with trailing slash": ({"registries": [{"server": "h.example.com"}, {"server": "h.io/"}]},
                                   "InvalidSpec", ["spec.registries[1].server", "trailing slash"]),
    "server with space": ({"registries": [{"server": "harbor example"}]}, "InvalidSpec",
                          ["spec.registries[0].server", "no spaces"]),
    "server twice": ({"registries": [{"server": "a.io"}, {"server": "a.io"}]}, "InvalidSpec",
                     ["spec.registries", "twice"]),
    "source ref missing": ({"sourceSecretRef": ...}, "InvalidSpec", ["spec.sourceSecretRef.name"]),
    "source ref not an object": ({"sourceSecretRef": "harbor-robot"}, "InvalidSpec",
                                 ["spec.sourceSecretRef", "object"]),
    "source name empty": ({"sourceSecretRef": {"name": ""}}, "InvalidSpec", ["spec.sourceSecretRef.name"]),
    "source name invalid": ({"sourceSecretRef": {"name": "Harbor_Robot"}}, "InvalidSpec",
                            ["spec.sourceSecretRef.name", "lowercase"]),
    "source namespace invalid": ({"sourceSecretRef": {"name": "r", "namespace": "Bad_NS"}}, "InvalidSpec",
                                 ["spec.sourceSecretRef.namespace", "lowercase"]),
    "target not an object": ({"target": "x"}, "InvalidSpec", ["spec.target", "object"]),
    "secretName invalid": ({"target": {"secretName": "Harbor_Pull"}}, "InvalidSpec",
                           ["spec.target.secretName", "lowercase"]),
    "secretName too long": ({"target": {"secretName": "a" * 254}}, "InvalidSpec",
                            ["spec.target.secretName"]),
    "labels not strings": ({"target": {"labels": {"team": 1}}}, "InvalidSpec",
                           ["spec.target.labels", "strings"]),
    "annotations not an object": ({"target": {"annotations": ["a"]}}, "InvalidSpec",
                                  ["spec.target.annotations", "object"]),
    "reserved managed-by label": ({"target": {"labels": {"app.kubernetes.io/managed-by": "me"}}},
                                  "InvalidSpec", ["spec.target.labels", "app.kubernetes.io/managed-by"]),
    "reserved credential label": ({"target": {"labels": {"regcred.dev/credential": "x", "a": "b"}}},
                                  "InvalidSpec", ["spec.target.labels", "regcred.dev/credential"]),
    "selector not an object": ({"namespaceSelector": "team=a"}, "InvalidSpec",
                               ["spec.namespaceSelector", "object"]),
    "matchLabels not strings": ({"namespaceSelector": {"matchLabels": {"a": True}}}, "InvalidSpec",
                                ["matchLabels", "strings"]),
    "expression bad operator": (
        {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}},
        "InvalidSpec", ["spec.namespaceSelector.matchExpressions[0]", "In, NotIn"]),
    "expression lowercase operator": (
        {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "in", "values": ["1"]}]}},
        "InvalidSpec", ["spec.namespaceSelector.matchExpressions[0]", "operator"]),
    "expression without key": (
        {"namespaceSelector": {"matchExpressions": [{"operator": "Exists"}]}},
        "InvalidSpec", ["spec.namespaceSelector.matchExpressions[0]", "key"]),
    "expression not an object": (
        {"namespaceSelector": {"matchExpressions": ["a in (b)"]}},
        "InvalidSpec", ["spec.namespaceSelector.matchExpressions[0]", "object"]),
    "In without values": (
        {"namespaceSelector": {"matchExpressions": [
            {"key": "a", "operator": "Exists"}, {"key": "b", "operator": "In", "values": []}]}},
        "InvalidSpec", ["spec.namespaceSelector.matchExpressions[1]", "needs values"]),
    "NotIn without values": (
        {"namespaceSelector": {"matchExpressions": [{"key": "b", "operator": "NotIn"}]}},
        "InvalidSpec", ["spec.namespaceSelector.matchExpressions[0]", "needs values"]),
    "Exists with values": (
        {"namespaceSelector": {"matchExpressions": [{"key": "b", "operator": "Exists", "values": ["x"]}]}},
        "InvalidSpec", ["spec.namespaceSelector.matchExpressions[0]", "no values"]),
    "DoesNotExist with values": (
        {"namespaceSelector": {"matchExpressions": [
            {"key": "b", "operator": "DoesNotExist", "values": ["x"]}]}},
        "InvalidSpec", ["spec.namespaceSelector.matchExpressions[0]", "no values"]),
    "delivery unknown": ({"delivery": "Pull"}, "InvalidSpec",
                         ["spec.delivery", "'Pull'", "Secrets, CredentialProvider, Both"]),
    "namespaces not a list": ({"namespaces": "team-*"}, "InvalidSpec", ["spec.namespaces", "list"]),
    "namespaces empty entry": ({"namespaces": ["ci", ""]}, "InvalidSpec", ["spec.namespaces", "list"]),
    "excludeNamespaces not strings": ({"excludeNamespaces": [1]}, "InvalidSpec",
                                      ["spec.excludeNamespaces", "list"]),
    "serviceAccounts not a list": ({"serviceAccounts": "default"}, "InvalidSpec",
                                   ["spec.serviceAccounts", "list"]),
    "source namespace not allowed": ({"sourceSecretRef": {"name": "r", "namespace": "kube-system"}},
                                     "SourceNotAllowed",
                                     ["'kube-system'", "allow-list", OPERATOR_NAMESPACE, "shared-secrets",
                                      "REGCRED_SOURCE_NAMESPACES"]),
}


@pytest.mark.parametrize(("overrides", "reason", "words"), INVALID.values(), ids=INVALID.keys())
def test_invalid_input_is_refused_with_reason_and_helpful_message(overrides, reason, words):
    if overrides is None:
        body = cr_body()
        del body["spec"]
    else:
        body = cr_body(**overrides)
    error = refused(body)
    assert error.reason == reason
    assert str(error) == error.message
    for word in words:
        assert word in error.message, f"{word!r} not in {error.message!r}"


@pytest.mark.parametrize("spec", [None, "x", [], 3])
def test_spec_not_an_object(spec):
    body = cr_body()
    body["spec"] = spec
    error = refused(body)
    assert error.reason == "InvalidSpec"
    assert "spec.sourceSecretRef" in error.message


def test_default_source_namespace_not_allowed():
    error = refused(cr_body(), default_source_namespace="elsewhere")
    assert error.reason == "SourceNotAllowed"
    assert "'elsewhere'" in error.message


def test_empty_allow_list_refuses_everything():
    error = refused(cr_body(), allowed=frozenset())
    assert error.reason == "SourceNotAllowed"
    assert "(none)" in error.message


def test_source_namespace_on_allow_list_accepted():
    spec = parse(cr_body(sourceSecretRef={"name": "robot", "namespace": "shared-secrets"}))
    assert spec.source == SourceRef("shared-secrets", "robot")


def test_invalid_input_is_a_value_error():
    assert issubclass(InvalidInput, ValueError)
