#!/usr/bin/env python3
"""How long `regcred doctor -A` takes on many Pods, on a local control plane.

Starts its own control plane, creates N Pods (no node: they stay Pending, which costs the
doctor the same) spread over namespaces with a mix of seeded problems, plus as many pull
secrets, and times the real CLI (`regcred doctor -A -o json`, a fresh process, like a
user) several times. Also times the pure diagnosis in memory. Prints the numbers and writes
bench/results/doctor-<commit>.json and bench/results/doctor-latest.json.

    python bench/doctor.py              # 1,000 Pods
    python bench/doctor.py --pods 100   # quicker
    python bench/doctor.py --smoke      # 20 Pods, one run, nothing saved (CI keeps it working)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts")]
from keep import current_commit, keep  # noqa: E402
from kubernetes import client  # noqa: E402

from regcred.core.doctor.rules import diagnose  # noqa: E402
from regcred.doctor.command import quiet_logging, read_snapshot  # noqa: E402
from regcred.kube.client import Kube  # noqa: E402
from regcred.kube.config import connect  # noqa: E402
from regcred_dev.controlplane import ControlPlane, install_crds  # noqa: E402

PODS_PER_NAMESPACE = 50
REGISTRY = "bench.registry.test:5000"
CONFIG = json.dumps({"auths": {REGISTRY: {"auth": base64.b64encode(b"bench:not-secret").decode()}}}).encode()


def populate(core: client.CoreV1Api, pods: int) -> None:
    namespaces = [f"doctor-bench-{i}" for i in range(max(1, pods // PODS_PER_NAMESPACE))]
    for namespace in namespaces:
        core.create_namespace({"metadata": {"name": namespace}})
        core.create_namespaced_secret(namespace, {
            "metadata": {"name": "pull"}, "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(CONFIG).decode()}})

    def make(index: int) -> None:
        namespace = namespaces[index % len(namespaces)]
        # a mix: healthy, a missing secret, IfNotPresent on a private image
        secrets = [{"name": "pull"}] if index % 3 else [{"name": "absent"}]
        policy = "IfNotPresent" if index % 5 == 0 else "Always"
        core.create_namespaced_pod(namespace, {
            "metadata": {"name": f"pod-{index}"},
            "spec": {"imagePullSecrets": secrets,
                     "initContainers": [{"name": "init", "image": "busybox:1.36"}],
                     "containers": [{"name": "app", "image": f"{REGISTRY}/team/app:v{index}",
                                     "imagePullPolicy": policy}]}})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(make, range(pods)))


def install_credential(kubeconfig: str, custom: client.CustomObjectsApi) -> None:
    """The CRD and one RegistryCredential for the registry (no operator: it stays without status)."""
    install_crds(kubeconfig)
    custom.create_cluster_custom_object("regcred.dev", "v1alpha1", "registrycredentials", {
        "apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential",
        "metadata": {"name": "bench"},
        "spec": {"registries": [{"server": REGISTRY}], "sourceSecretRef": {"name": "bench"},
                 "namespaces": ["doctor-bench-*"], "target": {"secretName": "pull"}}})


def time_cli(kubeconfig: str, runs: int) -> tuple[list[float], dict]:
    seconds, report = [], {}
    for _ in range(runs):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "regcred.cli", "doctor", "-A", "-o", "json",
                                 "--kubeconfig", kubeconfig], capture_output=True, text=True)
        seconds.append(time.monotonic() - started)
        if result.returncode not in (0, 1):
            raise SystemExit(f"doctor failed: {result.stderr}")
        report = json.loads(result.stdout)
    return seconds, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="20 Pods, one run, results not saved")
    args = parser.parse_args()
    quiet_logging(sys.stderr)
    if args.smoke:
        args.pods, args.runs = 20, 1
    with ControlPlane() as plane:
        plane.put_kubectl_first_on_path()
        kubeconfig = str(plane.kubeconfig)
        api = connect(kubeconfig, threads=32)
        install_credential(kubeconfig, client.CustomObjectsApi(api))
        started = time.monotonic()
        populate(client.CoreV1Api(api), args.pods)
        populate_seconds = time.monotonic() - started
        cli_seconds, report = time_cli(kubeconfig, args.runs)
        kube = Kube(api)
        started = time.monotonic()
        snapshot = read_snapshot(kube, None)
        read_seconds = time.monotonic() - started
        started = time.monotonic()
        in_memory = diagnose(snapshot)
        diagnose_seconds = time.monotonic() - started
    commit = current_commit()
    results = {
        "commit": commit, "pods": args.pods, "images": report["summary"]["images"],
        "findings": len(report["findings"]), "cli_runs": args.runs,
        "cli_seconds": {"median": round(statistics.median(cli_seconds), 3),
                        "min": round(min(cli_seconds), 3), "max": round(max(cli_seconds), 3)},
        "read_seconds": round(read_seconds, 3), "diagnose_seconds": round(diagnose_seconds, 4),
        "populate_seconds": round(populate_seconds, 1), "in_memory_findings": len(in_memory.findings),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    print(json.dumps(results, indent=2))
    if args.smoke:
        return 0
    keep("doctor", commit, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
