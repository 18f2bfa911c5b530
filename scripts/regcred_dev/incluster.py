"""regcred as users run it: its image, pushed to a private registry, installed by its chart.

The steps a user takes, on the local control plane and a real node (docs/testing.md):
1. build the image from the Dockerfile (scripts/image.py; cached);
2. push it to the run's private TLS registry, which refuses anonymous pulls;
3. create the release namespace and a pull secret for that registry in it;
4. `helm install` charts/regcred with `image.repository`, `image.tag` and `imagePullSecrets`;
5. wait until both replicas are Running and Ready (the chart's readiness probe).
The node runs with a pod network of its own (scripts/regcred_dev/podnet.py): pods have their own
addresses, the API server reaches the webhook Service's endpoints, and in-cluster config
reaches the API server at the `kubernetes` Service's address. The test cluster runs no
scheduler: `Binder` binds each pending pod to the one node, which is all kube-scheduler
would decide here.

    with InCluster() as cluster: ...        # everything up, regcred Ready
    python scripts/incluster.py up          # the same until Ctrl-C; prints KUBECONFIG
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from regcred_dev import REPO, image, images, podnet
from regcred_dev.controlplane import ControlPlane
from regcred_dev.helm import helm_binary
from regcred_dev.node import Node
from regcred_dev.process import ControlPlaneError, keep_running, log, run_command, wait_until
from regcred_dev.registry import Registry

CHART = REPO / "charts" / "regcred"
RELEASE, NAMESPACE = "regcred", "regcred-system"
PULL_SECRET = "regcred-image"
IMAGE_REPOSITORY = "platform/regcred"
REGISTRY_USER = "deployer"
READY_TIMEOUT = 180.0


class InClusterError(ControlPlaneError):
    """regcred's image or release did not come up; the message says which step and why."""


