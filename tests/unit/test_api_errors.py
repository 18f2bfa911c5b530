"""When the cluster cannot be reached or used: each cause from a real setup, and what a user sees.

Every setup here is on loopback (or in a network namespace of its own): a closed port, a name
that does not resolve, a server that never answers, TLS servers with another CA, a certificate
for another name and an expired one, and a server that answers 503 or 401. For each,
`regcred doctor` and `kubectl-regcred doctor` (what `kubectl regcred doctor` runs) exit 2 with
one line naming the server, the cause in words and the fix; `regcred run` keeps retrying and
logs the same, once, without urllib3's retry warnings. No traceback, no Python class name.
The setups that need a real API server (a wrong token, missing RBAC, no CRD) are in
tests/integration/test_api_refusals.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from test_startup import command, no_cluster_environment

from regcred.admission.tls import WebhookTLS, issue
from regcred.kube.errors import (
    DNS,
    DROPPED,
    OVERLOADED,
    REFUSED,
    TIMEOUT,
    TLS_EXPIRED,
    TLS_NAME,
    TLS_OTHER,
    TLS_UNKNOWN_CA,
    UNAUTHORIZED,
    UNREACHABLE,
    Cause,
)
from regcred_dev.loopback_https import LoopbackHTTPS, QuietHandler
from regcred_dev.process import free_port
from support.processes import stop_process

PLUGIN = Path(sys.executable).parent / "kubectl-regcred"
# A class name of Python or a library (MaxRetryError, SSLCertVerificationError, ...).
CLASS_NAME = re.compile(r"\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+(?:Error|Exception)\b|urllib3|Retry\(")


@dataclass
class Setup:
    server: str
    ca: bytes | None = None  # None: the kubeconfig skips TLS verification
    prefix: tuple[str, ...] = ()  # run the command under this (e.g. in a network namespace)


def kubeconfig(path: Path, setup: Setup) -> Path:
    cluster: dict[str, object] = {"server": setup.server}
    if setup.ca is None:
        cluster["insecure-skip-tls-verify"] = True
    else:
        (path.parent / "ca.crt").write_bytes(setup.ca)
        cluster["certificate-authority"] = str(path.parent / "ca.crt")
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return path


def answering(status: int) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "ServiceUnavailable", "code": status}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    return Handler


def tls_server(tmp: Path, tls: WebhookTLS, status: int = 503) -> LoopbackHTTPS:
    (tmp / "tls.crt").write_bytes(tls.cert)
    (tmp / "tls.key").write_bytes(tls.key)
    server = LoopbackHTTPS(answering(status), tmp / "tls.crt", tmp / "tls.key", name="api-errors")
    server.start()
    return server


def in_own_network_namespace() -> tuple[str, ...]:
    """A network namespace with nothing but a down loopback: no DNS query leaves it."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or not unshare:
        reason = "a network namespace of its own needs root and unshare (util-linux)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return (unshare, "--net")


@pytest.fixture
def setups(tmp_path: Path) -> Iterator[Callable[[str], Setup]]:
    started: list[LoopbackHTTPS] = []
    silent: list[socket.socket] = []
    plain: list[ThreadingHTTPServer] = []

    def make(cause: str) -> Setup:
        here = tmp_path / cause
        here.mkdir()
        return (without_tls(cause, silent, plain)
                or with_tls(cause, here, started, datetime.now(UTC)))

    yield make
    for server in started:
        server.stop()
    for sock in silent:
        sock.close()
    for http in plain:
        http.shutdown()
        http.server_close()


def without_tls(cause: str, silent: list[socket.socket], plain: list[ThreadingHTTPServer]) -> Setup | None:
    """The causes met before any TLS handshake; None for the others."""
    if cause == REFUSED.code:
        return Setup(f"https://127.0.0.1:{free_port()}")
    if cause == DNS.code:
        return Setup("https://api.regcred-test.invalid:6443", prefix=in_own_network_namespace())
    if cause == UNREACHABLE.code:  # TEST-NET-1, in a namespace with no route: nothing is sent
        return Setup("https://192.0.2.1:6443", prefix=in_own_network_namespace())
    if cause in (DROPPED.code, TIMEOUT.code):
        # TIMEOUT: the kernel accepts connections and nothing answers; DROPPED: each one is
        # accepted, then closed without a word
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        silent.append(sock)
        if cause == DROPPED.code:
            threading.Thread(target=hang_up, args=(sock,), daemon=True).start()
        return Setup(f"https://127.0.0.1:{sock.getsockname()[1]}")
    if cause == TLS_OTHER.code:  # plain HTTP where HTTPS is expected
        server = ThreadingHTTPServer(("127.0.0.1", 0), answering(503))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        plain.append(server)
        return Setup(f"https://127.0.0.1:{server.server_address[1]}")
    return None


