"""regcred as users run it: the image built from the Dockerfile, pulled privately by the node
with the chart's imagePullSecrets, installed with `helm install`, two replicas Ready through
the chart's probes, the webhook reached by the API server through the chart's Service, and
in-cluster config from the Pod's ServiceAccount token (scripts/incluster.py).

One cluster for the module (its own control plane, node with a pod network, and registry);
the tests run in file order and the last one uninstalls the release. Numbers (failover
time, the upgrade's counts) are printed for docs/testing.md, never asserted beyond deadlines.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client, config
from node_fixtures import Pods, require
from scenario import Cluster, password, unique
from test_helm import assert_uninstalled_as_documented, copy_writes

from regcred_dev import images
from regcred_dev.incluster import CHART, NAMESPACE, PULL_SECRET, RELEASE, InCluster
from support.processes import start_or_fail
from support.wait import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.node]

TEST_USER = "robot"
TEST_REPOSITORY, TEST_TAG = "team/success", "1"


@pytest.fixture(scope="module")
def incluster(request: pytest.FixtureRequest) -> Iterator[InCluster]:
    from regcred_dev import image
    from regcred_dev.node import Node
    from regcred_dev.registry import Registry

    require(Node.unavailable_reason() or image.unavailable_reason() or Registry.unavailable_reason())
    started = start_or_fail(InCluster().start, "regcred's release did not come up")
    yield started
    started.stop(failed=request.session.testsfailed > 0)


@pytest.fixture(scope="module")
def api(incluster: InCluster) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=str(incluster.plane.kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture(scope="module")
def tenants(incluster: InCluster, api: client.ApiClient) -> dict[str, str]:
    """A RegistryCredential for the run's registry (user `robot`, whose test image prints
    SUCCESS) selecting namespaces labelled `tenant=<label>`, every ServiceAccount in them."""
    registry = incluster.registry
    secret = password("incluster")
    registry.set_password(TEST_USER, secret)
    image = registry.push(images.success_image(), TEST_REPOSITORY, TEST_TAG, TEST_USER)
    cluster = Cluster(api)
    name, label = unique("cr"), unique("tenant")
    cluster.put_source(name, username=TEST_USER, secret=secret)
    cluster.create_credential(name, {"registries": [{"server": registry.host}],
                                     "sourceSecretRef": {"name": name}, "serviceAccounts": ["*"],
                                     "namespaceSelector": {"matchLabels": {"tenant": label}}})
    wait_for(lambda: cluster.ready(name).get("status") == "True", timeout=60, message=f"{name} Ready")
    return {"name": name, "label": label, "image": image, "password": secret}


def regcred_user() -> str:
    return f"system:serviceaccount:{NAMESPACE}:{RELEASE}"


def onboarded_at_birth(incluster: InCluster, cluster: Cluster, namespace: str, name: str) -> bool:
    """The namespace's copy exists and its `default` ServiceAccount was created with our entry
    (the webhook's doing: regcred never wrote to it afterwards)."""
    if name not in (cluster.pull_secrets(namespace) or []) or cluster.secret(namespace, name) is None:
        return False
    later = [event for event in incluster.plane.audit_events()
             if event.get("verb") in ("update", "patch") and event["user"]["username"] == regcred_user()
             and event.get("objectRef", {}).get("resource") == "serviceaccounts"
             and event["objectRef"].get("namespace") == namespace]
    assert later == [], f"regcred wrote to {namespace}'s ServiceAccount after it was created: {later}"
    return True


def new_tenant(cluster: Cluster, tenants: dict[str, str]) -> str:
    namespace = unique("tenant")
    cluster.create_namespace(namespace, {"tenant": tenants["label"]})
    return namespace


def onboarded_tenant(incluster: InCluster, cluster: Cluster, tenants: dict[str, str]) -> str:
    """A new tenant namespace, once onboarded at birth."""
    namespace = new_tenant(cluster, tenants)
    wait_for(lambda: onboarded_at_birth(incluster, cluster, namespace, tenants["name"]), timeout=60,
             message=f"{namespace} onboarded")
    return namespace


def test_the_release_runs_the_built_image_pulled_with_the_charts_pull_secret(incluster: InCluster,
                                                                             api: client.ApiClient):
    pods = incluster.wait_ready(60)
    assert len(pods) == 2
    for pod in pods:
        spec = pod["spec"]
        [container] = spec["containers"]
        assert container["image"] == incluster.image_reference
        assert spec["imagePullSecrets"] == [{"name": PULL_SECRET}]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["securityContext"]["runAsUser"] == 65532
        assert not spec.get("hostNetwork"), "each replica has its own network namespace and address"
        # In-cluster config: the Pod's ServiceAccount token, nothing mounted or set besides.
        assert spec["serviceAccountName"] == RELEASE
        assert [m["mountPath"] for m in container["volumeMounts"]] == [
            "/tmp", "/var/run/secrets/kubernetes.io/serviceaccount"]
        assert {env["name"] for env in container.get("env", [])} == {"POD_NAMESPACE"}
        [status] = pod["status"]["containerStatuses"]
        assert status["ready"] and status["restartCount"] == 0
    # The image was a private pull: the registry refuses it without credentials.
    manifest = f"/v2/platform/regcred/manifests/{incluster.version}"
    assert incluster.registry.status(manifest, None) == 401
    # The image's own CLI prints the package's version (one more private pull).
    name = unique("version")
    client.CoreV1Api(api).create_namespaced_pod(NAMESPACE, {
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "imagePullSecrets": [{"name": PULL_SECRET}],
                 "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{"name": "regcred", "image": incluster.image_reference,
                                 "command": ["regcred", "--version"],
                                 "securityContext": {"allowPrivilegeEscalation": False,
                                                     "readOnlyRootFilesystem": True,
                                                     "capabilities": {"drop": ["ALL"]}}}]}})
    core = client.CoreV1Api(api)
    wait_for(lambda: core.read_namespaced_pod(name, NAMESPACE).status.phase == "Succeeded", timeout=90,
             message="the `regcred --version` pod Succeeded")
    assert Pods(api, wait_for).logs(NAMESPACE, name).strip() == f"regcred {incluster.version}"
    core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
    print(f"steps: {incluster.timings}; image {incluster.image_archive.stat().st_size / 1e6:.0f} MB")


