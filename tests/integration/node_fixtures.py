"""Fixtures for pulls on a real node: the node, the private registry, the private image.

    node           scripts/node.py: containerd + kubelet, registered as Node `localhost`
    registry       scripts/regcred_dev/registry.py: TLS from the run's CA, htpasswd user `robot`
    private_image  `<registry.host>/team/success:1`, prints SUCCESS (pushed by the fixture)
    pods           `Pods`: create pods on the node and read what the kubelet did with them

Tests that use them are marked `node` automatically (`pytest -m node` runs them alone,
`-m "not node"` leaves them out). A node that cannot run here (not root, packages missing)
fails the tests with the reason when CI=true, and skips them with the reason otherwise;
a node that should run but does not start always fails.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from scenario import password, unique

from regcred_dev import images
from regcred_dev.node import NODE_NAME, Node
from regcred_dev.registry import Registry
from support.processes import start_or_fail

# conftest star-imports this module: export the fixtures and helpers, never a name that
# could shadow a conftest fixture.
__all__ = ["REGISTRY_USER", "Pods", "mark_node_tests", "node", "pods", "private_image", "registry",
           "start_registry"]
NODE_FIXTURES = {"node", "registry", "private_image", "pods"}
REGISTRY_USER = "robot"
PRIVATE_REPOSITORY, PRIVATE_TAG = "team/success", "1"
PULL_REFUSED = {"ErrImagePull", "ImagePullBackOff"}


def mark_node_tests(items: list[pytest.Item]) -> None:
    """conftest's collection hook calls this: every test using a node fixture is `node`."""
    for item in items:
        if NODE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.node)


def require(reason: str | None) -> None:
    """Where the node or the registry cannot run: fail when CI=true, skip otherwise."""
    if reason:
        reason += '; or leave these tests out: -m "not node"'
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot run here: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def node(control_plane, request: pytest.FixtureRequest) -> Iterator[Node]:
    require(Node.unavailable_reason())
    started = start_or_fail(Node(control_plane).start, "could not start the node")
    yield started
    started.stop(failed=request.session.testsfailed > 0)


def start_registry(control_plane, users: dict[str, str], *, node: Node | None = None, name: str = "registry",
                   config_overrides: dict[str, Any] | None = None) -> Registry:
    """A registry signed by the run's CA (trusted by `node`'s containerd if given). Stop it yourself."""
    started = Registry(control_plane.pki, users, name=name, config_overrides=config_overrides).start()
    if node is not None:
        node.trust_registry(started.host, started.ca)
    return started


@pytest.fixture(scope="session")
def registry(control_plane, request: pytest.FixtureRequest) -> Iterator[Registry]:
    """The private registry, user `REGISTRY_USER` (`registry.login(REGISTRY_USER)`); needs no
    root and no node (the `pods` fixture makes the node trust it)."""
    require(Registry.unavailable_reason())
    started = start_or_fail(lambda: start_registry(control_plane, {REGISTRY_USER: password("registry")}),
                            "could not start the registry")
    yield started
    started.stop(failed=request.session.testsfailed > 0)


@pytest.fixture(scope="session")
def private_image(registry: Registry) -> str:
    """A reference the registry serves only with credentials; the container prints SUCCESS."""
    return registry.push(images.success_image(), PRIVATE_REPOSITORY, PRIVATE_TAG, REGISTRY_USER)