def with_tls(cause: str, here: Path, started: list[LoopbackHTTPS], now: datetime) -> Setup:
    """A TLS server whose certificate or answer is the cause."""
    if cause == TLS_UNKNOWN_CA.code:
        server = tls_server(here, issue(["127.0.0.1"], now))
        started.append(server)
        return Setup(f"https://127.0.0.1:{server.port}", ca=issue(["127.0.0.1"], now).ca_cert)
    if cause == TLS_NAME.code:
        tls = issue(["api.other.example"], now)
        started.append(server := tls_server(here, tls))
        return Setup(f"https://127.0.0.1:{server.port}", ca=tls.ca_cert)
    if cause == TLS_EXPIRED.code:
        ca = issue(["127.0.0.1"], now)
        expired = issue(["127.0.0.1"], now - timedelta(days=800), ca=ca)
        started.append(server := tls_server(here, expired))
        return Setup(f"https://127.0.0.1:{server.port}", ca=ca.ca_cert)
    status = {OVERLOADED.code: 503, UNAUTHORIZED.code: 401}[cause]
    tls = issue(["127.0.0.1"], now)
    started.append(server := tls_server(here, tls, status))
    return Setup(f"https://127.0.0.1:{server.port}", ca=tls.ca_cert)


def hang_up(sock: socket.socket) -> None:
    """Accept each connection and close it at once, until `sock` is closed."""
    while True:
        try:
            connection, _ = sock.accept()
        except OSError:
            return
        connection.close()


CAUSES = [REFUSED, DNS, UNREACHABLE, TIMEOUT, DROPPED, TLS_UNKNOWN_CA, TLS_NAME, TLS_EXPIRED, TLS_OTHER,
          OVERLOADED, UNAUTHORIZED]


def assert_says(text: str, cause: Cause, setup: Setup) -> None:
    assert setup.server in text, text
    assert cause.words in text and cause.fix in text, text
    assert "Traceback" not in text, text
    assert not CLASS_NAME.search(text), text
    assert "not-a-real-token" not in text


@pytest.mark.parametrize("cause", CAUSES, ids=lambda cause: cause.code)
@pytest.mark.parametrize("program", ["regcred doctor", "kubectl-regcred doctor"])
def test_the_doctor_names_the_server_the_cause_and_the_fix(cause: Cause, program: str, setups,
                                                          tmp_path: Path) -> None:
    setup = setups(cause.code)
    config = kubeconfig(tmp_path / "config", setup)
    if program == "regcred doctor":
        argv = [sys.executable, "-m", "regcred.cli", "doctor", "--kubeconfig", str(config)]
        env = no_cluster_environment()
    else:  # kubectl hands a plugin no flags, only its environment
        argv = [str(PLUGIN), "doctor"]
        env = no_cluster_environment(KUBECONFIG=str(config))
    result = subprocess.run([*setup.prefix, *argv, "-A", "--request-timeout", "1"], env=env,
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regcred doctor: "), result.stderr
    assert_says(lines[0], cause, setup)
    assert result.stdout == ""


@pytest.mark.parametrize("cause", [REFUSED, DNS, TLS_UNKNOWN_CA, TLS_NAME, TLS_EXPIRED, OVERLOADED,
                                   UNAUTHORIZED],
                         ids=lambda cause: cause.code)
def test_regcred_run_says_it_once_and_keeps_retrying(cause: Cause, setups, tmp_path: Path) -> None:
    setup = setups(cause.code)
    config = kubeconfig(tmp_path / "config", setup)
    log = tmp_path / "regcred.log"
    with log.open("w") as out:
        process = subprocess.Popen([*setup.prefix, *command("--kubeconfig", str(config))], stdout=out,
                                   stderr=subprocess.STDOUT, env=no_cluster_environment())
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count("cannot list the cluster yet") < 2:  # a second attempt
            assert process.poll() is None, f"regcred exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no second attempt in 60 s: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        text = log.read_text()
        said = [line for line in text.splitlines() if "the API server cannot be used" in line]
        assert len(said) == 1, text  # once, not once per attempt (rate-limited)
        assert_says(said[0], cause, setup)
        assert cause.code in said[0], said[0]
        for line in text.splitlines():
            if "cannot list the cluster yet" in line:
                assert_says(line, cause, setup)
        assert "Retrying (Retry(" not in text and "Traceback" not in text, text
    finally:
        stop_process(process)
