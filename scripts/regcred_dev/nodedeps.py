"""The Debian packages a test node needs, and installing them (`make node-deps`).

The node (scripts/node.py) runs Debian's containerd, runc and CNI plugins; the private
registry (scripts/regcred_dev/registry.py) is Debian's docker-registry; the test image is busybox-static;
regcred's own image (scripts/image.py) is built with mmdebstrap and buildah.
As root on Debian the missing ones are installed with apt-get, with service start-up
blocked (docker-registry's package would otherwise start a registry on every interface);
anyone else gets one line naming the packages. Stdlib only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# package -> the files it must have put in place
PACKAGE_FILES: dict[str, tuple[str, ...]] = {
    "containerd": ("/usr/bin/containerd", "/usr/bin/containerd-shim-runc-v2", "/usr/bin/ctr"),
    "runc": ("/usr/sbin/runc",),
    "containernetworking-plugins": ("/usr/lib/cni/loopback",),
    "docker-registry": ("/usr/bin/docker-registry",),
    "busybox-static": ("/bin/busybox",),
    "openssl": ("/usr/bin/openssl",),
    "iproute2": ("/bin/ip",),  # the pod network's namespace (scripts/regcred_dev/podnet.py)
    # regcred's image (scripts/image.py): the base from Debian packages, the Dockerfile daemonless
    "mmdebstrap": ("/usr/bin/mmdebstrap",),
    "buildah": ("/usr/bin/buildah",),
}
IMAGE_PACKAGES = ("mmdebstrap", "buildah")
NODE_PACKAGES = tuple(package for package in PACKAGE_FILES if package not in IMAGE_PACKAGES)
BUSYBOX = Path("/bin/busybox")
CNI_BIN_DIR = Path("/usr/lib/cni")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def _is_static_elf(path: Path) -> bool:
    """True for an ELF binary without a program interpreter (Debian's `busybox` is dynamic,
    `busybox-static` is not; only a static one runs in an image that has nothing else)."""
    import struct

    with path.open("rb") as binary:
        header = binary.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit only
            return False
        phoff, = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        binary.seek(phoff)
        table = binary.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))  # PT_INTERP


def _runc_present() -> bool:
    return any(Path(d, "runc").exists() for d in ("/usr/sbin", "/usr/bin", "/usr/local/sbin",
                                                    "/usr/local/bin"))


def missing_packages() -> list[str]:
    """The packages whose files are absent (busybox must also be the static build)."""
    missing = []
    for package, files in PACKAGE_FILES.items():
        if package == "runc":
            present = _runc_present()
        elif package == "busybox-static":
            present = BUSYBOX.exists() and _is_static_elf(BUSYBOX)
        else:
            present = all(Path(f).exists() for f in files)
        if not present:
            missing.append(package)
    return missing


def install_command(packages: list[str]) -> str:
    return f"apt-get install -y --no-install-recommends {' '.join(packages)}"


def missing_reason(what: str = "the test node", among: tuple[str, ...] = NODE_PACKAGES) -> str | None:
    """What is missing (of `among`) and the command that installs it, or None."""
    missing = [package for package in missing_packages() if package in among]
    if not missing:
        return None
    return (f"{what} needs Debian packages {', '.join(missing)}: run `make node-deps` as root "
            f"(or `{install_command(missing)}`)")


def install(packages: list[str]) -> None:
    """apt-get update + install, with invoke-rc.d told (policy-rc.d, exit 101) to start no
    service: the tests start containerd and the registry themselves, on loopback."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    placed_policy = False
    if not POLICY_RC_D.exists():
        POLICY_RC_D.write_text("#!/bin/sh\n# regcred node-deps: no service starts while installing\n"
                               "exit 101\n")
        POLICY_RC_D.chmod(0o755)
        placed_policy = True
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                       check=True, env=env)
    finally:
        if placed_policy:
            POLICY_RC_D.unlink(missing_ok=True)


def main() -> int:
    missing = missing_packages()
    if not missing:
        print("[node-deps] all node packages present")
        return 0
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        why = "not root" if os.geteuid() != 0 else "no apt-get"
        print(f"[node-deps] {why}: node tests need Debian packages {' '.join(missing)} "
              f"(`sudo {install_command(missing)}`); without them run `pytest -m \"not node\"`",
              file=sys.stderr)
        return 0  # the node fixture reports the same reason; the rest of the suite can run
    print(f"[node-deps] installing {' '.join(missing)}", flush=True)
    install(missing)
    still = missing_packages()
    if still:
        print(f"[node-deps] still missing after apt-get: {' '.join(still)}", file=sys.stderr)
        return 1
    return 0
