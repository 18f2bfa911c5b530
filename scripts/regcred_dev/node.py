#!/usr/bin/env python3
"""A real node for the local control plane: containerd + runc + the kubelet, as root.

Everything a node run owns lives in one temp dir (`/tmp/regcred-node-XXXX`) and one cgroup
(`/regcred-node-XXXX` in every hierarchy): containerd's config, root, state, socket and runc
root; the kubelet's root, certificates, pod logs and volume plugins. Pods must use
`hostNetwork: true` (no bridge, no netns, no iptables to clean); the node's CNI config is a
loopback-only network whose sole purpose is to make containerd report NetworkReady. No
scheduler runs: pods set `spec.nodeName` (`NODE_NAME`). The sandbox (pause) image is built
here and imported into containerd, so it needs no network and no credentials.

What a node run cannot keep inside its dir, and how it is cleaned:
- six sysctls the kubelet sets: the first run saves the host's values, the last run out
  restores them (a system-wide flock serialises runs' start and stop bookkeeping);
- `/var/lib/kubelet/device-plugins/` (the kubelet hard-codes it), `/var/log/containers`
  symlinks, `/run/containerd/s` shim sockets: exactly the run's entries are removed, and
  directories the host did not have are removed by the last run out;
- processes, mounts and cgroups: every kubelet, containerd, shim or runc process whose
  command line names the run dir, every process in the run's cgroup, every mount under it.
A SIGKILLed run leaves these behind; the next node start sweeps every dead run (its owner
pid is gone) and never touches a live run's processes, mounts or cgroups.

    with ControlPlane() as plane, Node(plane) as node: ...
    python scripts/node.py up        # control plane + node until Ctrl-C; prints KUBECONFIG
    python scripts/node.py sweep     # clean up after dead runs now
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import images
import nodedeps
import podnet
from controlplane import (
    KUBELET,
    Component,
    ControlPlane,
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
    write_kubeconfig,
)

TEMP_PREFIX = "regcred-node-"
NODE_NAME = "localhost"  # must resolve for the API server to reach the kubelet (logs, exec)
PAUSE_IMAGE = "localhost/regcred-pause:1"  # imported, never pulled
CONTAINERD, CTR = Path("/usr/bin/containerd"), Path("/usr/bin/ctr")
HOST_LOCK = Path("/run/lock/regcred-node.lock")
BASELINE = Path("/run/regcred-node-baseline.json")
# The sysctls the kubelet sets at start (pkg/kubelet/cm setupKernelTunables).
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")  # pluginapi.KubeletSocket's directory
CONTAINER_LOG_LINKS = Path("/var/log/containers")
SHIM_SOCKETS = Path("/run/containerd/s")
LIBMOUNT_STATE = Path("/run/mount")  # util-linux `mount`, which the kubelet runs, creates it
CNI_CACHE = Path("/var/lib/cni")  # libcni's result cache: one file per pod sandbox and network
# Host paths a node run may create; the last run out removes those the host did not have.
SHARED_DIRS = (DEVICE_PLUGINS, DEVICE_PLUGINS.parent, CONTAINER_LOG_LINKS, SHIM_SOCKETS, SHIM_SOCKETS.parent,
               LIBMOUNT_STATE, CNI_CACHE / "results", CNI_CACHE)
NODE_EXECUTABLES = {KUBELET, "containerd", "containerd-shim-runc-v2", "runc", "ctr", "ptp", "host-local"}
MNT_DETACH = 2
STOP_GRACE = 10.0


class NodeError(ControlPlaneError):
    """The node could not start (the message says why and what to do) or clean up."""


# --- host-wide bookkeeping ----------------------------------------------------------------------


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    """One node run at a time starts, stops or sweeps (runs themselves overlap freely)."""
    HOST_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with HOST_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read_sysctl(name: str) -> str:
    return Path("/proc/sys", name).read_text().strip()


def _save_baseline() -> None:
    """Before the first live run: what the host had, for the last run out to restore."""
    if BASELINE.exists():
        return
    BASELINE.write_text(json.dumps({
        "sysctls": {name: _read_sysctl(name) for name in KUBELET_SYSCTLS},
        "existing_dirs": [str(path) for path in SHARED_DIRS if path.exists()],
    }))


def _restore_baseline() -> None:
    """The last run out: sysctls back, shared directories the host did not have removed."""
    if not BASELINE.exists():
        return
    baseline = json.loads(BASELINE.read_text())
    for name, value in baseline["sysctls"].items():
        if _read_sysctl(name) != value:
            Path("/proc/sys", name).write_text(value)
    if str(DEVICE_PLUGINS) not in baseline["existing_dirs"]:  # else another kubelet's files
        for leftover in ("kubelet.sock", "kubelet_internal_checkpoint"):
            (DEVICE_PLUGINS / leftover).unlink(missing_ok=True)
    for directory in SHARED_DIRS:
        if str(directory) not in baseline["existing_dirs"]:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty
    BASELINE.unlink()


def _live_runs() -> list[Path]:
    """Node runs whose owner is alive (run dirs of this machine's other test sessions)."""
    orphans = set(orphaned_run_dirs(TEMP_PREFIX))
    candidates = Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*")
    return [d for d in candidates if d not in orphans and (d / "owner.pid").exists()]


def sweep() -> list[Path]:
    """Clean up every dead node run (owner gone); restore the host if no run is live.
    Call with `host_lock()` held. Returns the run dirs it removed."""
    swept = []
    for run_dir in orphaned_run_dirs(TEMP_PREFIX):
        log(f"sweeping the leftovers of a dead node run: {run_dir}")
        tear_down(run_dir)
        swept.append(run_dir)
    if not _live_runs():
        _restore_baseline()
    return swept


# --- tearing a run down (the same code for a clean stop and for a sweep) -------------------------


def _cgroup_mounts() -> list[Path]:
    """Mount points of every cgroup hierarchy (v1: one per controller set; v2: one)."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2"):
            mounts.append(Path(fields[4]))
    return mounts


def cgroup_dirs(cgroup: str) -> list[Path]:
    return [mount / cgroup for mount in _cgroup_mounts() if (mount / cgroup).is_dir()]


def _create_cgroup(cgroup: str) -> None:
    """The kubelet's cgroupRoot must exist; cpuset needs its cpus and mems filled in."""
    for mount in _cgroup_mounts():
        directory = mount / cgroup
        directory.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (directory / name).exists() and not (directory / name).read_text().strip():
                (directory / name).write_text((mount / name).read_text())


def cgroup_processes(cgroup: str) -> set[int]:
    pids: set[int] = set()
    for top in cgroup_dirs(cgroup):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(pid) for pid in procs.read_text().split())
    return pids


