#!/usr/bin/env python3
"""A real, local Kubernetes control plane for regcred's tests and demo (envtest-style).

Nothing can be downloaded here except from package registries, so the binaries are
compiled from Go modules (`k8s.io/kubernetes`, `go.etcd.io/etcd/server/v3`) into a
versioned cache, then etcd, kube-apiserver and kube-controller-manager run on loopback
with throwaway certificates. The controller-manager matters: without it namespaces never
finish deleting, ownerReferences never cascade and no `default` ServiceAccount appears.

    python scripts/controlplane.py build   # build or reuse the binaries, print their paths
    python scripts/controlplane.py up      # start, print `export KUBECONFIG=...`, run until Ctrl-C
    python scripts/controlplane.py env     # print `export KUBEBUILDER_ASSETS=...`

In code: `with ControlPlane() as cp: ... cp.kubeconfig ...`. Stdlib only.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

# The one place the Kubernetes version is chosen: the newest stable release the Go module
# proxy serves. `REGCRED_KUBERNETES_VERSION` picks another for a compatibility run; the oldest
# one supported (and tested by `make compat`) is OLDEST_KUBERNETES_VERSION.
DEFAULT_KUBERNETES_VERSION = "v1.37.2"
OLDEST_KUBERNETES_VERSION = "v1.34.4"
KUBERNETES_VERSION = os.environ.get("REGCRED_KUBERNETES_VERSION") or DEFAULT_KUBERNETES_VERSION

APISERVER, CONTROLLER_MANAGER, ETCD = "kube-apiserver", "kube-controller-manager", "etcd"
KUBELET, KUBECTL = "kubelet", "kubectl"
BINARIES = (ETCD, APISERVER, CONTROLLER_MANAGER)  # the control plane's processes, in start order
# Built with them from the same module: the node's kubelet (no version skew) and a kubectl
# within kubectl's own skew policy, which the tests and the demo put first on $PATH.
TOOLS = (KUBELET, KUBECTL)
# deployment and replicaset: the onboarding burst test (tests/integration/test_admission.py)
# needs Pods created the way a ReplicaSet creates them, the instant a ServiceAccount exists.
CONTROLLERS = ("garbagecollector,namespace,serviceaccount,serviceaccount-token,root-ca-cert-publisher,"
               "deployment,replicaset")
STOP_GRACE = 10.0
TEMP_PREFIX = "regcred-cp-"


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started; the message says where the logs are."""


def log(message: str) -> None:
    print(f"[controlplane] {message}", file=sys.stderr, flush=True)


