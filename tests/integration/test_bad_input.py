"""The bad-input corpus (tests/badinput/*.yaml) against the real API server and regcred.

`rejected` cases must be refused by the API server itself (schema, CEL rules, strict field
validation) with a message naming the field; `refused` cases are stored, and regcred must
answer Ready=False with the case's reason, write nothing, post a Warning event, keep running,
and leave a healthy CR next to them Ready and syncing. tests/badinput/README.md has the format.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from operator_fixtures import audited_operator
from operator_process import OperatorProcess
from scenario import GROUP, OPERATOR_NAMESPACE, PASSWORD_MARK, PLURAL, VERSION, Cluster, password, unique
from test_robustness import alive, assert_no_secret_material, leaks, programming_errors, regcred_writes

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[1] / "badinput"
OPERATOR_USER = "regcred-badinput"
SERVER = "harbor.example.com"


def load_corpus() -> list[dict[str, Any]]:
    cases = []
    for path in sorted(CORPUS.glob("*.yaml")):
        for case in yaml.safe_load(path.read_text()) or []:
            cases.append({**case, "file": path.name})
    return cases


CASES = load_corpus()
REJECTED = [c for c in CASES if c.get("expect") == "rejected"]
REFUSED = [c for c in CASES if c.get("expect") == "refused"]


def fill(value: Any, values: dict[str, str]) -> Any:
    """Substitute ${...} in every string of a case (unknown names are an error)."""
    if isinstance(value, str):
        return string.Template(value).substitute(values)
    if isinstance(value, list):
        return [fill(item, values) for item in value]
    if isinstance(value, dict):
        return {fill(k, values): fill(v, values) for k, v in value.items()}
    return value


def values_for(tenant: str) -> dict[str, str]:
    return {
        "name": unique("bad"),
        "source": unique("src"),
        "tenant": tenant,
        "password": password("bad-input"),
        "oversized": password("oversized") + "x" * 70_000,
        "operator_namespace": OPERATOR_NAMESPACE,
    }


def credential_body(case: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    body = fill(case["credential"], values)
    body.setdefault("metadata", {}).setdefault("name", values["name"])
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RegistryCredential", **body}


def create_strict(cluster: Cluster, body: dict[str, Any]) -> None:
    """Create as `kubectl apply --server-side --field-validation=Strict` would validate it."""
    cluster.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body, field_validation="Strict")


def test_the_corpus_is_well_formed():
    assert len(CASES) >= 30
    ids = [c.get("case") for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    for case in CASES:
        where = f"{case['file']}: {case.get('case')}"
        assert case.get("expect") in ("rejected", "refused"), where
        assert case.get("message") and isinstance(case["message"], list), where
        assert isinstance(case.get("credential"), dict), where
        if case["expect"] == "refused":
            assert case.get("reason"), where
            selector = case["credential"]["spec"].get("namespaceSelector")
            assert selector == {"matchLabels": {"tenant": "${tenant}"}}, f"{where} must select the tenant"
    assert REJECTED and REFUSED


# --- rejected by the API server --------------------------------------------------------------


@pytest.mark.parametrize("case", REJECTED, ids=[c["case"] for c in REJECTED])
def test_the_api_server_rejects_it_with_a_clear_message(case, cluster, crd_installed):
    values = values_for(unique("none"))
    body = credential_body(case, values)
    name = body["metadata"]["name"]
    try:
        with pytest.raises(ApiException) as raised:
            create_strict(cluster, body)
    finally:
        if cluster.credential(name) is not None:  # accepted after all: do not leave it around
            cluster.delete_credential(name)
    assert raised.value.status in (400, 422), raised.value.status
    message = json.loads(raised.value.body)["message"]
    for part in case["message"]:
        assert part in message, f"{part!r} not in the API server's message: {message}"
    assert not leaks(message)


# --- accepted, then refused by regcred -------------------------------------------------------


@pytest.fixture(scope="module")
def operator(control_plane, crd_installed, tmp_path_factory) -> Iterator[OperatorProcess]:
    yield from audited_operator(control_plane, OPERATOR_USER, tmp_path_factory)


class BadWorld:
    """Tenant namespaces, a healthy CR syncing them, and every refused case created next to it."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.tenant = unique("bad-tenant")
        self.namespaces: list[str] = []
        self.healthy = unique("healthy")
        self.since = ""
        self.cases: dict[str, tuple[str, dict[str, str]]] = {}  # case id -> (CR name, values)
        self.secrets: list[tuple[str, str]] = []

    def add_namespace(self, wait_for) -> str:
        name = unique("bad-ns")
        self.cluster.create_namespace(name, {"tenant": self.tenant})
        self.namespaces.append(name)
        wait_for(lambda: self.cluster.pull_secrets(name) is not None, timeout=60,
                 message=f"default ServiceAccount in {name}")
        return name

    def setup(self, wait_for) -> None:
        for _ in range(2):
            self.add_namespace(wait_for)
        self.cluster.put_source(self.healthy)
        self.cluster.create_credential(self.healthy, {
            "registries": [{"server": SERVER}], "sourceSecretRef": {"name": self.healthy},
            "namespaceSelector": {"matchLabels": {"tenant": self.tenant}}})
        for namespace in self.namespaces:
            wait_for(lambda ns=namespace: self.cluster.pull_secrets(ns) == [self.healthy], timeout=60,
                     message=f"healthy entry in {namespace}")
        wait_for(lambda: self.cluster.ready(self.healthy).get("status") == "True", timeout=60,
                 message="the healthy CR Ready")
        self.since = datetime.now(UTC).isoformat()
        for case in REFUSED:
            values = values_for(self.tenant)
            for secret in fill(case.get("secrets") or [], values):
                namespace = secret["metadata"].setdefault("namespace", OPERATOR_NAMESPACE)
                self.cluster.core.create_namespaced_secret(namespace, secret)
                self.secrets.append((namespace, secret["metadata"]["name"]))
            body = credential_body(case, values)
            create_strict(self.cluster, body)  # the API server accepts it
            self.cases[case["case"]] = (body["metadata"]["name"], values)

    def teardown(self) -> None:
        for name, _ in self.cases.values():
            self.cluster.delete_credential(name)
        self.cluster.delete_credential(self.healthy)
        for namespace, name in self.secrets:
            try:
                self.cluster.core.delete_namespaced_secret(name, namespace)
            except ApiException as error:
                if error.status != 404:
                    raise
        for namespace in self.namespaces:
            self.cluster.delete_namespace(namespace)


