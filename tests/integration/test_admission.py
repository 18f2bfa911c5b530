"""The ServiceAccount admission webhook on the real control plane, called over TLS.

regcred runs as the real `regcred run --admission true`, listening on loopback and
registering its MutatingWebhookConfiguration itself; kube-controller-manager's deployment
and replicaset controllers create Pods the instant a ServiceAccount exists, which is the
onboarding race the webhook closes (docs/admission.md).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_process import OperatorProcess
from scenario import Cluster, unique

from regcred_dev.process import free_port
from support.wait import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("remove_new_credentials")]

CONFIGURATION = "regcred"
ANNOTATION = "regcred.dev/image-pull-secrets"
IMAGE = "registry.example.com/team/app:1"
ROUNDS, REPLICAS = 20, 10


def admission_env(port: int) -> dict[str, str]:
    return {"REGCRED_ADMISSION": "true", "REGCRED_ADMISSION_LISTEN": f"127.0.0.1:{port}",
            "REGCRED_ADMISSION_URL": f"https://127.0.0.1:{port}"}


def registered_url(kube: client.ApiClient) -> str | None:
    try:
        body = client.AdmissionregistrationV1Api(kube).read_mutating_webhook_configuration(CONFIGURATION)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return body.webhooks[0].client_config.url


def delete_configuration(kube: client.ApiClient) -> None:
    try:
        client.AdmissionregistrationV1Api(kube).delete_mutating_webhook_configuration(CONFIGURATION)
    except ApiException as error:
        if error.status != 404:
            raise


@pytest.fixture
def no_webhook(kube) -> Iterator[None]:
    """No webhook configuration before or after the test: other modules run without one."""
    delete_configuration(kube)
    yield
    delete_configuration(kube)


@pytest.fixture
def start_regcred(kubeconfig, crd_installed, kube, no_webhook, tmp_path,
                  ) -> Iterator[Callable[..., OperatorProcess]]:
    """Factory: `start_regcred(admission=True, port=None, env=None)` runs `regcred run`; with
    admission, waits until the API server's webhook configuration points at it."""
    started: list[OperatorProcess] = []

    def start(admission: bool = True, port: int | None = None,
              env: dict[str, str] | None = None) -> OperatorProcess:
        port = port or free_port()
        extra = {**(admission_env(port) if admission else {}), **(env or {})}
        process = OperatorProcess(kubeconfig, tmp_path / f"regcred-{len(started)}.log",
                                  extra_env=extra)
        started.append(process)
        process.start()
        if admission:
            url = f"https://127.0.0.1:{port}/serviceaccount-pull-secrets"
            wait_for(lambda: registered_url(kube) == url, timeout=30, message="webhook registered")
        return process

    yield start
    for process in started:
        process.stop()
        assert "Traceback" not in process.log(), f"unexpected error in {process.log_path}"


@pytest.fixture
def credential(cluster: Cluster) -> Callable[..., tuple[str, str]]:
    """Factory: a Ready CR matching namespaces labelled tenant=<label>; returns (name, label)."""

    def make(**spec: Any) -> tuple[str, str]:
        name, label = unique("adm"), unique("tenant")
        cluster.put_source(name)
        cluster.create_credential(name, {
            "registries": [{"server": "registry.example.com"}], "sourceSecretRef": {"name": name},
            "namespaceSelector": {"matchLabels": {"tenant": label}}, **spec,
        })
        wait_for(lambda: cluster.ready(name).get("status") == "True", timeout=60,
                 message=f"{name} Ready ({cluster.ready(name)})")
        return name, label

    return make


def service_account(cluster: Cluster, namespace: str,
                    name: str = "default") -> client.V1ServiceAccount | None:
    try:
        return cluster.core.read_namespaced_service_account(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def names(refs: list[Any] | None) -> list[str]:
    return [ref.name for ref in refs or []]


def admitted_by(process: OperatorProcess, namespace: str) -> bool:
    """`process` gave the default ServiceAccount of `namespace` our entry in its admission,
    and never had to patch it in afterwards."""
    lines = [line for line in process.log().splitlines() if f'"{namespace}"' in line]
    return (any('"admitted with pull secret entries"' in line for line in lines)
            and not any('"AddPullSecret"' in line for line in lines))


def deployment(name: str, replicas: int, service_account_name: str = "default") -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"serviceAccountName": service_account_name,
                                           "containers": [{"name": "app", "image": IMAGE}]}}}}


