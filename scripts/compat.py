#!/usr/bin/env python3
"""The compatibility run: the integration suite against each supported Kubernetes release.

    python scripts/compat.py                         # oldest supported, then the default
    python scripts/compat.py --versions v1.34.4      # just one
    python scripts/compat.py -- -m "not node" -x     # arguments after -- go to pytest

Each version gets its own control plane binaries (scripts/controlplane.py, one cache dir per
version) and its own pytest session with REGCRED_KUBERNETES_VERSION set. The summary is a
Markdown table with the date and commit, ready for docs/compatibility.md. Exit 1 if any
version had a failure or error. Stdlib only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from regcred_dev.build import DEFAULT_KUBERNETES_VERSION, OLDEST_KUBERNETES_VERSION

REPO = Path(__file__).resolve().parents[1]
SUPPORTED = (OLDEST_KUBERNETES_VERSION, DEFAULT_KUBERNETES_VERSION)


@dataclass(frozen=True)
class Result:
    version: str
    passed: int
    failed: int
    errors: int
    skipped: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.errors == 0 and self.passed > 0


def counts(junit: Path) -> tuple[int, int, int, int]:
    """(passed, failed, errors, skipped) from pytest's JUnit XML."""
    if not junit.exists():
        return 0, 0, 1, 0  # pytest died before writing it
    root = ElementTree.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {key: sum(int(suite.get(key, 0)) for suite in suites)
             for key in ("tests", "failures", "errors", "skipped")}
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return passed, total["failures"], total["errors"], total["skipped"]


def run_version(version: str, pytest_args: list[str], scratch: Path) -> Result:
    env = {**os.environ, "REGCRED_KUBERNETES_VERSION": version}
    started = time.monotonic()
    build = subprocess.run([sys.executable, str(REPO / "scripts" / "controlplane.py"), "build"], env=env)
    junit = scratch / f"{version}.xml"
    if build.returncode == 0:
        subprocess.run([sys.executable, "-m", "pytest", str(REPO / "tests" / "integration"),
                        "-p", "no:cacheprovider", f"--junitxml={junit}", *pytest_args], env=env, cwd=REPO)
    return Result(version, *counts(junit), seconds=time.monotonic() - started)


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=REPO).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, cwd=REPO).stdout.strip()
    return f"{head}{' (uncommitted changes)' if dirty else ''}"


def table(results: list[Result], pytest_args: list[str], started: str, tested: str) -> str:
    selection = f" `{' '.join(pytest_args)}`" if pytest_args else ""
    lines = [f"Compatibility run {started}, commit {tested}, tests/integration{selection}:", "",
             "| Kubernetes | passed | failed | errors | skipped | minutes |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.version} | {r.passed} | {r.failed} | {r.errors} | {r.skipped} | {r.seconds / 60:.0f} |"
              for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", nargs="+", default=list(SUPPORTED),
                        help=f"Kubernetes releases to test (default: {' '.join(SUPPORTED)})")
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    tested = commit()  # before the run: what was tested, even if the tree changes meanwhile
    with tempfile.TemporaryDirectory(prefix="regcred-compat-") as scratch:
        results = [run_version(version, pytest_args, Path(scratch)) for version in args.versions]
    print(table(results, pytest_args, started, tested))
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
