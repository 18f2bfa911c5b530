"""Two regcred processes, one control plane: one acts (kopf peering); kill it, the other takes over."""

from __future__ import annotations

import time

import pytest
from operator_process import OperatorProcess
from scenario import Cluster, unique

pytestmark = pytest.mark.integration


def acted(process: OperatorProcess, namespace: str) -> bool:
    return any('"applied"' in line and namespace in line for line in process.log().splitlines())


def test_one_replica_acts_and_the_other_takes_over(
        cluster: Cluster, kubeconfig, peering, fresh_namespaces, tmp_path, wait_for):
    replicas = [
        OperatorProcess(kubeconfig, tmp_path / f"replica-{i}.log",
                        extra_env={"REGCRED_PEERING": "regcred"}).start()
        for i in range(2)
    ]
    try:
        label = unique("ha")
        [first] = fresh_namespaces(1, labels={"tenant": label})
        name = unique("cr")
        cluster.put_source(name)
        cluster.create_credential(name, {
            "registries": [{"server": "registry.example.com"}],
            "sourceSecretRef": {"name": name},
            "namespaceSelector": {"matchLabels": {"tenant": label}},
        })
        wait_for(lambda: cluster.pull_secrets(first) == [name], timeout=60,
                 message=f"synced ({cluster.pull_secrets(first)}, {cluster.ready(name)})")
        actors = [r for r in replicas if acted(r, first)]
        assert len(actors) == 1, "exactly one replica writes"
        [active] = actors
        [standby] = [r for r in replicas if r is not active]

        active.kill()
        killed = time.monotonic()
        [second] = fresh_namespaces(1, labels={"tenant": label})
        wait_for(lambda: cluster.pull_secrets(second) == [name], timeout=90,
                 message="the standby took over and onboarded the namespace")
        failover = time.monotonic() - killed
        assert acted(standby, second)
        print(f"failover: {failover:.1f}s")  # recorded in docs/operations.md (HA)
    finally:
        for replica in replicas:
            replica.stop()
        cluster.delete_credential(name)
