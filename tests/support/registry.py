"""A tiny HTTPS registry front for unit tests (loopback only): /v2/ behind Basic or the Bearer
token flow, the way distribution answers, with a throwaway CA from scripts/regcred_dev/pki.py."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

from regcred_dev.loopback_https import LoopbackHTTPS, QuietHandler
from regcred_dev.pki import Certificates


class FakeRegistry:
    """`mode`: "basic", "bearer", "anonymous", "error" (500) or "redirect" (302 once authorised)."""

    def __init__(self, certs: Certificates, mode: str, username: str, password: str,
                 realm_scheme: str = "https") -> None:
        self.mode, self.username, self.password = mode, username, password
        self.realm_scheme = realm_scheme
        self.token = "tok-" + secrets.token_hex(8)
        self.seen_authorizations: list[tuple[str, str]] = []  # (path, scheme) only
        registry = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                registry.handle(self)

        self.https = LoopbackHTTPS(Handler, certs.server, certs.server_key, "fake-registry")
        self.port = self.https.port

    @property
    def server_name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        authorization = request.headers.get("Authorization") or ""
        path = request.path.split("?", 1)[0]
        self.seen_authorizations.append((path, authorization.split(" ", 1)[0]))
        basic_ok = authorization == "Basic " + base64.b64encode(
            f"{self.username}:{self.password}".encode()).decode()
        if self.mode == "anonymous":
            return self.answer(request, 200, b"{}")
        if self.mode == "error":
            return self.answer(request, 500, b"oops")
        if path == "/token" and self.mode == "bearer":
            if not basic_ok:
                return self.answer(request, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            return self.answer(request, 200, json.dumps({"token": self.token}).encode())
        if path != "/v2/":
            return self.answer(request, 404, b"")
        if self.mode in ("basic", "redirect"):
            if basic_ok:
                if self.mode == "redirect":
                    return self.answer(request, 302, b"", {"Location": "https://127.0.0.1:1/elsewhere"})
                return self.answer(request, 200, b"{}")
            return self.answer(request, 401, b"", {"WWW-Authenticate": 'Basic realm="Registry Realm"'})
        if authorization == f"Bearer {self.token}":
            return self.answer(request, 200, b"{}")
        realm = f"{self.realm_scheme}://127.0.0.1:{self.port}/token"
        return self.answer(request, 401, b"",
                           {"WWW-Authenticate": f'Bearer realm="{realm}",service="test-registry"'})

    @staticmethod
    def answer(request: BaseHTTPRequestHandler, status: int, body: bytes,
               headers: dict[str, str] | None = None) -> None:
        request.send_response(status)
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


@contextmanager
def fake_registry(certs: Certificates, mode: str, username: str = "robot", password: str = "",
                  **options: str) -> Iterator[FakeRegistry]:
    registry = FakeRegistry(certs, mode, username, password, **options)
    registry.https.start()
    try:
        yield registry
    finally:
        registry.https.stop()
