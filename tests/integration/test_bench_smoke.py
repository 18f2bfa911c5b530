"""The benchmark keeps working: its smoke mode runs end to end (numbers are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from node import Node
from node_fixtures import require

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_bench_smoke_produces_every_section(tmp_path: Path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke"],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "REGCRED_BENCH_LOGS": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sections"] == ["idle", "machine", "memory_mb", "onboarding", "onboarding_admission",
                                   "onboarding_raw", "onboarding_requests_per_namespace", "restart",
                                   "sizes"]


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
