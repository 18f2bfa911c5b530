"""Loaded by `bench/profile.py` into the regcred process (via PYTHONPATH), never in production.

With `PYTHONTRACEMALLOC` set, SIGUSR2 writes the biggest live allocations (by file and line,
and by package) to `$REGCRED_MEMORY_REPORT`, so memory can be attributed without changing
regcred's own code.

With `$REGCRED_ONBOARDING_TRACE` set, each step a new namespace takes on its way to its copy
is appended there as a JSON line (wall-clock time, step, namespace): the watch event
reaching regcred (regcred/sync/watches.py), the sync queued, the sync starting on a worker, the POST of the
copy starting and returning (`bench/profile.py onboarding`); and each step of the
ServiceAccount's way to its entry: its watch event, the queued sync,
the JSON Patch starting and returning. With `$REGCRED_ADMISSION_TRACE` set, each admission
request's steps go there the same way: the review (regcred's `Reviewer`; before issue 21,
kopf's admission engine) called and returning, the decision's reads starting and returning
(`bench/profile.py admission`).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
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


def _recorder(path: str):  # type: ignore[no-untyped-def]
    """record(step, key): one JSON line with the wall-clock time, from any thread."""
    lock = threading.Lock()
    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the life of the process

    def record(step: str, key: str) -> None:
        with lock:
            out.write(json.dumps({"t": time.time(), "step": step, "namespace": key}) + "\n")

    return record


def _trace_onboarding(path: str) -> None:
    from regcred.kube.client import Kube
    from regcred.sync.controller import Controller
    from regcred.sync.reconciler import Reconciler
    from regcred.sync.watches import Watches

    record = _recorder(path)
    original_on_event = Watches._on_event

    def on_event(self, kind):  # type: ignore[no-untyped-def]
        handle = original_on_event(self, kind)
        step = {"namespaces": "watch_event", "serviceaccounts": "sa_watch_event"}.get(kind.name)

        def traced(type, body):  # type: ignore[no-untyped-def]
            if step and type == "ADDED":
                record(step, kind.namespace_of(body))
            handle(type, body)
        return traced

    Watches._on_event = on_event

    def wrap(owner: type, name: str, step: str, namespace_of) -> None:  # type: ignore[no-untyped-def]
        """Record `step` (and `step`_done) around `owner.name` for calls about a namespace."""
        original = getattr(owner, name)

        def traced(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            namespace = namespace_of(*args)
            if namespace:
                record(step, namespace)
            result = original(self, *args, **kwargs)
            if namespace:
                record(step + "_done", namespace)
            return result

        setattr(owner, name, traced)

    wrap(Controller, "namespace_changed", "enqueued", lambda namespace: namespace)
    wrap(Reconciler, "sync_namespace", "sync", lambda namespace: namespace)
    # Kube._call(verb, what, ...): the POST of a copy is ("create", "secret <ns>/<name>").
    wrap(Kube, "_call", "post", lambda verb, what, *_: what.split(" ", 1)[1].split("/")[0]
         if verb == "create" and what.startswith("secret ") else None)
    wrap(Kube, "_call", "sa_patch", lambda verb, what, *_: what.split(" ", 1)[1].split("/")[0]
         if verb == "patch" and what.startswith("serviceaccount ") else None)


def _trace_admission(path: str) -> None:
    from regcred.admission.webhook import Decider, Reviewer

    record = _recorder(path)
    original_review = Reviewer.__call__

    async def review(self, request, **kwargs):  # type: ignore[no-untyped-def]
        key = request.get("request", {}).get("uid", "")
        record("engine", key)
        try:
            return await original_review(self, request, **kwargs)
        finally:
            record("engine_done", key)

    Reviewer.__call__ = review
    original_entries = Decider.entries_for

    def entries_for(self, namespace, service_account):  # type: ignore[no-untyped-def]
        record("reads", namespace)
        try:
            return original_entries(self, namespace, service_account)
        finally:
            record("reads_done", namespace)

    Decider.entries_for = entries_for


if os.environ.get("REGCRED_ONBOARDING_TRACE"):
    _trace_onboarding(os.environ["REGCRED_ONBOARDING_TRACE"])
if os.environ.get("REGCRED_ADMISSION_TRACE"):
    _trace_admission(os.environ["REGCRED_ADMISSION_TRACE"])
