"""Pull-time delivery on the real node: the kubelet runs regcred-credential-provider with the
Pod's ServiceAccount token, the plugin asks the endpoint in `regcred run`, which checks the token
with a real TokenReview and answers from the CRs (spec.delivery CredentialProvider).

The module restarts the session's kubelet with the CredentialProviderConfig (scripts/node.py,
`use_credential_provider`) and the node RBAC of manifests/examples/, and restores it after.
The refusal tests talk to the endpoint with tokens from real TokenRequests.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from node_fixtures import REGISTRY_USER
from operator_process import OperatorProcess
from scenario import OPERATOR_NAMESPACE, PASSWORD_MARK, Cluster, password, unique

from regcred_dev.node import NODE_NAME
from regcred_dev.nodeconfig import CredentialProvider
from regcred_dev.process import free_port

pytestmark = [pytest.mark.integration, pytest.mark.node, pytest.mark.usefixtures("remove_new_credentials")]

REPO = Path(__file__).resolve().parents[2]
AUDIENCE = "regcred.dev/credential-provider"
NODE_RBAC = REPO / "manifests" / "examples" / "credential-provider-node-rbac.yaml"
PLUGIN = Path(sys.executable).parent / "regcred-credential-provider"
CACHE_SECONDS = 10  # how long the kubelet reuses an answer: rotation reaches pulls after this


class Endpoint:
    def __init__(self, url: str, ca: Path) -> None:
        self.url, self.ca = url, ca

    def ask(self, token: str, image: str) -> tuple[dict[str, Any], str]:
        """What the real plugin answers the kubelet for this token and image, and its stderr."""
        request = {"apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                   "kind": "CredentialProviderRequest", "image": image, "serviceAccountToken": token}
        done = subprocess.run([str(PLUGIN), "--url", self.url, "--ca-file", str(self.ca)],
                              input=json.dumps(request), capture_output=True, text=True, timeout=30,
                              check=True)
        return json.loads(done.stdout), done.stderr


@dataclass
class ProviderOperator:
    process: OperatorProcess
    port: int


@pytest.fixture(scope="module")
def provider_operator(kubeconfig: str, crd_installed: None, tmp_path_factory) -> Iterator[ProviderOperator]:
    port = free_port()
    process = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("provider") / "regcred.log", extra_args=[
        "--credential-provider", "true", "--credential-provider-listen", f"127.0.0.1:{port}",
        "--credential-provider-hosts", "127.0.0.1",
        "--credential-provider-cache-seconds", str(CACHE_SECONDS)]).start()
    yield ProviderOperator(process, port)
    process.stop()


@pytest.fixture(scope="module")
def endpoint(provider_operator, cluster: Cluster, tmp_path_factory, wait_for) -> Endpoint:
    port = provider_operator.port
    wait_for(lambda: _listening(port), timeout=60, message="the credential provider endpoint listening")
    secret = cluster.secret(OPERATOR_NAMESPACE, "regcred-provider-tls")
    assert secret is not None, "regcred made no regcred-provider-tls Secret"
    ca = tmp_path_factory.mktemp("provider-ca") / "ca.crt"
    ca.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
    return Endpoint(f"https://127.0.0.1:{port}/v1/credentials", ca)


@pytest.fixture(scope="module")
def provider_node(node, endpoint: Endpoint, registry, kubeconfig: str) -> Iterator[None]:
    """The session's kubelet, restarted with regcred's credential provider for the registry."""
    kubectl = ["kubectl", "--kubeconfig", kubeconfig]
    subprocess.run([*kubectl, "apply", "-f", str(NODE_RBAC)], check=True, capture_output=True)
    node.trust_registry(registry.host, registry.ca)
    node.use_credential_provider(CredentialProvider(plugin=PLUGIN, url=endpoint.url, ca=endpoint.ca,
                                                    match_images=(registry.host,), audience=AUDIENCE))
    yield
    node.use_credential_provider(None)
    subprocess.run([*kubectl, "delete", "-f", str(NODE_RBAC)], check=False, capture_output=True)


def provider_credential(cluster: Cluster, registry, source: str, label: str, **spec) -> str:
    name = unique("cr")
    cluster.create_credential(name, {
        "registries": [{"server": registry.host}], "sourceSecretRef": {"name": source},
        "namespaceSelector": {"matchLabels": {"provider-test": label}},
        "delivery": "CredentialProvider", **spec})
    return name


def source_for(cluster: Cluster, user: str, secret: str) -> str:
    name = unique("src")
    cluster.put_source(name, username=user, secret=secret)
    return name


def wait_ready(cluster: Cluster, name: str, wait_for) -> None:
    wait_for(lambda: cluster.ready(name).get("status") == "True", timeout=60, message=f"{name} Ready")


def no_pull_secret_anywhere(cluster: Cluster, namespace: str) -> None:
    assert cluster.core.list_namespaced_secret(namespace).items == []
    for account in cluster.core.list_namespaced_service_account(namespace).items:
        assert not account.image_pull_secrets, account.metadata.name


# --- pulls on the node ----------------------------------------------------------------------

def test_a_pod_with_no_pull_secret_anywhere_pulls_through_the_provider(
        cluster, provider_node, registry, private_image, pods, fresh_namespaces, wait_for):
    label = unique("p")
    [namespace] = fresh_namespaces(1, labels={"provider-test": label})
    name = provider_credential(cluster, registry, source_for(cluster, *registry.login(REGISTRY_USER)), label)
    wait_ready(cluster, name, wait_for)

    pulled = pods.run(namespace, private_image)
    pods.wait_succeeded(namespace, pulled)
    assert pods.logs(namespace, pulled).strip() == "SUCCESS"
    no_pull_secret_anywhere(cluster, namespace)
    assert not cluster.core.read_namespaced_pod(pulled, namespace).spec.image_pull_secrets
    wait_for(lambda: ((cluster.credential(name) or {}).get("status", {}).get("pullTime") or {})
             .get("answered", 0) >= 1, timeout=30, message="status.pullTime counts the answer")


def test_unmatched_namespace_and_service_account_get_401(
        cluster, provider_node, registry, private_image, pods, fresh_namespaces, wait_for):
    label = unique("p")
    [matched] = fresh_namespaces(1, labels={"provider-test": label})
    [unmatched] = fresh_namespaces(1)
    cluster.core.create_namespaced_service_account(matched, {"metadata": {"name": "builder"}})
    name = provider_credential(cluster, registry, source_for(cluster, *registry.login(REGISTRY_USER)), label)
    wait_ready(cluster, name, wait_for)

    for namespace, account in ((unmatched, "default"), (matched, "builder")):
        refused = pods.run(namespace, private_image, service_account=account)
        message = pods.wait_refused(namespace, refused)
        assert "401 Unauthorized" in message, message
    wait_for(lambda: ((cluster.credential(name) or {}).get("status", {}).get("pullTime") or {})
             .get("refused", 0) >= 1, timeout=30, message="status.pullTime counts the refusal")


def test_a_pod_created_before_its_credential_recovers_on_the_kubelets_retry(
        cluster, provider_node, registry, private_image, pods, fresh_namespaces, wait_for):
    """The case copies can never fix: the Pod's pull secrets were fixed at its creation."""
    label = unique("p")
    [namespace] = fresh_namespaces(1, labels={"provider-test": label})
    early = pods.run(namespace, private_image)
    assert "401 Unauthorized" in pods.wait_refused(namespace, early)

    name = provider_credential(cluster, registry, source_for(cluster, *registry.login(REGISTRY_USER)), label)
    wait_ready(cluster, name, wait_for)
    pods.wait_succeeded(namespace, early, timeout=240, through_retries=True)
    assert pods.logs(namespace, early).strip() == "SUCCESS"


