"""Fixtures that run the real operator; conftest imports them next to the control plane's."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from operator_process import OperatorProcess
from scenario import OPERATOR_NAMESPACE, Cluster, unique

from regcred_dev.controlplane import install_crds
from support import wait

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cluster(kube) -> Cluster:
    return Cluster(kube)


@pytest.fixture(scope="session")
def crd_installed(kubeconfig: str, cluster: Cluster) -> None:
    """The CRDs from crds/ (ours and kopf's peering), applied server-side, and the operator's
    namespace."""
    install_crds(kubeconfig)
    if OPERATOR_NAMESPACE not in {ns.metadata.name for ns in cluster.core.list_namespace().items}:
        cluster.create_namespace(OPERATOR_NAMESPACE)


@pytest.fixture(scope="module")
def operator(kubeconfig: str, crd_installed: None, tmp_path_factory) -> Iterator[OperatorProcess]:
    """The real `regcred run`, one per test module; its log is kept for hygiene checks."""
    log_path = tmp_path_factory.mktemp("operator") / "regcred.log"
    process = OperatorProcess(kubeconfig, log_path).start()
    yield process
    process.stop()


def audited_operator(control_plane, user: str, tmp_path_factory) -> Iterator[OperatorProcess]:
    """`regcred run` under an identity of its own (`user`), so the API server's audit log
    tells its requests from the test's. For module fixtures: `yield from audited_operator(...)`."""
    kubeconfig = str(control_plane.user_kubeconfig(user, ("system:masters",)))
    process = OperatorProcess(kubeconfig, tmp_path_factory.mktemp(user) / "regcred.log").start()
    yield process
    process.stop()


@pytest.fixture
def remove_new_credentials(cluster: Cluster) -> Iterator[None]:
    """Delete the CRs a test made, so later tests (and restarts) see only their own.
    Modules that want it use it autouse: `pytestmark = pytest.mark.usefixtures(...)`."""
    before = {c["metadata"]["name"] for c in cluster.credentials()}
    yield
    for body in cluster.credentials():
        if body["metadata"]["name"] not in before:
            cluster.delete_credential(body["metadata"]["name"])


@pytest.fixture
def peering(kubeconfig: str, crd_installed: None) -> None:
    """kopf's ClusterKopfPeering CRD and the "regcred" peering object from manifests/."""
    manifest = str(REPO / "manifests" / "kopf-peering.yaml")
    kubectl = ["kubectl", "--kubeconfig", kubeconfig]
    subprocess.run([*kubectl, "apply", "--server-side", "-f", manifest], check=False, capture_output=True)
    subprocess.run([*kubectl, "wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev",
                    "--timeout=60s"], check=True, capture_output=True)
    subprocess.run([*kubectl, "apply", "--server-side", "-f", manifest], check=True, capture_output=True)


@dataclass
class Tenant:
    """A label unique to one test; `tenant(n, **labels)` makes n namespaces carrying it and
    returns them once their `default` ServiceAccounts exist (`with_service_account=False`:
    at once, for tests of what happens when it appears later)."""

    cluster: Cluster
    make_namespaces: Callable[..., list[str]]
    label: str

    @property
    def selector(self) -> dict[str, str]:
        return {"tenant": self.label}

    def __call__(self, count: int = 1, *, with_service_account: bool = True,
                 **extra_labels: str) -> list[str]:
        names = self.make_namespaces(count, labels={**self.selector, **extra_labels})
        for namespace in names if with_service_account else ():
            wait.wait_for(lambda ns: self.cluster.pull_secrets(ns) is not None, namespace,
                          timeout=60, message=f"default ServiceAccount in {namespace}")
        return names


@pytest.fixture
def tenant(cluster: Cluster, fresh_namespaces: Callable[..., list[str]]) -> Tenant:
    return Tenant(cluster, fresh_namespaces, unique("t"))


@pytest.fixture
def cleanup_namespaces(cluster: Cluster) -> Iterator[list[str]]:
    """Namespaces a test made by hand, deleted after it."""
    names: list[str] = []
    yield names
    for name in names:
        cluster.delete_namespace(name)
