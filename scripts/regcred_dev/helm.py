"""The `helm` the chart is tested with: from $PATH when present, else built from Go modules.

Nothing can be downloaded here except from package registries, so, like the control plane's
binaries, helm is compiled from its Go module (`helm.sh/helm/v4`) into a versioned cache,
~/.cache/regcred/helm/<version>/helm, with the control plane's build helpers and lock.

    python scripts/helm.py build    # build or reuse helm, print its path and version
    python scripts/helm.py path     # print the path of the helm that would be used

In code: `helm_binary()`. Stdlib only. `REGCRED_HELM` names a helm binary to use instead;
`REGCRED_HELM_BUILD=1` ignores the one on $PATH (to test with the pinned release);
`REGCRED_HELM_VERSION` pins another release, e.g. v3.22.0 to check the chart with Helm 3.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from regcred_dev.build import build_missing, go, go_build, is_executable
from regcred_dev.process import ControlPlaneError, log

# The helm release the chart is tested with (Helm 4; the chart stays Helm 3 compatible).
DEFAULT_HELM_VERSION = "v4.3.2"
HELM_VERSION = os.environ.get("REGCRED_HELM_VERSION") or DEFAULT_HELM_VERSION
HELM_MODULE = f"helm.sh/helm/{HELM_VERSION.split('.')[0]}"  # the major version is in the path
HELM = "helm"


class HelmError(RuntimeError):
    """No usable helm: none on $PATH and it could not be built; the message says why."""


def cache_dir() -> Path:
    """One directory per helm release, beside the control plane's cache."""
    base = os.environ.get("REGCRED_HELM_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "regcred" / "helm"
    return root / HELM_VERSION


def _helm_module() -> tuple[str, str]:
    """go.mod and tools.go of a module that builds helm's command at the pinned release.

    helm's go.mod has no replace directives, so requiring it is the same as `go install
    helm.sh/helm/v4/cmd/helm@<version>`: its own dependency versions, by minimal version selection.
    """
    mod = f"module regcred.dev/helm\n\ngo 1.26.0\n\nrequire {HELM_MODULE} {HELM_VERSION}\n"
    tools = f'//go:build tools\n\npackage tools\n\nimport _ "{HELM_MODULE}/cmd/helm"\n'
    return mod, tools


def _helm3_kubernetes_version_flags(go_mod: str) -> str:
    """Helm 3 learns the Kubernetes version `helm template` and `helm lint` assume from
    linker flags (its Makefile derives them from client-go v0.X.Y: 1.X); without them it
    assumes v1.20 and refuses charts that need newer. Helm 4 reads its build info instead."""
    found = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.", go_mod, re.M)
    if not found:
        raise HelmError("no k8s.io/client-go in helm's module graph")
    minor = found.group(1)
    return "".join(f" -X {HELM_MODULE}/pkg/{package}.k8sVersion{part}={value}"
                   for package in ("lint/rules", "chartutil")
                   for part, value in (("Major", "1"), ("Minor", minor)))


def _build(names: list[str], target: Path) -> None:
    module = target / "src"
    module.mkdir(parents=True, exist_ok=True)
    build_log = target / "build.log"
    go_mod, tools = _helm_module()
    if not (module / "go.mod").exists() or (module / "go.mod").read_text() != go_mod:
        (module / "go.mod").write_text(go_mod)
        (module / "go.sum").unlink(missing_ok=True)
    (module / "tools.go").write_text(tools)
    if not (module / "go.sum").exists():
        go(["mod", "tidy"], module, build_log)
    # helm's own Makefile sets the version this way; `helm version` then names the release.
    ldflags = f"-s -w -X {HELM_MODULE}/internal/version.version={HELM_VERSION}" \
              f" -X {HELM_MODULE}/internal/version.gitTreeState=clean"
    if HELM_MODULE.endswith("/v3"):
        ldflags += _helm3_kubernetes_version_flags((module / "go.mod").read_text())
    go_build(module, f"{HELM_MODULE}/cmd/helm", target / HELM, ldflags, build_log)


def build_helm() -> Path:
    """The cached helm of HELM_VERSION, built first if missing (a file lock serialises builds)."""
    target = cache_dir()
    if not is_executable(target / HELM):
        try:
            build_missing(target, [HELM], _build)
        except ControlPlaneError as error:
            raise HelmError(f"could not build helm {HELM_VERSION}: {error}") from error
    return target / HELM


def helm_binary() -> Path:
    """`REGCRED_HELM`, else the helm on $PATH, else the cached build of HELM_VERSION."""
    chosen = os.environ.get("REGCRED_HELM")
    if chosen:
        if not is_executable(Path(chosen)):
            raise HelmError(f"REGCRED_HELM={chosen} is not an executable file")
        return Path(chosen)
    on_path = shutil.which(HELM)
    if on_path and os.environ.get("REGCRED_HELM_BUILD") != "1":
        return Path(on_path)
    return build_helm()


def helm_version(helm: Path) -> str:
    """`helm version --short`, e.g. v4.3.2."""
    return subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True,
                          check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "path"),
                        help="build: build (or reuse) the pinned helm; path: the helm tests would use")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        helm = build_helm() if args.command == "build" else helm_binary()
    except HelmError as error:
        log(f"error: {error}")
        return 1
    print(helm)
    log(f"{helm_version(helm)} ready in {time.monotonic() - started:.1f}s")
    return 0
