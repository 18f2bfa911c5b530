"""The install bundle: what a security review and `kubectl apply -k manifests/` rely on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for path in sorted(MANIFESTS.glob("*.yaml")) for doc in documents(path.name)
            if doc.get("kind") == kind]


def test_the_chart_and_the_bundle_carry_exactly_the_crds_in_crds():
    crds = {path.name: path.read_bytes() for path in (REPO / "crds").glob("*.yaml")}
    assert set(crds) == {"registrycredentials.yaml", "clusterkopfpeerings.yaml"}
    chart = {path.name: path.read_bytes() for path in (REPO / "charts" / "regcred" / "crds").glob("*.yaml")}
    bundled = {path.name.removeprefix("crd-"): path.read_bytes() for path in MANIFESTS.glob("crd-*.yaml")}
    assert chart == crds, "run `make manifests`"
    assert bundled == crds, "run `make manifests`"


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_no_wildcards_in_rbac():
    for kind in ("ClusterRole", "Role"):
        for role in by_kind(kind):
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(field, []), (role["metadata"]["name"], rule)


def test_every_cluster_role_rule_says_why():
    text = (MANIFESTS / "rbac.yaml").read_text()
    rules = text.split("kind: ClusterRole\n", 1)[1].split("---", 1)[0]
    lines = rules.splitlines()
    for index, line in enumerate(lines):
        if re.match(r"\s+- apiGroups:", line):
            assert lines[index - 1].strip().startswith("#"), f"rule without a comment: {line}"


def test_the_operator_may_not_touch_what_it_does_not_need():
    [role] = by_kind("ClusterRole")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert ("", "secrets", "patch") not in granted  # copies are replaced with a precondition
    assert ("", "serviceaccounts", "update") not in granted  # only guarded JSON patches
    assert ("", "namespaces", "patch") not in granted
    assert not any(resource in ("pods", "deployments", "nodes") for _, resource, _ in granted)


def test_the_deployment_is_locked_down():
    [deployment] = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    [container] = pod["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]


def test_replicas_and_peering_go_together():
    [deployment] = by_kind("Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    if deployment["spec"]["replicas"] > 1:
        assert "--peering=regcred" in args
        assert [p["metadata"]["name"] for p in by_kind("ClusterKopfPeering")] == ["regcred"]


def test_examples_are_valid_yaml_with_fake_values():
    for path in (MANIFESTS / "examples").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["kind"]
    secret = yaml.safe_load((MANIFESTS / "examples" / "source-secret.yaml").read_text())
    assert secret["stringData"]["password"] == "replace-me"


def test_the_admission_webhook_is_on_and_reachable():
    [deployment] = by_kind("Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert "--admission=true" in container["args"]
    assert "--admission-service=regcred-webhook" in container["args"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    [service] = [s for s in by_kind("Service") if s["metadata"]["name"] == "regcred-webhook"]
    assert service["spec"]["ports"] == [{"name": "webhook", "port": 443, "targetPort": "webhook"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    [policy] = by_kind("NetworkPolicy")
    opened = {port["port"] for rule in policy["spec"]["ingress"] for port in rule.get("ports", [])}
    assert ports["webhook"] in opened
    mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
    assert "/tmp" in mounts  # the certificate files, with a read-only root filesystem
