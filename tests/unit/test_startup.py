"""`regcred run` started as a new user would start it, with no cluster at all.

A configuration regcred cannot use is a usage error: the process exits at once, non-zero,
with one line naming the file or the missing piece. An API server that is not there is not:
regcred keeps running and says, in a clear line, that it keeps trying (each cause:
tests/unit/test_api_errors.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXIT_USAGE = 2


def no_cluster_environment(**extra: str) -> dict[str, str]:
    """This process's environment without anything that points at a cluster."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "REGCRED_KUBECONFIG")}
    return {**clean, **extra}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "regcred.cli", "run", "--metrics-port", "0", "--health-port", "0", *args]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), env=no_cluster_environment(**(env or {})),
                          capture_output=True, text=True, timeout=60)


def kubeconfig(path: Path, server: str = "https://127.0.0.1:6443", current: str | None = "c") -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "k", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }
    if current:
        config["current-context"] = current
    path.write_text(yaml.safe_dump(config))
    return path


def assert_usage_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == EXIT_USAGE, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("regcred: ")
    for text in expected:
        assert text in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_a_missing_kubeconfig_is_named(tmp_path):
    missing = tmp_path / "nonexistent"
    assert_usage_error(run("--kubeconfig", str(missing)), str(missing), "does not exist")


def test_an_unreadable_kubeconfig_is_named(tmp_path):
    assert_usage_error(run("--kubeconfig", str(tmp_path)), str(tmp_path), "cannot be read")


def test_a_kubeconfig_that_is_not_yaml_is_named(tmp_path):
    broken = tmp_path / "config"
    broken.write_text("clusters: [unclosed\n")
    assert_usage_error(run("--kubeconfig", str(broken)), str(broken), "not valid YAML")


def test_a_kubeconfig_without_a_current_context_says_so(tmp_path):
    path = kubeconfig(tmp_path / "config", current=None)
    assert_usage_error(run("--kubeconfig", str(path)), str(path), "no current context")


def test_a_kubeconfig_naming_a_context_it_lacks_says_so(tmp_path):
    path = kubeconfig(tmp_path / "config", current="elsewhere")
    assert_usage_error(run("--kubeconfig", str(path)), str(path), "cannot be used")


def test_the_kubeconfig_environment_variable_is_checked_alike(tmp_path):
    missing = tmp_path / "nonexistent"
    assert_usage_error(run(env={"KUBECONFIG": str(missing)}), str(missing))


def test_no_kubeconfig_outside_a_cluster_says_what_is_missing():
    assert_usage_error(run(), "no kubeconfig given", "KUBERNETES_SERVICE_HOST")


def test_in_cluster_without_a_service_account_token_names_the_token_file():
    if Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists():
        pytest.fail("this machine has a service-account token; the test needs one without")
    result = run(env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert_usage_error(result, "/var/run/secrets/kubernetes.io/serviceaccount/token")
