"""Integration fixtures: one real control plane per session (scripts/controlplane.py).

It is built from Go modules on first use (slow once, cached after) and never skipped: a
control plane that cannot be built or started is a test error, in CI and locally alike.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from regcred_dev.controlplane import ControlPlane
from support import wait
from support.processes import start_or_fail

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration is an integration test (`-m "not integration"`);
    tests on the node are also `node` (`-m "not node"` where containerd cannot run)."""
    for item in items:
        if HERE in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.integration)
    mark_node_tests(items)


# --- the control plane --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager, started once per session."""
    plane = start_or_fail(ControlPlane().start, "could not build or start the control plane")
    plane.put_kubectl_first_on_path()
    yield plane
    plane.stop(failed=request.session.testsfailed > 0)  # keeps the logs when tests failed


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> str:
    """Path of the admin kubeconfig (a str, ready for env vars and subprocess args)."""
    return str(control_plane.kubeconfig)


@pytest.fixture(scope="session")
def kube(kubeconfig: str) -> Iterator[client.ApiClient]:
    """An official `kubernetes` ApiClient for the admin (system:masters)."""
    api_client = config.new_client_from_config(config_file=kubeconfig)
    yield api_client
    api_client.close()


@pytest.fixture
def fresh_namespaces(kube: client.ApiClient, request: pytest.FixtureRequest,
                     ) -> Iterator[Callable[..., list[str]]]:
    """Factory: `fresh_namespaces(count=1, labels=None)` creates uniquely named namespaces
    (test name + random suffix) and deletes them after the test."""
    core = client.CoreV1Api(kube)
    prefix = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:40].strip("-")
    made: list[str] = []

    def make(count: int = 1, labels: dict[str, str] | None = None) -> list[str]:
        names = [f"{prefix}-{uuid.uuid4().hex[:6]}" for _ in range(count)]
        for name in names:
            core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})
            made.append(name)
        return names

    yield make
    for name in made:
        try:
            core.delete_namespace(name)
        except ApiException as error:
            if error.status != 404:
                raise


@pytest.fixture(scope="session")
def wait_for() -> Callable[..., object]:
    """`wait_for(predicate, *args, timeout=30, interval=0.1, message="")`: poll until truthy."""
    return wait.wait_for


# --- the operator -------------------------------------------------------------------------------
# Fixtures that run the real operator live in operator_fixtures.py and build on the ones above.
# The node, the private registry and the private image: node_fixtures.py.
from node_fixtures import *  # noqa: E402, F403
from node_fixtures import mark_node_tests  # noqa: E402
from operator_fixtures import *  # noqa: E402, F403
