#!/usr/bin/env python3
"""`make bench`: regcred's speed, API cost and memory on a local control plane.

Starts its own control plane and `regcred run` (with an identity of its own, so the API
server's audit log tells regcred's requests from the benchmark's), then measures:
initial sync and rotation fan-out against a plain-client ceiling for each N, onboarding
latency, idle writes over a window that includes a resync, RSS with three CRs (running,
and after a restart on the populated cluster, with its peak), requests per onboarded
namespace and per rotated copy, and regcred's CPU per copy written and per namespace
onboarded. Then the floor, with regcred stopped: a plain ServiceAccount create (no webhook)
and a minimal client on the same Python client (`bench/floor.py`: watch, one write), measured
exactly as regcred is; regcred's latencies are reported as ratios to it. Prints a table and
writes `bench/results/<commit>.json`, `latest.json` and `latest.png`.

    python bench/run.py            # `make bench`: N = 1,000 and 20,000; about 20 minutes, run it alone
    python bench/run.py --sizes 100,1000,5000   # the smaller sizes of earlier results
    python bench/run.py --smoke    # N = 20, seconds; CI runs this so the bench keeps working
    python bench/run.py --onboarding-only --onboard 50   # onboarding, admission off and on
    python bench/run.py --admission-only --sizes 1000 --onboard 300   # the webhook's cost only

Ctrl-C, SIGTERM and SIGHUP stop regcred, the floor client and the control plane before the
bench exits (code 130); what a SIGKILLed run left is stopped by the next run.

Onboarding is measured twice: with the watch path only, and with `--admission true`, where
the ServiceAccount should be born with its entry; the latter also reports the webhook's
latency from the API server's `apiserver_admission_webhook_admission_duration_seconds`.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "tests" / "integration"), str(REPO / "tests")]
from floor import OPEN, READY, events  # noqa: E402
from kubernetes import client, watch  # noqa: E402
from operator_process import OperatorProcess, free_port  # noqa: E402

from regcred.kube.config import connect  # noqa: E402
from regcred_dev.controlplane import ControlPlane, install_crds  # noqa: E402
from regcred_dev.process import interruptible  # noqa: E402

RESULTS = REPO / "bench" / "results"
USER = "regcred-bench"
SOURCE_NAMESPACE = "regcred-system"
WRITE_VERBS = {"create", "update", "patch", "delete"}
WORKERS = 16
WEBHOOK = "serviceaccounts.regcred.dev"  # regcred/admission/webhook.py WEBHOOK_NAME
PIDS = Path("/tmp/regcred-bench-pids")  # <bench pid>-<child pid>: what a SIGKILLed bench left


# --- the processes the bench starts: stopped on exit, on Ctrl-C and SIGTERM; swept after
# a SIGKILL by the next run ------------------------------------------------------------------

STARTED: list[OperatorProcess | subprocess.Popen[str]] = []


def track(pid: int) -> None:
    PIDS.mkdir(exist_ok=True)
    (PIDS / f"{os.getpid()}-{pid}").touch()


def launch(kubeconfig: str, log_path: Path, **options: Any) -> OperatorProcess:
    """`regcred run`, stopped by `stop_started` whatever happens to the bench."""
    operator = OperatorProcess(kubeconfig, log_path, **options)
    STARTED.append(operator)
    operator.start()
    assert operator.process is not None
    track(operator.process.pid)
    return operator


def stop_started() -> None:
    while STARTED:
        started = STARTED.pop()
        if isinstance(started, OperatorProcess):
            started.stop()
        elif started.poll() is None:
            started.terminate()
            started.wait(20)
    for path in PIDS.glob(f"{os.getpid()}-*"):
        path.unlink(missing_ok=True)


def sweep() -> None:
    """Stop what an earlier bench left running when it was SIGKILLed (only our own commands:
    a pid may have been reused)."""
    for path in PIDS.glob("*-*") if PIDS.exists() else ():
        parent, child = (int(part) for part in path.name.split("-", 1))
        if not Path(f"/proc/{parent}").exists():
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
                if b"regcred.cli" in command or b"floor.py" in command:
                    os.kill(child, 9)
            except (OSError, ValueError):
                pass
            path.unlink(missing_ok=True)


class Bench:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        api = connect(str(plane.kubeconfig), threads=WORKERS * 2)  # pool sized before the client exists
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespaces: list[str] = []
        self.created: set[str] = set()

    # --- setup -----------------------------------------------------------------------

    def install(self) -> None:
        install_crds(self.plane.kubeconfig)
        self.core.create_namespace({"metadata": {"name": SOURCE_NAMESPACE}})
        self.core.create_namespace({"metadata": {"name": "bench-onboard", "labels": {"onboard": "yes"}}})
        self.core.create_namespaced_secret(SOURCE_NAMESPACE, {
            "metadata": {"name": "robot"}, "type": "kubernetes.io/basic-auth",
            "data": {"username": _b64("robot"), "password": _b64("bench-0")}})

    def grow_to(self, count: int) -> None:
        """Create labelled namespaces up to `count` and wait for their default ServiceAccounts."""
        wanted = [f"bench-{i:05d}" for i in range(len(self.namespaces), count)]
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(lambda n: self.core.create_namespace(
                {"metadata": {"name": n, "labels": {"bench": "yes"}}}), wanted))
        self.namespaces += wanted
        self.created.update(wanted)
        self.poll(lambda: self.count_accounts() >= len(self.namespaces), 600, "default SAs",
                  interval=1)

    def default_accounts(self) -> list[dict[str, Any]]:
        """Every namespace's `default` ServiceAccount as JSON (model objects for 20,000 of
        them would cost the bench seconds of CPU per poll, beside the process it measures)."""
        response = self.core.list_service_account_for_all_namespaces(
            field_selector="metadata.name=default", _preload_content=False)
        return json.loads(response.data)["items"]

    def count_accounts(self) -> int:
        """How many of the namespaces `grow_to` made have their `default` ServiceAccount."""
        return sum(1 for sa in self.default_accounts() if sa["metadata"]["namespace"] in self.created)

    # --- measurements ----------------------------------------------------------------

    def credential(self, name: str, selector: dict[str, str]) -> None:
        self.custom.create_cluster_custom_object("regcred.dev", "v1alpha1", "registrycredentials", {
            "apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential",
            "metadata": {"name": name},
            "spec": {"registries": [{"server": f"{name}.example.com"}],
                     "sourceSecretRef": {"name": "robot"},
                     "namespaceSelector": {"matchLabels": selector},
                     # the timed creates (`service_account_creates`) get our entry too, so the
                     # webhook's cost is measured on creates it patches
                     "serviceAccounts": ["default", "timed-*"]}})

    def ready(self, name: str) -> bool:
        body = self.custom.get_cluster_custom_object("regcred.dev", "v1alpha1",
                                                     "registrycredentials", name)
        conditions = (body.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def synced(self, name: str) -> int:
        body = self.custom.get_cluster_custom_object("regcred.dev", "v1alpha1",
                                                     "registrycredentials", name)
        return (body.get("status") or {}).get("syncedNamespaces", 0)

    def initial_sync(self, name: str, count: int) -> float:
        started = time.monotonic()
        self.credential(name, {"bench": "yes"})
        self.poll(lambda: self.synced(name) >= count and self.entries(name) >= count, 900,
                  f"{name} synced")
        return time.monotonic() - started

    def remove(self, names: list[str]) -> None:
        """Delete CRs and wait until their copies are gone, so the next size starts clean."""
        for name in names:
            self.custom.delete_cluster_custom_object("regcred.dev", "v1alpha1",
                                                     "registrycredentials", name)
        for name in names:
            self.poll(lambda n=name: not self.core.list_secret_for_all_namespaces(
                label_selector=f"regcred.dev/credential={n}", limit=1).items, 900, f"{name} removed")

    def entries(self, name: str) -> int:
        return sum(1 for sa in self.default_accounts()
                   if any(ref.get("name") == name for ref in sa.get("imagePullSecrets") or []))

    def rotate(self, name: str, count: int, secret: str) -> float:
        """Seconds from the source's change until `count` copies carry it, seen on a watch of
        the copies (listing all of them every few ms would load the API server it measures)."""
        rotated: set[str] = set()
        watching, done = threading.Event(), threading.Event()

        def follow() -> None:
            copies = functools.partial(self.core.list_secret_for_all_namespaces,
                                       label_selector=f"regcred.dev/credential={name}")
            for event in events(copies):
                if event["type"] == OPEN:
                    watching.set()
                    continue
                copy = event["object"]
                if secret in base64.b64decode(copy["data"][".dockerconfigjson"]).decode():
                    rotated.add(copy["metadata"]["namespace"])
                    if len(rotated) >= count:
                        done.set()
                        return

        threading.Thread(target=follow, daemon=True).start()
        if not watching.wait(60):
            raise TimeoutError("the watch of the copies did not start")
        started = time.monotonic()
        self.core.patch_namespaced_secret("robot", SOURCE_NAMESPACE,
                                          {"data": {"password": _b64(secret)}},
                                          _content_type="application/merge-patch+json")
        if not done.wait(900):
            raise TimeoutError(f"rotation: {len(rotated)} of {count} copies rotated")
        return time.monotonic() - started

    def ceiling(self, count: int) -> float:
        """A plain client replacing N Secrets with the same concurrency: the best regcred can do."""
        namespaces = self.namespaces[:count]

        def put(namespace: str, value: str) -> None:
            body = {"metadata": {"name": "ceiling", "namespace": namespace},
                    "type": "kubernetes.io/dockerconfigjson",
                    "data": {".dockerconfigjson": _b64(json.dumps({"auths": {"x": {"auth": value}}}))}}
            try:
                self.core.replace_namespaced_secret("ceiling", namespace, body,
                                                    _preload_content=False)
            except client.exceptions.ApiException:
                self.core.create_namespaced_secret(namespace, body, _preload_content=False)

        with ThreadPoolExecutor(WORKERS) as pool:  # create them first, untimed
            list(pool.map(lambda n: put(n, "a"), namespaces))
        started = time.monotonic()
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(lambda n: put(n, "b"), namespaces))
        return time.monotonic() - started

    def onboarding(self, count: int, credential: str = "onboard", prefix: str = "onboard-",
                   floor: bool = False) -> dict[str, list[float]]:
        """Create namespaces one by one; watch copies and ServiceAccounts for our results
        (regcred's, or with `floor` the minimal client's: bench/floor.py)."""
        seen: dict[str, dict[str, float]] = {}
        stop = threading.Event()
        connected = {"account": threading.Event(), "copy": threading.Event()}

        def follow(list_call: Any, key: str, **kwargs: Any) -> None:
            stream = watch.Watch()
            for event in stream.stream(list_call, timeout_seconds=600, **kwargs):
                obj, now = event["object"], time.monotonic()
                connected[key].set()
                namespace = obj.metadata.namespace
                if not namespace.startswith(prefix):
                    continue
                record = seen.setdefault(namespace, {})
                if key == "account":
                    record.setdefault("account", now)
                    if any(ref.name == credential for ref in obj.image_pull_secrets or []):
                        record.setdefault("entry", now)
                else:
                    record.setdefault("copy", now)
                if stop.is_set():
                    stream.stop()

        threads = [
            threading.Thread(target=follow, args=(self.core.list_service_account_for_all_namespaces,
                                                  "account"), daemon=True),
            threading.Thread(target=follow, args=(self.core.list_secret_for_all_namespaces, "copy"),
                             kwargs={"label_selector": f"regcred.dev/credential={credential}"}, daemon=True),
        ]
        for thread in threads:
            thread.start()
        if floor:  # its copy there shows the floor client and both watches are live
            self.core.create_namespace({"metadata": {"name": f"{prefix}ready"}})
            self.poll(lambda: all(event.is_set() for event in connected.values()), 60, "watches")
        else:  # bench-onboard matches too: its copy shows the CR is synced and both watches are live
            self.credential(credential, {"onboard": "yes"})
            self.poll(lambda: all(event.is_set() for event in connected.values()), 60, "watches")
            self.poll(lambda: self.ready(credential), 60, f"{credential} Ready")  # the webhook uses it then
        created: dict[str, float] = {}
        for i in range(count):
            name = f"{prefix}{i:04d}"
            before = time.monotonic()
            self.core.create_namespace({"metadata": {"name": name, "labels": {"onboard": "yes"}}})
            created[name] = before
            self.poll(lambda n=name: "entry" in seen.get(n, {}) and "copy" in seen[n], 60, name,
                      interval=0.005)
        stop.set()
        return {
            "namespace_to_copy": [seen[n]["copy"] - t for n, t in created.items()],
            "namespace_to_entry": [seen[n]["entry"] - t for n, t in created.items()],
            "account_to_entry": [seen[n]["entry"] - seen[n]["account"] for n in created],
        }

    def service_account_creates(self, count: int, namespace: str = "bench-onboard") -> list[float]:
        """Seconds each of `count` ServiceAccount creates takes, as a client sees it."""
        durations = []
        for index in range(count):
            # a name of its own, not generateName: the API server names a generateName object
            # after admission, so the webhook would see no name to match `serviceAccounts` with
            name = f"timed-{index:04d}-{uuid.uuid4().hex[:6]}"
            started = time.monotonic()
            self.core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
            durations.append(time.monotonic() - started)
            self.core.delete_namespaced_service_account(name, namespace)
        return durations

    def webhook_histogram(self) -> dict[float, float]:
        """The API server's cumulative `apiserver_admission_webhook_admission_duration_seconds`
        buckets for regcred's webhook (upper bound -> count)."""
        buckets: dict[float, float] = {}
        for line in self.plane.metrics().splitlines():
            if (line.startswith("apiserver_admission_webhook_admission_duration_seconds_bucket")
                    and f'name="{WEBHOOK}"' in line):
                bound = line.split('le="', 1)[1].split('"', 1)[0]
                key = float("inf") if bound == "+Inf" else float(bound)
                buckets[key] = buckets.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return buckets

    # --- counting ----------------------------------------------------------------------

    def requests(self, since: float, writes_only: bool = False) -> dict[str, int]:
        counts: dict[str, int] = {}
        for event in self.plane.audit_events():
            if event.get("user", {}).get("username") != USER:
                continue
            stamp = event.get("stageTimestamp") or event.get("requestReceivedTimestamp", "")
            if _epoch(stamp) < since:
                continue
            verb = event["verb"]
            if writes_only and verb not in WRITE_VERBS:
                continue
            resource = (event.get("objectRef") or {}).get("resource", "")
            key = f"{verb} {resource}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def webhooks(self) -> list[dict[str, Any]]:
        configurations = client.AdmissionregistrationV1Api(self.core.api_client)
        return [w.to_dict() for c in configurations.list_mutating_webhook_configuration().items
                for w in c.webhooks or []]

    def delete_webhooks(self) -> None:
        configurations = client.AdmissionregistrationV1Api(self.core.api_client)
        try:
            configurations.delete_mutating_webhook_configuration("regcred")
        except client.exceptions.ApiException as error:
            if error.status != 404:
                raise

    @staticmethod
    def poll(check: Any, timeout: float, what: str, interval: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(interval)
        raise TimeoutError(f"timed out waiting for {what}")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or at its highest so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def restart(operator: OperatorProcess, credentials: int, listed: int,
            extra_env: dict[str, str] | None = None) -> tuple[OperatorProcess, dict[str, float]]:
    """Replace regcred by a fresh process on the populated cluster; measure its start-up.

    It is settled once every CR has resynced and it took in `listed` watch events (one for
    each listed namespace, ServiceAccount and copy)."""
    operator.stop()
    started = time.monotonic()
    fresh = launch(operator.kubeconfig, operator.log_path, resync_seconds=operator.resync_seconds,
                   extra_env=operator.extra_env if extra_env is None else extra_env)
    Bench.poll(lambda: fresh.metric_sum("regcred_reconciles_total", kind="credential") >= credentials,
               900, "every CR resynced after the restart")
    Bench.poll(lambda: fresh.metric_sum("regcred_watch_events_total") >= listed,
               900, "every listed object handled after the restart")
    pid = fresh.process.pid
    return fresh, {"seconds": round(time.monotonic() - started, 1), "rss_mb": round(rss_mb(pid), 1),
                   "peak_rss_mb": round(rss_mb(pid, "VmHWM"), 1), "cpu_seconds": round(cpu_seconds(pid), 1)}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else 0.0


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "p95": ordered[int(0.95 * (len(ordered) - 1))],
            "max": ordered[-1]}


