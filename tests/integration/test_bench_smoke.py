"""The benchmark keeps working: its smoke mode runs end to end (numbers are not asserted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from node_fixtures import require

from regcred_dev.node import Node

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_bench_smoke_produces_every_section(tmp_path: Path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke"],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "REGCRED_BENCH_LOGS": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sections"] == ["floor", "idle", "machine", "memory_mb", "onboarding",
                                   "onboarding_admission", "onboarding_cpu_ms_per_namespace",
                                   "onboarding_raw", "onboarding_requests_per_namespace",
                                   "ratios_to_floor", "restart", "sizes"]


def _children(pid: int, marker: bytes) -> list[int]:
    """Processes whose parent is `pid` and whose command line contains `marker`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and marker in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return found


def _wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_bench_sigterm_stops_regcred(tmp_path: Path):
    """SIGTERM to the bench stops the regcred process it started, and the bench exits 130."""
    bench = subprocess.Popen([sys.executable, str(REPO / "bench" / "run.py"), "--smoke"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "REGCRED_BENCH_LOGS": str(tmp_path)})
    try:
        operators = _wait_for(lambda: _children(bench.pid, b"regcred.cli"), 300, "regcred started")
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(120) == 130, bench.stderr.read() if bench.stderr else ""
        assert not [pid for pid in operators if Path(f"/proc/{pid}").exists()
                    and b"regcred.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()


def test_doctor_bench_smoke():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "doctor.py"), "--smoke"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert (summary["pods"], summary["images"]) == (20, 40)
    assert summary["findings"] == summary["in_memory_findings"] > 0


def test_provider_bench_smoke():
    """Pull-time delivery's benchmark (bench/provider.py) on its own control plane and node."""
    require(Node.unavailable_reason())
    result = subprocess.run([sys.executable, str(REPO / "bench" / "provider.py"), "--smoke"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert set(summary) == {"commit", "kubernetes", "plugin", "endpoint", "token_reviews", "pull_s"}
    assert summary["endpoint"]["statuses"] == {"200": 10}
