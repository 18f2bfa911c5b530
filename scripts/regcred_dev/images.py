"""Container images without a docker daemon: busybox-static in one layer, OCI archives.

The test image (`Cmd ["/bin/echo", "SUCCESS"]`) is pushed to the private registry through
the registry API (scripts/regcred_dev/registry.py); the node's sandbox (pause) image is written as an OCI
archive and imported into containerd directly (scripts/node.py), so it needs no network and
no credentials. Stdlib only.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
BUSYBOX = Path("/bin/busybox")
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


@dataclass(frozen=True)
class Blob:
    """Content-addressed bytes as the registry and OCI layouts store them."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


@dataclass(frozen=True)
class Image:
    """One image: its layers, its config and the manifest that names both."""

    layers: tuple[Blob, ...]
    config: Blob
    manifest: Blob

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (*self.layers, self.config)


def _busybox_layer(applets: tuple[str, ...]) -> tuple[bytes, bytes]:
    """(uncompressed tar, gzipped tar) with bin/busybox and one symlink per applet;
    deterministic (mtime 0), so the same applets give the same digest."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo("bin")
        directory.type, directory.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(directory)
        binary = tarfile.TarInfo("bin/busybox")
        binary.mode, binary.size = 0o755, BUSYBOX.stat().st_size
        with BUSYBOX.open("rb") as source:
            tar.addfile(binary, source)
        for applet in applets:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(link)
    uncompressed = raw.getvalue()
    return uncompressed, gzip.compress(uncompressed, compresslevel=6, mtime=0)


def layered_image(layers: list[tuple[bytes, bytes]], config: dict[str, object]) -> Image:
    """An OCI image from (uncompressed tar, gzipped tar) layers and the image's run config
    (`Cmd`, `Env`, ...), for this machine's architecture."""
    blobs = tuple(Blob(OCI_LAYER, compressed) for _, compressed in layers)
    config_blob = Blob(OCI_CONFIG, json.dumps({
        "architecture": GO_ARCH.get(platform.machine(), platform.machine()), "os": "linux",
        "config": config,
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest() for raw, _ in layers]},
    }, sort_keys=True).encode())
    manifest = Blob(OCI_MANIFEST, json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": config_blob.descriptor(), "layers": [layer.descriptor() for layer in blobs],
    }, sort_keys=True).encode())
    return Image(blobs, config_blob, manifest)


def busybox_image(cmd: list[str], applets: tuple[str, ...]) -> Image:
    """An image of busybox-static and `applets`, running `cmd` (an absolute applet path)."""
    return layered_image([_busybox_layer(applets)], {"Cmd": cmd, "Env": ["PATH=/bin"]})


def success_image() -> Image:
    """The seed tutorials' check: a container that prints SUCCESS and exits 0."""
    return busybox_image(["/bin/echo", "SUCCESS"], ("echo",))


def pause_image() -> Image:
    """A sandbox image: sleeps until containerd kills the sandbox (it uses SIGKILL)."""
    return busybox_image(["/bin/sleep", "2147483647"], ("sleep",))


def read_oci_archive(path: Path) -> Image:
    """The one image of an OCI image layout tar (what `buildah push IMAGE oci-archive:PATH`
    writes), for pushing through the registry API."""
    with tarfile.open(path) as tar:
        def blob(media_type: str, digest: str) -> Blob:
            member = tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
            assert member is not None, f"{path} lacks blob {digest}"
            return Blob(media_type, member.read())

        index_file = tar.extractfile("index.json")
        assert index_file is not None, f"{path} is not an OCI image layout"
        [entry] = json.load(index_file)["manifests"]
        manifest = blob(entry["mediaType"], entry["digest"])
        document = json.loads(manifest.data)
        layers = tuple(blob(layer["mediaType"], layer["digest"]) for layer in document["layers"])
        config = blob(document["config"]["mediaType"], document["config"]["digest"])
    return Image(layers, config, manifest)


def write_oci_archive(image: Image, reference: str, path: Path) -> Path:
    """An OCI image layout as a tar, for `ctr images import` (the name is in the index)."""
    config = json.loads(image.config.data)
    index = Blob(OCI_INDEX, json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
        **image.manifest.descriptor(),
        "platform": {"architecture": config["architecture"], "os": config["os"]},
        "annotations": {"io.containerd.image.name": reference,
                        "org.opencontainers.image.ref.name": reference},
    }]}).encode())
    with tarfile.open(path, "w") as tar:
        entries = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index.data)]
        entries += [(f"blobs/sha256/{blob.digest.split(':', 1)[1]}", blob.data)
                    for blob in (*image.blobs, image.manifest)]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
