"""The node's own hygiene: a run stopped by Ctrl-C leaves nothing behind, and a SIGKILLed
run's leftovers (shims, containers, mounts, cgroups) are swept by the next node start,
while a live run on the same machine (this session's node) is left alone."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client, config
from node_fixtures import REGISTRY_USER

from regcred_dev import teardown
from regcred_dev.node import NODE_NAME, Node
from regcred_dev.nodeconfig import PAUSE_IMAGE

pytestmark = [pytest.mark.integration, pytest.mark.node]
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def start_other_run(tmp_path: Path, wait_for) -> tuple[subprocess.Popen[bytes], Path]:
    """`scripts/node.py up` in a process of its own, with a Running pod on its node."""
    out = tmp_path / "up.out"
    with out.open("wb") as sink:
        process = subprocess.Popen([sys.executable, str(SCRIPTS / "node.py"), "up"], stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    lines = wait_for(lambda: "# node run dir:" in out.read_text() and out.read_text().splitlines(),
                     timeout=180, message="the other run's node Ready")
    kubeconfig = next(line.split("=", 1)[1] for line in lines if line.startswith("export KUBECONFIG="))
    run_dir = Path(next(line.split(": ", 1)[1] for line in lines if line.startswith("# node run dir:")))
    with config.new_client_from_config(config_file=kubeconfig) as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_pod("default", {"metadata": {"name": "sleeper"}, "spec": {
            "nodeName": NODE_NAME, "hostNetwork": True, "automountServiceAccountToken": False,
            "containers": [{"name": "sleep", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}]}})
        wait_for(lambda: core.read_namespaced_pod("sleeper", "default").status.phase == "Running",
                 timeout=60, message="the sleeper pod Running")
    return process, run_dir


def leftovers(run_dir: Path) -> dict[str, object]:
    """Everything of a run that could outlive it; empty values when it is clean."""
    return {
        "processes": teardown.node_processes(run_dir) | teardown.cgroup_processes(run_dir.name),
        "mounts": teardown.mounts_under(run_dir),
        "cgroups": teardown.cgroup_dirs(run_dir.name),
        "run dir": run_dir.exists(),
    }


def assert_untouched(live: Node, pods, registry, private_image, fresh_namespaces) -> None:
    """The live node still runs, keeps its kubelet root mount, and still pulls."""
    for component in live.components.values():
        component.check_running()
    assert live.dir is not None, "the live node has no run directory"
    assert str(live.dir / "kubelet") in teardown.mounts_under(live.dir)
    [namespace] = fresh_namespaces()
    secret = pods.put_pull_secret(namespace, registry.host, registry.login(REGISTRY_USER))
    pods.wait_succeeded(namespace, pods.run(namespace, private_image, pull_secrets=(secret,)))


def test_ctrl_c_leaves_nothing_behind(node, pods, registry, private_image, fresh_namespaces, tmp_path,
                                      wait_for):
    process, run_dir = start_other_run(tmp_path, wait_for)
    assert all(leftovers(run_dir).values())  # the check below can fail: there was something
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 130
    assert not any(leftovers(run_dir).values()), leftovers(run_dir)
    assert_untouched(node, pods, registry, private_image, fresh_namespaces)


def test_a_sigkilled_run_is_swept_and_the_live_run_is_untouched(node, pods, registry, private_image,
                                                                fresh_namespaces, tmp_path, wait_for):
    process, run_dir = start_other_run(tmp_path, wait_for)
    process.kill()
    process.wait(30)
    left = leftovers(run_dir)
    assert left["processes"] and left["mounts"] and left["cgroups"], left  # shims and containers outlive it

    with teardown.host_lock():
        swept = teardown.sweep()

    assert swept == [run_dir]
    assert not any(leftovers(run_dir).values()), leftovers(run_dir)
    assert_untouched(node, pods, registry, private_image, fresh_namespaces)