def test_rotation_reaches_the_next_pull_after_the_cache_duration(
        cluster, provider_node, registry, private_image, pods, fresh_namespaces, wait_for):
    label = unique("p")
    [namespace] = fresh_namespaces(1, labels={"provider-test": label})
    user, old = unique("rotated"), password("old")
    registry.set_password(user, old)
    source = source_for(cluster, user, old)
    name = provider_credential(cluster, registry, source, label)
    wait_ready(cluster, name, wait_for)
    before = pods.run(namespace, private_image)
    pods.wait_succeeded(namespace, before)

    new = password("new")
    registry.set_password(user, new)
    assert registry.status("/v2/", (user, old)) == 401  # the old password is refused from now on
    rendered = (cluster.credential(name) or {})["status"]["sourceResourceVersion"]
    cluster.rotate_source(source, new)
    wait_for(lambda: (cluster.credential(name) or {})["status"]["sourceResourceVersion"] != rendered,
             timeout=60, message="regcred rendered the rotated source")
    after = pods.run(namespace, private_image)
    # The kubelet may still hold the old answer for CACHE_SECONDS (its pull then fails with
    # 401 and is retried after the back-off); the pull after that uses the new password.
    pods.wait_succeeded(namespace, after, timeout=CACHE_SECONDS + 120, through_retries=True)
    assert pods.logs(namespace, after).strip() == "SUCCESS"