# --- build ------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where built binaries live: one directory per Kubernetes version, so a bump rebuilds."""
    base = os.environ.get("REGCRED_CONTROLPLANE_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "regcred" / "controlplane"
    return root / KUBERNETES_VERSION


def _go(args: list[str], cwd: Path, log_file: Path) -> None:
    flags = f"{os.environ.get('GOFLAGS', '')} -mod=mod".strip()
    full_env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": flags, "GOTOOLCHAIN": "local"}
    with log_file.open("a") as out:
        out.write(f"$ go {' '.join(args)}\n")
        out.flush()
        result = subprocess.run(["go", *args], cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise ControlPlaneError(f"`go {' '.join(args)}` failed in {cwd}; log {log_file}:\n{tail}")


def _kubernetes_source() -> Path:
    """The downloaded k8s.io/kubernetes module: its go.mod and build/dependencies.yaml."""
    out = subprocess.run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
                         check=True, capture_output=True, text=True,
                         env={**os.environ, "GOTOOLCHAIN": "local"})
    return Path(json.loads(out.stdout)["Dir"])


def etcd_version(kubernetes_source: Path) -> str:
    """The etcd release this Kubernetes release is tested with (its build/dependencies.yaml)."""
    text = (kubernetes_source / "build" / "dependencies.yaml").read_text()
    found = re.search(r'name: "etcd"\s*\n\s*version: (\S+)', text)
    if not found:
        raise ControlPlaneError(f"no etcd version in {kubernetes_source}/build/dependencies.yaml")
    return "v" + found.group(1)


def _kubernetes_module(go_mod: str) -> tuple[str, str]:
    """go.mod and tools.go for a module that builds kubernetes' commands outside its repo.

    kubernetes requires its staging modules at v0.0.0 and replaces them with local paths that
    only exist in its repo; we replace each with the published v0.<minor>.<patch> tag.
    """
    staging = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", go_mod, re.M)))
    godebug = "\n".join(re.findall(r"^godebug .*$", go_mod, re.M))
    go_line = re.search(r"^go (\S+)$", go_mod, re.M)
    staging_version = "v0." + KUBERNETES_VERSION.split(".", 1)[1]
    replaces = "\n".join(f"\t{module} => {module} {staging_version}" for module in staging)
    mod = (f"module regcred.dev/controlplane/kubernetes\n\ngo {go_line.group(1) if go_line else '1.24.0'}\n\n"
           f"{godebug}\n\nrequire k8s.io/kubernetes {KUBERNETES_VERSION}\n\nreplace (\n{replaces}\n)\n")
    imports = "".join(f'\t_ "k8s.io/kubernetes/cmd/{name}"\n'
                      for name in (APISERVER, CONTROLLER_MANAGER, *TOOLS))
    tools = f"//go:build tools\n\npackage tools\n\nimport (\n{imports})\n"
    return mod, tools


def _etcd_module(version: str) -> tuple[str, str]:
    """etcd's server main is a wrapper around etcdmain; its own module keeps its deps apart."""
    mod = (f"module regcred.dev/controlplane/etcd\n\ngo 1.24.0\n\n"
           f"require go.etcd.io/etcd/server/v3 {version}\n")
    main = ('package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
            "func main() { etcdmain.Main(os.Args) }\n")
    return mod, main


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _build(names: list[str], target: Path) -> None:
    """Compile the missing binaries into `target`, each via a temp name and an atomic rename."""
    src = target / "src"
    build_log = target / "build.log"
    version = KUBERNETES_VERSION.lstrip("v").split(".")
    ldflags = ("-s -w -X k8s.io/component-base/version.gitVersion=" + KUBERNETES_VERSION
               + f" -X k8s.io/component-base/version.gitMajor={version[0]}"
               + f" -X k8s.io/component-base/version.gitMinor={version[1]}"
               + " -X k8s.io/component-base/version.gitTreeState=clean")
    kubernetes_source = _kubernetes_source()
    kube_names = [name for name in names if name != ETCD]
    if kube_names:
        module = src / "kubernetes"
        module.mkdir(parents=True, exist_ok=True)
        go_mod, tools = _kubernetes_module((kubernetes_source / "go.mod").read_text())
        _write_if_changed(module / "go.mod", go_mod)
        _write_if_changed(module / "tools.go", tools)
        if not (module / "go.sum").exists():
            _go(["mod", "tidy"], module, build_log)
        for name in kube_names:
            _go_build(module, f"k8s.io/kubernetes/cmd/{name}", target / name, ldflags, build_log)
    if ETCD in names:
        module = src / "etcd"
        module.mkdir(parents=True, exist_ok=True)
        go_mod, main = _etcd_module(etcd_version(kubernetes_source))
        _write_if_changed(module / "main.go", main)
        if not (module / "go.mod").exists() or go_mod.splitlines()[-1] not in (module / "go.mod").read_text():
            (module / "go.mod").write_text(go_mod)
            (module / "go.sum").unlink(missing_ok=True)
            _go(["mod", "tidy"], module, build_log)
        _go_build(module, ".", target / ETCD, "-s -w", build_log)


def _go_build(module: Path, package: str, output: Path, ldflags: str, build_log: Path) -> None:
    started = time.monotonic()
    log(f"building {output.name} (first time takes a while; log: {build_log})")
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        _go(["build", "-trimpath", "-ldflags", ldflags, "-o", str(partial), package], module, build_log)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    log(f"built {output.name} in {time.monotonic() - started:.0f}s")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def ensure_binaries(build: bool = True) -> dict[str, Path]:
    """Paths of the control plane's binaries and TOOLS, building whatever is missing.

    `KUBEBUILDER_ASSETS` wins where it has a binary (envtest's convention); the rest comes from
    the versioned cache. A file lock keeps two concurrent suites from building at once.
    """
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    found: dict[str, Path] = {}
    wanted = (*BINARIES, *TOOLS)
    for name in wanted:
        if assets and _executable(Path(assets) / name):
            found[name] = Path(assets) / name
    target = cache_dir()
    missing = [name for name in wanted if name not in found and not _executable(target / name)]
    if missing:
        if not build:
            raise ControlPlaneError(f"missing {', '.join(missing)} in {target}; run `controlplane.py build`")
        build_missing(target, missing, _build)
    return {name: found.get(name, target / name) for name in wanted}


def build_missing(target: Path, names: list[str], build: Callable[[list[str], Path], None]) -> None:
    """Run `build(missing, target)` for those of `names` not yet executable in `target`.

    A file lock in `target` keeps two concurrent suites (or worktrees) from building the same
    cache at once; whoever waited finds the binaries there and builds nothing.
    """
    if shutil.which("go") is None:
        raise ControlPlaneError(f"missing {', '.join(names)} in {target} and no `go` toolchain to build them")
    target.mkdir(parents=True, exist_ok=True)
    with (target / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may finish the build meanwhile
        missing = [name for name in names if not _executable(target / name)]
        for stale in target.glob(".*.partial-*"):  # left by a killed build
            stale.unlink()
        if missing:
            build(missing, target)


# --- certificates -----------------------------------------------------------------------------

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


class Certificates:
    """A throwaway CA, the serving cert, client certs and the service-account key pair."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = directory / "openssl.cnf"
        self.config.write_text(_OPENSSL_CONFIG)
        self.ca, self.ca_key = directory / "ca.crt", directory / "ca.key"
        self._openssl("req", "-x509", "-new", *self._ec_key(self.ca_key), "-subj", "/CN=regcred-test-ca",
                      "-days", "7", "-extensions", "ca", "-out", self.ca)
        self.server, self.server_key = self.issue("kube-apiserver", (), "server")
        self.sa_key, self.sa_pub = directory / "sa.key", directory / "sa.pub"
        self._openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", self.sa_key)
        self._openssl("pkey", "-in", self.sa_key, "-pubout", "-out", self.sa_pub)

    def _ec_key(self, key: Path) -> list[str | Path]:
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
                "-config", self.config]

    def _openssl(self, *args: str | Path) -> None:
        result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
        if result.returncode != 0:
            raise ControlPlaneError(f"openssl {args[0]} failed: {result.stderr.strip()}")

    def issue(self, common_name: str, organisations: tuple[str, ...] = (), kind: str = "client",
              ) -> tuple[Path, Path]:
        """A certificate signed by the CA; for clients CN is the user name and O the groups."""
        stem = re.sub(r"[^\w.-]", "_", common_name)
        cert, key, csr = (self.dir / f"{stem}.crt", self.dir / f"{stem}.key", self.dir / f"{stem}.csr")
        subject = "".join(f"/O={org}" for org in organisations) + f"/CN={common_name}"
        self._openssl("req", "-new", *self._ec_key(key), "-subj", subject, "-out", csr)
        self._openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                      "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "7",
                      "-extfile", self.config, "-extensions", kind, "-out", cert)
        csr.unlink()
        return cert, key


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    """A kubeconfig with file references (JSON is valid YAML, so no YAML library is needed)."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "regcred-test",
        "clusters": [{"name": "regcred-test",
                      "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "regcred-test", "context": {"cluster": "regcred-test", "user": user}}],
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


# --- processes --------------------------------------------------------------------------------


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port nobody listens on right now, chosen below the kernel's ephemeral range:
    a port the kernel picked (bind to 0) can be taken by any outgoing connection before the
    server that was given it binds it, and a busy suite saw exactly that (EADDRINUSE)."""
    low, high = _ephemeral_ports()
    candidates = range(10000, low) if low > 11000 else range(high + 1, 65536)
    for port in random.sample(candidates, 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ControlPlaneError("no free loopback port outside the ephemeral range")


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the process that started it dies.

    Covers the case no atexit hook can: the test runner itself being SIGKILLed.
    Linux-only; harmless elsewhere.
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; ControlPlaneError on the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except ControlPlaneError:
            raise
        except Exception as error:  # not up yet: connection refused, TLS, 5xx ...
            last = error
        if time.monotonic() >= deadline:
            raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


class Component:
    """One control-plane process, restartable in place with the same arguments and ports."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log_path, self.env = name, argv, log_path, env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            out.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode())
            out.flush()
            preexec = _die_with_parent if threading.current_thread() is threading.main_thread() else None
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=preexec,
                                            env={**os.environ, **self.env} if self.env else None)

    def check_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise ControlPlaneError(f"{self.name} exited (code {code}); see {self.log_path.name}")

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds (grace 0: SIGKILL at once, like a crash)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if grace <= 0:
            process.kill()
            process.wait()
            return
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RunContext:
    """Something started in a run dir of its own: a context manager whose exit stops it
    (keeping the logs when the block raised), and paths inside the run dir."""

    dir: Path | None = None
    kept_logs: Path | None = None
    error_type: type[ControlPlaneError] = ControlPlaneError

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self, failed: bool = False) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop(failed=exc is not None and not isinstance(exc, KeyboardInterrupt))

    @contextlib.contextmanager
    def _stopped_on_failure(self, why: Callable[[], str] = lambda: "") -> Iterator[None]:
        """Around a start: on any failure stop (keeping the logs unless it was Ctrl-C) and
        re-raise as `error_type`, with `why()` and where the logs are."""
        try:
            yield
        except BaseException as error:
            detail = why() if isinstance(error, ControlPlaneError) else ""
            self.stop(failed=not isinstance(error, KeyboardInterrupt))
            if isinstance(error, ControlPlaneError) and self.kept_logs:
                raise self.error_type(f"{error}{detail}; logs kept in {self.kept_logs}") from error
            raise

    def _path(self, relative: str) -> Path:
        if self.dir is None:
            raise ControlPlaneError(f"{type(self).__name__} not started")
        return self.dir / relative

    @property
    def log_dir(self) -> Path:
        """Where the processes' logs go (kept on failure, see `keep_logs`)."""
        return self._path("logs")


class ControlPlane(RunContext):
    """etcd + kube-apiserver + kube-controller-manager on loopback, in a temp dir.

    Use as a context manager. On an exception (or `stop(failed=True)`) the process logs are
    copied to `$REGCRED_CONTROLPLANE_LOGS` or `~/.cache/regcred/logs/<time>-<pid>/` first.
    """

    def __init__(self, binaries: dict[str, Path] | None = None, *, start_timeout: float = 120.0,
                 pod_network_proxy: str | None = None) -> None:
        """`pod_network_proxy`: the CONNECT proxy into a node's pod network (scripts/podnet.py);
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
        return self._path("admin.kubeconfig")

    @property
    def ca(self) -> Path:
        return self._path("pki/ca.crt")

    @property
    def admin_cert(self) -> Path:
        return self._path("pki/admin.crt")

    @property
    def admin_key(self) -> Path:
        return self._path("pki/admin.key")

    @property
    def audit_log(self) -> Path:
        """Metadata-level audit events (JSON lines): who did which verb on what."""
        return self._path("logs/audit.jsonl")

    def start(self) -> ControlPlane:
        started = time.monotonic()
        binaries = self.binaries = self.binaries or ensure_binaries()
        _remove_orphaned_dirs()
        self.dir = make_run_dir(TEMP_PREFIX)
        atexit.register(self.stop)
        with self._stopped_on_failure():
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
        # How the API server authenticates to a node's kubelet (`kubectl logs`, scripts/node.py).
        kubelet_client_cert, kubelet_client_key = pki.issue("kube-apiserver-kubelet-client",
                                                            ("system:masters",))
        self.pki = pki
        self.etcd_port, self.etcd_peer_port, self.port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        write_kubeconfig(self.kubeconfig, self.server, pki.ca, admin_cert, admin_key, "admin")
        kcm_config = write_kubeconfig(self.dir / "controller-manager.kubeconfig", self.server, pki.ca,
                                      kcm_cert, kcm_key, "kube-controller-manager")
        audit_policy = self.dir / "audit-policy.json"
        audit_policy.write_text(json.dumps({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [{"level": "None", "users": ["system:apiserver"]}, {"level": "Metadata"}],
        }))
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        argv = {
            ETCD: [str(binaries[ETCD]), "--name", "regcred-test", "--data-dir", str(self.dir / "etcd"),
                   "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                   "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                   "--initial-cluster", f"regcred-test={peer_url}",
                   "--unsafe-no-fsync", "--quota-backend-bytes", str(4 << 30), "--log-level", "warn"],
            APISERVER: [str(binaries[APISERVER]), "--etcd-servers", etcd_url,
                        "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
                        "--secure-port", str(self.port), "--cert-dir", str(self.dir / "pki"),
                        "--tls-cert-file", str(pki.server), "--tls-private-key-file", str(pki.server_key),
                        "--client-ca-file", str(pki.ca),
                        "--service-account-key-file", str(pki.sa_pub),
                        "--service-account-signing-key-file", str(pki.sa_key),
                        "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
                        "--service-cluster-ip-range", "10.0.0.0/24",
                        "--authorization-mode", "Node,RBAC",
                        # As kubeadm and managed clusters run it: a kubelet may only touch its
                        # own Node and Pods, and request ServiceAccount tokens only for the
                        # audiences RBAC grants it (the credential provider's, docs/credential-provider.md).
                        "--enable-admission-plugins", "NodeRestriction",
                        "--kubelet-client-certificate", str(kubelet_client_cert),
                        "--kubelet-client-key", str(kubelet_client_key),
                        "--kubelet-certificate-authority", str(pki.ca),
                        # A node's name is `localhost`: reach it there, never on another address.
                        "--kubelet-preferred-address-types", "Hostname",
                        "--enable-priority-and-fairness=false", "--profiling=false",
                        # Loopback can't be an Endpoints address; nothing runs in-cluster anyway.
                        "--endpoint-reconciler-type", "none",
                        # On SIGTERM, close idle connections after 2s instead of waiting 60s for watches.
                        "--shutdown-send-retry-after=true",
                        "--audit-policy-file", str(audit_policy), "--audit-log-path", str(self.audit_log),
                        "--audit-log-maxsize", "0", "--audit-log-mode", "blocking",
                        *(["--enable-aggregator-routing=true"] if self.pod_network_proxy else [])],
            CONTROLLER_MANAGER: [str(binaries[CONTROLLER_MANAGER]), "--kubeconfig", str(kcm_config),
                                 "--controllers", CONTROLLERS + (",endpoint,endpointslice,disruption"
                                                                 if self.pod_network_proxy else ""),
                                 "--service-account-private-key-file", str(pki.sa_key),
                                 "--root-ca-file", str(pki.ca), "--use-service-account-credentials=false",
                                 "--leader-elect=false", "--secure-port", "0",
                                 "--concurrent-gc-syncs", "5", "--concurrent-namespace-syncs", "5",
                                 # The defaults (20/30) make `default` ServiceAccounts for a
                                 # thousand namespaces take a minute; benchmarks need more.
                                 "--kube-api-qps", "200", "--kube-api-burst", "400"],
        }
        # Go never proxies loopback (etcd, the API server itself); the rest is the pod network.
        env = {APISERVER: {"HTTPS_PROXY": self.pod_network_proxy, "HTTP_PROXY": self.pod_network_proxy,
                           "NO_PROXY": "127.0.0.1,localhost"}
               } if self.pod_network_proxy else {}
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
            return json.loads(response.read()).get("health") == "true"

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
        return write_kubeconfig(self._path(f"{cert.stem}.kubeconfig"), self.server, self.ca, cert, key, user)

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


def make_run_dir(prefix: str) -> Path:
    """A fresh temp dir that records its owner (pid and start time), so a later run can tell
    a dead run's leftovers from a live run's files (see `orphaned_run_dirs`)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    (directory / "owner.pid").write_text(f"{os.getpid()} {_process_start_time(os.getpid())}")
    return directory


def _process_start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat: tells a live owner from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def orphaned_run_dirs(prefix: str) -> list[Path]:
    """Temp dirs made by `make_run_dir(prefix)` whose owner is gone (SIGKILLed: its processes
    died with it, see `_die_with_parent`, but nothing could remove its files)."""
    orphans = []
    for directory in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            pid, _, started = (directory / "owner.pid").read_text().partition(" ")
            alive = Path(f"/proc/{int(pid)}").exists() and (
                not started or _process_start_time(int(pid)) == started.strip())
        except (OSError, ValueError):
            continue  # no pid file yet, or not ours to judge
        if not alive:
            orphans.append(directory)
    return orphans


def _remove_orphaned_dirs() -> None:
    """A control plane's processes die with their owner; only its files are left to remove."""
    for directory in orphaned_run_dirs(TEMP_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)


def keep_logs(source: Path) -> Path:
    """Copy a log dir somewhere that outlives the temp dir."""
    base = os.environ.get("REGCRED_CONTROLPLANE_LOGS")
    root = Path(base) if base else Path.home() / ".cache" / "regcred" / "logs"
    target = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target


# --- CLI --------------------------------------------------------------------------------------


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP all raise KeyboardInterrupt, so `finally` blocks clean up
    (SIGINT explicitly too: a shell starts background jobs with it ignored)."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _raise_keyboard_interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_command(command: Callable[[], None]) -> int:
    """A CLI command's exit code: 0; 130 after Ctrl-C, SIGTERM or SIGHUP (everything it
    started cleaned up by its `with` blocks); 1 with the message on a ControlPlaneError."""
    try:
        with interruptible():
            command()
    except KeyboardInterrupt:
        log("stopped")
        return 130
    except ControlPlaneError as error:
        log(f"error: {error}")
        return 1
    return 0


def keep_running(components: Iterable[Component]) -> None:
    """`up`: until interrupted, failing as soon as one of `components` exits."""
    log("running; Ctrl-C or SIGTERM stops it and removes everything")
    watched = list(components)
    while True:
        for component in watched:
            component.check_running()
        time.sleep(1)  # a liveness check, not synchronisation


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


if __name__ == "__main__":
    sys.exit(main())