def node_processes(run_dir: Path) -> set[int]:
    """Node processes (kubelet, containerd, shims, runc, ctr) whose command line names the run dir."""
    needle = f"{run_dir}/".encode()  # the slash: never a prefix of another run's dir
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (Path(os.readlink(proc / "exe")).name in NODE_EXECUTABLES
                        and needle in (proc / "cmdline").read_bytes()):
                    pids.add(int(proc.name))
    return pids


def _kill_all(pids_of: Callable[[], set[int]], what: str) -> None:
    """SIGKILL until `pids_of()` is empty (new children may appear while killing)."""
    deadline = time.monotonic() + 30
    while pids := pids_of():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise NodeError(f"{what} still running after SIGKILL: pids {sorted(pids)}")
        time.sleep(0.05)  # reaping takes a moment; polled against the deadline above


def mounts_under(run_dir: Path) -> list[str]:
    prefix = f"{run_dir}/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == str(run_dir) or p.startswith(prefix)]


def _unmount_all(run_dir: Path) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for _ in range(20):  # bind mounts can stack; each pass lazily detaches the top ones
        points = mounts_under(run_dir)
        if not points:
            return
        for point in reversed(points):
            libc.umount2(point.encode(), MNT_DETACH)
    raise NodeError(f"mounts left under {run_dir}: {mounts_under(run_dir)}")


def _remove_cgroup(cgroup: str) -> bool:
    """rmdir the run's cgroups bottom-up; False while the kernel still holds one (EBUSY)."""
    for top in cgroup_dirs(cgroup):
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
    return not cgroup_dirs(cgroup)


def _shim_sockets(run_dir: Path) -> list[Path]:
    """containerd 1.6 puts shim sockets in /run/containerd/s/<hash>; each bundle records its own."""
    sockets = []
    for address in (run_dir / "containerd" / "state").glob("io.containerd.runtime.v2.task/*/*/address"):
        with contextlib.suppress(OSError):
            sockets.append(Path(address.read_text().strip().removeprefix("unix://")))
    return [s for s in sockets if s.parent == SHIM_SOCKETS]


def tear_down(run_dir: Path) -> None:
    """Kill the run's processes (containers first), unmount, remove cgroups, links, sockets
    and the run dir. Safe for a half-started or dead run; touches nothing of another run."""
    cgroup = run_dir.name
    _kill_all(lambda: cgroup_processes(cgroup), f"containers of {cgroup}")
    _kill_all(lambda: node_processes(run_dir), f"processes of {run_dir}")
    shim_sockets = _shim_sockets(run_dir)
    _unmount_all(run_dir)
    wait_until(lambda: _remove_cgroup(cgroup), 30, f"cgroup {cgroup} removed")
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(f"{run_dir}/"):
                link.unlink()
    for socket_path in shim_sockets:
        socket_path.unlink(missing_ok=True)
    for cached in (CNI_CACHE / "results").glob("*"):  # each names its pod's netns, under the run dir
        with contextlib.suppress(OSError):
            if f"{run_dir}/".encode() in cached.read_bytes():
                cached.unlink()
    shutil.rmtree(run_dir)


# --- configuration ------------------------------------------------------------------------------


def containerd_config(run_dir: Path) -> str:
    """containerd 1.6 (config v2) with every path in the run dir and the CRI plugin set up
    for this VM: no CAP_SYS_RESOURCE (restrict_oom_score_adj), cgroupfs, registry hosts
    from `certs.d/<host>/hosts.toml` (see `Node.trust_registry`)."""
    c = run_dir / "containerd"
    return f"""version = 2
root = "{c}/root"
state = "{c}/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{c}/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{c}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{c}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{nodedeps.CNI_BIN_DIR}"
    conf_dir = "{run_dir}/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{c}/certs.d"
"""


