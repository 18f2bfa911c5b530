#!/usr/bin/env python3
"""Profiles behind the benchmark's targets: where regcred's memory and sync time go.

    python bench/profile.py memory --namespaces 5000   # RSS and a tracemalloc report, N x 3 CRs
    python bench/profile.py sync --namespaces 1000     # py-spy stacks and CPU split of one initial sync
    python bench/profile.py onboarding --namespaces 50 # where the time from a new namespace to its copy
                                                       # goes, and from its ServiceAccount to our entry
    python bench/profile.py admission --namespaces 200 # where an admission request's time goes (N creates)

Each run starts its own control plane and `regcred run` and writes its report to
`bench/results/profiles/<commit>-<kind>.txt` (the sync profile also keeps py-spy's
collapsed stacks next to it, for a flame graph).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from run import (
    REPO,
    USER,
    Bench,
    ControlPlane,
    OperatorProcess,
    cpu_seconds,
    free_port,
    interruptible,
    launch,
    machine,
    percentiles,
    restart,
    rss_mb,
    stop_started,
    sweep,
)

PROFILES = REPO / "bench" / "results" / "profiles"
TRACING = Path(__file__).resolve().parent / "tracing"
LOGS = Path(os.environ.get("REGCRED_BENCH_LOGS", "/tmp"))


def start(plane: ControlPlane, log: Path, extra_env: dict[str, str] | None = None) -> OperatorProcess:
    identity = plane.user_kubeconfig(USER, ("system:masters",))
    return launch(str(identity), log, resync_seconds=3600, extra_env=extra_env)


def memory(namespaces: int, credentials: int, trace: bool, restarts: list[str]) -> list[str]:
    """RSS after `credentials` CRs have synced `namespaces` namespaces, and what holds it;
    then RSS of a fresh regcred started on that cluster, once for each environment in
    `restarts` ("NAME=VALUE,..." or "" for none), once it has resynced every CR."""
    report = Path(tempfile.mkdtemp()) / "tracemalloc.txt"
    env = {"PYTHONPATH": f"{TRACING}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "REGCRED_MEMORY_REPORT": str(report)}
    if trace:
        env["PYTHONTRACEMALLOC"] = "1"
    lines = []
    with ControlPlane() as plane:
        bench = Bench(plane)
        bench.install()
        operator = start(plane, LOGS / "profile-memory.log", env)
        try:
            lines.append(f"RSS idle with no objects: {rss_mb(operator.process.pid):.1f} MB")
            bench.grow_to(namespaces)
            lines.append(f"RSS with {namespaces} namespaces, no CR: {rss_mb(operator.process.pid):.1f} MB")
            for index in range(credentials):
                took = bench.initial_sync(f"mem-{index}", namespaces)
                lines.append(f"RSS after CR {index + 1} synced ({took:.1f} s): "
                             f"{rss_mb(operator.process.pid):.1f} MB")
            if trace:
                lines += ["", traced(operator, report)]
            for variant in restarts:
                extra = dict(item.split("=", 1) for item in variant.split(",") if item)
                operator, numbers = restart(operator, credentials, namespaces * (2 + credentials),
                                            {**env, **extra})
                lines.append(f"restarted regcred {extra or ''}: {numbers}")
                if "PYTHONTRACEMALLOC" in extra:
                    lines += ["", traced(operator, report)]
        finally:
            operator.stop()
    return lines


def traced(operator: OperatorProcess, report: Path) -> str:
    """Have a regcred started with PYTHONTRACEMALLOC write what holds its memory."""
    report.unlink(missing_ok=True)
    os.kill(operator.process.pid, signal.SIGUSR2)
    Bench.poll(lambda: report.exists() and report.read_text().endswith("\n"), 300, "tracemalloc report")
    return report.read_text()


def sync(namespaces: int, out: Path) -> list[str]:
    """Who uses the CPU during one initial sync, and where regcred spends its share."""
    stacks = out.with_suffix(".stacks")
    with ControlPlane() as plane:
        bench = Bench(plane)
        bench.install()
        operator = start(plane, LOGS / "profile-sync.log")
        try:
            bench.grow_to(namespaces)
            pids = {"regcred": operator.process.pid}
            pids.update((name, c.process.pid) for name, c in plane.components.items() if c.process)
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                    str(operator.process.pid), "--rate", "200", "--format", "raw",
                                    "--output", str(stacks), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)  # let py-spy attach; attaching late only loses the first samples
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            since = time.time()
            took = bench.initial_sync("profiled", namespaces)
            used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
            requests = bench.requests(since)
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        finally:
            operator.stop()
    lines = [f"initial sync of {namespaces} namespaces: {took:.2f} s",
             f"CPU seconds used meanwhile (2 cores = {2 * took:.1f} available):"]
    lines += [f"  {seconds:7.2f}  {name}" for name, seconds in sorted(used.items(), key=lambda i: -i[1])]
    lines += ["", "regcred's requests meanwhile, per namespace:"]
    lines += [f"  {count / namespaces:6.3f}  {what}" for what, count in sorted(requests.items())]
    lines += ["", *summarize(stacks)]
    return lines


ONBOARDING_STEPS = [  # (from, to, what the interval is)
    ("created", "watch_event", "namespace POST sent -> regcred has the watch event"),
    ("watch_event", "enqueued", "regcred: event -> the namespace queued"),
    ("enqueued", "sync", "regcred: queued -> a pool thread starts the sync"),
    ("sync", "post", "regcred: plan (caches, core) -> the copy's POST starts"),
    ("post", "post_done", "the copy's POST (API server + etcd)"),
    ("created", "post_done", "total: namespace POST sent -> copy created"),
]


ACCOUNT_STEPS = [  # the ServiceAccount's way to our entry, each step the first after the one before
    ("sa_watch_event", "enqueued", "regcred: ServiceAccount ADDED -> the namespace queued"),
    ("enqueued", "sync", "regcred: queued -> a pool thread starts the sync"),
    ("sync", "sa_patch", "regcred: plan -> the JSON Patch starts"),
    ("sa_patch", "sa_patch_done", "the JSON Patch (API server + etcd)"),
    ("sa_watch_event", "sa_patch_done", "total: ServiceAccount ADDED at regcred -> entry written"),
]


def step_table(records: dict[str, list[tuple[float, str]]],
               steps: list[tuple[str, str, str]], first: str) -> list[str]:
    """p50/p95/max of each step, per key: from the first `first` record, each step's time is
    its first record at or after the step before it."""
    durations: dict[tuple[str, str], list[float]] = {}
    for events in records.values():
        events.sort()
        start = next((t for t, step in events if step == first), None)
        if start is None:
            continue
        found, last = {first: start}, start
        for _, end_step, _ in steps:
            if end_step in found:
                continue
            at = next((t for t, step in events if step == end_step and t >= last), None)
            if at is None:
                break
            found[end_step] = last = at
        for start_step, end_step, _ in steps:
            if start_step in found and end_step in found:
                took = 1000 * (found[end_step] - found[start_step])
                durations.setdefault((start_step, end_step), []).append(took)
    lines = []
    for start_step, end_step, what in steps:
        values = durations.get((start_step, end_step))
        if values:
            numbers = percentiles(values)
            lines.append(f"            {numbers['p50']:6.1f}  {numbers['p95']:6.1f}  "
                         f"{numbers['max']:6.1f}   {what}")
    return lines


def onboarding(namespaces: int, admission: bool) -> list[str]:
    """Where the time goes from a new namespace to its copy: `namespaces` labelled namespaces
    created one at a time (each after the previous one's copy exists), every step timed inside
    regcred by bench/tracing/sitecustomize.py."""
    trace = Path(tempfile.mkdtemp()) / "onboarding.jsonl"
    env = {"PYTHONPATH": f"{TRACING}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "REGCRED_ONBOARDING_TRACE": str(trace)}
    if admission:
        port = free_port()
        env.update({"REGCRED_ADMISSION": "true", "REGCRED_ADMISSION_LISTEN": f"127.0.0.1:{port}",
                    "REGCRED_ADMISSION_URL": f"https://127.0.0.1:{port}"})
    created: dict[str, float] = {}
    with ControlPlane() as plane:
        bench = Bench(plane)
        bench.install()
        operator = start(plane, LOGS / "profile-onboarding.log", env)
        try:
            bench.credential("traced", {"traced": "yes"})
            Bench.poll(lambda: bench.ready("traced"), 60, "CR Ready")
            for index in range(namespaces):
                name = f"traced-{index:04d}"
                created[name] = time.time()
                bench.core.create_namespace({"metadata": {"name": name, "labels": {"traced": "yes"}}})
                Bench.poll(lambda n=name: bench.core.list_namespaced_secret(
                    n, label_selector="regcred.dev/credential=traced").items, 30, name, interval=0.005)
        finally:
            operator.stop()
    steps: dict[str, dict[str, float]] = {name: {"created": t} for name, t in created.items()}
    records: dict[str, list[tuple[float, str]]] = {name: [] for name in created}
    for line in trace.read_text().splitlines():
        record = json.loads(line)
        if record["namespace"] in steps:
            steps[record["namespace"]].setdefault(record["step"], record["t"])
            records[record["namespace"]].append((record["t"], record["step"]))
    lines = [f"{namespaces} namespaces, one at a time, admission {'on' if admission else 'off'}, "
             f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", "",
             "milliseconds   p50     p95     max   step"]
    for start_step, end_step, what in ONBOARDING_STEPS:
        values = [1000 * (s[end_step] - s[start_step]) for s in steps.values()
                  if start_step in s and end_step in s]
        if values:
            numbers = percentiles(values)
            lines.append(f"            {numbers['p50']:6.1f}  {numbers['p95']:6.1f}  "
                         f"{numbers['max']:6.1f}   {what}")
    lines += ["", "the default ServiceAccount's way to our entry:",
              *step_table(records, ACCOUNT_STEPS, "sa_watch_event")]
    return lines


def admission(creates: int, spy: bool, out: Path) -> list[str]:
    """Where an admission request's time goes: `creates` ServiceAccounts created one at a time
    in a matched namespace, as the client sees each create, as the API server's histogram
    has the webhook call, and inside regcred (kopf's engine, the decision's live reads)."""
    from run import WEBHOOK, histogram_percentiles

    trace = Path(tempfile.mkdtemp()) / "admission.jsonl"
    port = free_port()
    env = {"PYTHONPATH": f"{TRACING}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "REGCRED_ADMISSION_TRACE": str(trace), "REGCRED_ADMISSION": "true",
           "REGCRED_ADMISSION_LISTEN": f"127.0.0.1:{port}",
           "REGCRED_ADMISSION_URL": f"https://127.0.0.1:{port}"}
    stacks = out.with_suffix(".stacks")
    with ControlPlane() as plane:
        bench = Bench(plane)
        bench.install()
        without = bench.service_account_creates(creates)
        operator = start(plane, LOGS / "profile-admission.log", env)
        try:
            bench.credential("traced", {"onboard": "yes"})
            Bench.poll(lambda: bench.ready("traced"), 60, "CR Ready")
            Bench.poll(lambda: WEBHOOK in json.dumps(bench.webhooks()), 60, "webhook registered")
            bench.service_account_creates(20)  # warm: connections, first-call imports
            before_trace = len(trace.read_text().splitlines()) if trace.exists() else 0
            spying = None
            if spy:
                spying = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                           str(operator.process.pid), "--rate", "500", "--format", "raw",
                                           "--output", str(stacks), "--nonblocking"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)  # let py-spy attach; attaching late only loses the first samples
            before = bench.webhook_histogram()
            cpu = cpu_seconds(operator.process.pid)
            with_webhook = bench.service_account_creates(creates)
            used = cpu_seconds(operator.process.pid) - cpu
            after = bench.webhook_histogram()
            if spying is not None:
                spying.send_signal(signal.SIGINT)
                spying.wait(60)
        finally:
            operator.stop()
            bench.delete_webhooks()
    records = [json.loads(line) for line in trace.read_text().splitlines()[before_trace:]]
    windows: dict[str, dict[str, float]] = {}
    for record in records:
        windows.setdefault(record["namespace"], {}).setdefault(record["step"], record["t"])
    engine = [1000 * (w["engine_done"] - w["engine"]) for w in windows.values()
              if "engine" in w and "engine_done" in w]
    reads = sorted((r["t"], r["step"]) for r in records if r["step"] in ("reads", "reads_done"))
    read_times = [1000 * (done - start)
                  for (start, _), (done, _) in zip(reads[::2], reads[1::2], strict=False)]
    webhook = histogram_percentiles(before, after)
    lines = [f"{creates} ServiceAccount creates, one at a time, in a namespace a CR matches; load average "
             f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", "",
             "milliseconds                                p50     p95     max"]
    for what, values in (("client: create without the webhook", [1000 * v for v in without]),
                         ("client: create with the webhook", [1000 * v for v in with_webhook]),
                         ("regcred: the review, whole", engine),
                         ("regcred: the decision's reads", read_times)):
        if values:
            numbers = percentiles(values)
            lines.append(f"  {what:40s} {numbers['p50']:6.1f}  {numbers['p95']:6.1f}  {numbers['max']:6.1f}")
    lines += [f"  API server histogram (webhook call):      {1000 * webhook.get('p50', 0):6.1f}  "
              f"{1000 * webhook.get('p95', 0):6.1f}   (buckets {webhook['buckets_s'][:4]} s)",
              f"regcred CPU per admission request: {1000 * used / creates:.2f} ms"]
    if spy:
        lines += ["", *summarize(stacks)]
    return lines


def summarize(stacks: Path, top: int = 40) -> list[str]:
    """Top functions by own and by inclusive samples, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        samples = int(count)
        names = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in frames.split(";")[1:]]
        total += samples
        if names:
            own[names[-1]] += samples
        for name in set(names):
            inclusive[name] += samples
    lines = [f"py-spy samples: {total} (non-idle)", "", "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("memory", "sync", "onboarding", "admission"))
    parser.add_argument("--namespaces", type=int, default=1000)
    parser.add_argument("--credentials", type=int, default=3, help="memory: CRs to sync")
    parser.add_argument("--no-trace", action="store_true", help="memory: RSS only, no tracemalloc")
    parser.add_argument("--restart", action="append", default=[], metavar="NAME=VALUE,...",
                        help='memory: restart regcred with this environment ("" for none) and '
                             "measure again; repeatable")
    parser.add_argument("--label", default="", help="appended to the report's name")
    parser.add_argument("--admission", action="store_true", help="onboarding: with --admission true")
    parser.add_argument("--spy", action="store_true", help="admission: py-spy stacks of regcred meanwhile")
    args = parser.parse_args()
    stamp = machine()
    PROFILES.mkdir(parents=True, exist_ok=True)
    out = PROFILES / f"{stamp['commit']}-{args.kind}-{args.namespaces}{args.label}.txt"
    sweep()
    try:
        with interruptible():  # Ctrl-C, SIGTERM, SIGHUP: stop what was started, then exit
            if args.kind == "memory":
                lines = memory(args.namespaces, args.credentials, not args.no_trace, args.restart)
            elif args.kind == "onboarding":
                lines = onboarding(args.namespaces, args.admission)
            elif args.kind == "admission":
                lines = admission(args.namespaces, args.spy, out)
            else:
                lines = sync(args.namespaces, out)
    except KeyboardInterrupt:
        print("stopped; everything the profile started is stopped", file=sys.stderr)
        return 130
    finally:
        stop_started()
    text = "\n".join([f"{args.kind} profile, machine {stamp}", *lines]) + "\n"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
