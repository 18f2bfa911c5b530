#!/usr/bin/env python3
"""Crash regcred in the middle of a rotation fan-out, again and again, and check nothing is lost.

    python scripts/stress.py --rounds 20 --namespaces 500

One control plane, one `regcred run` process. N namespaces are matched by one
RegistryCredential (the "rotated" one) and by a second one that never changes (the
"bystander"). Every namespace's `default` ServiceAccount carries a foreign entry before
ours and one after, and every namespace holds an unowned Secret with another name.

Each round rotates the rotated CR's source Secret, SIGKILLs regcred once a random number
k (1 <= k <= 3/4 N) of copies has the new content, restarts it, and waits until:
- every copy holds the new content;
- copies rotated before the kill were not written again (resourceVersion unchanged);
- every ServiceAccount list is exactly what it was (no duplicate, no foreign entry lost,
  nothing reordered) and no ServiceAccount was written at all (a rotation leaves them alone);
- the bystander's copies and the unowned Secrets were not written (resourceVersion unchanged);
- the CR reports Ready with N/N namespaces, and regcred is still running.

The pytest version (tests/integration/test_robustness.py) runs the same `FanOut` for 3 rounds
on 60 namespaces. Prints one result line at the end; exit code 0 only if every round passed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO / "tests" / "integration", REPO / "tests"):  # FanOut's cluster helpers
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from kubernetes.client.exceptions import ApiException  # noqa: E402
from operator_process import OperatorProcess  # noqa: E402
from scenario import OPERATOR_NAMESPACE, PASSWORD_MARK, Cluster, password  # noqa: E402

from regcred.kube.config import connect  # noqa: E402
from regcred_dev.controlplane import install_crds  # noqa: E402

SERVER = "stress.registry.example.com"
JSON_PATCH = "application/json-patch+json"
FOREIGN_BEFORE, FOREIGN_AFTER = "foreign-before", "foreign-after"
UNOWNED = "unowned-bystander"


class StressFailure(AssertionError):
    """A round ended with something lost, clobbered or not converged."""


def wait_until(check: Callable[[], list[str]], timeout: float, what: str, interval: float = 0.25) -> None:
    """Poll `check` (returns a list of problems) until it returns none; StressFailure on the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        problems = check()
        if not problems:
            return
        if time.monotonic() >= deadline:
            shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8 else "")
            raise StressFailure(f"timed out after {timeout:g}s waiting for {what}: {shown}")
        time.sleep(interval)


