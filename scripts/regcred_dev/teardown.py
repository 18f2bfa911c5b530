"""What a node run leaves on the host outside its run dir, and how it is taken back.

The one module to review for host safety: the sysctls the kubelet sets (saved by the first
run, restored by the last run out), shared directories the host did not have, processes
(SIGKILL by cgroup and by command line naming the run dir), mounts (lazily detached, the
pod network's netns mount included) and cgroups. A host-wide flock serialises the
bookkeeping of concurrent runs; `sweep` cleans up after dead (SIGKILLed) runs and never
touches a live run's processes, mounts or cgroups. Stdlib only.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from regcred_dev.build import KUBELET
from regcred_dev.process import ControlPlaneError, log, orphaned_run_dirs, wait_until

TEMP_PREFIX = "regcred-node-"
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


def save_baseline() -> None:
    """Before the first live run: what the host had, for the last run out to restore."""
    if BASELINE.exists():
        return
    BASELINE.write_text(json.dumps({
        "sysctls": {name: _read_sysctl(name) for name in KUBELET_SYSCTLS},
        "existing_dirs": [str(path) for path in SHARED_DIRS if path.exists()],
    }))


def restore_baseline() -> None:
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


def live_runs() -> list[Path]:
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
    if not live_runs():
        restore_baseline()
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


def create_cgroup(cgroup: str) -> None:
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

