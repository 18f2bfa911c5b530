"""Regenerate tests/unit/data/kubelet_rules.json and kubelet_configs.json from the kubelet's
own code.

    python3 scripts/kubelet_rules.py          # after editing tests/unit/data/kubelet_*_cases.json
                                              # or bumping build.KUBERNETES_VERSION

It runs scripts/kubelet_rules/main.go inside a copy of the control plane's build module
(scripts/regcred_dev/build.py: the same k8s.io/kubernetes version, go.mod and go.sum, so no new
downloads), feeding it the cases and writing what the kubelet computes. The unit tests
tests/unit/test_doctor_kubelet_rules.py (image parsing, `auths` matching) and
tests/unit/test_kubelet_configs.py (what the kubelet reads from a `.dockerconfigjson`) check
regcred against those files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from regcred_dev import REPO, build

DATA = REPO / "tests" / "unit" / "data"
CASES = DATA / "kubelet_rules_cases.json"
OUTPUT = DATA / "kubelet_rules.json"
CONFIG_CASES = DATA / "kubelet_configs_cases.json"
CONFIG_OUTPUT = DATA / "kubelet_configs.json"
PROGRAM = REPO / "scripts" / "kubelet_rules" / "main.go"


def build_module() -> Path:
    """The control plane's kubernetes module dir (go.mod + go.sum), built if missing."""
    module = build.cache_dir() / "src" / "kubernetes"
    if not (module / "go.sum").exists():
        build.ensure_binaries()
    return module


def main() -> int:
    source = build_module()
    with tempfile.TemporaryDirectory(prefix="regcred-kubelet-rules-") as work:
        module = Path(work)
        go_mod = (source / "go.mod").read_text()
        go_mod = re.sub(r"^module .*$", "module regcred.dev/kubeletrules", go_mod, count=1, flags=re.M)
        (module / "go.mod").write_text(go_mod)
        shutil.copy(source / "go.sum", module / "go.sum")
        shutil.copy(PROGRAM, module / "main.go")
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0",
               "KUBERNETES_VERSION": build.KUBERNETES_VERSION}
        cases = {**json.loads(CASES.read_text()), **json.loads(CONFIG_CASES.read_text())}
        result = subprocess.run(["go", "run", "."], cwd=module, env=env,
                                input=json.dumps(cases).encode(), capture_output=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr.decode(errors="replace"))
        return 1
    rules = json.loads(result.stdout)
    configs = {key: rules[key] for key in ("generator", "kubernetesVersion")}
    configs["configs"] = rules.pop("configs")
    for path, table in ((OUTPUT, rules), (CONFIG_OUTPUT, configs)):
        path.write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {path.relative_to(REPO)} ({build.KUBERNETES_VERSION})")
    return 0
