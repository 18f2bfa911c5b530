"""An HTTPS server on 127.0.0.1 and a free port, for test doubles (the token issuer, the unit
tests' registry front): TLS with a certificate from the run's CA, no request logging."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class QuietHandler(BaseHTTPRequestHandler):
    """A handler that keeps test output clean (http.server logs every request to stderr)."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class LoopbackHTTPS:
    """`server` serving `handler` over TLS on 127.0.0.1:`port` from `start()` to `stop()`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], cert: Path | str, key: Path | str,
                 name: str) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
