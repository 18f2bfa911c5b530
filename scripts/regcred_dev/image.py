"""regcred's image, built from the repository's Dockerfile without a Docker daemon.

No Docker daemon runs here and Docker Hub is out of reach; Debian's archive is not. So:
- the base: the Dockerfile's `BASE` (default `debian:bookworm-slim`) is made locally with
  `mmdebstrap --variant=minbase` from Debian 12's packages with the slim image's dpkg
  excludes (docs, man pages, locales), one layer, cached as an OCI archive;
- the image: `buildah bud` of the unchanged Dockerfile with `--build-arg BASE=oci-archive:...`
  (chroot isolation, vfs storage in a temp dir: no daemon, no mounts left, no state kept),
  pushed to an OCI archive in the cache, keyed by the hash of everything the build reads.
Both live in ~/.cache/regcred/image (REGCRED_IMAGE_CACHE overrides), like the control
plane's binaries; a file lock serialises builds. docs/image.md has the why.

    python scripts/image.py build     # base (if missing) + image (if its inputs changed)
    python scripts/image.py path      # the cached image archive, building what is missing
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from regcred_dev import REPO, images, nodedeps
from regcred_dev.process import ControlPlaneError, run_command

SUITE = "bookworm"
MIRRORS = (f"deb http://deb.debian.org/debian {SUITE} main",
           f"deb http://deb.debian.org/debian {SUITE}-updates main",
           f"deb http://deb.debian.org/debian-security {SUITE}-security main")
# debian:bookworm-slim's dpkg excludes (debuerreotype's --slimify), kept in the base so the
# Dockerfile's own apt-get installs are slimmed the same way.
SLIM_EXCLUDES = ("path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
                 "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/groff/*",
                 "path-exclude=/usr/share/info/*", "path-exclude=/usr/share/lintian/*",
                 "path-exclude=/usr/share/linda/*", "path-exclude=/usr/share/locale/*")
# ... and its apt settings (debuerreotype's docker-clean, -no-languages, -gzip-indexes,
# -autoremove-suggests): no .deb archives or package caches are left in a layer.
_CLEAN = ("rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb "
          "/var/cache/apt/*.bin || true")
SLIM_APT = (f'DPkg::Post-Invoke {{ "{_CLEAN}"; }}', f'APT::Update::Post-Invoke {{ "{_CLEAN}"; }}',
            'Dir::Cache::pkgcache ""', 'Dir::Cache::srcpkgcache ""', 'Acquire::Languages "none"',
            'Acquire::GzipIndexes "true"', 'Apt::AutoRemove::SuggestsImportant "false"')
# What the Docker build context holds (.dockerignore keeps the rest out); its hash keys the cache.
CONTEXT = ("Dockerfile", "pyproject.toml", "README.md", "operator")
IMAGE_NAME = "localhost/regcred"
KEEP_IMAGES = 3


class ImageError(ControlPlaneError):
    """The image could not be built; the message names the step and its log."""


def log(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def regcred_version(init: str | None = None) -> str:
    """`__version__` of operator/regcred/__init__.py, read as text: this runs under the
    system python3 (`make image`), where regcred is not installed."""
    text = init if init is not None else (REPO / "operator" / "regcred" / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if not found:
        raise ImageError("no `__version__ = \"...\"` line in operator/regcred/__init__.py")
    return found.group(1)


def cache_dir() -> Path:
    base = os.environ.get("REGCRED_IMAGE_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "regcred" / "image"


def unavailable_reason() -> str | None:
    """Why no image can be built here (not root, packages missing), or None."""
    if os.geteuid() != 0:
        return "building the image needs root (buildah and mmdebstrap run as root here): run as root"
    return nodedeps.missing_reason("building regcred's image", among=nodedeps.IMAGE_PACKAGES)


def _run(argv: list[str], log_file: Path, env: dict[str, str] | None = None) -> None:
    with log_file.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise ImageError(f"`{argv[0]} {argv[1]}` failed; log {log_file}:\n{tail}")


def context_digest() -> str:
    """sha256 over the build context's files (names and bytes), in a stable order."""
    digest = hashlib.sha256()
    for top in CONTEXT:
        path = REPO / top
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            and not any(part.endswith(".egg-info") for part in p.parts))
        for file in files:
            digest.update(str(file.relative_to(REPO)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def base_command() -> list[str]:
    """mmdebstrap's command line up to the output; its hash names the cached base."""
    return ["mmdebstrap", "--variant=minbase", "--format=tar", "--quiet",
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            *(f"--dpkgopt={rule}" for rule in SLIM_EXCLUDES), *(f"--aptopt={opt}" for opt in SLIM_APT), SUITE]


def build_base(target: Path, log_file: Path) -> Path:
    """The slim Debian 12 root as a one-layer OCI archive (`localhost/debian:bookworm-slim`)."""
    with tempfile.TemporaryDirectory(prefix="regcred-base-") as work:
        root_tar = Path(work) / "root.tar"
        # The merged-usr hook lays out /usr as debootstrap does, instead of installing the
        # usrmerge package (and perl with it: 50 MB the official image does not have).
        _run([*base_command(), str(root_tar), *MIRRORS], log_file)
        raw = root_tar.read_bytes()
    image = images.layered_image([(raw, gzip.compress(raw, compresslevel=6, mtime=0))], {
        "Cmd": ["bash"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]})
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    images.write_oci_archive(image, f"localhost/debian:{SUITE}-slim", partial)
    os.replace(partial, target)
    return target


def _pip_ca_mounts(work: Path) -> list[str]:
    """The build's pip trusts the host's CA bundle (a TLS-inspecting proxy's CA lives there
    on some machines, this one included), mounted read-only beside the container's own."""
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if not bundle.exists():
        return []
    config = work / "pip.conf"
    config.write_text("[global]\ncert = /run/regcred-build/ca-certificates.crt\n")
    return ["--volume", f"{bundle}:/run/regcred-build/ca-certificates.crt:ro",
            "--volume", f"{config}:/etc/pip.conf:ro"]


def build_image(base: Path, target: Path, tag: str, log_file: Path) -> Path:
    """`buildah bud` of the Dockerfile on `base`, saved as an OCI archive at `target`."""
    with tempfile.TemporaryDirectory(prefix="regcred-buildah-") as work_dir:
        work = Path(work_dir)
        storage = ["--root", str(work / "storage"), "--runroot", str(work / "run"), "--storage-driver", "vfs"]
        env = {**os.environ, "TMPDIR": str(work), "BUILDAH_ISOLATION": "chroot"}
        reference = f"{IMAGE_NAME}:{tag}"
        _run(["buildah", "bud", *storage, "--isolation", "chroot", "--network", "host", "--layers=false",
              "--build-arg", f"BASE=oci-archive:{base}", *_pip_ca_mounts(work),
              "--file", str(REPO / "Dockerfile"), "--tag", reference, str(REPO)], log_file, env)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        _run(["buildah", "push", *storage, reference, f"oci-archive:{partial}:{reference}"], log_file, env)
        os.replace(partial, target)
    return target


def ensure_image(tag: str | None = None) -> Path:
    """The cached image archive for the current sources, building the base and the image
    when missing. `tag` defaults to regcred's version."""
    reason = unavailable_reason()
    if reason:
        raise ImageError(reason)
    if tag is None:
        tag = regcred_version()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    recipe = hashlib.sha256(json.dumps([base_command(), MIRRORS]).encode()).hexdigest()[:12]
    base = cache / f"base-{SUITE}-slim-{recipe}.oci.tar"
    inputs = hashlib.sha256((base.name + context_digest()).encode()).hexdigest()[:16]
    image = cache / f"regcred-{tag}-{inputs}.oci.tar"
    with (cache / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another suite may be building the same image
        for stale in cache.glob(".*.partial-*"):  # left by a killed build
            stale.unlink()
        for prefix in ("regcred-base-", "regcred-buildah-"):  # ... and its work dirs (lock held:
            for work in Path(tempfile.gettempdir()).glob(f"{prefix}*"):  # no build is running)
                shutil.rmtree(work, ignore_errors=True)
        log_file = cache / "build.log"
        if not base.exists():
            started = time.monotonic()
            log(f"building the base {base.name} with mmdebstrap (log {log_file})")
            build_base(base, log_file)
            for old in cache.glob(f"base-{SUITE}-slim*.oci.tar"):  # an earlier recipe's
                if old != base:
                    old.unlink()
            log(f"base built in {time.monotonic() - started:.0f}s")
        if not image.exists():
            started = time.monotonic()
            log(f"building {image.name} with buildah (log {log_file})")
            build_image(base, image, tag, log_file)
            log(f"image built in {time.monotonic() - started:.0f}s, {image.stat().st_size / 1e6:.0f} MB")
            built = sorted(cache.glob("regcred-*.oci.tar"), key=lambda p: p.stat().st_mtime)
            for old in built[:-KEEP_IMAGES]:
                old.unlink()
    return image


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "path"))
    args = parser.parse_args(argv)

    def command() -> None:
        path = ensure_image()
        if args.command == "path":
            print(path)

    return run_command(command)
