#!/usr/bin/env python3
"""What pull-time delivery costs: the plugin's exec, the endpoint under load, the TokenReviews
a pull causes with the kubelet's cache, and a pull through the provider against one with a
pull secret, for the same image on the same node.

Everything real: the control plane, `regcred run --credential-provider`, the node's kubelet
with regcred's CredentialProviderConfig, the TLS registry. Prints a table and writes
`bench/results/provider-<commit>.json` and `provider-latest.json`.

    python bench/provider.py                  # defaults below
    python bench/provider.py --pulls 3 --requests 200
    python bench/provider.py --smoke          # tiny, keeps nothing (tests/integration/test_bench_smoke.py)
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "tests" / "integration"), str(REPO / "tests")]
from keep import current_commit, keep  # noqa: E402
from kubernetes import client, config  # noqa: E402
from node_fixtures import Pods  # noqa: E402
from operator_process import OperatorProcess, free_port  # noqa: E402

from regcred_dev import images  # noqa: E402
from regcred_dev.build import KUBERNETES_VERSION  # noqa: E402
from regcred_dev.controlplane import ControlPlane, install_crds  # noqa: E402
from regcred_dev.node import NODE_NAME, Node  # noqa: E402
from regcred_dev.nodeconfig import CredentialProvider  # noqa: E402
from regcred_dev.registry import Registry  # noqa: E402
from support.wait import wait_for  # noqa: E402

AUDIENCE = "regcred.dev/credential-provider"
PLUGIN = Path(sys.executable).parent / "regcred-credential-provider"
NODE_RBAC = REPO / "manifests" / "examples" / "credential-provider-node-rbac.yaml"
NAMESPACE = "regcred-system"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * ordered[max(0, int(len(ordered) * 0.95) - 1)], 1),
            "n": len(ordered)}


def timed(action: Any) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


class Bench:
    def __init__(self, plane: ControlPlane, work: Path) -> None:
        self.plane, self.work = plane, work
        self.api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.pods = Pods(self.api, wait_for)
        self.kubectl = ["kubectl", "--kubeconfig", str(plane.kubeconfig)]

    def setup(self) -> None:
        install_crds(self.plane.kubeconfig)
        subprocess.run([*self.kubectl, "apply", "-f", str(NODE_RBAC)], check=True, capture_output=True)
        self.core.create_namespace({"metadata": {"name": NAMESPACE}})
        self.port = free_port()
        self.operator = OperatorProcess(str(self.plane.kubeconfig), self.work / "regcred.log", extra_args=[
            "--credential-provider", "true", "--credential-provider-listen", f"127.0.0.1:{self.port}",
            "--credential-provider-hosts", "127.0.0.1"]).start()
        secret = wait_for(lambda: self._read(self.core.read_namespaced_secret, "regcred-provider-tls"),
                          timeout=60, message="endpoint TLS")
        self.ca = self.work / "provider-ca.crt"
        self.ca.write_bytes(base64.b64decode(secret.data["ca.crt"]))
        self.url = f"https://127.0.0.1:{self.port}/v1/credentials"
        self.registry = Registry(self.plane.pki, {"bench": f"bench-{time.time_ns()}"}).start()
        self.node = Node(self.plane, credential_provider=CredentialProvider(
            plugin=PLUGIN, url=self.url, ca=self.ca, match_images=(self.registry.host,), audience=AUDIENCE))
        self.node.start()
        self.node.trust_registry(self.registry.host, self.registry.ca)
        self.image = self.registry.push(images.success_image(), "bench/success", "1", "bench")
        user, password = self.registry.login("bench")
        self.core.create_namespaced_secret(NAMESPACE, {
            "metadata": {"name": "bench-robot"}, "type": "kubernetes.io/basic-auth",
            "stringData": {"username": user, "password": password}})
        for name, delivery, label in (("bench-provider", "CredentialProvider", "provider"),
                                      ("bench-secrets", "Secrets", "secrets")):
            client.CustomObjectsApi(self.api).create_cluster_custom_object(
                "regcred.dev", "v1alpha1", "registrycredentials", {
                    "apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential",
                    "metadata": {"name": name},
                    "spec": {"registries": [{"server": self.registry.host}],
                             "sourceSecretRef": {"name": "bench-robot"}, "delivery": delivery,
                             "serviceAccounts": ["*"],
                             "namespaceSelector": {"matchLabels": {"bench": label}}}})

    def stop(self) -> None:
        for stop in (getattr(self, "node", None), getattr(self, "registry", None),
                     getattr(self, "operator", None)):
            if stop is not None:
                stop.stop()

    def _read(self, read: Any, name: str, namespace: str = NAMESPACE) -> Any:
        """The object, or None while it does not exist."""
        try:
            return read(name, namespace)
        except client.exceptions.ApiException:
            return None

    def namespace(self, label: str, accounts: tuple[str, ...] = ()) -> str:
        name = f"bench-{label}-{time.time_ns() % 10**6}"
        self.core.create_namespace({"metadata": {"name": name, "labels": {"bench": label}}})
        for account in accounts:
            self.core.create_namespaced_service_account(name, {"metadata": {"name": account}})
        return name

    def parked_pod(self, namespace: str) -> tuple[str, str]:
        wait_for(lambda: self._read(self.core.read_namespaced_service_account, "default", namespace),
                 timeout=60, message="default SA")
        name = f"parked-{time.time_ns() % 10**8}"
        pod = self.core.create_namespaced_pod(namespace, {
            "metadata": {"name": name},
            "spec": {"nodeName": NODE_NAME, "hostNetwork": True, "automountServiceAccountToken": False,
                     "containers": [{"name": "app", "image": "localhost/absent:1",
                                     "imagePullPolicy": "Never"}]}})
        return name, pod.metadata.uid

    def token(self, namespace: str, pod: tuple[str, str]) -> str:
        bound = {"apiVersion": "v1", "kind": "Pod", "name": pod[0], "uid": pod[1]}
        request = {"spec": {"audiences": [AUDIENCE], "expirationSeconds": 3600, "boundObjectRef": bound}}
        answer = self.core.create_namespaced_service_account_token("default", namespace, request)
        return str(answer.status.token)

    def reviews(self) -> float:
        return self.operator.metric_sum("regcred_credential_provider_token_reviews_total")

    # --- the measurements ---

    def plugin_exec(self, token: str, count: int) -> dict[str, Any]:
        request = json.dumps({"apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                              "kind": "CredentialProviderRequest", "image": self.image,
                              "serviceAccountToken": token})
        answered, nothing = [], []
        for _ in range(count):
            answered.append(timed(lambda: subprocess.run(
                [str(PLUGIN), "--url", self.url, "--ca-file", str(self.ca)], input=request, text=True,
                capture_output=True, check=True)))
            # The exec alone: the same process, refusing at once (no endpoint asked).
            nothing.append(timed(lambda: subprocess.run([str(PLUGIN)], input=request, text=True,
                                                        capture_output=True, check=True)))
        return {"exec_with_endpoint": percentiles(answered), "exec_alone": percentiles(nothing)}

    def endpoint_under_load(self, token: str, requests: int, concurrency: int) -> dict[str, Any]:
        context = ssl.create_default_context(cafile=str(self.ca))
        body = json.dumps({"image": self.image})

        def one(_: int) -> tuple[float, int]:
            started = time.monotonic()
            connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=60)
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            connection.request("POST", "/v1/credentials", body=body, headers=headers)
            status = connection.getresponse().status
            connection.close()
            return time.monotonic() - started, status

        started = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(requests)))
        elapsed = time.monotonic() - started
        statuses = {str(s): sum(1 for _, got in results if got == s) for s in {s for _, s in results}}
        return {**percentiles([t for t, _ in results]), "concurrency": concurrency,
                "requests_per_s": round(requests / elapsed, 1), "statuses": statuses}

    def pull(self, namespace: str, account: str = "default") -> float:
        def run() -> None:
            name = self.pods.run(namespace, self.image, service_account=account)
            self.pods.wait_succeeded(namespace, name, timeout=120)
        return timed(run)

    def reviews_per_pull(self, pulls: int) -> dict[str, Any]:
        namespace = self.namespace("provider", accounts=("second",))
        before = self.reviews()
        for _ in range(pulls):
            self.pull(namespace)
        one_account = self.reviews() - before
        self.pull(namespace, "second")
        return {"pulls_one_service_account": pulls, "token_reviews": one_account,
                "token_reviews_after_a_pull_under_a_second_service_account": self.reviews() - before}

    def pull_latency(self, pulls: int) -> dict[str, Any]:
        secrets_ns = self.namespace("secrets")
        wait_for(lambda: self._read(self.core.read_namespaced_secret, "bench-secrets", secrets_ns),
                 timeout=60, message="copy")
        wait_for(lambda: self._has_entry(secrets_ns), timeout=60, message="entry")
        secret_times, provider_first, provider_cached = [], [], []
        for _ in range(pulls):  # alternate, so both see the same machine
            secret_times.append(self.pull(secrets_ns))
            fresh = self.namespace("provider")  # a new ServiceAccount: the kubelet's cache misses
            provider_first.append(self.pull(fresh))
            provider_cached.append(self.pull(fresh))
        return {"secret": percentiles(secret_times), "provider_cache_miss": percentiles(provider_first),
                "provider_cached": percentiles(provider_cached)}

    def _has_entry(self, namespace: str) -> bool:
        account = self._read(self.core.read_namespaced_service_account, "default", namespace)
        return bool(account and account.image_pull_secrets)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execs", type=int, default=30)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--pulls", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="a few of each, keep nothing")
    args = parser.parse_args()
    if args.smoke:
        args.execs, args.requests, args.concurrency, args.pulls = 2, 10, 5, 1
    commit = current_commit()
    with ControlPlane() as plane, tempfile.TemporaryDirectory(prefix="regcred-bench-provider-") as work:
        bench = Bench(plane, Path(work))
        try:
            bench.setup()
            namespace = bench.namespace("provider")
            token = bench.token(namespace, bench.parked_pod(namespace))
            wait_for(lambda: bench.endpoint_under_load(token, 1, 1)["statuses"] == {"200": 1}, timeout=60,
                     message="the endpoint answers")
            result = {
                "commit": commit, "kubernetes": KUBERNETES_VERSION,
                "plugin": bench.plugin_exec(token, args.execs),
                "endpoint": bench.endpoint_under_load(token, args.requests, args.concurrency),
                "token_reviews": bench.reviews_per_pull(args.pulls),
                "pull_s": bench.pull_latency(args.pulls),
            }
        finally:
            bench.stop()
    print(json.dumps(result, indent=2))
    if not args.smoke:
        keep("provider", commit, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
