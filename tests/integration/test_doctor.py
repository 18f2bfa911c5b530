"""`regcred doctor` as a user runs it, against the real control plane and the real operator.

What needs no node is seeded here for real: Pods admitted before the entry, missing and
wrong-type Secrets, a CR that is not Ready, suspended, in Conflict or excluding the
namespace, IfNotPresent on a private image. Pull failures need a kubelet: they are in
test_doctor_node.py. Each test uses namespaces and a registry host of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from scenario import PASSWORD_MARK, Cluster, unique

from support.leaks import assert_not_shown

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("remove_new_credentials")]


def doctor(kubeconfig: str, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run the real CLI with `-o json`; returns (exit code, the report, stderr). Exit code 2 (bad
    usage, no cluster) has no report: it is empty then, and stderr says why."""
    result = subprocess.run(
        [sys.executable, "-m", "regcred.cli", "doctor", "--kubeconfig", kubeconfig, "-o", "json", *args],
        capture_output=True, text=True, timeout=60,
    )
    assert_not_shown(PASSWORD_MARK, stdout=result.stdout, stderr=result.stderr)
    report = json.loads(result.stdout) if result.returncode in (0, 1) else {}
    return result.returncode, report, result.stderr


def codes(report: dict[str, Any]) -> list[str]:
    return [finding["code"] for finding in report["findings"]]


def pod(cluster: Cluster, namespace: str, image: str, *, name: str = "app", policy: str | None = "Always",
        pull_secrets: tuple[str, ...] = (), account: str | None = None) -> None:
    container = {"name": "app", "image": image}
    if policy:
        container["imagePullPolicy"] = policy
    spec: dict[str, Any] = {"containers": [container]}
    if pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in pull_secrets]
    if account:
        spec["serviceAccountName"] = account
    cluster.core.create_namespaced_pod(namespace, {"metadata": {"name": name}, "spec": spec})


def credential(cluster: Cluster, namespace: str, registry: str, **spec) -> str:
    name = unique("cr")
    if spec.pop("source", True):
        cluster.put_source(name)
    cluster.create_credential(name, {"registries": [{"server": registry}],
                                     "sourceSecretRef": {"name": name}, "namespaces": [namespace],
                                     **spec})
    return name


@pytest.fixture
def namespace(cluster: Cluster, fresh_namespaces, wait_for) -> str:
    (name,) = fresh_namespaces(1)
    wait_for(lambda: cluster.pull_secrets(name) is not None, message="default ServiceAccount")
    return name


def registry_for(namespace: str) -> str:
    return f"{namespace}.registry.test:5000"


def test_healthy_namespace_exits_0_and_names_the_copy(cluster, operator, kubeconfig, namespace, wait_for):
    registry = registry_for(namespace)
    name = credential(cluster, namespace, registry)
    wait_for(lambda: cluster.pull_secrets(namespace) == [name], message="entry")
    pod(cluster, namespace, f"{registry}/team/app:v1")
    code, report, stderr = doctor(kubeconfig, "-n", namespace)
    assert code == 0, (report, stderr)
    (image,) = report["images"]
    assert image["pullSecret"] == {"secret": name, "key": registry, "credential": name}
    assert (image["registry"], image["pullPolicy"], report["summary"]["healthy"]) == (registry, "Always",
                                                                                      True)


def test_pod_admitted_before_the_entry(cluster, operator, kubeconfig, namespace, wait_for):
    registry = registry_for(namespace)
    pod(cluster, namespace, f"{registry}/app:v1", name="early")
    name = credential(cluster, namespace, registry)
    wait_for(lambda: cluster.pull_secrets(namespace) == [name], message="entry")
    code, report, _ = doctor(kubeconfig, "pod/early", "-n", namespace)
    assert (code, codes(report)) == (1, ["PodAdmittedBeforeEntry"])
    assert report["findings"][0]["commands"] == [f"kubectl delete pod -n {namespace} early"]
    pod(cluster, namespace, f"{registry}/app:v1", name="late")
    code, report, _ = doctor(kubeconfig, "pod/late", "-n", namespace)
    assert (code, codes(report)) == (0, [])


def test_missing_and_wrong_type_pull_secrets(cluster, operator, kubeconfig, namespace):
    cluster.put_source("opaque", namespace=namespace, type_="Opaque")
    pod(cluster, namespace, "private.registry.test/app:v1", pull_secrets=("absent", "opaque"))
    code, report, _ = doctor(kubeconfig, "-n", namespace)
    assert (code, codes(report)) == (1, ["PullSecretMissing", "PullSecretWrongType"])


