"""manifests/ RBAC, proven: regcred runs with only its ServiceAccount's token.

The API server's audit log records every request by user, so after a run of the core
scenarios we know exactly which (group, resource, verb) the operator used: every granted
permission must have been used (or be listed below with the test that exercises it), and
no request may have been refused.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
import yaml
from operator_fixtures import REPO
from operator_process import OperatorProcess, free_port
from scenario import SERVER, Cluster, credential_spec, password, unique

pytestmark = pytest.mark.integration

USER = "system:serviceaccount:regcred-system:regcred"
# Needed, but only on paths this quiet run does not take.
EXERCISED_ELSEWHERE = {
    # A guarded JSON patch refused (409/422) because the cached ServiceAccount was stale:
    # re-read, then retry. The concurrent-writer test in test_robustness.py takes this path.
    ("", "serviceaccounts", "get"),
}


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin,
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def bundle() -> list[dict]:
    rendered = subprocess.run(["kubectl", "kustomize", str(REPO / "manifests")],
                              capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


@pytest.fixture(scope="module")
def operator_kubeconfig(kubeconfig: str, crd_installed: None, control_plane, bundle,
                        tmp_path_factory) -> str:
    """Apply manifests/ (all but the Deployment) server-side; a kubeconfig with the SA token."""
    objects = [doc for doc in bundle if doc["kind"] != "Deployment"]
    crds = [doc for doc in objects if doc["kind"] == "CustomResourceDefinition"]
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", "-",
            stdin=yaml.safe_dump_all(crds))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", "-",
            stdin=yaml.safe_dump_all(objects))
    token = kubectl(kubeconfig, "create", "token", "regcred", "-n", "regcred-system",
                    "--duration=2h").strip()
    path = tmp_path_factory.mktemp("rbac") / "regcred.kubeconfig"
    ca = base64.b64encode(Path(control_plane.ca).read_bytes()).decode()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "regcred",
        "clusters": [{"name": "local", "cluster": {"server": control_plane.server,
                                                   "certificate-authority-data": ca}}],
        "users": [{"name": "regcred", "user": {"token": token}}],
        "contexts": [{"name": "regcred", "context": {"cluster": "local", "user": "regcred"}}],
    }))
    return str(path)


def granted(bundle: list[dict]) -> set[tuple[str, str, str]]:
    rules = [rule for doc in bundle if doc["kind"] in ("ClusterRole", "Role")
             for rule in doc["rules"]]
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def used(control_plane) -> tuple[set[tuple[str, str, str]], list[dict]]:
    requests, refused = set(), []
    for event in control_plane.audit_events():
        if event.get("user", {}).get("username") != USER or "objectRef" not in event:
            continue
        ref = event["objectRef"]
        resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        requests.add((ref.get("apiGroup", ""), resource, event["verb"]))
        if event.get("responseStatus", {}).get("code") == 403:
            refused.append({"verb": event["verb"], **ref})
    return requests, refused


def test_the_operator_works_with_exactly_its_granted_permissions(
        cluster: Cluster, kubeconfig, operator_kubeconfig, control_plane, bundle, fresh_namespaces, tmp_path,
        wait_for):
    # With the admission webhook, as manifests/ runs it: regcred registers its webhook
    # configuration (deleted first, so that it is created), which calls back over loopback.
    kubectl(kubeconfig, "delete", "mutatingwebhookconfiguration", "regcred", "--ignore-not-found")
    port = free_port()
    process = OperatorProcess(operator_kubeconfig, tmp_path / "regcred.log", extra_env={
        "REGCRED_PEERING": "regcred", "REGCRED_ADMISSION": "true",
        "REGCRED_ADMISSION_LISTEN": f"127.0.0.1:{port}",
        "REGCRED_ADMISSION_URL": f"https://127.0.0.1:{port}"}).start()
    try:
        label = unique("rbac")
        keep, drop = fresh_namespaces(2, labels={"tenant": label})
        name = unique("cr")
        cluster.put_source(name)
        cluster.core.create_namespaced_secret(drop, {"metadata": {"name": "unrelated"},
                                                     "data": {"x": "eA=="}})
        cluster.create_credential(name, credential_spec(name, {"tenant": label}))
        for namespace in (keep, drop):
            wait_for(lambda ns=namespace: cluster.pull_secrets(ns) == [name], timeout=60,
                     message=f"synced {namespace}")
        rotated = password("rbac")
        cluster.rotate_source(name, rotated)
        wait_for(lambda: cluster.docker_password(keep, name, SERVER) == rotated, message="rotated")
        cluster.label_namespace(drop, {"tenant": None})
        wait_for(lambda: cluster.secret(drop, name) is None, message="copy deleted")
        # A Secret with the target name we don't own: the create is refused, we read it.
        conflicted = unique("conflict")
        [other] = fresh_namespaces(1, labels={"tenant": conflicted})
        cluster.core.create_namespaced_secret(other, {"metadata": {"name": conflicted},
                                                      "data": {"x": "eA=="}})
        cluster.put_source(conflicted)
        # It also names kube-public: the webhook's namespaceSelector lets that through now.
        cluster.create_credential(conflicted, credential_spec(conflicted, {"tenant": conflicted},
                                                              namespaces=["kube-public"]))
        wait_for(lambda: cluster.ready(conflicted).get("reason") == "Conflict", message="conflict")
        wait_for(lambda: "kube-public" not in kubectl(
            kubeconfig, "get", "mutatingwebhookconfiguration", "regcred", "-o", "json"),
            message="webhook namespaceSelector updated")
        cluster.delete_credential(name)
        cluster.delete_credential(conflicted)
        wait_for(lambda: cluster.credential(name) is None, message="CR deleted")
        wait_for(lambda: cluster.pull_secrets(keep) == [], message="entry removed")
    finally:
        process.stop()
        kubectl(kubeconfig, "delete", "mutatingwebhookconfiguration", "regcred", "--ignore-not-found")

    requests, refused = used(control_plane)
    assert refused == [], "the operator was refused a request"
    unused = granted(bundle) - requests - EXERCISED_ELSEWHERE
    assert unused == set(), "granted but never needed"
    assert "Forbidden" not in process.log()
