"""Where the benchmark scripts keep their numbers: `bench/results/<name>-<commit>.json` and
`bench/results/<name>-latest.json`, so a result always says which commit it measured."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def current_commit() -> str:
    """The short hash of HEAD, or "unknown" outside a git checkout."""
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return found or "unknown"


def keep(name: str, commit: str, results: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for file_name in (f"{name}-{commit}.json", f"{name}-latest.json"):
        (RESULTS / file_name).write_text(json.dumps(results, indent=2) + "\n")