def pods_without(cluster: Cluster, namespace: str, secret: str) -> tuple[int, int]:
    pods = cluster.core.list_namespaced_pod(namespace).items
    return len(pods), sum(secret not in names(pod.spec.image_pull_secrets) for pod in pods)


def pods_once(cluster: Cluster, namespace: str, secret: str, count: int) -> tuple[int, int] | None:
    """`pods_without`, once `namespace` has `count` Pods."""
    counted = pods_without(cluster, namespace, secret)
    return counted if counted[0] >= count else None


def burst(cluster: Cluster, kube, fresh_namespaces, secret: str, label: str) -> tuple[int, int]:
    """ROUNDS times: a namespace and a Deployment of REPLICAS applied together, as GitOps or
    `kubectl apply -f tenant/` does. Returns (Pods, Pods without our entry)."""
    apps = client.AppsV1Api(kube)
    namespaces = []
    for _ in range(ROUNDS):
        [namespace] = fresh_namespaces(1, labels={"tenant": label})
        apps.create_namespaced_deployment(namespace, deployment("app", REPLICAS))
        namespaces.append(namespace)
    counts = {}
    for namespace in namespaces:
        counts[namespace] = wait_for(pods_once, cluster, namespace, secret, REPLICAS,
                                     timeout=120, message=f"{REPLICAS} pods in {namespace}")
    return sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())


def report(capsys, text: str) -> None:
    with capsys.disabled():
        print(f"\n{text}")


# --- the race ---------------------------------------------------------------------------------

def test_burst_with_admission_every_pod_carries_the_pull_secret(
        cluster, kube, start_regcred, credential, fresh_namespaces, capsys):
    start_regcred()
    name, label = credential()
    pods, missing = burst(cluster, kube, fresh_namespaces, name, label)
    report(capsys, f"admission on: {missing} of {pods} Pods without the pull secret "
                   f"({ROUNDS} rounds of a namespace + a Deployment of {REPLICAS})")
    assert pods == ROUNDS * REPLICAS
    assert missing == 0


def test_burst_without_admission_shows_the_race(
        cluster, kube, start_regcred, credential, fresh_namespaces, capsys):
    start_regcred(admission=False)
    name, label = credential()
    pods, missing = burst(cluster, kube, fresh_namespaces, name, label)
    report(capsys, f"admission off: {missing} of {pods} Pods without the pull secret "
                   f"({ROUNDS} rounds of a namespace + a Deployment of {REPLICAS})")
    assert pods == ROUNDS * REPLICAS
    # The count is the finding (docs/admission.md); the watch path still patches every SA.
    for namespace in namespaces_labelled(cluster, label):
        wait_for(lambda ns: cluster.pull_secrets(ns) == [name], namespace, message=f"{namespace} patched")


def namespaces_labelled(cluster: Cluster, label: str) -> list[str]:
    return [ns.metadata.name for ns in cluster.core.list_namespace(label_selector=f"tenant={label}").items]


def test_a_custom_service_account_and_its_deployment_applied_together(
        cluster, kube, start_regcred, credential, fresh_namespaces):
    start_regcred()
    name, label = credential(serviceAccounts=["*"])
    [namespace] = fresh_namespaces(1, labels={"tenant": label})
    created = cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": "builder"}})
    client.AppsV1Api(kube).create_namespaced_deployment(namespace, deployment("build", 5, "builder"))
    assert names(created.image_pull_secrets) == [name], "admitted with the entry"
    assert created.metadata.annotations[ANNOTATION] == name
    _, missing = wait_for(pods_once, cluster, namespace, name, 5, timeout=120, message="5 pods")
    assert missing == 0


# --- what the webhook adds, and where -------------------------------------------------------

