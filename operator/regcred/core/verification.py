"""Credential verification, the pure part: settings, the registry auth flow's decisions, the
`CredentialsVerified` condition and the per-registry status. No I/O (regcred/verification.py
does the HTTP and the scheduling).

The flow is the Docker Registry v2 one: `GET /v2/` unauthenticated; a 401 carries a
`WWW-Authenticate` challenge, `Basic` (send the credential to /v2/) or `Bearer realm=,service=`
(fetch a token from the realm with the credential, send the token to /v2/). 200 at the end
means the registry accepts the credential.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from regcred.core.conditions import (
    ANONYMOUS,
    CREDENTIALS_VERIFIED,
    NOT_CHECKED,
    PASSING,
    PENDING,
    TLS_ERROR,
    UNAUTHORIZED,
    UNEXPECTED,
    UNREACHABLE,
    VERIFIED,
)
from regcred.core.errors import InvalidInput
from regcred.core.source import DOCKER_HUB_KEY, RenderedConfig, registry_key

DEFAULT_INTERVAL_SECONDS = 3600
MIN_INTERVAL_SECONDS = 10
DEFAULT_TIMEOUT_SECONDS = 5
JITTER = 0.1  # each periodic check lands within +-10% of the interval

# The condition's reason is the worst result among the registries, in this order.
_SEVERITY = (UNAUTHORIZED, TLS_ERROR, UNREACHABLE, UNEXPECTED, NOT_CHECKED, ANONYMOUS, VERIFIED)


@dataclass(frozen=True)
class VerifySettings:
    """spec.verify, validated."""

    enabled: bool = False
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    ca_bundle: str = ""  # PEM; trusted in addition to the system's CAs


def parse_verify(spec: Mapping[str, Any]) -> VerifySettings:
    raw = spec.get("verify")
    if raw is None:
        return VerifySettings()
    if not isinstance(raw, Mapping):
        raise InvalidInput("InvalidSpec", "spec.verify must be an object")
    interval = raw.get("intervalSeconds", DEFAULT_INTERVAL_SECONDS)
    timeout = raw.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)
    if not isinstance(interval, int) or interval < MIN_INTERVAL_SECONDS:
        raise InvalidInput("InvalidSpec", f"spec.verify.intervalSeconds must be an integer >= "
                                          f"{MIN_INTERVAL_SECONDS}")
    if not isinstance(timeout, int) or not 1 <= timeout <= 30:
        raise InvalidInput("InvalidSpec", "spec.verify.timeoutSeconds must be an integer from 1 to 30")
    ca_bundle = raw.get("caBundle") or ""
    if ca_bundle and "-----BEGIN CERTIFICATE-----" not in str(ca_bundle):
        raise InvalidInput("InvalidSpec", "spec.verify.caBundle must hold PEM certificates")
    return VerifySettings(enabled=bool(raw.get("enabled", False)), interval_seconds=interval,
                          timeout_seconds=timeout, ca_bundle=str(ca_bundle))


def next_check_delay(settings: VerifySettings, rng: random.Random | None = None) -> float:
    """Seconds until the next periodic check: the interval, give or take `JITTER`, so that
    many CRs created together do not check all at once forever after."""
    spread = settings.interval_seconds * JITTER
    return settings.interval_seconds + (rng or random).uniform(-spread, spread)


# --- what to check --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One registry to check: `base` is its https origin, `username`/`password` from the copy."""

    server: str
    base: str
    username: str
    password: str

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return f"Target(server={self.server!r}, base={self.base!r}, username={self.username!r})"


def targets(servers: Sequence[str], config: RenderedConfig) -> tuple[list[Target], dict[str, str]]:
    """The registries to check with the credential each gets in the rendered copy, and for
    those that cannot be checked the reason why (server -> message)."""
    auths = json.loads(base64.b64decode(config.encoded)).get("auths") or {}
    by_key = {registry_key(key): entry for key, entry in auths.items()}
    found, skipped = [], {}
    for server in servers:
        entry = by_key.get(registry_key(server)) or {}
        username, password = _credential(entry)
        if not username:
            skipped[server] = "the copy has no username and password for it (token-only entries are " \
                              "not checked)"
            continue
        found.append(Target(server=server, base=registry_origin(server), username=username,
                            password=password))
    return found, skipped


