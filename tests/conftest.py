"""Fixtures for unit and integration tests alike: the `helm` the chart is tested with.

helm comes from scripts/helm.py: $PATH when present, else built once from the helm.sh/helm/v4
Go module into ~/.cache/regcred/helm/. A helm that cannot be found or built fails the tests
that need it (never a skip).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from helm import HelmError, helm_binary  # noqa: E402

Helm = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """`helm(*args, kubeconfig=None, check=True)`: run helm with its config, cache and data
    homes in a temp dir (nothing of the user's helm setup leaks in or out)."""
    try:
        binary = helm_binary()
    except HelmError as error:
        pytest.fail(f"no helm: {error}", pytrace=False)
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, "HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_DATA_HOME": str(home / "data")}

    def run(*args: str, kubeconfig: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(binary), *args, *(["--kubeconfig", kubeconfig] if kubeconfig else [])]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if check and result.returncode != 0:
            raise AssertionError(f"`helm {' '.join(args)}` exited {result.returncode}:\n{result.stderr}")
        return result

    return run