def test_entries_given_in_the_manifest_stay_first_and_in_order(
        cluster, start_regcred, credential, fresh_namespaces):
    start_regcred()
    name, label = credential(serviceAccounts=["*"])
    [namespace] = fresh_namespaces(1, labels={"tenant": label})
    given = cluster.core.create_namespaced_service_account(namespace, {
        "metadata": {"name": "app"}, "imagePullSecrets": [{"name": "zeta"}, {"name": "alpha"}]})
    assert names(given.image_pull_secrets) == ["zeta", "alpha", name]
    assert given.metadata.annotations[ANNOTATION] == name
    # Our name given by the manifest: kept once, and not claimed (we would never remove it).
    mine = cluster.core.create_namespaced_service_account(namespace, {
        "metadata": {"name": "mine"}, "imagePullSecrets": [{"name": name}, {"name": "other"}]})
    assert names(mine.image_pull_secrets) == [name, "other"]
    assert ANNOTATION not in (mine.metadata.annotations or {})


def test_a_dry_run_create_returns_the_mutation_and_writes_nothing(
        cluster, start_regcred, credential, fresh_namespaces):
    process = start_regcred()
    name, label = credential(serviceAccounts=["*"])
    [namespace] = fresh_namespaces(1, labels={"tenant": label})
    answer = cluster.core.create_namespaced_service_account(
        namespace, {"metadata": {"name": "trial"}}, dry_run="All")
    assert names(answer.image_pull_secrets) == [name]
    assert service_account(cluster, namespace, "trial") is None
    assert any('"dry_run": true' in line and namespace in line for line in process.log().splitlines())


def test_unmatched_namespaces_and_kube_system_are_left_alone(
        cluster, kube, start_regcred, credential, fresh_namespaces):
    start_regcred()
    _, label = credential(serviceAccounts=["*"])
    [unmatched] = fresh_namespaces(1, labels={"tenant": "someone-else"})
    [ignored] = fresh_namespaces(1, labels={"tenant": label, "regcred.dev/ignore": "true"})
    for namespace in (unmatched, ignored, "kube-system"):
        account = cluster.core.create_namespaced_service_account(
            namespace, {"metadata": {"name": unique("sa")}})
        try:
            assert names(account.image_pull_secrets) == [], namespace
            assert ANNOTATION not in (account.metadata.annotations or {}), namespace
        finally:
            cluster.core.delete_namespaced_service_account(account.metadata.name, namespace)
    # A CR that names kube-system: the webhook's namespaceSelector lets it through now.
    system = unique("sys")
    cluster.put_source(system)
    cluster.create_credential(system, {"registries": [{"server": "registry.example.com"}],
                                       "sourceSecretRef": {"name": system},
                                       "namespaces": ["kube-system"], "serviceAccounts": ["regcred-*"]})
    wait_for(lambda: cluster.ready(system).get("status") == "True", timeout=60, message="Ready")
    api = client.AdmissionregistrationV1Api(kube)
    wait_for(lambda: "kube-system" not in str(
        api.read_mutating_webhook_configuration(CONFIGURATION).webhooks[0].namespace_selector),
        message="namespaceSelector lets kube-system through")
    account = cluster.core.create_namespaced_service_account(
        "kube-system", {"metadata": {"name": unique("regcred")}})
    try:
        assert names(account.image_pull_secrets) == [system]
    finally:
        cluster.core.delete_namespaced_service_account(account.metadata.name, "kube-system")
        cluster.delete_credential(system)
        wait_for(lambda: cluster.secret("kube-system", system) is None, message="copy removed")


# --- regcred down ---------------------------------------------------------------------------

def test_with_regcred_down_service_accounts_are_still_created_and_repaired_later(
        cluster, start_regcred, credential, fresh_namespaces, capsys):
    process = start_regcred()
    name, label = credential(serviceAccounts=["*"])
    [namespace] = fresh_namespaces(1, labels={"tenant": label})
    process.process.send_signal(signal.SIGSTOP)  # hung: the API server waits out the 2 s timeout
    try:
        started = time.monotonic()
        hung = cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": "hung"}})
        hung_seconds = time.monotonic() - started
    finally:
        process.process.send_signal(signal.SIGCONT)
    process.kill()  # gone: the connection is refused at once
    started = time.monotonic()
    gone = cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": "gone"}})
    gone_seconds = time.monotonic() - started
    report(capsys, f"ServiceAccount create with regcred hung: {hung_seconds:.2f}s, "
                   f"killed: {gone_seconds:.2f}s")
    assert names(hung.image_pull_secrets) == names(gone.image_pull_secrets) == []
    start_regcred()  # back: the watch path adds what the webhook could not
    for account in ("default", "hung", "gone"):
        wait_for(lambda a: cluster.pull_secrets(namespace, a) == [name], account, timeout=60,
                 message=f"{account} repaired")