def test_switching_from_secrets_to_the_provider_removes_copies_and_entries_and_pods_keep_pulling(
        cluster, provider_node, registry, private_image, pods, fresh_namespaces, wait_for):
    label = unique("p")
    [namespace] = fresh_namespaces(1, labels={"provider-test": label})
    name = provider_credential(cluster, registry, source_for(cluster, *registry.login(REGISTRY_USER)), label,
                               delivery="Secrets")
    wait_for(lambda: name in (cluster.pull_secrets(namespace) or []), timeout=60, message="our entry")
    with_copy = pods.run(namespace, private_image)
    pods.wait_succeeded(namespace, with_copy)

    cluster.patch_credential(name, {"delivery": "CredentialProvider"})
    wait_for(lambda: cluster.secret(namespace, name) is None and not cluster.pull_secrets(namespace),
             timeout=60, message="the copy and our entry removed")
    no_pull_secret_anywhere(cluster, namespace)
    through_provider = pods.run(namespace, private_image)
    pods.wait_succeeded(namespace, through_provider)
    assert pods.logs(namespace, through_provider).strip() == "SUCCESS"


# --- refusals at the endpoint, with real tokens ----------------------------------------------

def bound_token(cluster: Cluster, namespace: str, pod: str, audience: str = AUDIENCE,
                account: str = "default") -> str:
    uid = cluster.core.read_namespaced_pod(pod, namespace).metadata.uid
    request = {"spec": {"audiences": [audience], "expirationSeconds": 600,
                        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}}}
    return cluster.core.create_namespaced_service_account_token(account, namespace, request).status.token


def parked_pod(cluster: Cluster, namespace: str, wait_for) -> str:
    """A Pod on the node that never starts (its image is never pulled: `Never`)."""
    wait_for(lambda: cluster.pull_secrets(namespace) is not None, timeout=60, message="default SA")
    name = unique("parked")
    cluster.core.create_namespaced_pod(namespace, {
        "metadata": {"name": name},
        "spec": {"nodeName": NODE_NAME, "hostNetwork": True, "automountServiceAccountToken": False,
                 "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "app", "image": "localhost/regcred-absent:1",
                                 "imagePullPolicy": "Never"}]}})
    return name


def test_the_endpoint_refuses_what_a_kubelet_for_a_matched_pod_would_not_send(
        cluster, endpoint, provider_operator, registry, private_image, fresh_namespaces, wait_for):
    label = unique("p")
    [matched] = fresh_namespaces(1, labels={"provider-test": label})
    [other] = fresh_namespaces(1)
    secret = registry.login(REGISTRY_USER)[1]
    name = provider_credential(cluster, registry, source_for(cluster, REGISTRY_USER, secret), label)
    wait_ready(cluster, name, wait_for)
    pod = parked_pod(cluster, matched, wait_for)

    answer, _ = endpoint.ask(bound_token(cluster, matched, pod), private_image)
    assert answer["auth"] == {registry.host: {"username": REGISTRY_USER, "password": secret}}
    assert answer["cacheDuration"] == f"{CACHE_SECONDS}s"

    unbound = cluster.core.create_namespaced_service_account_token(
        "default", matched, {"spec": {"audiences": [AUDIENCE]}}).status.token
    gone = parked_pod(cluster, matched, wait_for)
    gone_token = bound_token(cluster, matched, gone)
    cluster.core.delete_namespaced_pod(gone, matched, grace_period_seconds=0)
    wait_for(lambda: _pod_gone(cluster, matched, gone), timeout=60, message=f"{gone} deleted")
    elsewhere = parked_pod(cluster, other, wait_for)
    refusals = {
        "another audience": (bound_token(cluster, matched, pod, audience="https://example.com"),
                             "TokenRejected"),
        "a token not bound to a Pod": (unbound, "NotBoundToPod"),
        "a deleted Pod's token": (gone_token, "TokenRejected"),
        "another namespace's token": (bound_token(cluster, other, elsewhere), "NotMatched"),
    }
    for what, (token, reason) in refusals.items():
        answer, stderr = endpoint.ask(token, private_image)
        assert answer["auth"] == {} and answer["cacheDuration"] == "0s", what
        assert f"refused ({reason})" in stderr, (what, stderr)
        assert token not in stderr and secret not in stderr

    operator = provider_operator.process
    for reason in ("TokenRejected", "NotBoundToPod", "NotMatched"):
        assert operator.metric_sum("regcred_credential_provider_requests_total", result="refused",
                                   reason=reason) >= 1, reason
    assert PASSWORD_MARK not in operator.metrics() and PASSWORD_MARK not in operator.log()