class Pods:
    """Pods on the node (`hostNetwork`, `nodeName`, `imagePullPolicy: Always` unless asked) and what the
    kubelet reports about them: phase, waiting reason, logs, events."""

    def __init__(self, api_client: client.ApiClient, wait_for: Callable[..., Any]) -> None:
        self.core = client.CoreV1Api(api_client)
        self.wait_for = wait_for

    def run(self, namespace: str, image: str, *, service_account: str = "default",
            pull_secrets: tuple[str, ...] = (), pull_policy: str = "Always") -> str:
        """Create a pod that runs `image` once; returns its name. Waits for the
        ServiceAccount first, since admission refuses pods whose account does not exist."""
        self.wait_for(lambda: self._account_exists(namespace, service_account), timeout=60,
                      message=f"ServiceAccount {namespace}/{service_account}")
        name = unique("pull")
        self.core.create_namespaced_pod(namespace, {
            "metadata": {"name": name},
            "spec": {
                "nodeName": NODE_NAME, "hostNetwork": True, "restartPolicy": "Never",
                "serviceAccountName": service_account, "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 0,
                "imagePullSecrets": [{"name": secret} for secret in pull_secrets],
                "containers": [{"name": "app", "image": image, "imagePullPolicy": pull_policy}],
            },
        })
        return name

    def put_pull_secret(self, namespace: str, server: str, login: tuple[str, str], name: str = "pull") -> str:
        """A pull secret made by hand (what `kubectl create secret docker-registry` makes)."""
        auth = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        self.core.create_namespaced_secret(namespace, {
            "metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": json.dumps({"auths": {server: {"auth": auth}}})}})
        return name

    def _account_exists(self, namespace: str, account: str) -> bool:
        try:
            self.core.read_namespaced_service_account(account, namespace)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def state(self, namespace: str, name: str) -> str:
        """`Succeeded`/`Failed`/`Running`, or the container's waiting reason (`ErrImagePull` ...)."""
        pod = self.core.read_namespaced_pod(name, namespace)
        for status in pod.status.container_statuses or []:
            if status.state.waiting and status.state.waiting.reason not in (None, "ContainerCreating"):
                return status.state.waiting.reason
        return pod.status.phase

    def wait_succeeded(self, namespace: str, name: str, timeout: float = 90, *,
                       through_retries: bool = False) -> None:
        """Until the pod Succeeded; AssertionError at once if it failed or its pull was refused
        (`through_retries`: a refused pull is retried by the kubelet, so wait on)."""
        refusals = set() if through_retries else PULL_REFUSED

        def finished() -> bool:
            state = self.state(namespace, name)
            assert state not in refusals | {"Failed"}, (
                f"pod {namespace}/{name} is {state}: {self.event_messages(namespace, name)}")
            return state == "Succeeded"

        self.wait_for(finished, timeout=timeout, message=f"pod {namespace}/{name} Succeeded")

    def wait_refused(self, namespace: str, name: str, timeout: float = 90) -> str:
        """Until the kubelet reports the pull refused; returns the `Failed` event's message."""
        def refused() -> bool:
            state = self.state(namespace, name)
            assert state not in ("Succeeded", "Running"), f"pod {namespace}/{name} ran: {state}"
            return state in PULL_REFUSED

        self.wait_for(refused, timeout=timeout, message=f"pod {namespace}/{name} ErrImagePull")
        return self.wait_for(lambda: self._failed_pull_message(namespace, name), timeout=30,
                             message=f"a Failed event for {namespace}/{name}")

    def _failed_pull_message(self, namespace: str, name: str) -> str:
        return next((message for reason, message in self.events(namespace, name)
                     if reason == "Failed" and "pull" in message.lower()), "")

    def logs(self, namespace: str, name: str) -> str:
        """`kubectl logs` the same way: the API server asks the kubelet."""
        response = self.core.read_namespaced_pod_log(name, namespace, _preload_content=False)
        return response.data.decode()

    def events(self, namespace: str, name: str) -> list[tuple[str, str]]:
        """(reason, message) of the pod's events, oldest first."""
        listed = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind=Pod,involvedObject.name={name}")
        return [(event.reason, event.message or "") for event in listed.items]

    def event_messages(self, namespace: str, name: str) -> list[str]:
        return [f"{reason}: {message}" for reason, message in self.events(namespace, name)]


@pytest.fixture(scope="session")
def pods(kube: client.ApiClient, node: Node, registry: Registry, wait_for) -> Pods:
    """Pods on the node, which trusts the session's registry."""
    node.trust_registry(registry.host, registry.ca)
    return Pods(kube, wait_for)