def histogram_percentiles(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """p50/p95 of the observations between two snapshots of a cumulative histogram, linearly
    interpolated inside the bucket (as PromQL's histogram_quantile does); the buckets are
    coarse (5 ms, 25 ms, 100 ms...), so the result says which bucket more than how deep in it."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    result: dict[str, Any] = {"samples": int(total), "buckets_s": bounds[:-1]}
    for name, q in (("p50", 0.5), ("p95", 0.95)):
        rank, lower, below = q * total, 0.0, 0.0
        for bound, count in zip(bounds, counts, strict=True):
            if count >= rank and total:
                upper = bound if bound != float("inf") else lower
                result[name] = lower + (upper - lower) * ((rank - below) / max(count - below, 1e-9))
                break
            lower, below = bound, count
    return result


def admission_rows(bench: Bench, plane: ControlPlane, log_dir: Path, onboard: int) -> dict[str, Any]:
    """Onboarding with `--admission true`, and what the webhook adds to a ServiceAccount create
    (the API server's own histogram, and as a client sees it, with the webhook and without)."""
    without = bench.service_account_creates(onboard)
    port = free_port()
    identity = plane.user_kubeconfig(USER, ("system:masters",))
    operator = launch(str(identity), log_dir / "regcred-admission.log", resync_seconds=600,
                      extra_env={"REGCRED_ADMISSION": "true",
                                 "REGCRED_ADMISSION_LISTEN": f"127.0.0.1:{port}",
                                 "REGCRED_ADMISSION_URL": f"https://127.0.0.1:{port}"})
    try:
        Bench.poll(lambda: WEBHOOK in json.dumps(bench.webhooks()), 60, "webhook registered")
        # A fresh regcred resyncs every CR over every namespace first: measured during that
        # fan-out, the webhook would be measured against it (at 20,000 namespaces, minutes).
        credentials = len(bench.custom.list_cluster_custom_object(
            "regcred.dev", "v1alpha1", "registrycredentials")["items"])
        Bench.poll(lambda: operator.metric_sum("regcred_reconciles_total", kind="credential")
                   >= credentials, 900, "every CR resynced")
        before = bench.webhook_histogram()
        onboarding = bench.onboarding(onboard, credential="onboard-admission", prefix="admit-")
        between = bench.webhook_histogram()
        with_webhook = bench.service_account_creates(onboard)
        after = bench.webhook_histogram()
    finally:
        operator.stop()
        bench.delete_webhooks()
    rows: dict[str, Any] = {key: percentiles(values) for key, values in onboarding.items()}
    rows["samples"] = onboard
    rows["webhook_duration_s"] = histogram_percentiles(before, after)
    # The onboarding's calls (each new namespace's `default` ServiceAccount, created while
    # regcred syncs that namespace) apart from the timed creates in namespaces that exist.
    rows["webhook_duration_by_phase_s"] = {"onboarding": histogram_percentiles(before, between),
                                           "creates": histogram_percentiles(between, after)}
    rows["service_account_create_s"] = {"without_webhook": percentiles(without),
                                        "with_webhook": percentiles(with_webhook)}
    rows["raw"] = onboarding
    return rows


def floor_rows(bench: Bench, plane: ControlPlane, onboard: int) -> dict[str, Any]:
    """The floor, with regcred stopped: a plain ServiceAccount create (no webhook), and the
    minimal client's onboarding (bench/floor.py: watch, then one write, on the same client)."""
    rows: dict[str, Any] = {"service_account_create_s": percentiles(bench.service_account_creates(onboard))}
    process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("floor.py")),
                                str(plane.kubeconfig), "floor-", "floor"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    STARTED.append(process)
    track(process.pid)
    assert process.stdout is not None
    if process.stdout.readline().strip() != READY:
        raise RuntimeError(f"the floor client did not start (exit code {process.wait()})")
    onboarding = bench.onboarding(onboard, credential="floor", prefix="floor-", floor=True)
    process.terminate()
    process.wait(20)
    rows["onboarding"] = {key: percentiles(values) for key, values in onboarding.items()}
    rows["onboarding"]["samples"] = onboard
    return rows


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """regcred's latencies divided by the floor's (p50 and p95): 1.0 is the floor itself."""
    floor = results["floor"]
    pairs = {f"{key} (watch path)": (results["onboarding"][key], floor["onboarding"][key])
             for key in ("namespace_to_copy", "account_to_entry", "namespace_to_entry")}
    admission = results["onboarding_admission"]
    pairs["namespace_to_entry (webhook on)"] = (admission["namespace_to_entry"],
                                                floor["onboarding"]["namespace_to_entry"])
    pairs["service_account_create (webhook on)"] = (admission["service_account_create_s"]["with_webhook"],
                                                    floor["service_account_create_s"])
    found: dict[str, Any] = {key: {q: round(ours[q] / theirs[q], 2) for q in ("p50", "p95")}
                             for key, (ours, theirs) in pairs.items()}
    with_webhook, without = (admission["service_account_create_s"][key]
                             for key in ("with_webhook", "without_webhook"))
    found["webhook_added_ms"] = {q: round(1000 * (with_webhook[q] - without[q]), 1) for q in ("p50", "p95")}
    return found


def run(sizes: list[int], onboard: int, idle_seconds: float, resync: float, memory_sizes: list[int],
        log_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": {}, "memory_mb": {}, "restart": {}}
    with ControlPlane() as plane:
        bench = Bench(plane)
        bench.install()
        identity = plane.user_kubeconfig(USER, ("system:masters",))
        operator = launch(str(identity), log_dir / "regcred.log", resync_seconds=resync)
        try:
            for size in sizes:
                bench.grow_to(size)
                name = f"bench-{size}"
                pid = operator.process.pid
                cpu = cpu_seconds(pid)
                entry: dict[str, Any] = {"initial_sync_s": bench.initial_sync(name, size)}
                entry["cpu_ms_per_copy_sync"] = round(1000 * (cpu_seconds(pid) - cpu) / size, 2)
                since, cpu = time.time(), cpu_seconds(pid)
                entry["rotation_s"] = bench.rotate(name, size, f"rotated-{size}")
                entry["cpu_ms_per_copy_rotation"] = round(1000 * (cpu_seconds(pid) - cpu) / size, 2)
                rotation_requests = bench.requests(since)
                entry["rotation_requests_per_copy"] = sum(rotation_requests.values()) / size
                entry["ceiling_s"] = bench.ceiling(size)
                entry["ratio_to_ceiling"] = entry["rotation_s"] / entry["ceiling_s"]
                names = [name]
                if size in memory_sizes:
                    names += [f"{name}-b", f"{name}-c"]
                    for extra in names[1:]:
                        bench.initial_sync(extra, size)
                    results["memory_mb"][str(size)] = round(rss_mb(operator.process.pid), 1)
                    operator, results["restart"][str(size)] = restart(
                        operator, len(names), size * (2 + len(names)))
                results["sizes"][str(size)] = entry
                print(f"N={size}: {json.dumps(entry)}", flush=True)
                if size != sizes[-1]:  # the last size stays synced for the idle window
                    bench.remove(names)

            since = time.time()
            started = time.monotonic()
            time.sleep(idle_seconds)  # the measurement window itself, not a synchronisation
            results["idle"] = {"seconds": round(time.monotonic() - started, 1),
                               "resync_seconds": resync,
                               "namespaces": len(bench.namespaces),
                               "writes": bench.requests(since, writes_only=True)}

            since, cpu = time.time(), cpu_seconds(operator.process.pid)
            onboarding = bench.onboarding(onboard)
            results["onboarding"] = {key: percentiles(values) for key, values in onboarding.items()}
            results["onboarding"]["samples"] = onboard
            results["onboarding_requests_per_namespace"] = sum(bench.requests(since).values()) / onboard
            results["onboarding_cpu_ms_per_namespace"] = round(
                1000 * (cpu_seconds(operator.process.pid) - cpu) / onboard, 2)
            results["onboarding_raw"] = onboarding
        finally:
            operator.stop()
        results["floor"] = floor_rows(bench, plane, onboard)
        results["onboarding_admission"] = admission_rows(bench, plane, log_dir, onboard)
    results["ratios_to_floor"] = ratios(results)
    return results


def run_onboarding(onboard: int, log_dir: Path) -> dict[str, Any]:
    """Only the onboarding rows, admission off then on (`--onboarding-only`): a few minutes
    at most, for a shared machine."""
    results: dict[str, Any] = {}
    with ControlPlane() as plane:
        bench = Bench(plane)
        bench.install()
        identity = plane.user_kubeconfig(USER, ("system:masters",))
        operator = launch(str(identity), log_dir / "regcred.log", resync_seconds=600)
        try:
            onboarding = bench.onboarding(onboard)
        finally:
            operator.stop()
        results["onboarding"] = {key: percentiles(values) for key, values in onboarding.items()}
        results["onboarding"]["samples"] = onboard
        results["onboarding_raw"] = onboarding
        results["floor"] = floor_rows(bench, plane, onboard)
        results["onboarding_admission"] = admission_rows(bench, plane, log_dir, onboard)
    results["ratios_to_floor"] = ratios(results)
    return results


def run_admission(size: int, onboard: int, log_dir: Path) -> dict[str, Any]:
    """Only what the webhook adds to a ServiceAccount create (`--admission-only`), among `size`
    labelled namespaces that a CR matches: a minute or two, for comparing two versions of the
    webhook on a shared machine."""
    results: dict[str, Any] = {"population": size}
    with ControlPlane() as plane:
        bench = Bench(plane)
        bench.install()
        bench.grow_to(size)
        bench.credential("bench-admission", {"bench": "yes"})
        results["onboarding_admission"] = admission_rows(bench, plane, log_dir, onboard)
    admission = results["onboarding_admission"]
    with_webhook, without = (admission["service_account_create_s"][key]
                             for key in ("with_webhook", "without_webhook"))
    results["webhook_added_ms"] = {q: round(1000 * (with_webhook[q] - without[q]), 1)
                                   for q in ("p50", "p95")}
    return results


def print_webhook_histogram(admission: dict[str, Any]) -> None:
    """The API server's histogram of webhook calls: all of them, then by phase."""
    phases = {"all": admission["webhook_duration_s"], **admission.get("webhook_duration_by_phase_s", {})}
    for phase, webhook in phases.items():
        print(f"admission latency (API server histogram, {phase}, {webhook['samples']} calls): "
              f"p50 {webhook.get('p50', 0) * 1000:.1f} ms, p95 {webhook.get('p95', 0) * 1000:.1f} ms "
              f"(buckets {webhook['buckets_s'][:4]} s ...)")


def report_admission(results: dict[str, Any]) -> None:
    admission = results["onboarding_admission"]
    for key in ("namespace_to_entry", "account_to_entry"):
        values = admission[key]
        print(f"onboarding with admission {key}: p50 {values['p50'] * 1000:.1f} ms, "
              f"p95 {values['p95'] * 1000:.1f} ms")
    print_webhook_histogram(admission)
    for key, values in admission["service_account_create_s"].items():
        print(f"ServiceAccount create, {key}: p50 {values['p50'] * 1000:.1f} ms, "
              f"p95 {values['p95'] * 1000:.1f} ms")
    added = results["webhook_added_ms"]
    print(f"the webhook adds p50 {added['p50']} ms, p95 {added['p95']} ms "
          f"(N = {results['population']}, load {results['machine']['loadavg_at_start']})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{results['machine']['commit']}-admission-{results['population']}.json"
    path.write_text(json.dumps(results, indent=2))


def machine() -> dict[str, Any]:
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    return {"commit": commit, "nproc": os.cpu_count(), "memory_gb": round(int(memory) / 2**20, 1),
            "loadavg_at_start": os.getloadavg()[0]}


def report(results: dict[str, Any], smoke: bool) -> None:
    print("\n| N | initial sync (s) | rotation (s) | ceiling (s) | ratio | requests/copy rotated "
          "| CPU ms/copy sync | CPU ms/copy rotation |")
    print("|---|---|---|---|---|---|---|---|")
    for size, entry in results.get("sizes", {}).items():
        print(f"| {size} | {entry['initial_sync_s']:.2f} | {entry['rotation_s']:.2f} | "
              f"{entry['ceiling_s']:.2f} | {entry['ratio_to_ceiling']:.2f} | "
              f"{entry['rotation_requests_per_copy']:.2f} | {entry['cpu_ms_per_copy_sync']} | "
              f"{entry['cpu_ms_per_copy_rotation']} |")
    onboarding = results["onboarding"]
    for key in ("namespace_to_copy", "namespace_to_entry", "account_to_entry"):
        values = onboarding[key]
        print(f"onboarding {key}: p50 {values['p50'] * 1000:.0f} ms, p95 {values['p95'] * 1000:.0f} ms,"
              f" max {values['max'] * 1000:.0f} ms")
    admission = results["onboarding_admission"]
    for key in ("namespace_to_copy", "namespace_to_entry", "account_to_entry"):
        values = admission[key]
        print(f"onboarding with admission {key}: p50 {values['p50'] * 1000:.0f} ms, "
              f"p95 {values['p95'] * 1000:.0f} ms, max {values['max'] * 1000:.0f} ms")
    print_webhook_histogram(admission)
    creates = admission["service_account_create_s"]
    print("ServiceAccount create as a client sees it: "
          + ", ".join(f"{k} p50 {v['p50'] * 1000:.1f} ms p95 {v['p95'] * 1000:.1f} ms"
                      for k, v in creates.items()))
    floor = results["floor"]
    for key in ("namespace_to_copy", "namespace_to_entry", "account_to_entry"):
        values = floor["onboarding"][key]
        print(f"floor (minimal client) {key}: p50 {values['p50'] * 1000:.1f} ms, "
              f"p95 {values['p95'] * 1000:.1f} ms")
    values = floor["service_account_create_s"]
    print(f"floor ServiceAccount create (no webhook): p50 {values['p50'] * 1000:.1f} ms, "
          f"p95 {values['p95'] * 1000:.1f} ms")
    print("ratios to the floor (p50 / p95):")
    for key, value in results["ratios_to_floor"].items():
        unit = " ms" if key.endswith("_ms") else "x"
        print(f"  {key}: {value['p50']}{unit} / {value['p95']}{unit}")
    if "sizes" not in results:  # --onboarding-only
        if not smoke:
            RESULTS.mkdir(parents=True, exist_ok=True)
            path = RESULTS / f"{results['machine']['commit']}-onboarding.json"
            path.write_text(json.dumps(results, indent=2))
        return
    print(f"onboarding requests per namespace: {results['onboarding_requests_per_namespace']:.1f}, "
          f"regcred CPU per namespace: {results['onboarding_cpu_ms_per_namespace']} ms")
    print(f"idle writes in {results['idle']['seconds']} s: {results['idle']['writes'] or 0}")
    print(f"memory (3 CRs): {results['memory_mb']}")
    print(f"restart with 3 CRs (RSS settled, peak): {results['restart']}")
    if smoke:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    (RESULTS / f"{results['machine']['commit']}.json").write_text(text)
    (RESULTS / "latest.json").write_text(text)
    plot(results, RESULTS / "latest.png")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(n) for n in results["sizes"]]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("rotation_s", "regcred rotation"), ("ceiling_s", "plain-client ceiling"),
                       ("initial_sync_s", "regcred initial sync")):
        left.plot(sizes, [results["sizes"][str(n)][key] for n in sizes], marker="o", label=label)
    left.set(xscale="log", xlabel="namespaces", ylabel="seconds", title="Fan-out")
    left.legend()
    raw = results["onboarding_raw"]
    right.hist([1000 * v for v in raw["namespace_to_entry"]], bins=30, alpha=0.7,
               label="namespace created -> SA entry")
    right.hist([1000 * v for v in raw["account_to_entry"]], bins=30, alpha=0.7,
               label="SA created -> SA entry")
    right.set(xlabel="milliseconds", ylabel="namespaces", title="Onboarding latency")
    right.legend()
    figure.suptitle(f"regcred {results['machine']['commit']} on {results['machine']['nproc']} cores")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="N = 20, a few seconds (CI)")
    parser.add_argument("--sizes", default="1000,20000")
    parser.add_argument("--onboard", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=300)
    parser.add_argument("--onboarding-only", action="store_true",
                        help="only the onboarding rows, admission off and on (--onboard samples each)")
    parser.add_argument("--admission-only", action="store_true",
                        help="only the webhook's cost, among the first of --sizes namespaces")
    args = parser.parse_args()
    log_dir = Path(os.environ.get("REGCRED_BENCH_LOGS", "/tmp"))
    sweep()
    try:
        with interruptible():  # Ctrl-C, SIGTERM, SIGHUP: the finally below and the control plane's
            if args.admission_only:
                results = run_admission(int(args.sizes.split(",")[0]), args.onboard, log_dir)
            elif args.onboarding_only:
                results = run_onboarding(args.onboard, log_dir)
            elif args.smoke:
                results = run([20], 5, 3, 600, [20], log_dir)
            else:
                sizes = [int(n) for n in args.sizes.split(",")]
                results = run(sizes, args.onboard, args.idle_seconds, 120,
                              [n for n in sizes if n >= 1000], log_dir)
    except KeyboardInterrupt:
        print("stopped; everything the bench started is stopped", file=sys.stderr)
        return 130
    finally:
        stop_started()
    results["machine"] = machine()
    if args.admission_only:
        report_admission(results)
        return 0
    report(results, args.smoke)
    print(json.dumps({"smoke": args.smoke, "sections": sorted(results)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