def test_a_tenant_is_onboarded_through_the_service_routed_webhook_and_its_pod_pulls(
        incluster: InCluster, api: client.ApiClient, tenants: dict[str, str]):
    cluster = Cluster(api)
    webhook_calls = incluster.network.proxied
    namespace = onboarded_tenant(incluster, cluster, tenants)
    assert incluster.network.proxied > webhook_calls, "the API server never called the webhook"
    pods = Pods(api, wait_for)
    pod = pods.run(namespace, tenants["image"])
    pods.wait_succeeded(namespace, pod)
    assert pods.logs(namespace, pod).strip() == "SUCCESS"


def test_a_rotation_reaches_a_fresh_pods_pull(incluster: InCluster, api: client.ApiClient,
                                              tenants: dict[str, str]):
    cluster = Cluster(api)
    namespace = onboarded_tenant(incluster, cluster, tenants)
    rotated = password("rotated")
    incluster.registry.set_password(TEST_USER, rotated)
    cluster.rotate_source(tenants["name"], rotated)
    wait_for(lambda: cluster.docker_password(namespace, tenants["name"], incluster.registry.host) == rotated,
             timeout=60, message="the copy carries the rotated password")
    pods = Pods(api, wait_for)
    pod = pods.run(namespace, tenants["image"])
    pods.wait_succeeded(namespace, pod)


def test_metrics_are_scraped_from_the_pod(incluster: InCluster):
    for pod in incluster.ready_pods():
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        # From the pod network, at the Pod's address and annotated port, as Prometheus scrapes.
        status, text = incluster.http_get(pod["status"]["podIP"], int(annotations["prometheus.io/port"]),
                                          "/metrics")
        assert status == 200
        assert "regcred_" in text, text[:500]


