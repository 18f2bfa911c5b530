"""The `helm` fixture the chart is tested with (unit and integration tests alike).

helm comes from scripts/helm.py: $PATH when present, else built once from the helm.sh/helm/v4
Go module into ~/.cache/regcred/helm/. A helm that cannot be found or built fails the tests
that need it (never a skip).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from regcred_dev.helm import HelmError, helm_binary


class Helm:
    """`helm(*args, kubeconfig=None, check=True)` runs `binary` with its config, cache and data
    homes in a temp dir, so nothing of the user's helm setup leaks in or out."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {**os.environ, "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_CACHE_HOME": str(home / "cache"), "HELM_DATA_HOME": str(home / "data")}

    def __call__(self, *args: str, kubeconfig: str | None = None, check: bool = True,
                 ) -> subprocess.CompletedProcess[str]:
        command = [str(self.binary), *args, *(["--kubeconfig", kubeconfig] if kubeconfig else [])]
        result = subprocess.run(command, capture_output=True, text=True, env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"`helm {' '.join(args)}` exited {result.returncode}:\n{result.stderr}")
        return result


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    try:
        binary = helm_binary()
    except HelmError as error:
        pytest.fail(f"no helm: {error}", pytrace=False)
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))
