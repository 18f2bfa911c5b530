"""Loaded by `bench/profile.py` into the regcred process (via PYTHONPATH), never in production.

With `PYTHONTRACEMALLOC` set, SIGUSR2 writes the biggest live allocations (by file and line,
and by package) to `$REGCRED_MEMORY_REPORT`, so memory can be attributed without changing
regcred's own code.
"""

from __future__ import annotations

import os
import signal
import tracemalloc
from collections import Counter
from pathlib import Path


def _report(*_: object) -> None:
    snapshot = tracemalloc.take_snapshot()
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"traced now {current / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB", "",
             "by package (MiB):"]
    packages: Counter[str] = Counter()
    for stat in snapshot.statistics("filename"):
        path = stat.traceback[0].filename
        key = path.split("site-packages/")[-1].split("/")[0] if "site-packages/" in path else path
        packages[key] += stat.size
    lines += [f"  {size / 2**20:8.1f}  {name}" for name, size in packages.most_common(15)]
    lines += ["", "by line (MiB, count):"]
    for stat in snapshot.statistics("lineno")[:30]:
        frame = stat.traceback[0]
        where = frame.filename.split("site-packages/")[-1]
        lines.append(f"  {stat.size / 2**20:8.2f} {stat.count:8d}  {where}:{frame.lineno}")
    Path(os.environ["REGCRED_MEMORY_REPORT"]).write_text("\n".join(lines) + "\n")


if tracemalloc.is_tracing() and os.environ.get("REGCRED_MEMORY_REPORT"):
    signal.signal(signal.SIGUSR2, _report)