def test_the_pods_logs_are_json_lines_without_secret_material(incluster: InCluster, tenants: dict[str, str]):
    secrets = [incluster.registry_password, tenants["password"]]
    for pod in incluster.pods():
        logs = incluster.kubectl("logs", "-n", NAMESPACE, pod["metadata"]["name"])
        lines = [line for line in logs.splitlines() if line.strip()]
        assert lines, "no log lines"
        for line in lines:
            assert isinstance(json.loads(line), dict), line
        for secret in secrets:
            assert secret not in logs, "a password is in the operator's logs"


def test_failover_when_the_active_pod_is_deleted(incluster: InCluster, api: client.ApiClient,
                                                 tenants: dict[str, str]):
    cluster = Cluster(api)
    active = wait_for(incluster.active_pod, timeout=60, message="an active replica")
    started = time.monotonic()
    incluster.kubectl("delete", "pod", "-n", NAMESPACE, active, "--wait=false")
    namespace = new_tenant(cluster, tenants)
    wait_for(lambda: cluster.secret(namespace, tenants["name"]) is not None, timeout=120,
             message=f"{namespace}'s copy after the active pod {active} was deleted")
    took = time.monotonic() - started
    taken_over = incluster.active_pod()
    print(f"failover: {active} deleted; {namespace} onboarded {took:.1f}s later; active now {taken_over}")
    assert taken_over != active
    wait_for(lambda: onboarded_at_birth(incluster, cluster, namespace, tenants["name"]), timeout=60,
             message=f"{namespace} onboarded")
    incluster.wait_ready(120)  # the ReplicaSet's replacement


def test_helm_upgrade_rolls_the_pods_with_the_webhook_available_throughout(
        incluster: InCluster, api: client.ApiClient, tenants: dict[str, str]):
    cluster, core = Cluster(api), client.CoreV1Api(api)
    namespace = onboarded_tenant(incluster, cluster, tenants)
    before = {pod["metadata"]["name"] for pod in incluster.pods()}
    since = len(incluster.plane.audit_events())
    created: list[str] = []
    done = threading.Event()

    def create_accounts() -> None:  # ServiceAccounts born while the pods roll
        while not done.is_set():
            name = unique("sa")
            core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
            created.append(name)
            done.wait(0.25)  # a steady rate of creations, not synchronisation

    creator = threading.Thread(target=create_accounts, daemon=True)
    creator.start()
    started = time.monotonic()
    try:
        incluster.helm("upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--reuse-values",
                       "--set", "logLevel=debug")
        wait_for(lambda: not before & {pod["metadata"]["name"] for pod in incluster.pods()}, timeout=240,
                 interval=0.5, message="every old pod replaced")
        incluster.wait_ready(120)
    finally:
        done.set()
        creator.join()
    took = time.monotonic() - started
    entries = {name: tenants["name"] in (cluster.pull_secrets(namespace, name) or []) for name in created}
    without = sorted(name for name, has in entries.items() if not has)
    writes = copy_writes(incluster.plane, since, [namespace], tenants["name"], regcred_user())
    print(f"upgrade: rollout {took:.1f}s; {len(created)} ServiceAccounts created during it, "
          f"{len(created) - len(without)} with the entry, {len(without)} without; "
          f"{len(writes)} writes to existing copies or ServiceAccounts")
    assert len(created) >= 10
    assert without == [], f"ServiceAccounts created without the entry during the rollout: {without}"
    assert writes == [], f"the upgrade wrote to existing copies or ServiceAccounts: {writes}"
    assert all("--log-level=debug" in pod["spec"]["containers"][0]["args"] for pod in incluster.pods())


def test_helm_uninstall_leaves_what_the_docs_say(incluster: InCluster, api: client.ApiClient,
                                                 tenants: dict[str, str]):
    cluster = Cluster(api)
    namespace = onboarded_tenant(incluster, cluster, tenants)
    incluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE)
    assert_uninstalled_as_documented(api, RELEASE, NAMESPACE, wait_for)
    wait_for(lambda: incluster.pods() == [], timeout=120, message="the release's pods gone")
    assert cluster.secret(namespace, tenants["name"]) is not None, "a copy went with the uninstall"
    assert cluster.pull_secrets(namespace) == [tenants["name"]]
