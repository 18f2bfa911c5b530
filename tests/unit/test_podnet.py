"""scripts/regcred_dev/podnet.py's relays on the host's loopback (no namespace needed): bytes go both
ways and half-closes pass through; the proxy tunnels CONNECT, forwards plain HTTP in origin
form, and refuses anything else."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from regcred_dev import podnet


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A loopback server that echoes each connection until the client's half-close."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                while data := connection.recv(65536):
                    connection.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()
    server.close()


def roundtrip(connection: socket.socket, payload: bytes) -> bytes:
    connection.sendall(payload)
    connection.shutdown(socket.SHUT_WR)
    received = b""
    while data := connection.recv(65536):
        received += data
    return received


def test_forward_relays_both_ways_until_the_half_close(echo):
    relay = podnet.forward(None, ("127.0.0.1", 0), None, echo)
    try:
        payload = bytes(range(256)) * 4096  # 1 MiB
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as connection:
            assert roundtrip(connection, payload) == payload
        assert relay.connections == 1
    finally:
        relay.close()


def test_the_proxy_tunnels_connect_forwards_plain_http_and_refuses_the_rest(echo):
    proxy = podnet.Relay(None, ("127.0.0.1", 0), lambda client: podnet.tunnel(client, lambda: None))
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as connection:
            connection.sendall(f"CONNECT {echo[0]}:{echo[1]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert connection.recv(64).startswith(b"HTTP/1.1 200 ")
            assert roundtrip(connection, b"through the tunnel") == b"through the tunnel"
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as connection:
            request = (f"GET http://{echo[0]}:{echo[1]}/metrics HTTP/1.1\r\n"
                       "Host: x\r\nConnection: keep-alive\r\n\r\n")
            # The echo server returns what reached it: the request in origin form, closing.
            assert roundtrip(connection, request.encode()) == (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as connection:
            connection.sendall(b"GET /relative HTTP/1.1\r\nHost: example.com\r\n\r\n")
            assert connection.recv(64).startswith(b"HTTP/1.1 405 ")
    finally:
        proxy.close()
