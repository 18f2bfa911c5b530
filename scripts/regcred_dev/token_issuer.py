"""A Docker registry token issuer for tests: what distribution's `auth: token` talks to.

    issuer = TokenIssuer(control_plane.pki, {"robot": secret}).start()
    Registry(..., config_overrides={"auth": {"htpasswd": None, "token": issuer.registry_auth()}})

`GET /token?service=...&scope=...&account=...` with Basic credentials answers
`{"token": <JWT>}` (ES256, signed with a key whose certificate the run's CA issued, sent in
the `x5c` header; the registry trusts the CA as `rootcertbundle`), granting what `scope`
asks for; wrong or missing credentials get 401. HTTPS on 127.0.0.1 with a certificate from
the same CA. Stdlib and the openssl CLI only. Passwords stay in memory, never logged.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from regcred_dev.loopback_https import LoopbackHTTPS, QuietHandler
from regcred_dev.pki import Certificates
from regcred_dev.process import log

SERVICE = "regcred-test-registry"
ISSUER = "regcred-test-issuer"
TOKEN_SECONDS = 300


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _der_to_raw(signature: bytes, size: int = 32) -> bytes:
    """An ECDSA signature from DER (SEQUENCE of two INTEGERs, as openssl writes it) to the
    r || s form JWS's ES256 uses."""
    def integer(at: int) -> tuple[int, int]:
        assert signature[at] == 0x02, "not a DER INTEGER"
        length = signature[at + 1]
        start = at + 2
        return int.from_bytes(signature[start:start + length], "big"), start + length

    assert signature[0] == 0x30, "not a DER SEQUENCE"
    offset = 3 if signature[1] & 0x80 else 2
    r, after = integer(offset)
    s, _ = integer(after)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def _scopes(scope_params: list[str]) -> list[dict[str, Any]]:
    """`repository:team/app:pull,push` -> distribution's access entries."""
    access = []
    for scope in scope_params:
        for item in scope.split(" "):
            parts = item.split(":")
            if len(parts) >= 3:
                access.append({"type": parts[0], "name": ":".join(parts[1:-1]),
                               "actions": parts[-1].split(",")})
    return access


class TokenIssuer:
    def __init__(self, certificates: Certificates, users: dict[str, str]) -> None:
        self.certificates = certificates
        self._users = dict(users)
        self._lock = threading.Lock()
        self.cert, self.key = certificates.issue("token-issuer", (), "server")
        self._x5c = base64.b64encode(ssl.PEM_cert_to_DER_cert(Path(self.cert).read_text())).decode()
        self.issued = 0  # tokens handed out, for tests
        issuer = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                issuer._handle(self)

            def do_POST(self) -> None:  # the OAuth2 form containerd tries first
                issuer._handle_oauth(self)

        self._https = LoopbackHTTPS(Handler, self.cert, self.key, "token-issuer")
        self.port = self._https.port

    @property
    def realm(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"

    def registry_auth(self) -> dict[str, Any]:
        """distribution's `auth.token` configuration for this issuer."""
        return {"realm": self.realm, "service": SERVICE, "issuer": ISSUER,
                "rootcertbundle": str(self.certificates.ca)}

    def start(self) -> TokenIssuer:
        self._https.start()
        log(f"token issuer ready at {self.realm}")
        return self

    def stop(self) -> None:
        self._https.stop()

    def __enter__(self) -> TokenIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_password(self, user: str, password: str) -> None:
        """From now on only `password` gets a token for `user`."""
        with self._lock:
            self._users[user] = password

    def _authenticated(self, header: str | None) -> str | None:
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except ValueError:
            return None
        with self._lock:
            expected = self._users.get(user)
        return user if expected is not None and secrets.compare_digest(expected, password) else None

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        user = self._authenticated(request.headers.get("Authorization"))
        if url.path != "/token" or user is None:
            self._send(request, 401 if url.path == "/token" else 404,
                       {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
            return
        query = parse_qs(url.query)
        token = self.token(user, query.get("service", [SERVICE])[0], _scopes(query.get("scope", [])))
        self._send(request, 200, {"token": token, "access_token": token, "expires_in": TOKEN_SECONDS})

    def _handle_oauth(self, request: BaseHTTPRequestHandler) -> None:
        """POST /token with grant_type=password (distribution's token spec, OAuth2 flavour)."""
        length = int(request.headers.get("Content-Length") or 0)
        form = parse_qs(request.rfile.read(length).decode())
        user = (form.get("username") or [""])[0]
        with self._lock:
            expected = self._users.get(user)
        given = (form.get("password") or [""])[0]
        if (form.get("grant_type") or [""])[0] != "password" or expected is None \
                or not secrets.compare_digest(expected, given):
            self._send(request, 401, {"errors": [{"code": "UNAUTHORIZED"}]})
            return
        token = self.token(user, (form.get("service") or [SERVICE])[0], _scopes(form.get("scope", [])))
        self._send(request, 200, {"access_token": token, "expires_in": TOKEN_SECONDS})

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def token(self, subject: str, audience: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self._x5c]}
        claims = {"iss": ISSUER, "sub": subject, "aud": audience, "iat": now, "nbf": now - 30,
                  "exp": now + TOKEN_SECONDS, "jti": secrets.token_hex(12), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signed = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                input=signing_input.encode(), capture_output=True, check=True).stdout
        with self._lock:
            self.issued += 1
        return f"{signing_input}.{_b64url(_der_to_raw(signed))}"
