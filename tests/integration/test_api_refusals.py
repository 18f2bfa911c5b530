"""When the real API server refuses: a wrong token (401) and a user without RBAC (403).

For `regcred doctor`, `kubectl regcred doctor` (the real kubectl running the plugin) and
`regcred run`: the line names the server, the cause and the fix (for a 403: the verb, the
resource and the namespace, and the ClusterRole that grants them), with no traceback and no
Python class name; the doctor exits 2, `regcred run` keeps retrying. The causes that need no
API server (closed port, DNS, timeout, TLS, 503) are in tests/unit/test_api_errors.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from regcred.kube.errors import CRD_MISSING, DOCTOR_ROLE, OPERATOR_ROLE, UNAUTHORIZED, Cause, forbidden
from regcred_dev.controlplane import ControlPlane
from support.processes import start_or_fail, stop_process

pytestmark = [pytest.mark.integration]

PLUGIN_DIR = Path(sys.executable).parent  # kubectl-regcred is installed next to python
# A class name of Python or a library (MaxRetryError, SSLCertVerificationError, ...).
CLASS_NAME = re.compile(r"\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+(?:Error|Exception)\b|urllib3|Retry\(")


def wrong_token(path: Path, control_plane) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": control_plane.server,
                                               "certificate-authority": str(control_plane.ca)}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "default"}}]}))
    return path


def kubeconfig_for(case: str, control_plane, tmp_path: Path) -> Path:
    if case == "Unauthorized":
        return wrong_token(tmp_path / "config", control_plane)
    return control_plane.user_kubeconfig("api-errors-nobody")  # a user no RBAC rule names


def expected(case: str, role: str) -> Cause:
    return UNAUTHORIZED if case == "Unauthorized" else forbidden(role)


def assert_says(line: str, cause: Cause, server: str) -> None:
    assert server in line and cause.words in line and cause.fix in line, line
    assert "Traceback" not in line and not CLASS_NAME.search(line), line
    assert "not-a-real-token" not in line


@pytest.mark.parametrize("case", ["Unauthorized", "Forbidden"])
@pytest.mark.parametrize("program", ["regcred doctor", "kubectl regcred doctor"])
def test_the_doctor_says_why_the_api_server_refuses(case: str, program: str, control_plane,
                                                    tmp_path: Path) -> None:
    config = kubeconfig_for(case, control_plane, tmp_path)
    env = {**os.environ, "PATH": f"{PLUGIN_DIR}{os.pathsep}{os.environ['PATH']}", "KUBECONFIG": str(config)}
    argv = ([sys.executable, "-m", "regcred.cli", "doctor"] if program == "regcred doctor"
            else ["kubectl", "regcred", "doctor"])
    result = subprocess.run([*argv, "-n", "default"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regcred doctor: "), result.stderr
    assert_says(lines[0], expected(case, DOCTOR_ROLE), control_plane.server)
    if case == "Forbidden":  # the verb, the resource and the namespace
        assert "list pods in default at " in lines[0], lines[0]


def start_run(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "REGCRED_KUBECONFIG")}
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "regcred.cli", "run", "--metrics-port", "0", "--health-port", "0",
             "--kubeconfig", str(config)], stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for_attempts(process: subprocess.Popen[bytes], log: Path) -> str:
    """The log once regcred has tried twice to list the cluster (and is still running)."""
    deadline = time.monotonic() + 60
    while log.read_text().count("cannot list the cluster yet") < 2:
        assert process.poll() is None, f"regcred exited: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no second attempt in 60 s: {log.read_text()[-3000:]}"
        time.sleep(0.2)
    return log.read_text()


@pytest.mark.parametrize("case", ["Unauthorized", "Forbidden"])
def test_regcred_run_says_why_and_keeps_retrying(case: str, control_plane, tmp_path: Path) -> None:
    config = kubeconfig_for(case, control_plane, tmp_path)
    log = tmp_path / "regcred.log"
    process = start_run(config, log)
    try:
        wait_for_attempts(process, log)
        text = log.read_text()
        for line in text.splitlines():
            if "cannot list the cluster yet" in line:
                assert_says(line, expected(case, OPERATOR_ROLE), control_plane.server)
        assert "Retrying (Retry(" not in text
        outage = [line for line in text.splitlines() if "the API server cannot be used" in line]
        if case == "Unauthorized":  # the whole API is unusable: said once, rate-limited
            assert len(outage) == 1, text
            assert_says(outage[0], UNAUTHORIZED, control_plane.server)
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def cluster_without_the_crd() -> Iterator[ControlPlane]:
    plane = start_or_fail(ControlPlane().start, "could not start a second control plane")
    yield plane
    plane.stop()


def test_regcred_run_says_the_crd_is_not_installed(cluster_without_the_crd: ControlPlane,
                                                    tmp_path: Path) -> None:
    log = tmp_path / "regcred.log"
    process = start_run(cluster_without_the_crd.kubeconfig, log)
    try:
        text = wait_for_attempts(process, log)
        lines = [line for line in text.splitlines() if "cannot list the cluster yet" in line]
        for line in lines:
            assert_says(line, CRD_MISSING, cluster_without_the_crd.server)
    finally:
        stop_process(process)