def _raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a list endpoint and parse the JSON ourselves (much faster than the client's models)."""
    return json.loads(call(*args, _preload_content=False, **kwargs).data)


def registry_password(secret: dict[str, Any]) -> str | None:
    """The password of our registry in a copy (read only to compare, never printed)."""
    try:
        content = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
        return content["auths"][SERVER]["password"]
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class RoundResult:
    index: int
    target: int  # kill once this many copies had the new content
    rotated_at_kill: int  # copies with the new content right after the kill
    converge_seconds: float
    total: int

    @property
    def mid_fan_out(self) -> bool:
        return 0 < self.rotated_at_kill < self.total

    def line(self) -> str:
        return (f"round {self.index}: killed at {self.rotated_at_kill}/{self.total} copies rotated "
                f"(target {self.target}), converged {self.converge_seconds:.1f}s after restart")


@dataclass
class Baseline:
    accounts: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # ns -> (rv, entries)
    unowned: dict[str, str] = field(default_factory=dict)  # ns -> rv
    bystander: dict[str, str] = field(default_factory=dict)  # ns -> rv


class FanOut:
    """The crash-mid-fan-out scenario on `count` namespaces; see the module docstring."""

    def __init__(self, cluster: Cluster, count: int, *, log: Callable[[str], None] = print,
                 workers: int = 8, timeout_per_100: float = 30.0) -> None:
        self.cluster = cluster
        self.count = count
        self.log = log
        self.workers = workers
        self.timeout = max(60.0, timeout_per_100 * count / 100)
        self.tag = tag = uuid.uuid4().hex[:6]
        self.label = {"regcred-stress": tag}
        self.rotated = f"stress-rotated-{tag}"
        self.bystander = f"stress-bystander-{tag}"
        self.namespaces = [f"stress-{tag}-{i:03d}" for i in range(count)]
        self.password = ""
        self.baseline = Baseline()

    # --- setup -----------------------------------------------------------------------------

    def _each(self, function: Callable[[str], Any], items: Iterable[str] | None = None) -> None:
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(function, self.namespaces if items is None else items))

    def setup(self) -> None:
        started = time.monotonic()
        core = self.cluster.core
        self._each(lambda ns: self.cluster.create_namespace(ns, self.label))
        wait_until(self._missing_default_accounts, self.timeout, "every default ServiceAccount")

        def prepare(namespace: str) -> None:
            core.patch_namespaced_service_account("default", namespace, [
                {"op": "add", "path": "/imagePullSecrets", "value": [{"name": FOREIGN_BEFORE}]}])
            core.create_namespaced_secret(namespace, {
                "metadata": {"name": UNOWNED, "labels": {"regcred-stress-unowned": self.tag}},
                "type": "Opaque", "stringData": {"note": "not regcred's"}})

        self._each(prepare)
        selector = {"matchLabels": self.label}
        for name in (self.bystander, self.rotated):
            secret = self.cluster.put_source(name)
            if name == self.rotated:
                self.password = secret
            self.cluster.create_credential(name, {
                "registries": [{"server": SERVER}], "sourceSecretRef": {"name": name},
                "namespaceSelector": selector})
            # One after the other, so every list reads [before, bystander, rotated, after].
            wait_until(lambda n=name: self._not_entered(n), self.timeout, f"{name} in every ServiceAccount")
        self._each(self._append_after)
        wait_until(self._not_ready, self.timeout, "both credentials Ready")
        self.baseline = self._observe_baseline()
        self.log(f"setup: {self.count} namespaces ready in {time.monotonic() - started:.1f}s")

    def _missing_default_accounts(self) -> list[str]:
        have = {a["metadata"]["namespace"] for a in self._accounts()}
        return [f"no default ServiceAccount in {ns}" for ns in self.namespaces if ns not in have]

    def _not_entered(self, name: str) -> list[str]:
        problems = []
        for account in self._accounts():
            entries = [ref.get("name") for ref in account.get("imagePullSecrets") or []]
            if entries.count(name) != 1:
                problems.append(f"{account['metadata']['namespace']}: {entries}")
        have = len(self._accounts())
        return problems + ([f"only {have}/{self.count} accounts"] if have != self.count else [])

    def _append_after(self, namespace: str) -> None:
        """A well-behaved foreign writer: one entry appended, guarded by the resourceVersion."""
        core = self.cluster.core
        for _ in range(20):
            account = core.read_namespaced_service_account("default", namespace)
            try:
                core.patch_namespaced_service_account("default", namespace, [
                    {"op": "test", "path": "/metadata/resourceVersion",
                     "value": account.metadata.resource_version},
                    {"op": "add", "path": "/imagePullSecrets/-", "value": {"name": FOREIGN_AFTER}}])
                return
            except ApiException as error:
                if error.status not in (409, 422):
                    raise
        raise StressFailure(f"could not append {FOREIGN_AFTER} in {namespace}")

    def _not_ready(self) -> list[str]:
        problems = []
        for name in (self.rotated, self.bystander):
            body = self.cluster.credential(name) or {}
            status = body.get("status") or {}
            ready = self.cluster.ready(name)
            if ready.get("status") != "True" or status.get("syncedNamespaces") != self.count:
                problems.append(f"{name}: {ready.get('reason')} {ready.get('message')}")
        return problems

    # --- observation -------------------------------------------------------------------------

    def _accounts(self) -> list[dict[str, Any]]:
        mine = set(self.namespaces)
        items = _raw(self.cluster.core.list_service_account_for_all_namespaces,
                     field_selector="metadata.name=default")["items"]
        return [a for a in items if a["metadata"]["namespace"] in mine]

    def _copies(self, credential: str) -> dict[str, dict[str, Any]]:
        items = _raw(self.cluster.core.list_secret_for_all_namespaces,
                     label_selector=f"regcred.dev/credential={credential}")["items"]
        return {s["metadata"]["namespace"]: s for s in items}

    def _unowned(self) -> dict[str, str]:
        items = _raw(self.cluster.core.list_secret_for_all_namespaces,
                     label_selector=f"regcred-stress-unowned={self.tag}")["items"]
        return {s["metadata"]["namespace"]: s["metadata"]["resourceVersion"] for s in items}

    def _observe_baseline(self) -> Baseline:
        accounts = {
            a["metadata"]["namespace"]: (a["metadata"]["resourceVersion"],
                                         [ref.get("name") for ref in a.get("imagePullSecrets") or []])
            for a in self._accounts()
        }
        expected = [FOREIGN_BEFORE, self.bystander, self.rotated, FOREIGN_AFTER]
        wrong = {ns: entries for ns, (_, entries) in accounts.items() if entries != expected}
        if wrong or len(accounts) != self.count:
            raise StressFailure(f"unexpected ServiceAccount lists after setup: {list(wrong.items())[:5]}")
        bystander = {ns: s["metadata"]["resourceVersion"] for ns, s in self._copies(self.bystander).items()}
        return Baseline(accounts, self._unowned(), bystander)

    def rotated_namespaces(self) -> dict[str, str]:
        """Namespaces whose rotated copy has the current password -> that copy's resourceVersion."""
        return {ns: s["metadata"]["resourceVersion"] for ns, s in self._copies(self.rotated).items()
                if registry_password(s) == self.password}

    def problems(self, kept: dict[str, str]) -> list[str]:
        """Everything that is not (yet) as it must end; `kept` are copies that must not be rewritten."""
        problems = []
        copies = self._copies(self.rotated)
        for namespace in self.namespaces:
            copy = copies.get(namespace)
            if copy is None:
                problems.append(f"{namespace}: copy missing")
            elif registry_password(copy) != self.password:
                problems.append(f"{namespace}: copy has old content")
            elif namespace in kept and copy["metadata"]["resourceVersion"] != kept[namespace]:
                problems.append(f"{namespace}: copy rotated before the kill was written again")
        for account in self._accounts():
            namespace = account["metadata"]["namespace"]
            entries = [ref.get("name") for ref in account.get("imagePullSecrets") or []]
            version, expected = self.baseline.accounts[namespace]
            if entries != expected:
                problems.append(f"{namespace}: ServiceAccount entries {entries}, expected {expected}")
            elif account["metadata"]["resourceVersion"] != version:
                problems.append(f"{namespace}: ServiceAccount was written during a rotation")
        bystander = {ns: s["metadata"]["resourceVersion"] for ns, s in self._copies(self.bystander).items()}
        if bystander != self.baseline.bystander:
            changed = sorted(ns for ns in self.namespaces
                             if bystander.get(ns) != self.baseline.bystander.get(ns))
            problems.append(f"bystander copies written or lost in {changed[:5]} ({len(changed)})")
        unowned = self._unowned()
        if unowned != self.baseline.unowned:
            changed = sorted(ns for ns in self.namespaces if unowned.get(ns) != self.baseline.unowned.get(ns))
            problems.append(f"unowned Secrets touched in {changed[:5]} ({len(changed)})")
        return problems

    # --- one round ---------------------------------------------------------------------------

    def round(self, operator: OperatorProcess, rng: random.Random, index: int) -> RoundResult:
        target = rng.randint(1, max(1, self.count * 3 // 4))
        self.password = password(f"round-{index}")
        self.cluster.rotate_source(self.rotated, self.password)
        seen: dict[str, str] = {}

        def reached() -> list[str]:
            nonlocal seen
            seen = self.rotated_namespaces()
            return [] if len(seen) >= target else [f"{len(seen)}/{target} copies rotated"]

        wait_until(reached, self.timeout, "the fan-out to reach the kill point", interval=0.02)
        operator.kill()
        if operator.healthy():
            raise StressFailure("liveness endpoint still answers after SIGKILL")
        kept = self.rotated_namespaces()  # written before the kill: must not be written again
        operator.start(timeout=self.timeout)
        restarted = time.monotonic()
        wait_until(lambda: self.problems(kept), self.timeout, f"round {index} to converge")
        converged = time.monotonic() - restarted
        wait_until(self._not_ready, self.timeout, "Ready with every namespace synced")
        if operator.process is None or operator.process.poll() is not None:
            raise StressFailure("regcred exited after converging")
        return RoundResult(index, target, len(kept), converged, self.count)

    def teardown(self) -> None:
        """Delete both CRs (waiting, best effort, for regcred to release them) and the namespaces."""
        names = (self.rotated, self.bystander)
        for name in names:
            self.cluster.delete_credential(name)
        with contextlib.suppress(StressFailure):
            wait_until(lambda: [f"{n} still there" for n in names if self.cluster.credential(n)],
                       self.timeout, "the credentials to be deleted")
        self._each(self.cluster.delete_namespace)


# --- the script --------------------------------------------------------------------------------


def install_crd(kubeconfig: str, cluster: Cluster) -> None:
    install_crds(kubeconfig)
    if OPERATOR_NAMESPACE not in {ns.metadata.name for ns in cluster.core.list_namespace().items}:
        cluster.create_namespace(OPERATOR_NAMESPACE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--namespaces", type=int, default=500)
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)

    from regcred_dev.controlplane import ControlPlane

    started = time.monotonic()
    results: list[RoundResult] = []
    log_dir = Path(tempfile.mkdtemp(prefix="regcred-stress-"))
    with ControlPlane() as plane:
        kubeconfig = str(plane.kubeconfig)
        api = connect(kubeconfig, threads=32)
        cluster = Cluster(api)
        install_crd(kubeconfig, cluster)
        operator = OperatorProcess(kubeconfig, log_dir / "regcred.log").start()
        scenario = FanOut(cluster, args.namespaces, log=lambda m: print(f"[stress] {m}", flush=True))
        failure = ""
        try:
            scenario.setup()
            for index in range(1, args.rounds + 1):
                result = scenario.round(operator, rng, index)
                results.append(result)
                print(f"[stress] {result.line()}", flush=True)
            leaks = [what for what, text in (("log", operator.log()), ("metrics", operator.metrics()))
                     if PASSWORD_MARK in text]
            if leaks:
                raise StressFailure(f"test password found in the operator's {', '.join(leaks)}")
            if "Traceback" in operator.log():
                raise StressFailure("the operator logged a traceback")
        except StressFailure as error:
            failure = str(error)
        finally:
            operator.stop()
    late = sum(not r.mid_fan_out for r in results)
    ok = not failure and len(results) == args.rounds and late == 0
    kills = sorted(r.rotated_at_kill for r in results)
    slowest = max((r.converge_seconds for r in results), default=0.0)
    verdict = "PASS" if ok else "FAIL"
    print(f"stress: {verdict} {len(results)}/{args.rounds} rounds x {args.namespaces} namespaces, "
          f"SIGKILL at {kills[0] if kills else '-'}..{kills[-1] if kills else '-'} copies rotated, "
          f"{late} kills outside the fan-out, slowest convergence {slowest:.1f}s, "
          f"total {time.monotonic() - started:.0f}s (seed {seed})"
          + (f"\nstress: {failure}\nstress: operator log {log_dir / 'regcred.log'}" if failure else ""),
          flush=True)
    if ok:
        shutil.rmtree(log_dir, ignore_errors=True)  # kept only for a failure to look at
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