class Binder:
    """The one scheduling decision this single-node cluster has: every pending pod goes to
    the node. Polls (a scheduler's queue, not test synchronisation) until stopped."""

    def __init__(self, plane: ControlPlane, node_name: str) -> None:
        self.plane, self.node_name = plane, node_name
        self.bound = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="binder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(Exception):  # the API server may be restarting
                self.bind_pending()

    def bind_pending(self) -> None:
        status, body = self.plane.get("/api/v1/pods?fieldSelector=spec.nodeName%3D")
        if status != 200:
            return
        for pod in json.loads(body)["items"]:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"]},
                       "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
            status, _ = self.plane.request(
                "POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", body=binding)
            self.bound += status == 201

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class InCluster:
    """Control plane + node (pod network) + registry + regcred's image + its Helm release."""

    def __init__(self, *, values: dict[str, str] | None = None) -> None:
        self.values = values or {}
        self.stack = contextlib.ExitStack()
        self.timings: dict[str, float] = {}
        self.helm_home: Path | None = None

    # --- start and stop ---

    def start(self) -> InCluster:
        try:
            self._start()
        except BaseException as error:
            self.stop(failed=not isinstance(error, KeyboardInterrupt))
            raise
        return self

    def _step(self, name: str, started: float) -> None:
        self.timings[name] = round(time.monotonic() - started, 1)
        log(f"{name}: {self.timings[name]}s")

    def _start(self) -> None:
        reason = Node.unavailable_reason() or image.unavailable_reason() or Registry.unavailable_reason()
        if reason:
            raise InClusterError(reason)
        started = time.monotonic()
        self.image_archive = image.ensure_image()
        self._step("image", started)
        started = time.monotonic()
        self.network = podnet.PodNetwork()
        proxy = self.network.start_proxy()
        self.plane: ControlPlane = self.stack.enter_context(ControlPlane(pod_network_proxy=proxy))
        self.plane.put_kubectl_first_on_path()
        self.node: Node = self.stack.enter_context(Node(self.plane, pod_network=self.network))
        self.binder = Binder(self.plane, self.node.name)
        self.stack.callback(self.binder.stop)
        self.registry_password = secrets.token_urlsafe(24)
        self.registry: Registry = self.stack.enter_context(
            Registry(self.plane.pki, {REGISTRY_USER: self.registry_password}, name="image-registry"))
        self.node.trust_registry(self.registry.host, self.registry.ca)
        self._step("cluster", started)
        started = time.monotonic()
        self.version = self.image_archive.name.split("-")[1]
        self.image_reference = self.registry.push(images.read_oci_archive(self.image_archive),
                                                  IMAGE_REPOSITORY, self.version, REGISTRY_USER)
        self._step("push", started)
        started = time.monotonic()
        self._create_namespace_and_pull_secret()
        self.helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, *self.set_flags())
        self.wait_ready(READY_TIMEOUT)
        self._step("helm install to Ready", started)

    def stop(self, failed: bool = False) -> None:
        """Stop everything in reverse order; on failure print the pods' last log lines and
        keep every component's logs (their context managers see the failure)."""
        if not failed:
            self.stack.close()
            return
        with contextlib.suppress(Exception):
            self._print_pod_logs()
        error = InClusterError("regcred's release failed")
        self.stack.__exit__(InClusterError, error, None)

    def __enter__(self) -> InCluster:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop(failed=exc is not None and not isinstance(exc, KeyboardInterrupt))

    # --- the user's steps ---

    def set_flags(self) -> list[str]:
        values = {"image.repository": f"{self.registry.host}/{IMAGE_REPOSITORY}", "image.tag": self.version,
                  "imagePullSecrets[0].name": PULL_SECRET, **self.values}
        return [flag for key, value in values.items() for flag in ("--set", f"{key}={value}")]

    def _create_namespace_and_pull_secret(self) -> None:
        """What docs/install.md has a user do before `helm install` when the image is private."""
        self.kubectl("create", "namespace", NAMESPACE)
        self.kubectl("label", "namespace", NAMESPACE, "regcred.dev/ignore=true",
                     "pod-security.kubernetes.io/enforce=restricted")
        # What `kubectl create secret docker-registry` makes, sent as JSON so the password is
        # never on a command line.
        auth = base64.b64encode(f"{REGISTRY_USER}:{self.registry_password}".encode()).decode()
        status, _ = self.plane.request("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", body={
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": PULL_SECRET},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": json.dumps({"auths": {self.registry.host: {"auth": auth}}})}})
        if status != 201:
            raise InClusterError(f"creating the pull secret {NAMESPACE}/{PULL_SECRET} returned {status}")

    def kubectl(self, *args: str) -> str:
        """kubectl with the admin kubeconfig."""
        result = subprocess.run(["kubectl", "--kubeconfig", str(self.plane.kubeconfig), *args],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise InClusterError(f"`kubectl {' '.join(args)}` failed: {result.stderr.strip()[-500:]}")
        return result.stdout

    def helm(self, *args: str) -> str:
        if self.helm_home is None:
            assert self.plane.dir is not None
            self.helm_home = self.plane.dir / "helm"
        env = {**os.environ, **{f"HELM_{kind}_HOME": str(self.helm_home / kind.lower())
                                for kind in ("CONFIG", "CACHE", "DATA")}}
        result = subprocess.run([str(helm_binary()), *args, "--kubeconfig", str(self.plane.kubeconfig)],
                                capture_output=True, text=True, env=env, timeout=300)
        if result.returncode != 0:
            raise InClusterError(f"`helm {args[0]}` failed: {result.stderr.strip()[-1500:]}")
        return result.stdout

    # --- what the release looks like ---

    def pods(self) -> list[dict[str, Any]]:
        """The release's pods (label selector of the chart), as the API server has them."""
        selector = f"app.kubernetes.io/instance={RELEASE}"
        listed = self.kubectl("get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "json")
        return list(json.loads(listed)["items"])

    @staticmethod
    def is_ready(pod: dict[str, Any]) -> bool:
        conditions = pod.get("status", {}).get("conditions", [])
        return (pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")
                and any(c["type"] == "Ready" and c["status"] == "True" for c in conditions))

    def ready_pods(self) -> list[dict[str, Any]]:
        return [pod for pod in self.pods() if self.is_ready(pod)]

    def wait_ready(self, timeout: float, replicas: int = 2) -> list[dict[str, Any]]:
        """Until exactly `replicas` pods are Ready and none is terminating or pending."""
        def settled() -> list[dict[str, Any]] | None:
            pods = self.pods()
            ready = [pod for pod in pods if self.is_ready(pod)]
            return ready if len(ready) == replicas == len(pods) else None

        return list(wait_until(settled, timeout, f"{replicas} regcred pods Ready", interval=0.5))

    def active_pod(self) -> str | None:
        """The Ready pod kopf lets act: of the peers in the ClusterKopfPeering (ids are
        `<user>@<hostname>/<start time>/...`, the hostname being the pod's name), the one with
        the highest priority pauses the others."""
        peering = json.loads(self.kubectl("get", "clusterkopfpeering", RELEASE, "-o", "json"))
        peers: dict[str, dict[str, Any]] = peering.get("status", {})
        by_priority = sorted(((info.get("priority", 0), peer) for peer, info in peers.items()
                              if isinstance(info, dict)), reverse=True)
        names: set[str] = {pod["metadata"]["name"] for pod in self.ready_pods()}
        for _, peer in by_priority:
            for name in names:
                if f"@{name}" in peer:
                    return name
        return None

    def http_get(self, address: str, port: int, path: str) -> tuple[int, str]:
        """GET `path` from `address:port` in the pod network, as a scraper there would
        (HTTP/1.0: the answer ends when the connection does)."""
        with podnet.connect(self.network.netns, (address, port)) as connection:
            connection.sendall(f"GET {path} HTTP/1.0\r\nHost: {address}:{port}\r\n\r\n".encode())
            answer = b""
            while data := connection.recv(65536):
                answer += data
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body.decode()

    def _print_pod_logs(self) -> None:
        for pod in self.pods():
            name = pod["metadata"]["name"]
            log(f"--- {name} ({pod['status'].get('phase')}):\n"
                f"{self.kubectl('logs', '-n', NAMESPACE, name, '--tail', '40')}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up",))
    parser.parse_args(argv)

    def command() -> None:
        with InCluster() as cluster:
            print(f"export KUBECONFIG={cluster.plane.kubeconfig}", flush=True)
            print(f"# image {cluster.image_reference}; steps {cluster.timings}", flush=True)
            keep_running((*cluster.plane.components.values(), *cluster.node.components.values()))

    return run_command(command)