def cni_config(run_dir: Path) -> dict[str, Any]:
    """A loopback-only network: containerd reports NetworkReady, and hostNetwork pods never
    use it. Named after the run, so CNI's cache entries (if any) say whose they are."""
    return {"cniVersion": "0.4.0", "name": run_dir.name, "plugins": [{"type": "loopback"}]}


def kubelet_config(run_dir: Path, ca: Path, serving: tuple[Path, Path], port: int, healthz_port: int,
                   ) -> dict[str, Any]:
    """KubeletConfiguration for a loopback node on this VM (cgroup v1, no CAP_SYS_RESOURCE)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": "127.0.0.1", "port": port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "tlsCertFile": str(serving[0]), "tlsPrivateKeyFile": str(serving[1]),
        # The API server (`kubectl logs`) authenticates with its kubelet client certificate
        # from the run's CA; the kubelet asks the API server whether that user may.
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{run_dir}/containerd/containerd.sock",
        "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{run_dir.name}",
        "failCgroupV1": False,  # kubelet 1.35+ refuses cgroup v1 hosts unless told
        "failSwapOn": False,
        "oomScoreAdj": 0,  # lowering it needs CAP_SYS_RESOURCE, which this VM lacks
        "podLogsDir": str(run_dir / "pod-logs"), "volumePluginDir": str(run_dir / "volume-plugins"),
        "registerNode": True, "serializeImagePulls": False,
        "staticPodPath": "", "resolvConf": "/etc/resolv.conf",
    }


# --- regcred's image credential provider (docs/credential-provider.md) ---------------------------

PROVIDER_NAME = "regcred-credential-provider"  # the plugin's file name in the bin dir


@dataclass(frozen=True)
class CredentialProvider:
    """What the kubelet needs to run regcred's plugin: the executable, the endpoint it asks
    (URL and CA), the images it is asked for, and the token audience."""

    plugin: Path
    url: str
    ca: Path
    match_images: tuple[str, ...]
    audience: str = "regcred.dev/credential-provider"
    default_cache_duration: str = "5m"


def credential_provider_config(provider: CredentialProvider) -> dict[str, Any]:
    """The kubelet's CredentialProviderConfig (kubelet.config.k8s.io/v1): the Pod's
    ServiceAccount token for `audience`, answers cached per ServiceAccount, never called for
    a Pod without one."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig",
        "providers": [{
            "name": PROVIDER_NAME,
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "matchImages": list(provider.match_images),
            "defaultCacheDuration": provider.default_cache_duration,
            "args": ["--url", provider.url, "--ca-file", str(provider.ca)],
            "tokenAttributes": {
                "serviceAccountTokenAudience": provider.audience,
                "cacheType": "ServiceAccount",
                "requireServiceAccount": True,
            },
        }],
    }


# --- the node -----------------------------------------------------------------------------------


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
        (scripts/podnet.py); without it, pods must use `hostNetwork` (the host's loopback)."""
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
        return self._path("containerd/containerd.sock")

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
            self.dir = make_run_dir(TEMP_PREFIX)
            _save_baseline()
        atexit.register(self.stop)
        with self._stopped_on_failure(self._why_not_ready):
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
        _create_cgroup(run_dir.name)
        pki = self.control_plane.pki
        client = pki.issue(f"system:node:{self.name}", ("system:nodes",))
        serving = pki.issue(f"kubelet-{run_dir.name}", (), "server")
        kubeconfig = write_kubeconfig(run_dir / "kubelet.kubeconfig", self.control_plane.server,
                                      pki.ca, *client, f"system:node:{self.name}")
        self.port, self.healthz_port = free_port(), free_port()
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
        bin_dir = self._path("credential-providers")
        bin_dir.mkdir(exist_ok=True)
        link = bin_dir / PROVIDER_NAME
        link.unlink(missing_ok=True)
        link.symlink_to(provider.plugin)
        config = self._path("credential-provider.yaml")
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
        directory = self._path("containerd/certs.d") / host
        directory.mkdir(parents=True, exist_ok=True)
        # The CA also goes on the server: after the [host] answers 404 (a missing tag) containerd
        # falls back to the server, which without the CA reported x509 instead of "not found".
        partial = directory / f".hosts.toml.{os.getpid()}"
        partial.write_text(f'server = "https://{host}"\nca = "{ca}"\n\n[host."https://{host}"]\n'
                           f'  capabilities = ["pull", "resolve"]\n  ca = "{ca}"\n')
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
            self.kept_logs = keep_logs(self.log_dir)
            log(f"node failed; logs kept in {self.kept_logs}")
        run_dir, self.dir = self.dir, None
        with host_lock():
            tear_down(run_dir)
            if not _live_runs():
                _restore_baseline()


def main(argv: list[str] | None = None) -> int:
    import argparse

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
            keep_running((*plane.components.values(), *node.components.values()))

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
