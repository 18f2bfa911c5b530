"""A private image registry per run: Debian's docker-registry (distribution 2.8) on loopback.

It refuses anonymous and wrong credentials (htpasswd, bcrypt), serves TLS with a certificate
from the run's CA (the control plane's `Certificates`), keeps its storage in its own temp dir,
and takes images pushed through the registry API (no docker daemon exists here):

    with Registry(control_plane.pki, users={"robot": secret}) as registry:
        reference = registry.push(images.success_image(), "team/success", "1", "robot")
        registry.set_password("robot", new_secret)   # htpasswd rewritten; the registry reloads it

`config_overrides` is merged into the registry's config (a None value drops a key), e.g. to
replace `auth` with the token flow. Passwords stay in memory: never logged, never in errors.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from regcred_dev import nodedeps
from regcred_dev.images import Image
from regcred_dev.pki import Certificates
from regcred_dev.process import (
    Component,
    ControlPlaneError,
    RunContext,
    free_port,
    keep_logs,
    log,
    make_run_dir,
    orphaned_run_dirs,
    wait_until,
)

TEMP_PREFIX = "regcred-registry-"
REGISTRY_BINARY = Path("/usr/bin/docker-registry")
BCRYPT_COST = 5  # what `htpasswd -B` uses; the registry checks it on every request
START_TIMEOUT = 30.0
REGISTRY_PACKAGES = ("docker-registry", "busybox-static", "openssl")  # the registry and its test image


class RegistryError(ControlPlaneError):
    """The registry could not start or refused an operation; no secret material inside."""


def htpasswd_line(user: str, password: str) -> str:
    """`user:bcrypt-hash`, the only htpasswd format distribution accepts."""
    import bcrypt  # a test dependency (pyproject `test` extra); the rest of scripts/ is stdlib

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_COST)).decode()
    return f"{user}:{hashed}"


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class Registry(RunContext):
    """One docker-registry process with htpasswd users, on 127.0.0.1 and a free port."""

    error_type = RegistryError

    def __init__(self, certificates: Certificates, users: dict[str, str], *,
                 config_overrides: dict[str, Any] | None = None, name: str = "registry") -> None:
        self.certificates = certificates
        self._users = dict(users)
        self.config_overrides = config_overrides or {}
        self.name = name
        self.dir: Path | None = None
        self.port = 0
        self.component: Component | None = None
        self.kept_logs: Path | None = None

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`: the registry part of image references and of `auths` keys."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    @property
    def ca(self) -> Path:
        """The CA that signed the registry's certificate (the run's CA)."""
        return self.certificates.ca

    @property
    def htpasswd(self) -> Path:
        return self.run_path("htpasswd")

    @property
    def log_path(self) -> Path:
        return self.run_path("registry.log")

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why no registry can run here (its Debian package is missing), or None."""
        return nodedeps.missing_reason("the private registry", REGISTRY_PACKAGES)

    def config(self) -> dict[str, Any]:
        """The registry's configuration (JSON is YAML) before `config_overrides`."""
        assert self.dir is not None
        cert, key = self.certificates.issue(f"{self.name}-{self.port}", (), "server")
        return {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.dir / "data")},
                        "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": self.host, "secret": base64.b64encode(os.urandom(24)).decode(),
                     "tls": {"certificate": str(cert), "key": str(key)}},
            "auth": {"htpasswd": {"realm": "regcred-test", "path": str(self.htpasswd)}},
            "health": {"storagedriver": {"enabled": False}},
        }

    def start(self) -> Registry:
        reason = self.unavailable_reason()
        if reason:
            raise RegistryError(reason)
        for orphan in orphaned_run_dirs(TEMP_PREFIX):
            shutil.rmtree(orphan, ignore_errors=True)
        self.dir = make_run_dir(TEMP_PREFIX)
        with self.stopped_on_failure():
            self.port = free_port()
            self._write_htpasswd()
            config_path = self.dir / "config.yml"
            config_path.write_text(json.dumps(_merge(self.config(), self.config_overrides), indent=2))
            self.component = Component(self.name, [str(REGISTRY_BINARY), "serve", str(config_path)],
                                       self.log_path)
            self.component.start()
            wait_until(self._refuses_anonymous, START_TIMEOUT, f"{self.name} answering on {self.url}/v2/")
        log(f"{self.name} ready at {self.url}")
        return self

    def _refuses_anonymous(self) -> bool:
        assert self.component is not None
        self.component.check_running()
        return self.status("/v2/", None) == 401

    def _write_htpasswd(self) -> None:
        """Atomically (rename), so the registry never reads half a file."""
        partial = self.htpasswd.with_suffix(".partial")
        partial.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in self._users.items()))
        os.replace(partial, self.htpasswd)

    def set_password(self, user: str, password: str) -> None:
        """Rotate (or add) a user's password: the htpasswd file is rewritten, and distribution
        re-reads it when its mtime changes; returns once the registry accepts the new one."""
        old = self._users.get(user)
        self._users[user] = password
        self._write_htpasswd()
        wait_until(lambda: self.status("/v2/", (user, password)) == 200
                   and (old is None or old == password or self.status("/v2/", (user, old)) == 401),
                   START_TIMEOUT, f"{self.name} to accept the new password of {user}")

    # --- the registry API ---

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def _request(self, method: str, path_or_url: str, login: tuple[str, str] | None, *,
                 data: bytes | None = None, content_type: str | None = None,
                 ) -> tuple[int, dict[str, str]]:
        url = urllib.parse.urljoin(self.url, path_or_url)
        request = urllib.request.Request(url, data=data, method=method)
        if login is not None:
            token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, context=self.ssl_context(), timeout=30) as response:
                response.read()
                return response.status, dict(response.headers)
        except urllib.error.HTTPError as error:
            error.read()
            return error.code, dict(error.headers)

    def status(self, path: str, login: tuple[str, str] | None) -> int:
        """The HTTP status of GET `path` with `login` (None: anonymous), e.g. 200 or 401."""
        return self._request("GET", path, login)[0]

    def login(self, user: str) -> tuple[str, str]:
        return user, self._users[user]

    def push(self, image: Image, repository: str, tag: str, user: str) -> str:
        """Upload the blobs (monolithic uploads) and the manifest; returns the reference."""
        login = self.login(user)
        for blob in image.blobs:
            if self._request("HEAD", f"/v2/{repository}/blobs/{blob.digest}", login)[0] == 200:
                continue
            status, headers = self._request("POST", f"/v2/{repository}/blobs/uploads/", login, data=b"")
            location = headers.get("Location")
            if status != 202 or not location:
                raise RegistryError(f"starting an upload to {self.host}/{repository} returned {status}")
            separator = "&" if "?" in location else "?"
            status, _ = self._request("PUT", f"{location}{separator}digest={blob.digest}", login,
                                      data=blob.data, content_type="application/octet-stream")
            if status != 201:
                raise RegistryError(f"uploading {blob.digest} to {self.host}/{repository} returned {status}")
        status, _ = self._request("PUT", f"/v2/{repository}/manifests/{tag}", login,
                                  data=image.manifest.data, content_type=image.manifest.media_type)
        if status != 201:
            raise RegistryError(f"pushing the manifest {self.host}/{repository}:{tag} returned {status}")
        return f"{self.host}/{repository}:{tag}"

    def stop(self, failed: bool = False) -> None:
        """Stop the process, keep its log if `failed`, remove the storage. Idempotent."""
        if self.component is not None:
            self.component.stop()
            self.component = None
        if self.dir is None:
            return
        if failed and self.log_path.exists():
            logs = self.dir / "logs"
            logs.mkdir(exist_ok=True)
            shutil.copy(self.log_path, logs)
            self.kept_logs = keep_logs(logs)
            log(f"{self.name} failed; log kept in {self.kept_logs}")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