def test_if_not_present_on_a_private_image(cluster, operator, kubeconfig, namespace, wait_for):
    registry = registry_for(namespace)
    name = credential(cluster, namespace, registry)
    wait_for(lambda: cluster.pull_secrets(namespace) == [name], message="entry")
    pod(cluster, namespace, f"{registry}/app:v1", policy=None)  # a tag: defaulted to IfNotPresent
    code, report, _ = doctor(kubeconfig, "-n", namespace)
    assert (code, codes(report)) == (1, ["IfNotPresentPrivateImage"])
    assert report["images"][0]["pullPolicy"] == report["images"][0]["defaultPullPolicy"] == "IfNotPresent"
    code, _, _ = doctor(kubeconfig, "-n", namespace, "--fail-on", "error")
    assert code == 0


def test_credential_not_ready_suspended_and_in_conflict(cluster, operator, kubeconfig, fresh_namespaces,
                                                       wait_for):
    not_ready, suspended, conflict = fresh_namespaces(3)
    broken = credential(cluster, not_ready, registry_for(not_ready), source=False)
    wait_for(lambda: cluster.ready(broken).get("reason") == "SourceNotFound", message="SourceNotFound")
    held = credential(cluster, suspended, registry_for(suspended), suspend=True)
    wait_for(lambda: cluster.ready(held).get("reason") == "Suspended", message="Suspended")
    cluster.put_source("taken", namespace=conflict, type_="kubernetes.io/dockerconfigjson",
                       data={".dockerconfigjson": "e30="})
    contested = credential(cluster, conflict, registry_for(conflict), target={"secretName": "taken"})
    wait_for(lambda: cluster.ready(contested).get("reason") == "Conflict", message="Conflict")
    for namespace in (not_ready, suspended, conflict):
        wait_for(lambda ns=namespace: cluster.pull_secrets(ns) is not None, message="default SA")
        pod(cluster, namespace, f"{registry_for(namespace)}/app:v1")
    code, report, _ = doctor(kubeconfig, "-A")
    assert code == 1
    by_namespace = {f["namespace"]: f["code"] for f in report["findings"]}
    assert by_namespace[not_ready] == "CredentialNotReady"
    assert by_namespace[suspended] == "CredentialSuspended"
    assert by_namespace[conflict] == "CopyConflict"


def test_excluded_namespace(cluster, operator, kubeconfig, namespace):
    registry = registry_for(namespace)
    name = credential(cluster, namespace, registry, excludeNamespaces=[namespace])
    pod(cluster, namespace, f"{registry}/app:v1")
    code, report, _ = doctor(kubeconfig, "-n", namespace)
    assert (code, codes(report)) == (1, ["NamespaceNotMatched"])
    assert name in report["findings"][0]["message"]
    assert "excludeNamespaces" in report["findings"][0]["evidence"][0]


def test_table_output_and_the_kubectl_plugin(cluster, operator, kubeconfig, namespace):
    pod(cluster, namespace, "private.registry.test/app:v1", pull_secrets=("absent",))
    plugin_dir = Path(sys.executable).parent  # kubectl-regcred is installed next to python
    # kubectl passes no flags to a plugin, only its environment: $KUBECONFIG finds the cluster.
    env = {**os.environ, "PATH": f"{plugin_dir}{os.pathsep}{os.environ['PATH']}", "KUBECONFIG": kubeconfig}
    result = subprocess.run(["kubectl", "regcred", "doctor", "-n", namespace],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "PullSecretMissing" in result.stdout and "\033[" not in result.stdout
    assert result.stdout.splitlines()[0].split()[:3] == ["NAMESPACE", "POD", "CONTAINER"]


def test_usage_and_access_errors_exit_2(kubeconfig, control_plane, namespace, tmp_path):
    assert doctor(kubeconfig, "pod/nope", "-n", namespace)[0] == 2
    assert doctor(kubeconfig, "deployment/web")[0] == 2
    assert doctor(kubeconfig, "pod/x", "-A")[0] == 2
    assert doctor(str(tmp_path / "missing-kubeconfig"))[0] == 2
    assert doctor(kubeconfig, "--context", "no-such-context")[0] == 2
    nobody = str(control_plane.user_kubeconfig("doctor-nobody"))
    code, _, stderr = doctor(nobody, "-n", namespace)
    assert code == 2 and "403" in stderr
