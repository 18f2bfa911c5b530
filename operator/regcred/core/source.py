"""Read a source Secret and render the `.dockerconfigjson` every copy carries.

The rendering is byte-for-byte what `kubectl create secret docker-registry` writes for
the same input, so a copy looks exactly like a hand-made pull secret. A
`kubernetes.io/dockerconfigjson` source is read the way the kubelet reads a pull secret
(`core/pullsecret.py`), refused if the kubelet would refuse or misread it, and each selected
entry is written anew from what the kubelet reads, never copied as it stands.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from regcred.core.errors import InvalidInput
from regcred.core.pullsecret import check, kubelet_read
from regcred.core.spec import CredentialSpec

DOCKERCONFIGJSON_TYPE = "kubernetes.io/dockerconfigjson"
DOCKERCONFIGJSON_KEY = ".dockerconfigjson"
BASIC_AUTH_TYPE = "kubernetes.io/basic-auth"
OPAQUE_TYPE = "Opaque"
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
MAX_VALUE_BYTES = 64 * 1024


@dataclass(frozen=True)
class SourceSecret:
    """The parts of a source Secret regcred reads; `data` values are base64 as in the API."""

    namespace: str
    name: str
    type: str
    resource_version: str
    data: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class RenderedConfig:
    """The content of every copy of one credential; `digest` compares copies without the secret."""

    source_resource_version: str
    encoded: str = field(repr=False)  # base64 of .dockerconfigjson, as stored in Secret.data
    digest: str = field(repr=False)


def render(spec: CredentialSpec, source: SourceSecret) -> RenderedConfig:
    """Build the dockerconfigjson for `spec` from `source`, or raise `InvalidInput`."""
    where = f"source secret {source.namespace}/{source.name}"
    if source.type in (BASIC_AUTH_TYPE, OPAQUE_TYPE):
        username = _decoded(source, "username", where)
        password = _decoded(source, "password", where)
        if ":" in username:
            raise InvalidInput("InvalidSource", f"{where}: username must not contain ':'")
        auths = {
            registry_key(server): _entry(username, password, spec.email) for server in spec.servers
        }
    elif source.type == DOCKERCONFIGJSON_TYPE:
        auths = _filtered_auths(source, spec.servers, where)
    else:
        raise InvalidInput(
            "UnsupportedSourceType",
            f"{where} has type {source.type!r}; use {BASIC_AUTH_TYPE}, {OPAQUE_TYPE} "
            f"(keys username and password) or {DOCKERCONFIGJSON_TYPE}",
        )
    content = go_json({"auths": dict(sorted(auths.items()))}).encode()
    return RenderedConfig(
        source_resource_version=source.resource_version,
        encoded=base64.b64encode(content).decode(),
        digest=hashlib.sha256(content).hexdigest(),
    )


def registry_key(server: str) -> str:
    """The auths key for a server; every Docker Hub spelling becomes the one docker login writes."""
    bare = server.removeprefix("https://").removeprefix("http://").rstrip("/")
    host = bare.split("/", 1)[0]
    if host in _DOCKER_HUB_ALIASES:
        return DOCKER_HUB_KEY
    return bare


def go_json(value: Any) -> str:
    """Serialize like Go's encoding/json: compact, UTF-8, with <, > and & escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
        ("\u2028", "\\u2028"), ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def _entry(username: str, password: str, email: str | None) -> dict[str, str]:
    # Field order and omitted empty email follow kubectl's DockerConfigEntry.
    entry = {"username": username, "password": password}
    if email:
        entry["email"] = email
    entry["auth"] = base64.b64encode(f"{username}:{password}".encode()).decode()
    return entry


def _raw(source: SourceSecret, key: str, where: str) -> bytes:
    raw = source.data.get(key)
    if raw is None:
        keys = ", ".join(sorted(source.data)) or "none"
        raise InvalidInput("MissingKey", f"{where} has no key {key!r} (keys present: {keys})")
    if len(raw) > MAX_VALUE_BYTES * 4 // 3 + 4:
        raise InvalidInput("SourceTooLarge", f"{where}: key {key!r} is over {MAX_VALUE_BYTES} bytes")
    try:
        value = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("InvalidBase64", f"{where}: key {key!r} is not valid base64") from None
    if not value:
        raise InvalidInput("EmptyValue", f"{where}: key {key!r} is empty")
    return value


def _decoded(source: SourceSecret, key: str, where: str) -> str:
    try:
        return _raw(source, key, where).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(
            "InvalidBase64", f"{where}: key {key!r} is not valid base64-encoded UTF-8"
        ) from None


def _filtered_auths(source: SourceSecret, servers: tuple[str, ...], where: str) -> dict[str, Any]:
    raw = _raw(source, DOCKERCONFIGJSON_KEY, where)
    try:
        selected = check(kubelet_read(raw), servers)
    except InvalidInput as refusal:
        raise InvalidInput(refusal.reason, f"{where}: {DOCKERCONFIGJSON_KEY}: {refusal.message}") from None
    # Written under the key the server itself gets (a source's `registry-1.docker.io` entry
    # would not serve Docker Hub images); `check` accepts only UTF-8 text, so these decode.
    return {
        registry_key(server): _entry(entry.username.decode(), entry.password.decode(),
                                     entry.email.decode() or None)
        for server, entry in selected.items()
    }