def registry_origin(server: str) -> str:
    """Where the registry API of `server` lives: https://host[:port] (a path is a repository
    prefix, not part of the API's address); Docker Hub's is registry-1.docker.io."""
    if registry_key(server) == DOCKER_HUB_KEY:
        return "https://registry-1.docker.io"
    return "https://" + server.removeprefix("https://").removeprefix("http://").split("/", 1)[0]


def _credential(entry: Mapping[str, Any]) -> tuple[str, str]:
    username, password = entry.get("username") or "", entry.get("password") or ""
    if username and password:
        return str(username), str(password)
    try:
        decoded = base64.b64decode(str(entry.get("auth") or ""), validate=True).decode()
    except (binascii.Error, ValueError):
        return "", ""
    user, sep, secret = decoded.partition(":")
    return (user, secret) if sep and user else ("", "")


# --- the auth flow ------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer" (lower case), "" if none
    params: Mapping[str, str]


_PARAM = re.compile(r'([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str | None) -> Challenge:
    """A WWW-Authenticate header's first challenge: `Bearer realm="...",service="..."`."""
    if not header:
        return Challenge("", {})
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


class Refused(ValueError):
    """The flow cannot go on safely (e.g. a token realm that is not https)."""


def token_url(challenge: Challenge, username: str) -> str:
    """The realm URL to ask for a token, as `docker login` does (service and account, no
    scope: only /v2/ is checked). The credential only goes to an https realm."""
    realm = challenge.params.get("realm", "")
    parts = urlsplit(realm)
    if parts.scheme != "https" or not parts.netloc:
        raise Refused(f"the token realm {realm!r} is not an https URL; the credential is not sent there")
    query = {"account": username}
    if challenge.params.get("service"):
        query["service"] = challenge.params["service"]
    if challenge.params.get("scope"):
        query["scope"] = challenge.params["scope"]
    return realm + ("&" if parts.query else "?") + urlencode(query)


def token_from(body: bytes) -> str:
    """The token of a token endpoint's answer (`token`, or OAuth's `access_token`)."""
    try:
        document = json.loads(body)
    except ValueError:
        raise Refused("the token endpoint's answer is not JSON") from None
    token = document.get("token") or document.get("access_token") if isinstance(document, dict) else None
    if not isinstance(token, str) or not token:
        raise Refused("the token endpoint's answer has no token")
    return token


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def verdict(step: str, status: int) -> tuple[str, str]:
    """The result of the last request of the flow (`step` names it, e.g. "GET /v2/ (Basic)")."""
    if status == 200:
        return VERIFIED, f"{step}: 200"
    if status in (401, 403):
        return UNAUTHORIZED, f"{step}: {status}: the registry refuses the credential"
    return UNEXPECTED, f"{step}: {status}"


# --- results, status and condition -----------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One registry's verdict; `message` names the step and the status code, nothing secret."""

    server: str
    result: str
    message: str
    checked_at: str

    @property
    def passing(self) -> bool:
        return self.result in PASSING


def registries_status(results: Sequence[Result], source_resource_version: str) -> list[dict[str, str]]:
    return [{"server": r.server, "result": r.result, "message": r.message[:512],
             "lastCheckTime": r.checked_at, "sourceResourceVersion": source_resource_version}
            for r in sorted(results, key=lambda r: r.server)]


def condition(results: Sequence[Result]) -> dict[str, str]:
    """The CredentialsVerified condition (type, status, reason, message; the status code adds
    the generation and transition time): True when every registry accepts the credential,
    False with the worst result as reason, Unknown while the first check is pending."""
    if not results:
        return {"type": CREDENTIALS_VERIFIED, "status": "Unknown", "reason": PENDING,
                "message": "not checked yet"}
    failing = [r for r in results if not r.passing]
    if not failing:
        return {"type": CREDENTIALS_VERIFIED, "status": "True", "reason": VERIFIED,
                "message": f"{len(results)}/{len(results)} registries accept the credential"}
    worst = min(failing, key=lambda r: _SEVERITY.index(r.result))
    message = "; ".join(f"{r.server}: {r.result}: {r.message}" for r in failing)
    return {"type": CREDENTIALS_VERIFIED, "status": "False", "reason": worst.result, "message": message[:512]}
