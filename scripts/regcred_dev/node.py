"""A real node for the local control plane: containerd + runc + the kubelet, as root.

Everything a node run owns lives in one temp dir (`/tmp/regcred-node-XXXX`) and one cgroup
(`/regcred-node-XXXX` in every hierarchy): containerd's config, root, state, socket and runc
root; the kubelet's root, certificates, pod logs and volume plugins. Pods must use
`hostNetwork: true` (no bridge, no netns, no iptables to clean); the node's CNI config is a
loopback-only network whose sole purpose is to make containerd report NetworkReady. No
scheduler runs: pods set `spec.nodeName` (`NODE_NAME`). The sandbox (pause) image is built
here and imported into containerd, so it needs no network and no credentials.

What a node run cannot keep inside its dir (six sysctls, a few shared host directories,
processes, mounts, cgroups) and how it is taken back, also after a SIGKILL: `teardown`.
The files it writes: `nodeconfig` (pure renderers).

    with ControlPlane() as plane, Node(plane) as node: ...
    python scripts/node.py up        # control plane + node until Ctrl-C; prints KUBECONFIG
    python scripts/node.py sweep     # clean up after dead runs now
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

from regcred_dev import images, nodedeps, podnet, process
from regcred_dev.build import KUBELET
from regcred_dev.controlplane import ControlPlane
from regcred_dev.nodeconfig import (
    PAUSE_IMAGE,
    PROVIDER_NAME,
    CredentialProvider,
    cni_config,
    containerd_config,
    credential_provider_config,
    kubelet_config,
    registry_hosts,
)
from regcred_dev.pki import write_kubeconfig
from regcred_dev.process import STOP_GRACE, Component, RunContext, log, wait_until
from regcred_dev.teardown import (
    TEMP_PREFIX,
    NodeError,
    create_cgroup,
    host_lock,
    live_runs,
    restore_baseline,
    save_baseline,
    sweep,
    tear_down,
)

NODE_NAME = "localhost"  # must resolve for the API server to reach the kubelet (logs, exec)
CONTAINERD, CTR = Path("/usr/bin/containerd"), Path("/usr/bin/ctr")


class Node(RunContext):
    """containerd + kubelet registered with `control_plane` as Node `NODE_NAME`.

    Use as a context manager; `stop()` is idempotent and also runs at interpreter exit.
    On failure the logs are kept like the control plane's.
    """

    error_type = NodeError

    def __init__(self, control_plane: ControlPlane, *, start_timeout: float = 120.0,
                 credential_provider: CredentialProvider | None = None,
                 pod_network: podnet.PodNetwork | None = None) -> None:
        """`pod_network`: run the node in a network namespace of its own with a pod network
        (scripts/regcred_dev/podnet.py); without it, pods must use `hostNetwork` (the host's loopback)."""
        self.control_plane = control_plane
        self.credential_provider = credential_provider
        self.pod_network = pod_network
        self.start_timeout = start_timeout
        self.name = NODE_NAME
        self.dir: Path | None = None
        self.components: dict[str, Component] = {}
        self.kept_logs: Path | None = None

    @property
    def containerd_socket(self) -> Path:
        return self.run_path("containerd/containerd.sock")

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why no node can run on this machine (not root, packages missing), or None."""
        if os.geteuid() != 0:
            return "the node needs root (containerd and the kubelet manage mounts and cgroups): run as root"
        return nodedeps.missing_reason()

    def start(self) -> Node:
        reason = self.unavailable_reason()
        if reason:
            raise NodeError(reason)
        started = time.monotonic()
        binaries = self.control_plane.binaries
        assert binaries is not None, "start the control plane first"
        with host_lock():
            sweep()
            self.dir = process.make_run_dir(TEMP_PREFIX)
            save_baseline()
        atexit.register(self.stop)
        with self.stopped_on_failure(self._why_not_ready):
            self._configure(binaries[KUBELET])
            self.components["containerd"].start()
            wait_until(self._containerd_up, self.start_timeout, "containerd answering on its socket")
            self._import_pause_image()
            self.components[KUBELET].start()
            wait_until(self.ready, self.start_timeout, f"Node {self.name} Ready")
        log(f"node {self.name} Ready in {time.monotonic() - started:.1f}s")
        return self

    def _why_not_ready(self) -> str:
        """The Node's own Ready message, and the last error each log shows, for the failure."""
        reasons = []
        with contextlib.suppress(Exception):
            status, body = self.control_plane.get(f"/api/v1/nodes/{self.name}")
            if status == 200:
                for condition in json.loads(body).get("status", {}).get("conditions", []):
                    if condition["type"] == "Ready" and condition["status"] != "True":
                        reasons.append(f"Node Ready={condition['status']}: {condition.get('message', '')}")
        for name, component in self.components.items():
            with contextlib.suppress(OSError):
                errors = [line for line in component.log_path.read_text(errors="replace").splitlines()
                          if line.startswith(("E", "F")) or "level=error" in line or "level=fatal" in line]
                if errors:
                    reasons.append(f"{name}: {errors[-1][-300:]}")
        return "".join(f"\n  {reason}" for reason in reasons)

    def _configure(self, kubelet: Path) -> None:
        assert self.dir is not None
        run_dir = self.dir
        self.log_dir.mkdir()
        (run_dir / "cni").mkdir()
        network = cni_config(run_dir)
        prefix: list[str] = []
        if self.pod_network:  # containerd and the kubelet in the run's namespace (podnet.py)
            netns = podnet.create_netns(run_dir / "netns")
            network = podnet.cni_config(run_dir.name, run_dir / "cni-ipam")
            prefix = ["nsenter", f"--net={netns}", "--"]
        (run_dir / "cni" / "10-node.conflist").write_text(json.dumps(network))
        (run_dir / "containerd" / "certs.d").mkdir(parents=True)
        config = run_dir / "containerd" / "config.toml"
        config.write_text(containerd_config(run_dir))
        create_cgroup(run_dir.name)
        pki = self.control_plane.pki
        client = pki.issue(f"system:node:{self.name}", ("system:nodes",))
        serving = pki.issue(f"kubelet-{run_dir.name}", (), "server")
        kubeconfig = write_kubeconfig(run_dir / "kubelet.kubeconfig", self.control_plane.server,
                                      pki.ca, *client, f"system:node:{self.name}")
        self.port, self.healthz_port = process.free_port(), process.free_port()
        kubelet_yaml = run_dir / "kubelet.yaml"
        kubelet_yaml.write_text(json.dumps(
            kubelet_config(run_dir, pki.ca, serving, self.port, self.healthz_port), indent=2))
        argv = {
            "containerd": [*prefix, str(CONTAINERD), "--config", str(config), "--log-level", "warn"],
            KUBELET: [*prefix, str(kubelet), "--config", str(kubelet_yaml), "--kubeconfig", str(kubeconfig),
                      "--root-dir", str(run_dir / "kubelet"), "--cert-dir", str(run_dir / "kubelet" / "pki"),
                      "--hostname-override", self.name, "--v", "1",
                      *(["--node-ip", podnet.NODE_IP] if self.pod_network else [])],
        }
        if self.pod_network:
            self.pod_network.attach(run_dir / "netns", self.control_plane.port, self.port)
        self.components = {name: Component(name, command, self.log_dir / f"{name}.log")
                           for name, command in argv.items()}
        self._kubelet_argv = argv[KUBELET]
        if self.credential_provider is not None:
            self.components[KUBELET].argv = self._with_provider(self.credential_provider)

    def _with_provider(self, provider: CredentialProvider) -> list[str]:
        """The kubelet's command line with regcred's credential provider configured."""
        bin_dir = self.run_path("credential-providers")
        bin_dir.mkdir(exist_ok=True)
        link = bin_dir / PROVIDER_NAME
        link.unlink(missing_ok=True)
        link.symlink_to(provider.plugin)
        config = self.run_path("credential-provider.yaml")
        config.write_text(json.dumps(credential_provider_config(provider), indent=2))
        return [*self._kubelet_argv, "--image-credential-provider-config", str(config),
                "--image-credential-provider-bin-dir", str(bin_dir)]

    def use_credential_provider(self, provider: CredentialProvider | None) -> None:
        """Restart the kubelet with `provider` configured (None: without one) and wait until
        the Node is Ready again; running pods keep running."""
        kubelet = self.components[KUBELET]
        kubelet.stop(STOP_GRACE)
        self.credential_provider = provider
        kubelet.argv = self._with_provider(provider) if provider else self._kubelet_argv
        kubelet.start()
        if self.pod_network is None:  # in a netns of its own, its healthz is not on our loopback
            wait_until(self._kubelet_healthy, self.start_timeout, "the restarted kubelet healthy")
        wait_until(self.ready, self.start_timeout, f"Node {self.name} Ready")

    def _kubelet_healthy(self) -> bool:
        self.components[KUBELET].check_running()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.healthz_port}/healthz", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def ctr(self, *args: str) -> str:
        """`ctr` against this node's containerd, in the CRI's namespace."""
        result = subprocess.run([str(CTR), "--address", str(self.containerd_socket), "--namespace", "k8s.io",
                                 *args], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def _containerd_up(self) -> bool:
        self.components["containerd"].check_running()
        if not self.containerd_socket.exists():
            return False
        self.ctr("version")
        return True

    def _import_pause_image(self) -> None:
        assert self.dir is not None
        archive = images.write_oci_archive(images.pause_image(), PAUSE_IMAGE, self.dir / "pause.tar")
        self.ctr("images", "import", str(archive))
        archive.unlink()

    def ready(self) -> bool:
        self.components[KUBELET].check_running()
        status, body = self.control_plane.get(f"/api/v1/nodes/{self.name}")
        if status != 200:
            return False
        conditions = json.loads(body).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def trust_registry(self, host: str, ca: Path) -> None:
        """Let containerd pull from `host` (HOST:PORT) over TLS, trusting `ca`; containerd
        reads `certs.d` on every pull, so this works on a running node (and the file is
        replaced atomically: a pull never reads half of it)."""
        directory = self.run_path("containerd/certs.d") / host
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / f".hosts.toml.{os.getpid()}"
        partial.write_text(registry_hosts(host, ca))
        os.replace(partial, directory / "hosts.toml")
        if self.pod_network:
            self.pod_network.expose_host_port(int(host.rpartition(":")[2]))

    def stop(self, failed: bool = False) -> None:
        """Delete the Node object, stop the kubelet and containerd, kill what is left of
        the pods, remove every mount, cgroup and file of the run. Idempotent."""
        atexit.unregister(self.stop)
        if self.dir is None:
            return
        if KUBELET in self.components and self.components[KUBELET].process is not None:
            with contextlib.suppress(Exception):  # the control plane may be gone already
                self.control_plane.request("DELETE", f"/api/v1/nodes/{self.name}")
        for name in (KUBELET, "containerd"):
            if name in self.components:
                self.components[name].stop(STOP_GRACE)
        if self.pod_network:
            self.pod_network.close()
        if failed and self.log_dir.exists():
            self.kept_logs = process.keep_logs(self.log_dir)
            log(f"node failed; logs kept in {self.kept_logs}")
        run_dir, self.dir = self.dir, None
        with host_lock():
            tear_down(run_dir)
            if not live_runs():
                restore_baseline()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="a control plane with this node, until Ctrl-C or SIGTERM")
    commands.add_parser("sweep", help="clean up after dead (SIGKILLed) node runs now")
    args = parser.parse_args(argv)

    def command() -> None:
        if args.command == "sweep":
            with host_lock():
                for run_dir in sweep():
                    print(f"swept {run_dir}")
            return
        with ControlPlane() as plane, Node(plane) as node:
            print(f"export KUBECONFIG={plane.kubeconfig}", flush=True)
            print(f"# node run dir: {node.dir}", flush=True)
            process.keep_running((*plane.components.values(), *node.components.values()))

    return process.run_command(command)