@pytest.fixture(scope="module")
def bad_world(cluster, operator, wait_for) -> Iterator[BadWorld]:
    world = BadWorld(cluster)
    try:
        world.setup(wait_for)
        yield world
    finally:
        world.teardown()


@pytest.mark.parametrize("case", REFUSED, ids=[c["case"] for c in REFUSED])
def test_regcred_refuses_it_with_a_clear_condition_and_writes_nothing(case, cluster, bad_world, wait_for):
    name, _ = bad_world.cases[case["case"]]
    wait_for(lambda: cluster.ready(name).get("reason") == case["reason"], timeout=60,
             message=f"Ready=False {case['reason']} (got {cluster.ready(name)})")
    ready = cluster.ready(name)
    assert ready["status"] == "False"
    for part in case["message"]:
        assert part in ready["message"], f"{part!r} not in the condition: {ready['message']}"
    assert not leaks(ready["message"])
    warning = ("Warning", case["reason"])
    wait_for(lambda: [e for e in cluster.events_for(name) if (e.type, e.reason) == warning],
             message="a Warning event with the reason")
    for namespace in bad_world.namespaces:
        assert cluster.secret(namespace, name) is None, f"a copy appeared in {namespace}"
        assert name not in (cluster.pull_secrets(namespace) or []), f"an entry appeared in {namespace}"


def test_the_healthy_neighbour_keeps_syncing_and_nothing_else_was_written(
        cluster, operator, bad_world, control_plane, wait_for):
    healthy = bad_world.healthy
    rotated = password("neighbour")
    cluster.rotate_source(healthy, rotated)
    late = bad_world.add_namespace(wait_for)
    for namespace in bad_world.namespaces:
        wait_for(lambda ns=namespace: cluster.docker_password(ns, healthy, SERVER) == rotated, timeout=60,
                 message=f"rotated healthy copy in {namespace}")
        wait_for(lambda ns=namespace: cluster.pull_secrets(ns) == [healthy], timeout=60,
                 message=f"exactly the healthy entry in {namespace}")
    wait_for(lambda: cluster.ready(healthy).get("status") == "True"
             and cluster.credential(healthy)["status"]["syncedNamespaces"] == len(bad_world.namespaces),
             timeout=60, message="the healthy CR Ready on every namespace")
    for case in REFUSED:  # the new namespace changed nothing for them
        name, _ = bad_world.cases[case["case"]]
        assert cluster.ready(name).get("reason") == case["reason"], case["case"]

    writes = [e for e in regcred_writes(control_plane, bad_world.since, OPERATOR_USER)
              if e["objectRef"].get("namespace") in bad_world.namespaces]
    secrets = {(e["verb"], e["objectRef"]["name"]) for e in writes if e["objectRef"]["resource"] == "secrets"}
    assert secrets <= {("update", healthy), ("create", healthy)}, f"unexpected writes: {secrets}"
    accounts = {e["objectRef"]["namespace"] for e in writes
                if e["objectRef"]["resource"] == "serviceaccounts"}
    assert accounts <= {late}, f"ServiceAccounts written for refused CRs: {accounts}"

    assert alive(operator), "regcred exited"
    assert not programming_errors(operator.log()), "regcred's log shows a programming error"


def test_no_secret_material_anywhere(cluster, operator, bad_world):
    """Last: the refused cases carried marked passwords in every shape (oversized, in JSON...)."""
    assert PASSWORD_MARK in bad_world.cases["password-oversized"][1]["oversized"]
    assert_no_secret_material(cluster, operator)