# --- HA ---------------------------------------------------------------------------------------

def resumptions(process: OperatorProcess) -> int:
    """How often kopf's peering let `process` act again (a replica starts paused, silently)."""
    return process.log().count("Resuming operations after the pause")


def peers(cluster: Cluster) -> dict[str, int]:
    """kopf's peering entries of "regcred": peer id -> priority."""
    body = cluster.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "regcred")
    return {peer: int(entry.get("priority", 0)) for peer, entry in (body.get("status") or {}).items()
            if isinstance(entry, dict)}


def acting(process: OperatorProcess) -> bool:
    """Whether kopf's peering lets `process` act now: its last word on it was a resumption."""
    lines = [line for line in process.log().splitlines()
             if "Resuming operations after the pause" in line or "Pausing operations" in line]
    return bool(lines) and "Resuming operations" in lines[-1]


def test_ha_the_paused_standby_admits_while_it_takes_over(
        cluster, start_regcred, credential, peering, fresh_namespaces, capsys):
    port = free_port()  # both listen on it (SO_REUSEPORT), as both sit behind one Service
    # One at a time, each with its own entry in the peering object; the higher priority acts.
    replicas, priorities = [], []
    for _ in range(2):
        before = peers(cluster)
        replicas.append(start_regcred(port=port, env={"REGCRED_PEERING": "regcred"}))
        [(_, priority)] = wait_for(lambda b: list(peers(cluster).items() - b.items()), before,
                                   message="its peering entry")
        priorities.append(priority)
    active, standby = replicas if priorities[0] > priorities[1] else replicas[::-1]
    wait_for(lambda: acting(active) and not acting(standby), timeout=60, message="one replica acts")
    name, label = credential()
    [probe] = fresh_namespaces(1, labels={"tenant": label})
    wait_for(lambda: cluster.pull_secrets(probe) == [name], timeout=60, message="synced")
    assert acting(active) and not acting(standby)
    paused_at = resumptions(standby)

    active.kill()
    while_paused: list[str] = []
    after: list[str] = []

    def onboard() -> None:
        [namespace] = fresh_namespaces(1, labels={"tenant": label})
        wait_for(lambda: service_account(cluster, namespace), timeout=30, message="default SA")
        (while_paused if resumptions(standby) == paused_at else after).append(namespace)

    while len(while_paused) < 10 and resumptions(standby) == paused_at:
        onboard()
    wait_for(lambda: resumptions(standby) > paused_at, timeout=60, message="the standby took over")
    for _ in range(3):
        onboard()
    accounts = {ns: wait_for(lambda ns: sa if (sa := service_account(cluster, ns)) and name in names(
        sa.image_pull_secrets) else None, ns, timeout=90, message=f"entry in {ns}")
        for ns in while_paused + after}
    at_creation = [ns for ns in accounts if admitted_by(standby, ns)]
    report(capsys, f"HA: {len(while_paused)} namespaces created while the standby was paused, "
                   f"{len(after)} after it resumed; {len(at_creation)} of {len(accounts)} default "
                   "ServiceAccounts carried the entry at creation, the rest were repaired by the watch path")
    assert set(while_paused) & set(at_creation), "the paused standby admitted with the entry"
    # Taking over, it must not mistake the CR its index has not listed yet for a deleted one.
    assert '"removed pull secret entry"' not in standby.log()


def test_the_webhook_uses_the_cluster_not_a_cache(cluster, start_regcred, credential, fresh_namespaces):
    """A namespace labelled a moment before its ServiceAccount is created: the webhook reads
    the label live, so even a ServiceAccount created right after the label change gets the entry."""
    start_regcred()
    name, label = credential(serviceAccounts=["*"])
    [namespace] = fresh_namespaces(1)
    cluster.label_namespace(namespace, {"tenant": label})
    account = cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": "quick"}})
    assert names(account.image_pull_secrets) == [name]
