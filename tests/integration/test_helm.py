"""The Helm chart on the real control plane: lint, install, RBAC, upgrade, uninstall, bad values.

The control plane has no nodes for the Deployment's pods, so the operator runs as the real
`regcred run` process here, with the token of the chart's ServiceAccount and the arguments
of the Deployment that Helm installed: what a pod of the release would run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_fixtures import REPO
from operator_process import OperatorProcess
from rbac_checks import (
    WEBHOOK_CONFIGURATION,
    assert_exactly_granted,
    deprecated_requests,
    exercise_every_permission,
    loopback_admission_args,
    remove_webhook_configuration,
    service_account_user,
    token_kubeconfig,
)
from scenario import GROUP, PLURAL, SERVER, VERSION, Cluster, create_synced, unique

pytestmark = pytest.mark.integration

CHART = str(REPO / "charts" / "regcred")
WRITES = {"create", "update", "patch", "delete"}
# The operator runs on this host: it picks free ports, and its webhook listens on loopback.
HOST_FLAGS = ("--metrics-port", "--health-port", "--admission-listen")


@dataclass(frozen=True)
class Release:
    name: str  # also the name of every object (the chart's fullname)
    namespace: str
    kubeconfig: str  # authenticates as the release's ServiceAccount
    admin_kubeconfig: str

    @property
    def user(self) -> str:
        return service_account_user(self.namespace, self.name)


def exists(read, *args) -> bool:
    try:
        read(*args)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


@pytest.fixture(scope="module")
def release(helm, kubeconfig: str, kube, control_plane, tmp_path_factory) -> Iterator[Release]:
    name = unique("regcred")
    namespace = f"{name}-system"
    helm("install", name, CHART, "--namespace", namespace, "--create-namespace", kubeconfig=kubeconfig)
    token = token_kubeconfig(kubeconfig, control_plane, namespace, name,
                             tmp_path_factory.mktemp("helm") / "release.kubeconfig")
    yield Release(name, namespace, token, kubeconfig)
    helm("uninstall", name, "--namespace", namespace, kubeconfig=kubeconfig, check=False)
    remove_webhook_configuration(kubeconfig)
    Cluster(kube).delete_namespace(namespace)


def release_operator(kube, release: Release, log_path: Path) -> OperatorProcess:
    """`regcred run` as the release's pods run it: the Deployment's args, the SA's token.
    Its webhook configuration is registered afresh (a previous operator's is removed)."""
    deployment = client.AppsV1Api(kube).read_namespaced_deployment(release.name, release.namespace)
    [container] = deployment.spec.template.spec.containers
    args = [arg for arg in container.args if not arg.startswith(HOST_FLAGS)]
    remove_webhook_configuration(release.admin_kubeconfig)
    return OperatorProcess(release.kubeconfig, log_path, namespace=release.namespace,
                           extra_env={"POD_NAMESPACE": release.namespace},
                           extra_args=[*args, *loopback_admission_args()]).start()


def installed_roles(kube, release: Release) -> list[dict[str, Any]]:
    """The ClusterRole and the Role the release installed, as plain dicts."""
    rbac = client.RbacAuthorizationV1Api(kube)
    roles = [rbac.read_cluster_role(release.name),
             rbac.read_namespaced_role(f"{release.name}-events", "default")]
    return [{**kube.sanitize_for_serialization(role), "kind": kind}
            for role, kind in zip(roles, ("ClusterRole", "Role"), strict=True)]


def copy_writes(control_plane, since: int, namespaces: list[str], name: str,
                user: str) -> list[dict[str, Any]]:
    """Writes, after audit event number `since`, to the copies named `name` in `namespaces`
    (by anyone) and to ServiceAccounts there (by the operator)."""
    found = []
    for event in control_plane.audit_events()[since:]:
        ref = event.get("objectRef", {})
        if event.get("verb") not in WRITES or ref.get("namespace") not in namespaces:
            continue
        copy = ref.get("resource") == "secrets" and ref.get("name") == name
        account = ref.get("resource") == "serviceaccounts" and event["user"]["username"] == user
        if copy or account:
            found.append({"verb": event["verb"], "user": event["user"]["username"], **ref})
    return found


def test_the_chart_lints_strictly(helm):
    result = helm("lint", "--strict", CHART)
    assert "0 chart(s) failed" in result.stdout


def test_a_bad_value_is_refused_with_a_message_naming_it_and_nothing_is_installed(helm, kubeconfig, kube):
    name = unique("bad")
    for value, named in (("replicas=two", "/replicas"), ("logFormat=xml", "/logFormat"),
                         ("replica=3", "'replica'")):
        result = helm("install", name, CHART, "--namespace", f"{name}-system", "--create-namespace",
                      "--set", value, kubeconfig=kubeconfig, check=False)
        assert result.returncode != 0, value
        assert "values don't meet the specifications of the schema" in result.stderr
        assert named in result.stderr, result.stderr
    assert helm("status", name, "--namespace", f"{name}-system", kubeconfig=kubeconfig,
                check=False).returncode != 0
    assert not exists(client.RbacAuthorizationV1Api(kube).read_cluster_role, name)


def test_installed_the_operator_works_with_exactly_the_charts_permissions(
        cluster: Cluster, kube, release: Release, control_plane, fresh_namespaces, tmp_path, wait_for):
    assert exists(client.CustomObjectsApi(kube).get_cluster_custom_object, "kopf.dev", "v1",
                  "clusterkopfpeerings", release.name)
    def helm_made(event: dict[str, Any]) -> bool:
        return event.get("userAgent", "").startswith("Helm/")

    assert any(helm_made(event) for event in control_plane.audit_events()), "no request by Helm seen"
    assert deprecated_requests(control_plane, helm_made) == [], "the chart uses a deprecated API"
    process = release_operator(kube, release, tmp_path / "regcred.log")
    try:
        exercise_every_permission(cluster, fresh_namespaces, wait_for, release.namespace,
                                  release.admin_kubeconfig)
    finally:
        process.stop()
    assert_exactly_granted(control_plane, release.user, installed_roles(kube, release), process)


def test_upgrade_with_changed_values_converges_without_rewriting_any_copy(
        helm, kubeconfig, cluster: Cluster, kube, release: Release, control_plane, fresh_namespaces,
        tmp_path, wait_for):
    label = unique("upgrade")
    tenants = fresh_namespaces(2, labels={"tenant": label})
    [sources, bystander] = fresh_namespaces(2)
    process = release_operator(kube, release, tmp_path / "before.log")
    try:
        name = create_synced(cluster, {"tenant": label}, tenants, source_namespace=release.namespace)
    finally:
        process.stop()

    since = len(control_plane.audit_events())
    helm("upgrade", release.name, CHART, "--namespace", release.namespace, "--reuse-values",
         "--set", "replicas=3", "--set", "resources.requests.memory=256Mi",
         "--set", "resources.limits.memory=768Mi",
         "--set", f"sourceNamespaces={{{release.namespace},{sources}}}", kubeconfig=kubeconfig)
    deployment = client.AppsV1Api(kube).read_namespaced_deployment(release.name, release.namespace)
    [container] = deployment.spec.template.spec.containers
    assert deployment.spec.replicas == 3
    assert container.resources.requests["memory"] == "256Mi"
    assert container.resources.limits["memory"] == "768Mi"
    assert f"--source-namespaces={release.namespace},{sources}" in container.args

    # The rollout: the old pods stop, new ones start with the new arguments.
    process = release_operator(kube, release, tmp_path / "after.log")
    elsewhere = unique("cr")
    try:
        # The new allow-list took effect: a source in the added namespace is accepted.
        cluster.put_source(elsewhere, namespace=sources)
        cluster.create_credential(elsewhere, {
            "registries": [{"server": SERVER}], "sourceSecretRef": {"name": elsewhere, "namespace": sources},
            "namespaces": [bystander]})
        wait_for(lambda: cluster.ready(elsewhere).get("status") == "True", timeout=60,
                 message="a CR with its source in the added source namespace is Ready")
        live = len([c for c in cluster.credentials() if not c["metadata"].get("deletionTimestamp")])
        wait_for(lambda: process.metric_sum("regcred_reconciles_total", kind="credential") >= live,
                 timeout=60, message="the new replica has reconciled every CR")
        assert cluster.ready(name).get("status") == "True"
        writes = copy_writes(control_plane, since, tenants, name, release.user)
        by_user = Counter(event["user"]["username"] for event in control_plane.audit_events()[since:]
                          if event.get("verb") in WRITES)
        print(f"upgrade: {len(writes)} writes to the {len(tenants)} copies and their ServiceAccounts; "
              f"all writes by user: {dict(by_user)}")
        assert writes == [], "the upgrade rewrote copies or ServiceAccount entries"
        for credential in (name, elsewhere):
            cluster.delete_credential(credential)
            wait_for(lambda c=credential: cluster.credential(c) is None, message=f"{credential} deleted")
    finally:
        process.stop()


def assert_uninstalled_as_documented(kube, name: str, namespace: str, wait_for) -> None:
    """After `helm uninstall`: what docs/install.md says goes is gone, what it says stays is
    there (the CRDs, regcred's own webhook configuration and certificate, the namespace)."""
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    rbac, custom = client.RbacAuthorizationV1Api(kube), client.CustomObjectsApi(kube)
    extensions = client.ApiextensionsV1Api(kube)
    gone = {
        "Deployment": (apps.read_namespaced_deployment, name, namespace),
        "ServiceAccount": (core.read_namespaced_service_account, name, namespace),
        "ClusterRole": (rbac.read_cluster_role, name),
        "ClusterRoleBinding": (rbac.read_cluster_role_binding, name),
        "Role": (rbac.read_namespaced_role, f"{name}-events", "default"),
        "RoleBinding": (rbac.read_namespaced_role_binding, f"{name}-events", "default"),
        "NetworkPolicy": (client.NetworkingV1Api(kube).read_namespaced_network_policy, name,
                          namespace),
        "PodDisruptionBudget": (client.PolicyV1Api(kube).read_namespaced_pod_disruption_budget,
                                name, namespace),
        "Service": (core.read_namespaced_service, f"{name}-webhook", namespace),
        "ClusterKopfPeering": (custom.get_cluster_custom_object, "kopf.dev", "v1", "clusterkopfpeerings",
                               name),
    }
    for kind, (read, *args) in gone.items():
        wait_for(lambda r=read, a=args: not exists(r, *a), message=f"{kind} removed by helm uninstall")
    for crd in ("registrycredentials.regcred.dev", "clusterkopfpeerings.kopf.dev"):
        assert exists(extensions.read_custom_resource_definition, crd), f"{crd} was deleted"
    # What regcred made itself, not Helm: its webhook configuration and certificate Secret.
    assert exists(client.AdmissionregistrationV1Api(kube).read_mutating_webhook_configuration,
                  WEBHOOK_CONFIGURATION)
    assert exists(core.read_namespaced_secret, f"{name}-webhook-tls", namespace)
    assert exists(core.read_namespace, namespace)


def test_uninstall_leaves_the_crds_the_credentials_and_their_copies(
        helm, kubeconfig, cluster: Cluster, kube, release: Release, fresh_namespaces, tmp_path, wait_for):
    label = unique("uninstall")
    [tenant] = fresh_namespaces(1, labels={"tenant": label})
    process = release_operator(kube, release, tmp_path / "regcred.log")
    try:
        name = create_synced(cluster, {"tenant": label}, [tenant], source_namespace=release.namespace)
    finally:
        process.stop()  # the pods go with the uninstall
    try:
        helm("uninstall", release.name, "--namespace", release.namespace, kubeconfig=kubeconfig)
        assert_uninstalled_as_documented(kube, release.name, release.namespace, wait_for)
        credential = cluster.credential(name)
        assert credential is not None and credential["metadata"].get("finalizers")
        assert cluster.secret(tenant, name) is not None
        assert cluster.pull_secrets(tenant) == [name]
        assert release.name not in helm("list", "--namespace", release.namespace, "--short",
                                        kubeconfig=kubeconfig).stdout
    finally:
        # What docs/install.md says to do when regcred is gone already: drop the finalizer.
        custom = client.CustomObjectsApi(kube)
        custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"metadata": {"finalizers": None}},
                                           _content_type="application/merge-patch+json")
        cluster.delete_credential(name)
        wait_for(lambda: cluster.credential(name) is None, message="CR deleted")
