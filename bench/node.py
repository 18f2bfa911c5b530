#!/usr/bin/env python3
"""How long the test node takes: start (Node Ready), a private pull (Pod created ->
Succeeded, `imagePullPolicy: Always`), and a clean stop; the registry's start and push too.

No operator runs here: the pull secret is put on the Pod, as `kubectl create secret
docker-registry` would make it, so the number is the node's and the registry's alone.
Prints a table and writes `bench/results/node-<commit>.json` and `node-latest.json`.

    python bench/node.py            # 3 rounds
    python bench/node.py --rounds 1
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "tests" / "integration"), str(REPO / "tests")]
from keep import current_commit, keep  # noqa: E402
from kubernetes import client, config  # noqa: E402
from node_fixtures import Pods  # noqa: E402

from regcred_dev import images  # noqa: E402
from regcred_dev.build import KUBERNETES_VERSION  # noqa: E402
from regcred_dev.controlplane import ControlPlane  # noqa: E402
from regcred_dev.node import Node  # noqa: E402
from regcred_dev.registry import Registry  # noqa: E402
from support.wait import wait_for  # noqa: E402


def timed(action) -> tuple[float, object]:
    started = time.monotonic()
    result = action()
    return time.monotonic() - started, result


def one_round(plane: ControlPlane, api: client.ApiClient, round_number: int) -> dict[str, float]:
    secret = base64.b64encode(f"bench-{time.time_ns()}".encode()).decode()
    node = Node(plane)
    node_start, _ = timed(node.start)
    try:
        registry = Registry(plane.pki, {"bench": secret})
        registry_start, _ = timed(registry.start)
        try:
            node.trust_registry(registry.host, registry.ca)
            push, image = timed(lambda: registry.push(images.success_image(), "bench/success", "1", "bench"))
            core = client.CoreV1Api(api)
            namespace = f"bench-node-{round_number}-{time.time_ns() % 100000}"
            core.create_namespace({"metadata": {"name": namespace}})
            pods = Pods(api, wait_for)
            pull_secret = pods.put_pull_secret(namespace, registry.host, registry.login("bench"))

            def pull() -> None:
                name = pods.run(namespace, str(image), pull_secrets=(pull_secret,))
                pods.wait_succeeded(namespace, name)

            pull_to_succeeded, _ = timed(pull)
            second_pull, _ = timed(pull)  # layers cached by containerd, manifest fetched again
            core.delete_namespace(namespace)
        finally:
            registry.stop()
    finally:
        node_stop, _ = timed(node.stop)
    return {"node_ready_s": node_start, "registry_ready_s": registry_start, "push_s": push,
            "first_pull_to_succeeded_s": pull_to_succeeded, "second_pull_to_succeeded_s": second_pull,
            "node_stop_s": node_stop}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    commit = current_commit()
    with ControlPlane() as plane:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        rounds = [one_round(plane, api, number) for number in range(args.rounds)]
    metrics = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    print(f"{'median over ' + str(len(rounds)) + ' rounds':<34}seconds")
    for key, value in metrics.items():
        print(f"{key:<34}{value:7.2f}")
    result = {"commit": commit, "kubernetes": KUBERNETES_VERSION, "rounds": rounds, "median": metrics}
    keep("node", commit, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
