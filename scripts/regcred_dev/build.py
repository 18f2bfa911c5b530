"""Building the Kubernetes and etcd binaries from Go modules into a versioned cache.

Nothing can be downloaded here except from package registries, so `k8s.io/kubernetes` and
`go.etcd.io/etcd/server/v3` are compiled from the Go module proxy: one cache dir per
Kubernetes version, a file lock so two suites never build at once, atomic renames so a
killed build leaves nothing half-written. Stdlib only.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from regcred_dev.process import ControlPlaneError, log

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


def cache_dir() -> Path:
    """Where built binaries live: one directory per Kubernetes version, so a bump rebuilds."""
    base = os.environ.get("REGCRED_CONTROLPLANE_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "regcred" / "controlplane"
    return root / KUBERNETES_VERSION


def go(args: list[str], cwd: Path, log_file: Path) -> None:
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


def kubernetes_module(go_mod: str) -> tuple[str, str]:
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


def etcd_module(version: str) -> tuple[str, str]:
    """etcd's server main is a wrapper around etcdmain; its own module keeps its deps apart."""
    mod = (f"module regcred.dev/controlplane/etcd\n\ngo 1.24.0\n\n"
           f"require go.etcd.io/etcd/server/v3 {version}\n")
    main = ('package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
            "func main() { etcdmain.Main(os.Args) }\n")
    return mod, main


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def build_control_plane(names: list[str], target: Path) -> None:
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
        go_mod, tools = kubernetes_module((kubernetes_source / "go.mod").read_text())
        _write_if_changed(module / "go.mod", go_mod)
        _write_if_changed(module / "tools.go", tools)
        if not (module / "go.sum").exists():
            go(["mod", "tidy"], module, build_log)
        for name in kube_names:
            go_build(module, f"k8s.io/kubernetes/cmd/{name}", target / name, ldflags, build_log)
    if ETCD in names:
        module = src / "etcd"
        module.mkdir(parents=True, exist_ok=True)
        go_mod, main = etcd_module(etcd_version(kubernetes_source))
        _write_if_changed(module / "main.go", main)
        if not (module / "go.mod").exists() or go_mod.splitlines()[-1] not in (module / "go.mod").read_text():
            (module / "go.mod").write_text(go_mod)
            (module / "go.sum").unlink(missing_ok=True)
            go(["mod", "tidy"], module, build_log)
        go_build(module, ".", target / ETCD, "-s -w", build_log)


def go_build(module: Path, package: str, output: Path, ldflags: str, build_log: Path) -> None:
    started = time.monotonic()
    log(f"building {output.name} (first time takes a while; log: {build_log})")
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        go(["build", "-trimpath", "-ldflags", ldflags, "-o", str(partial), package], module, build_log)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    log(f"built {output.name} in {time.monotonic() - started:.0f}s")


def is_executable(path: Path) -> bool:
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
        if assets and is_executable(Path(assets) / name):
            found[name] = Path(assets) / name
    target = cache_dir()
    missing = [name for name in wanted if name not in found and not is_executable(target / name)]
    if missing:
        if not build:
            raise ControlPlaneError(f"missing {', '.join(missing)} in {target}; run `controlplane.py build`")
        build_missing(target, missing, build_control_plane)
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
        missing = [name for name in names if not is_executable(target / name)]
        for stale in target.glob(".*.partial-*"):  # left by a killed build
            stale.unlink()
        if missing:
            build(missing, target)
