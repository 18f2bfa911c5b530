"""Run the real `regcred run` process against a control plane, as a test fixture would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from regcred_dev.process import free_port
from support.processes import stop_process


class OperatorProcess:
    """One `regcred run` process; its JSON log is kept in `log_path` for assertions."""

    def __init__(self, kubeconfig: str, log_path: Path, *, namespace: str = "regcred-system",
                 source_namespaces: str | None = None, resync_seconds: float = 600,
                 extra_env: dict[str, str] | None = None, kubeconfig_in_env: bool = True,
                 extra_args: list[str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        # False: only `--kubeconfig` says where the cluster is (no $KUBECONFIG, no ~/.kube).
        self.kubeconfig_in_env = kubeconfig_in_env
        self.log_path = log_path
        self.namespace = namespace
        self.source_namespaces = source_namespaces or namespace
        self.resync_seconds = resync_seconds
        self.extra_env = extra_env or {}
        self.extra_args = extra_args or []  # after the defaults above, so they win
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> OperatorProcess:
        env = {**os.environ, **self.extra_env, "KUBECONFIG": self.kubeconfig}
        if not self.kubeconfig_in_env:
            del env["KUBECONFIG"]
            env["HOME"] = str(self.log_path.parent)
        command = [
            sys.executable, "-m", "regcred.cli", "run",
            "--kubeconfig", self.kubeconfig,
            "--namespace", self.namespace,
            "--source-namespaces", self.source_namespaces,
            "--resync-seconds", str(self.resync_seconds),
            "--metrics-port", str(self.metrics_port),
            "--health-port", str(self.health_port),
            "--log-format", "json",
            *self.extra_args,
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"regcred exited with {self.process.returncode}; see {self.log_path}")
            if self.healthy():
                return self
            time.sleep(0.2)
        self.stop()  # the caller never gets it to stop: a fixture that fails here has no teardown
        raise TimeoutError(f"regcred not healthy after {timeout}s; see {self.log_path}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1):
                return True
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric_sum(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include `labels`."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.process is not None:
            stop_process(self.process, sig, timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
