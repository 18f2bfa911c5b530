"""Structural checks of the RegistryCredential CustomResourceDefinition.

The API server validates `pattern` with Go's RE2 and an unanchored search.
The patterns in the CRD are written to mean the same in Python `re`; the one
difference we paper over here is that Python's `$` also matches before a final
newline, so the trailing `$` is replaced by `\\Z`.
"""

import re
from pathlib import Path

import pytest
import yaml

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "registrycredentials.yaml"


@pytest.fixture(scope="module")
def crd():
    with CRD_PATH.open() as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    assert len(docs) == 1
    return docs[0]


@pytest.fixture(scope="module")
def version(crd):
    (v,) = crd["spec"]["versions"]
    return v


@pytest.fixture(scope="module")
def schema(version):
    return version["schema"]["openAPIV3Schema"]


def prop(schema, dotted):
    """The schema node at a dotted path such as 'spec.target.secretName'.

    `[]` steps into array items and `{}` into map values.
    """
    node = schema
    for part in dotted.split("."):
        if part == "[]":
            node = node["items"]
        elif part == "{}":
            node = node["additionalProperties"]
        else:
            node = node["properties"][part]
    return node


def walk(node, path="<root>"):
    """Yield (path, node) for every schema node, nested ones included."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def k8s_pattern(pattern):
    assert pattern.startswith("^") and pattern.endswith("$"), pattern
    return re.compile(pattern[:-1] + r"\Z", re.ASCII)


def matches(node, value):
    return k8s_pattern(node["pattern"]).search(value) is not None


# --- identity -----------------------------------------------------------------


def test_identity(crd, version):
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "registrycredentials.regcred.dev"
    spec = crd["spec"]
    assert spec["group"] == "regcred.dev"
    assert spec["scope"] == "Cluster"
    names = spec["names"]
    assert names["kind"] == "RegistryCredential"
    assert names["plural"] == "registrycredentials"
    assert names["singular"] == "registrycredential"
    assert names["shortNames"] == ["regcred"]
    assert version["name"] == "v1alpha1"
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


# --- schema shape ---------------------------------------------------------------


def test_every_field_has_a_description(schema):
    missing = [
        path
        for path, node in walk(schema)
        # The API server forbids anything but name/generateName under metadata.
        if path != "<root>.metadata" and not str(node.get("description", "")).strip()
    ]
    assert missing == []


def test_structural_and_prunes_unknown_fields(schema):
    preserved = [p for p, n in walk(schema) if n.get("x-kubernetes-preserve-unknown-fields")]
    assert preserved == ["<root>.status.kopf"]
    for path, node in walk(schema):
        assert "type" in node, path


def test_every_array_is_bounded_and_has_a_list_type(schema):
    # maxItems keeps the CEL cost estimate low and status small.
    for path, node in walk(schema):
        if node["type"] == "array":
            assert "maxItems" in node, path
            assert node.get("x-kubernetes-list-type") in ("atomic", "map"), path


def test_required_fields(schema):
    assert schema["required"] == ["spec"]
    assert set(prop(schema, "spec")["required"]) == {"registries", "sourceSecretRef"}
    assert prop(schema, "spec.registries.[]")["required"] == ["server"]
    assert prop(schema, "spec.sourceSecretRef")["required"] == ["name"]
    assert set(prop(schema, "spec.namespaceSelector.matchExpressions.[]")["required"]) == {
        "key",
        "operator",
    }


def test_spec_fields_match_the_contract(schema):
    assert set(prop(schema, "spec")["properties"]) == {
        "registries",
        "sourceSecretRef",
        "email",
        "target",
        "namespaceSelector",
        "namespaces",
        "excludeNamespaces",
        "serviceAccounts",
        "suspend",
        "delivery",
        "verify",
    }
    assert set(prop(schema, "spec.verify")["properties"]) == {
        "enabled", "intervalSeconds", "timeoutSeconds", "caBundle"}
    assert set(prop(schema, "spec.target")["properties"]) == {"secretName", "labels", "annotations"}
    assert set(prop(schema, "spec.sourceSecretRef")["properties"]) == {"name", "namespace"}
    assert set(prop(schema, "spec.namespaceSelector")["properties"]) == {
        "matchLabels",
        "matchExpressions",
    }


def test_defaults(schema):
    assert prop(schema, "spec.serviceAccounts")["default"] == ["default"]
    assert prop(schema, "spec.suspend")["default"] is False
    assert prop(schema, "spec.verify.enabled")["default"] is False
    assert prop(schema, "spec.verify.intervalSeconds")["default"] == 3600
    assert prop(schema, "spec.verify.intervalSeconds")["minimum"] == 10
    assert prop(schema, "spec.verify.timeoutSeconds")["default"] == 5
    # A schema default only applies when the field is absent, so [] stays [].
    assert prop(schema, "spec.serviceAccounts").get("minItems", 0) == 0


def test_registries_bounds_and_uniqueness(schema):
    registries = prop(schema, "spec.registries")
    assert registries["minItems"] == 1
    assert registries["maxItems"] >= 1
    rules = [v["rule"] for v in registries["x-kubernetes-validations"]]
    assert any("exists_one" in r and "server" in r for r in rules)


def test_selector_expressions(schema):
    expr = prop(schema, "spec.namespaceSelector.matchExpressions.[]")
    assert expr["properties"]["operator"]["enum"] == ["In", "NotIn", "Exists", "DoesNotExist"]
    rules = " ".join(v["rule"] for v in expr["x-kubernetes-validations"])
    for word in ("In", "NotIn", "Exists", "DoesNotExist", "values"):
        assert word in rules


def test_reserved_target_labels(schema):
    rules = " ".join(v["rule"] for v in prop(schema, "spec.target.labels")["x-kubernetes-validations"])
    assert "app.kubernetes.io/managed-by" in rules
    assert "regcred.dev/" in rules


def test_metadata_name_fits_in_a_label_value(schema):
    assert prop(schema, "metadata.name")["maxLength"] == 63


def test_status_fields(schema):
    status = prop(schema, "status")
    assert set(status["properties"]) == {
        "observedGeneration",
        "conditions",
        "matchedNamespaces",
        "syncedNamespaces",
        "failedNamespaces",
        "sourceResourceVersion",
        "lastSyncTime",
        "lastRotationTime",
        "pullTime",
        "registries",
        "kopf",
    }
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    cond = conditions["items"]
    assert cond["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert cond["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert status["properties"]["failedNamespaces"]["maxItems"] == 20
    assert set(prop(schema, "status.registries.[]")["required"]) == {"server", "result"}
    assert prop(schema, "status.registries.[].lastCheckTime")["format"] == "date-time"
    for field in ("lastSyncTime", "lastRotationTime"):
        assert status["properties"][field]["format"] == "date-time"


# --- printer columns ----------------------------------------------------------


def test_printer_columns(schema, version):
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns)[-1] == "Age"
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Synced"]["jsonPath"] == ".status.syncedNamespaces"
    assert columns["Matched"]["jsonPath"] == ".status.matchedNamespaces"
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    for column in columns.values():
        if column["name"] == "Age":
            continue
        # Every column points at a field that the schema declares.
        path = re.sub(r"\[\?\(.*?\)\]", "", column["jsonPath"]).lstrip(".").split(".")
        node = schema
        for part in path:
            node = node.get("items", node)["properties"][part]
        assert node["type"] in ("string", "integer", "boolean", "array"), column


# --- patterns -----------------------------------------------------------------

SERVER_GOOD = [
    "harbor.example.com",
    "docker.io",
    "index.docker.io",
    "localhost",
    "registry.local:5000",
    "10.0.0.1:5000",
    "ghcr.io/my-org",
    "registry.example.com:443/team/sub_project.v2",
    "my-registry-1.example.com",
]
SERVER_BAD = [
    "",
    "https://harbor.example.com",
    "harbor.example.com/",
    "Harbor.Example.com",
    "harbor example.com",
    " harbor.example.com",
    "harbor.example.com\n",
    "harbor.example.com:port",
    "-harbor.example.com",
    "harbor-.example.com",
    "harbor..example.com",
    "*.example.com",
    "[::1]:5000",
    "ghcr.io//org",
    "ghcr.io/Org",
    "user@harbor.example.com",
]


@pytest.mark.parametrize("value", SERVER_GOOD)
def test_server_pattern_accepts(schema, value):
    assert matches(prop(schema, "spec.registries.[].server"), value)


@pytest.mark.parametrize("value", SERVER_BAD)
def test_server_pattern_rejects(schema, value):
    assert not matches(prop(schema, "spec.registries.[].server"), value)


SUBDOMAIN_FIELDS = ["spec.target.secretName", "spec.sourceSecretRef.name"]
SUBDOMAIN_GOOD = ["harbor-prod", "a", "0", "pull.secret-1", "a" * 253]
SUBDOMAIN_BAD = ["", "Harbor", "-a", "a-", "a_b", "a..b", ".a", "a.", "a/b", "a\n"]


@pytest.mark.parametrize("field", SUBDOMAIN_FIELDS)
def test_subdomain_patterns(schema, field):
    node = prop(schema, field)
    assert node["maxLength"] == 253
    for value in SUBDOMAIN_GOOD:
        assert matches(node, value), value
    for value in SUBDOMAIN_BAD:
        assert not matches(node, value), value


def test_source_namespace_pattern(schema):
    node = prop(schema, "spec.sourceSecretRef.namespace")
    assert node["maxLength"] == 63
    for value in ["regcred-system", "default", "a1"]:
        assert matches(node, value), value
    for value in ["", "a.b", "Regcred", "-a", "a-"]:
        assert not matches(node, value), value


@pytest.mark.parametrize("field", ["spec.namespaces", "spec.excludeNamespaces"])
def test_namespace_glob_patterns(schema, field):
    item = prop(schema, field)["items"]
    assert item["maxLength"] == 63
    for value in ["team-*", "ci", "*-sandbox", "*", "team-?", "[!k]*", "team-[ab]"]:
        assert matches(item, value), value
    for value in ["", "Team-*", "team/*", "a.b", "team *", "^a"]:
        assert not matches(item, value), value


def test_service_account_glob_pattern(schema):
    item = prop(schema, "spec.serviceAccounts.[]")
    for value in ["default", "*", "builder-*", "sa.with.dots", "ci-?"]:
        assert matches(item, value), value
    for value in ["", "Default", "a b", "a/b", "a_b"]:
        assert not matches(item, value), value


def test_email_pattern(schema):
    node = prop(schema, "spec.email")
    for value in ["ops@example.com", "a+b@c"]:
        assert matches(node, value), value
    for value in ["", "ops", "ops@", "@example.com", "a@b@c", "o ps@example.com"]:
        assert not matches(node, value), value


def test_label_value_pattern(schema):
    node = prop(schema, "spec.target.labels.{}")
    for value in ["", "platform", "a.b_c-d", "A1"]:
        assert matches(node, value), value
    for value in ["-a", "a-", "a b", "a/b"]:
        assert not matches(node, value), value


@pytest.mark.parametrize("field", ["spec.target.labels", "spec.target.annotations"])
def test_key_rules(schema, field):
    # The key check is a CEL matches() rule; CEL uses RE2 like `pattern`.
    (regex,) = [
        m.group(1).replace("\\\\", "\\")
        for v in prop(schema, field)["x-kubernetes-validations"]
        if (m := re.search(r"matches\('(.*)'\)", v["rule"]))
    ]
    key = k8s_pattern(regex)
    for value in ["team", "example.com/tier", "a.b-c_d", "sub.example.com/X"]:
        assert key.search(value), value
    for value in ["", "a b", "Example.com/x", "/x", "a/", "-a", "a/b/c", "x" * 64]:
        assert not key.search(value), value


def test_patterns_are_portable(schema):
    """No constructs that RE2 lacks or that differ between RE2 and Python."""
    for path, node in walk(schema):
        if "pattern" in node:
            pattern = node["pattern"]
            for construct in ("(?=", "(?!", "(?<", "\\d", "\\w", "\\b", "\\1"):
                assert construct not in pattern, (path, construct)
            k8s_pattern(pattern)