def test_both_replicas_of_a_peered_pair_answer(cluster, kubeconfig, peering, endpoint, registry,
                                               private_image, fresh_namespaces, tmp_path, wait_for):
    """The Service sends a kubelet to either replica; the paused one's own view stands still
    (kopf stops its watches), so it answers from live reads."""
    ports = [free_port(), free_port()]
    flags = ["--credential-provider", "true", "--credential-provider-hosts", "127.0.0.1",
             "--log-level", "debug"]
    replicas = [
        OperatorProcess(kubeconfig, tmp_path / f"r-{port}.log", extra_env={"REGCRED_PEERING": "regcred"},
                        extra_args=[*flags, "--credential-provider-listen", f"127.0.0.1:{port}"]).start()
        for port in ports]
    try:
        label = unique("p")
        [namespace] = fresh_namespaces(1, labels={"provider-test": label})
        secret = registry.login(REGISTRY_USER)[1]
        name = provider_credential(cluster, registry, source_for(cluster, REGISTRY_USER, secret), label)
        wait_ready(cluster, name, wait_for)
        token = bound_token(cluster, namespace, parked_pod(cluster, namespace, wait_for))
        for port in ports:
            wait_for(_listening, port, timeout=60, message=f"replica endpoint on {port}")
            replica_endpoint = Endpoint(f"https://127.0.0.1:{port}/v1/credentials", endpoint.ca)
            answer, stderr = replica_endpoint.ask(token, private_image)
            assert answer["auth"] == {registry.host: {"username": REGISTRY_USER, "password": secret}}, stderr
        assert any("looked again at live reads" in replica.log() for replica in replicas), \
            "the paused standby answered from live reads"
    finally:
        for replica in replicas:
            replica.stop()


def test_without_the_node_rbac_the_kubelet_cannot_get_a_token_for_the_audience(
        control_plane, cluster, fresh_namespaces, kubeconfig, wait_for):
    """The rule manifests/examples/credential-provider-node-rbac.yaml grants, checked as the node."""
    from kubernetes import client, config

    [namespace] = fresh_namespaces(1)
    pod = parked_pod(cluster, namespace, wait_for)
    uid = cluster.core.read_namespaced_pod(pod, namespace).metadata.uid
    as_node = client.CoreV1Api(config.new_client_from_config(
        config_file=str(control_plane.user_kubeconfig(f"system:node:{NODE_NAME}", ("system:nodes",)))))
    request = {"spec": {"audiences": [AUDIENCE],
                        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}}}
    kubectl = ["kubectl", "--kubeconfig", kubeconfig]
    had_rbac = subprocess.run([*kubectl, "get", "-f", str(NODE_RBAC)], capture_output=True).returncode == 0
    subprocess.run([*kubectl, "delete", "--ignore-not-found", "-f", str(NODE_RBAC)], check=True,
                   capture_output=True)
    try:
        with pytest.raises(ApiException) as refused:
            as_node.create_namespaced_service_account_token("default", namespace, request)
        assert refused.value.status == 403
        assert "is not authorized to request tokens for audience" in str(refused.value.body)
        subprocess.run([*kubectl, "apply", "-f", str(NODE_RBAC)], check=True, capture_output=True)
        wait_for(lambda: _try_token(as_node, namespace, request), timeout=30,
                 message="a token once RBAC allows the audience")
    finally:  # as it was: the provider_node fixture may hold it
        verb = "apply" if had_rbac else "delete"
        subprocess.run([*kubectl, verb, "-f", str(NODE_RBAC)], check=False, capture_output=True)


def _try_token(api, namespace: str, request: dict[str, Any]) -> str | None:
    try:
        return api.create_namespaced_service_account_token("default", namespace, request).status.token
    except ApiException as error:
        if error.status == 403:
            return None
        raise


def _pod_gone(cluster: Cluster, namespace: str, name: str) -> bool:
    try:
        cluster.core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
