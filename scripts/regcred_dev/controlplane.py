"""A real, local Kubernetes control plane for regcred's tests and demo (envtest-style).

The binaries come from `build` (compiled from Go modules into a versioned cache); etcd,
kube-apiserver and kube-controller-manager run on loopback with certificates from `pki`.
The controller-manager matters: without it namespaces never finish deleting,
ownerReferences never cascade and no `default` ServiceAccount appears.

    python scripts/controlplane.py build   # build or reuse the binaries, print their paths
    python scripts/controlplane.py up      # start, print `export KUBECONFIG=...`, run until Ctrl-C
    python scripts/controlplane.py env     # print `export KUBEBUILDER_ASSETS=...`

In code: `with ControlPlane() as cp: ... cp.kubeconfig ...`. Stdlib only.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from regcred_dev import REPO, cpconfig
from regcred_dev.build import APISERVER, BINARIES, CONTROLLER_MANAGER, ETCD, KUBECTL, ensure_binaries
from regcred_dev.pki import Certificates, write_kubeconfig
from regcred_dev.process import (
    STOP_GRACE,
    Component,
    ControlPlaneError,
    RunContext,
    free_port,
    keep_logs,
    keep_running,
    log,
    make_run_dir,
    orphaned_run_dirs,
    run_command,
    wait_until,
)

TEMP_PREFIX = "regcred-cp-"


def install_crds(kubeconfig: str | Path) -> None:
    """regcred's CRDs and kopf's peering CRD (crds/), applied server-side and Established: what
    every suite, bench and stress run installs before starting regcred."""
    kubectl = ["kubectl", "--kubeconfig", str(kubeconfig)]
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(REPO / "crds")],
                   check=True, capture_output=True)
    subprocess.run([*kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                    "crd/registrycredentials.regcred.dev", "crd/clusterkopfpeerings.kopf.dev"],
                   check=True, capture_output=True)


class ControlPlane(RunContext):
    """etcd + kube-apiserver + kube-controller-manager on loopback, in a temp dir.

    Use as a context manager. On an exception (or `stop(failed=True)`) the process logs are
    copied to `$REGCRED_CONTROLPLANE_LOGS` or `~/.cache/regcred/logs/<time>-<pid>/` first.
    """

    def __init__(self, binaries: dict[str, Path] | None = None, *, start_timeout: float = 120.0,
                 pod_network_proxy: str | None = None) -> None:
        """`pod_network_proxy`: the CONNECT proxy into a node's pod network (scripts/regcred_dev/podnet.py);
        the API server then reaches Services' endpoints (webhooks) through it, as a cluster
        without kube-proxy does with `--enable-aggregator-routing`."""
        self.binaries = binaries
        self.start_timeout = start_timeout
        self.pod_network_proxy = pod_network_proxy
        self.dir: Path | None = None
        self.components: dict[str, Component] = {}
        self.kept_logs: Path | None = None

    def put_kubectl_first_on_path(self) -> None:
        """Make `kubectl` in subprocesses the one built with this control plane (the machine's
        own may be outside kubectl's one-minor version skew)."""
        assert self.binaries is not None, "start() first"
        directory = str(self.binaries[KUBECTL].parent)
        if os.environ.get("PATH", "").split(os.pathsep)[0] != directory:
            os.environ["PATH"] = f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"

    # Paths and addresses, valid once started.
    @property
    def kubeconfig(self) -> Path:
        return self.run_path("admin.kubeconfig")

    @property
    def ca(self) -> Path:
        return self.run_path("pki/ca.crt")

    @property
    def admin_cert(self) -> Path:
        return self.run_path("pki/admin.crt")

    @property
    def admin_key(self) -> Path:
        return self.run_path("pki/admin.key")

    @property
    def audit_log(self) -> Path:
        """Metadata-level audit events (JSON lines): who did which verb on what."""
        return self.run_path("logs/audit.jsonl")

    def start(self) -> ControlPlane:
        started = time.monotonic()
        binaries = self.binaries = self.binaries or ensure_binaries()
        _remove_orphaned_dirs()
        self.dir = make_run_dir(TEMP_PREFIX)
        atexit.register(self.stop)
        with self.stopped_on_failure():
            self._configure(binaries)
            for name in BINARIES:
                self.start_component(name)
            wait_until(self._default_service_account, self.start_timeout,
                       "the `default` ServiceAccount (kube-controller-manager working)")
        log(f"control plane ready in {time.monotonic() - started:.1f}s at {self.server}")
        return self

    def _configure(self, binaries: dict[str, Path]) -> None:
        assert self.dir is not None
        (self.dir / "logs").mkdir()
        pki = Certificates(self.dir / "pki")
        admin_cert, admin_key = pki.issue("admin", ("system:masters",))
        kcm_cert, kcm_key = pki.issue("kube-controller-manager", ("system:masters",))
        kubelet_client = pki.issue("kube-apiserver-kubelet-client", ("system:masters",))
        self.pki = pki
        self.etcd_port, self.etcd_peer_port, self.port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        write_kubeconfig(self.kubeconfig, self.server, pki.ca, admin_cert, admin_key, "admin")
        kcm_config = write_kubeconfig(self.dir / "controller-manager.kubeconfig", self.server, pki.ca,
                                      kcm_cert, kcm_key, "kube-controller-manager")
        policy = self.dir / "audit-policy.json"
        policy.write_text(json.dumps(cpconfig.audit_policy()))
        proxy = self.pod_network_proxy
        argv = {
            ETCD: cpconfig.etcd_argv(binaries[ETCD], self.dir / "etcd", self.etcd_port, self.etcd_peer_port),
            APISERVER: cpconfig.apiserver_argv(
                binaries[APISERVER], etcd_port=self.etcd_port, port=self.port, cert_dir=self.dir / "pki",
                pki=pki, kubelet_client=kubelet_client, audit_policy_file=policy, audit_log=self.audit_log,
                aggregator_routing=bool(proxy)),
            CONTROLLER_MANAGER: cpconfig.controller_manager_argv(
                binaries[CONTROLLER_MANAGER], kcm_config, pki, pod_network=bool(proxy)),
        }
        env = {APISERVER: cpconfig.apiserver_proxy_env(proxy)} if proxy else {}
        self.components = {name: Component(name, argv[name], self.log_dir / f"{name}.log", env.get(name))
                           for name in BINARIES}

    # --- talking to the API server without a client library ---

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.admin_cert), str(self.admin_key))
        return context

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET `path` as the admin; returns (status, body) for any HTTP status."""
        return self.request("GET", path, timeout)

    def request(self, method: str, path: str, timeout: float = 5.0, body: dict[str, Any] | None = None,
                ) -> tuple[int, bytes]:
        """`method` on `path` as the admin (`body` as JSON); returns (status, body) for any status."""
        request = urllib.request.Request(self.server + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={} if body is None else {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, context=self.ssl_context(), timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def metrics(self) -> str:
        """The API server's Prometheus text (e.g. `apiserver_request_total`), read as the admin."""
        status, body = self.get("/metrics", timeout=15)
        if status != 200:
            raise ControlPlaneError(f"/metrics returned {status}")
        return body.decode()

    def audit_events(self) -> list[dict[str, Any]]:
        """Audit events so far (verb, user.username, objectRef, responseStatus ...)."""
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]

    def _etcd_healthy(self) -> bool:
        self.components[ETCD].check_running()
        url = f"http://127.0.0.1:{self.etcd_port}/health"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(json.loads(response.read()).get("health") == "true")

    def _apiserver_ready(self) -> bool:
        self.components[APISERVER].check_running()
        return self.get("/readyz", timeout=5)[0] == 200

    def _default_service_account(self) -> bool:
        self.components[CONTROLLER_MANAGER].check_running()
        return self.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200

    # --- lifecycle of single components (robustness suites restart them in place) ---

    def start_component(self, name: str) -> None:
        """Start one component and wait until it is healthy (etcd) or ready (API server)."""
        self.components[name].start()
        if name == ETCD:
            wait_until(self._etcd_healthy, self.start_timeout, "etcd /health")
        elif name == APISERVER:
            wait_until(self._apiserver_ready, self.start_timeout, "kube-apiserver /readyz")

    def stop_component(self, name: str, graceful: bool = True) -> None:
        """SIGTERM (then SIGKILL after a deadline), or SIGKILL at once when not `graceful`."""
        self.components[name].stop(STOP_GRACE if graceful else 0)

    def restart_etcd(self, downtime: float = 0.0, graceful: bool = True) -> None:
        """Stop etcd, stay down `downtime` seconds, start it on the same port and data dir;
        returns once the API server is ready again. A graceful etcd stop takes ~7s while the
        API server is connected (etcd's request timeout); SIGKILL loses nothing here, since
        only fsync is skipped and the page cache survives a process kill."""
        self._restart(ETCD, downtime, graceful)
        wait_until(self._apiserver_ready, self.start_timeout, "kube-apiserver /readyz after etcd restart")

    def restart_apiserver(self, downtime: float = 0.0, graceful: bool = True) -> None:
        """Stop kube-apiserver and start it again on the same port; returns once it is ready."""
        self._restart(APISERVER, downtime, graceful)

    def _restart(self, name: str, downtime: float, graceful: bool) -> None:
        self.stop_component(name, graceful)
        if downtime:
            time.sleep(downtime)  # the point is to stay down; nothing to wait for
        self.start_component(name)

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for another identity (client cert CN=user, O=groups), e.g. to test RBAC."""
        cert, key = self.pki.issue(user, groups)
        return write_kubeconfig(self.run_path(f"{cert.stem}.kubeconfig"), self.server, self.ca, cert, key,
                                user)

    def stop(self, failed: bool = False) -> None:
        """Stop every process, keep the logs if `failed`, remove the temp dir. Idempotent."""
        atexit.unregister(self.stop)
        for name in reversed(BINARIES):
            if name in self.components:
                self.components[name].stop()
        if self.dir is None:
            return
        if failed and (self.dir / "logs").exists():
            self.kept_logs = keep_logs(self.dir / "logs")
            log(f"control plane failed; logs kept in {self.kept_logs}")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None


def _remove_orphaned_dirs() -> None:
    """A control plane's processes die with their owner; only its files are left to remove."""
    for directory in orphaned_run_dirs(TEMP_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build or reuse the binaries and print their paths")
    commands.add_parser("up", help="start a control plane and keep it up until Ctrl-C or SIGTERM")
    commands.add_parser("env", help="print `export KUBEBUILDER_ASSETS=...` for the cached binaries")
    args = parser.parse_args(argv)

    def command() -> None:
        if args.command == "build":
            started = time.monotonic()
            for name, path in ensure_binaries().items():
                print(f"{name}: {path}")
            log(f"binaries ready in {time.monotonic() - started:.1f}s")
        elif args.command == "env":
            print(f"export KUBEBUILDER_ASSETS={ensure_binaries(build=False)[APISERVER].parent}")
        else:
            with ControlPlane() as plane:
                print(f"export KUBECONFIG={plane.kubeconfig}", flush=True)
                keep_running(plane.components.values())

    return run_command(command)
