"""Robustness on the real control plane: crashes, control-plane restarts, concurrent writers,
deletion paths and secret hygiene.

regcred runs here under an identity of its own (`regcred-robustness`), and with a 10-minute
resync: every repair seen here comes from watch events, not from the periodic safety net.

`assert_no_secret_material(cluster, operator)` is the reusable hygiene check: any module can
import it and call it at its end (test_bad_input does).
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_fixtures import audited_operator
from operator_process import OperatorProcess
from scenario import MERGE, PASSWORD_MARK, SERVER, Cluster, create_synced, credential_spec, password, unique

from stress import FanOut, wait_until

converge = wait_until  # (problems function, timeout, what): polls until no problem is left

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("remove_new_credentials")]

OPERATOR_USER = "regcred-robustness"
OURS_ANNOTATION = "regcred.dev/image-pull-secrets"
CONFLICT_STATUSES = (409, 422)


# --- secret hygiene: reusable by every module -------------------------------------------------


def secret_needles(mark: str = PASSWORD_MARK) -> list[str]:
    """`mark` itself and the three base64 renderings of it (one per alignment mod 3), so a
    password that leaks base64-encoded (a Secret's data, an `auth` field) is found too."""
    needles = [mark]
    raw = mark.encode()
    for offset in range(3):
        data = b"\0" * offset + raw
        encoded = base64.b64encode(data).decode()
        first, last = -(-offset // 3), len(data) // 3  # whole 3-byte groups made of mark bytes only
        needles.append(encoded[4 * first:4 * last])
    return [n for n in needles if len(n) >= 8]


def leaks(text: str, mark: str = PASSWORD_MARK) -> list[str]:
    return [needle for needle in secret_needles(mark) if needle in text]


def assert_no_secret_material(cluster: Cluster, operator: OperatorProcess | None = None,
                              **more: str) -> None:
    """No test password (plain or base64) in the operator's log (exceptions included), its
    metrics, any RegistryCredential (status, annotations: kopf keeps handler errors there)
    or any Event in the cluster. `more` adds named texts to search (e.g. a second log)."""
    places: dict[str, str] = dict(more)
    if operator is not None:
        places["operator log"] = operator.log()
        assert places["operator log"], "the operator wrote no log"
        if operator.process is not None and operator.process.poll() is None:
            places["metrics"] = operator.metrics()
    places["RegistryCredentials"] = json.dumps(cluster.credentials())
    events = cluster.core.list_event_for_all_namespaces()
    places["events"] = json.dumps(cluster.core.api_client.sanitize_for_serialization(events.items))
    found = {where: leaks(text) for where, text in places.items() if leaks(text)}
    assert not found, f"test password material found in: {sorted(found)}"


# Errors that mean a bug in regcred, not a failing API server: none may appear in its log.
PROGRAMMING_ERRORS = ("Traceback", "AttributeError", "TypeError", "KeyError", "NameError",
                      "IndexError", "UnboundLocalError", "AssertionError", "RecursionError")


def programming_errors(log: str) -> list[str]:
    return [name for name in PROGRAMMING_ERRORS if name in log]


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator(control_plane, crd_installed, tmp_path_factory) -> Iterator[OperatorProcess]:
    """`regcred run` under its own identity, so the audit log tells its writes from ours."""
    yield from audited_operator(control_plane, OPERATOR_USER, tmp_path_factory)


def regcred_writes(control_plane, since: str, user: str = OPERATOR_USER) -> list[dict[str, Any]]:
    """Successful writes by regcred's identity (`user`) received after `since` (ISO time, UTC)."""
    return [e for e in control_plane.audit_events()
            if e.get("user", {}).get("username") == user
            and e.get("verb") in ("create", "update", "patch", "delete")
            and e.get("requestReceivedTimestamp", "") >= since
            and 200 <= (e.get("responseStatus") or {}).get("code", 0) < 300]


def alive(operator: OperatorProcess) -> bool:
    return operator.process is not None and operator.process.poll() is None


def annotation(cluster: Cluster, namespace: str, account: str = "default") -> set[str]:
    sa = cluster.core.read_namespaced_service_account(account, namespace)
    value = (sa.metadata.annotations or {}).get(OURS_ANNOTATION, "")
    return {name for name in value.split(",") if name}


def guarded_edit(core: client.CoreV1Api, namespace: str, edit: Callable[[list[str]], list[str] | None],
                 account: str = "default", attempts: int = 50) -> list[str] | None:
    """A well-behaved client: read, change the list with `edit`, write it back with a JSON Patch
    guarded by a resourceVersion test; on a conflict read again and retry. Returns the list
    as written (None if `edit` wanted no change)."""
    for _ in range(attempts):
        sa = core.read_namespaced_service_account(account, namespace)
        current = [ref.name for ref in sa.image_pull_secrets or []]
        wanted = edit(current)
        if wanted is None:
            return None
        ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": sa.metadata.resource_version},
               {"op": "add", "path": "/imagePullSecrets", "value": [{"name": n} for n in wanted]}]
        try:
            core.patch_namespaced_service_account(account, namespace, ops)
            return wanted
        except ApiException as error:
            if error.status not in CONFLICT_STATUSES:
                raise
    raise AssertionError(f"{attempts} conflicts in a row on {namespace}/{account}")


# --- 1. crash in the middle of a fan-out -------------------------------------------------------


def test_sigkill_mid_rotation_fan_out_loses_duplicates_and_clobbers_nothing(cluster, operator):
    """300 namespaces (a rotation of fewer ends between two looks at its progress), rounds
    of: rotate, SIGKILL once a random share of the copies is rotated, restart, until three
    kills landed in the middle of the fan-out. Every round is checked (scripts/stress.py,
    20 rounds x 500 namespaces, says what); a round whose fan-out outran the look at its
    progress (killed after the last copy) is checked too but does not count, at most three."""
    scenario = FanOut(cluster, 300)
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    results = []
    try:
        scenario.setup()
        for index in range(1, 7):
            results.append(scenario.round(operator, rng, index))
            if sum(r.mid_fan_out for r in results) == 3:
                break
        lines = "; ".join(r.line() for r in results)
        assert sum(r.mid_fan_out for r in results) == 3, f"{lines} (seed {seed}): kills missed the fan-out"
    finally:
        scenario.teardown()
    assert alive(operator)


# --- 2. API server and etcd restarts -----------------------------------------------------------


class LivenessProbe(threading.Thread):
    """Samples /healthz and the process while something else happens (a kubelet's view)."""

    def __init__(self, operator: OperatorProcess) -> None:
        super().__init__(daemon=True)
        self.operator = operator
        self.samples: list[bool] = []
        self.exited = False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):  # the sampling period of the probe, not a synchronisation
            self.samples.append(self.operator.healthy())
            self.exited = self.exited or not alive(self.operator)

    def stop(self) -> None:
        self.done.set()
        self.join()


def _retry_until_up(action: Callable[[], Any], done: tuple[int, ...] = (), timeout: float = 120) -> None:
    """Do `action`, retrying while the API server is still coming back (a 429 while its storage
    reinitialises, a refused connection); an ApiException with a status in `done` means an
    earlier attempt went through."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            action()
            return
        except ApiException as error:
            if error.status in done:
                return
            if time.monotonic() > deadline:
                raise
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)  # retry pacing while the server is unavailable


@dataclass
class Outage:
    """A CR synced to `namespaces`, a foreign entry (`bystander`) next to ours in the first
    three, and what the test changes while regcred's watches reconnect."""

    cluster: Cluster
    name: str
    namespaces: list[str]
    bystander: str
    late: str = ""

    @property
    def gone(self) -> str:  # its copy is deleted during the reconnect
        return self.namespaces[0]

    @property
    def emptied(self) -> str:  # our entry is removed from its ServiceAccount
        return self.namespaces[1]

    @property
    def relabelled(self) -> str:  # it stops matching
        return self.namespaces[2]

    @property
    def expected(self) -> list[str]:
        """The namespaces that must end with a copy and our entry."""
        return [*(ns for ns in self.namespaces if ns != self.relabelled), self.late]

    def change_everything(self, selector: dict[str, str], cleanup: list[str]) -> None:
        """Namespace-level changes at once, while regcred's watches are still reconnecting."""
        cluster = self.cluster
        self.late = unique("late")
        _retry_until_up(lambda: cluster.create_namespace(self.late, selector), done=(409,))
        cleanup.append(self.late)
        _retry_until_up(lambda: cluster.core.delete_namespaced_secret(self.name, self.gone), done=(404,))
        _retry_until_up(lambda: cluster.set_pull_secrets(self.emptied, [self.bystander]))
        _retry_until_up(lambda: cluster.label_namespace(self.relabelled, {"tenant": None}))

    def problems(self, secret: str, labels: dict[str, str]) -> list[str]:
        """What still differs from: every expected namespace with a copy holding `secret` and
        `labels` and exactly its entries; the relabelled one cleaned up but for the bystander."""
        cluster, name, found = self.cluster, self.name, []
        for namespace in self.expected:
            copy = cluster.secret(namespace, name)
            if copy is None:
                found.append(f"{namespace}: no copy")
                continue
            if cluster.docker_password(namespace, name, SERVER) != secret:
                found.append(f"{namespace}: stale content")
            if any(copy["metadata"]["labels"].get(k) != v for k, v in labels.items()):
                found.append(f"{namespace}: CR change not applied")
            entries = cluster.pull_secrets(namespace)
            want = [self.bystander, name] if namespace in self.namespaces[:3] else [name]
            if entries != want:
                found.append(f"{namespace}: entries {entries}")
        if cluster.secret(self.relabelled, name) is not None:
            found.append(f"{self.relabelled}: copy not removed")
        if cluster.pull_secrets(self.relabelled) != [self.bystander]:
            found.append(f"{self.relabelled}: entries {cluster.pull_secrets(self.relabelled)}")
        return found

    def settled(self) -> bool:
        status = (self.cluster.credential(self.name) or {}).get("status") or {}
        return (self.cluster.ready(self.name).get("status") == "True"
                and status.get("matchedNamespaces") == status.get("syncedNamespaces") == len(self.expected))

    def assert_each_copy_rotated_once(self, control_plane, since: str) -> None:
        """No needless writes, outage or not: each copy rotated once, no ServiceAccount touched
        but the two we changed (a write lost with the API server is not counted by the audit)."""
        writes = [(e["verb"], e["objectRef"]["resource"], e["objectRef"]["namespace"])
                  for e in regcred_writes(control_plane, since)
                  if e["objectRef"].get("namespace") in self.namespaces]
        updates = Counter(ns for verb, resource, ns in writes if (verb, resource) == ("update", "secrets"))
        assert max(updates.values()) == 1, f"copies written more than once: {updates.most_common(3)}"
        accounts = {ns for verb, resource, ns in writes if resource == "serviceaccounts"}
        assert accounts <= {self.emptied, self.relabelled}, \
            f"ServiceAccounts written by a rotation: {accounts}"


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_control_plane_restart_mid_fan_out_then_every_change_lands(
        control_plane, cluster, operator, tenant, wait_for, component, cleanup_namespaces):
    """The control plane goes down in the middle of a rotation fan-out. Afterwards the
    interrupted rotation completes on its own, changes made while regcred's watches are still
    reconnecting land (kopf retries a lost watch after 1, 2, 4, 7, 12, 20 s: with the API server
    down 12 s, the changes fall in that gap), and so do later ones.

    Liveness semantics (docs/operations.md): /healthz says whether regcred's process and event
    loop are alive, not whether the API server is reachable. During an outage it keeps answering
    200: restarting regcred would not bring the API back (and would turn an outage into a crash
    loop); regcred reconnects by itself."""
    namespaces = tenant(40)
    outage = Outage(cluster, "", namespaces, unique("theirs"))
    for namespace in namespaces[:3]:
        cluster.set_pull_secrets(namespace, [outage.bystander])
    outage.name = name = create_synced(cluster, tenant.selector, namespaces)
    probe = LivenessProbe(operator)
    probe.start()

    rotated = password("restart")
    since = datetime.now(UTC).isoformat()
    cluster.rotate_source(name, rotated)
    if component == "etcd":
        control_plane.restart_etcd(downtime=4, graceful=False)
    else:
        wait_for(lambda: any(cluster.docker_password(ns, name, SERVER) == rotated for ns in namespaces),
                 interval=0.02, message="the rotation fan-out to start")
        control_plane.restart_apiserver(downtime=12, graceful=False)
    outage.change_everything(tenant.selector, cleanup_namespaces)

    converge(lambda: outage.problems(rotated, {}), 120,
             f"the interrupted rotation and the changes made during the reconnect after the {component} "
             "restart to land")
    outage.assert_each_copy_rotated_once(control_plane, since)

    # And changes to the CR and its source after the restart.
    cluster.patch_credential(name, {"target": {"labels": {"after": "restart"}}})
    again = password("after-restart")
    cluster.rotate_source(name, again)
    converge(lambda: outage.problems(again, {"after": "restart"}), 60, "later changes to land")
    wait_for(outage.settled, timeout=60, message=f"Ready with every namespace synced: "
                                                 f"{(cluster.credential(name) or {}).get('status')}")
    probe.stop()
    assert not probe.exited, "regcred exited during the control plane restart"
    assert alive(operator)
    assert probe.samples and all(probe.samples), (
        f"liveness failed {probe.samples.count(False)} of {len(probe.samples)} times during the outage")


# --- 3. a concurrent foreign writer -------------------------------------------------------------


class ForeignWriter(threading.Thread):
    """Adds and removes its own entries (`prefix-0..3`) in the `default` ServiceAccounts of
    `namespaces`, like another controller would. `polite`: a JSON Patch guarded by a
    resourceVersion test, retried from a fresh read. Rude: read, then replace the whole list
    with a merge patch, no precondition (what `kubectl apply` or a careless tool does)."""

    def __init__(self, core: client.CoreV1Api, namespaces: list[str], prefix: str, *, polite: bool,
                 seed: int) -> None:
        super().__init__(daemon=True)
        self.core, self.namespaces, self.polite = core, namespaces, polite
        self.names = [f"{prefix}-{i}" for i in range(4)]
        self.rng = random.Random(seed)
        self.model: dict[str, list[str]] = {ns: [] for ns in namespaces}  # ours, in list order
        self.writes = 0
        self.error: BaseException | None = None
        self.done = threading.Event()

    def _edit(self, current: list[str]) -> list[str]:
        mine = [n for n in current if n in self.names]
        missing = [n for n in self.names if n not in mine]
        if missing and (not mine or self.rng.random() < 0.6):
            return [*current, self.rng.choice(missing)]
        drop = self.rng.choice(mine)
        return [n for n in current if n != drop]

    def run(self) -> None:
        try:
            while not self.done.is_set():
                namespace = self.rng.choice(self.namespaces)
                if self.polite:
                    written = guarded_edit(self.core, namespace, self._edit)
                else:
                    sa = self.core.read_namespaced_service_account("default", namespace)
                    written = self._edit([ref.name for ref in sa.image_pull_secrets or []])
                    self.core.patch_namespaced_service_account(
                        "default", namespace, {"imagePullSecrets": [{"name": n} for n in written]},
                        _content_type=MERGE)
                self.model[namespace] = [n for n in written or [] if n in self.names]
                self.writes += 1
        except BaseException as error:  # reported by the test
            self.error = error

    def stop(self) -> None:
        self.done.set()
        self.join(60)
        assert not self.is_alive(), "the foreign writer did not stop"
        assert self.error is None, f"the foreign writer failed: {self.error!r}"


def _pace(writer: ForeignWriter, wait_for, writes: int = 4) -> None:
    """Let the writer make a few more writes between two of our changes (no sleeps)."""
    target = writer.writes + writes
    wait_for(lambda: writer.writes >= target or writer.error is not None, timeout=60,
             message="the foreign writer to make progress")


def _expect_entries(cluster: Cluster, writer: ForeignWriter, namespaces: list[str],
                    ours: Callable[[str], set[str]]) -> list[str]:
    """Problems with the lists: the writer's entries exactly as its model says (same order), ours
    exactly the wanted set (each once, also in our annotation), nothing else."""
    problems = []
    for namespace in namespaces:
        entries = cluster.pull_secrets(namespace) or []
        theirs = [n for n in entries if n in writer.names]
        mine = [n for n in entries if n not in writer.names]
        if theirs != writer.model[namespace]:
            problems.append(f"{namespace}: foreign entries {theirs}, expected {writer.model[namespace]}")
        if sorted(mine) != sorted(ours(namespace)):
            problems.append(f"{namespace}: our entries {mine}, expected {sorted(ours(namespace))}")
        if annotation(cluster, namespace) != ours(namespace):
            problems.append(f"{namespace}: annotation {annotation(cluster, namespace)}")
    return problems


def test_polite_foreign_writer_and_regcred_both_end_exactly_right(cluster, operator, tenant, wait_for):
    namespaces = tenant(6)
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    writer = ForeignWriter(cluster.core, namespaces, unique("polite"), polite=True, seed=seed)
    labels: dict[str, set[str]] = {ns: set() for ns in namespaces}
    credentials = {unique("ra"): "a", unique("rb"): "b"}
    for name in credentials:
        cluster.put_source(name)
    live: set[str] = set()

    def create(name: str) -> None:
        cluster.create_credential(name, credential_spec(name, {**tenant.selector, credentials[name]: "yes"}))
        live.add(name)

    writer.start()
    try:
        for name in credentials:
            create(name)
        for step in range(16):
            _pace(writer, wait_for)
            if step % 5 == 4:  # delete a credential, or bring it back
                name = rng.choice(list(credentials))
                if name in live:
                    cluster.delete_credential(name)
                    wait_for(lambda n=name: cluster.credential(n) is None, timeout=60,
                             message=f"{name} deleted")
                    live.discard(name)
                else:
                    create(name)
            else:  # relabel a namespace into or out of a credential's selector
                namespace, key = rng.choice(namespaces), rng.choice("ab")
                on = key not in labels[namespace]
                cluster.label_namespace(namespace, {key: "yes" if on else None})
                labels[namespace] ^= {key}
        _pace(writer, wait_for)
    finally:
        writer.stop()

    def ours(namespace: str) -> set[str]:
        return {name for name in live if credentials[name] in labels[namespace]}

    wait_for(lambda: not _expect_entries(cluster, writer, namespaces, ours), timeout=90,
             message=f"both sets of entries exactly right (seed {seed}): "
                     f"{_expect_entries(cluster, writer, namespaces, ours)}")
    assert writer.writes >= 16 * 4
    for name in live:
        wait_for(lambda n=name: cluster.ready(n).get("status") == "True", timeout=60,
                 message=f"{name} Ready")


def test_rude_foreign_writer_cannot_keep_our_entries_out(cluster, operator, tenant, wait_for):
    """A rude writer rewrites whole lists from fresh reads, so it drops entries regcred has just
    added; regcred puts them back. regcred only adds while it runs: a rude writer can also
    resurrect an entry regcred has just removed, which regcred then cannot tell from a foreign
    one and leaves alone (documented in docs/guarantees.md, Known limits)."""
    namespaces = tenant(5)
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    writer = ForeignWriter(cluster.core, namespaces, unique("rude"), polite=False, seed=seed)
    names = [unique("rc") for _ in range(3)]
    for name in names:
        cluster.put_source(name)
    labelled: set[str] = set()
    writer.start()
    try:
        for index, name in enumerate(names):
            cluster.create_credential(name, credential_spec(name, {**tenant.selector, f"k{index}": "yes"}))
        for namespace in namespaces:
            for index in rng.sample(range(len(names)), 2):
                _pace(writer, wait_for, writes=2)
                cluster.label_namespace(namespace, {f"k{index}": "yes"})
                labelled.add(f"{namespace}/{index}")
        _pace(writer, wait_for)
    finally:
        writer.stop()

    def ours(namespace: str) -> set[str]:
        return {name for index, name in enumerate(names) if f"{namespace}/{index}" in labelled}

    wait_for(lambda: not _expect_entries(cluster, writer, namespaces, ours), timeout=90,
             message=f"entries repaired after the rude writer (seed {seed}): "
                     f"{_expect_entries(cluster, writer, namespaces, ours)}")
    for name in names:  # and clean-up still removes exactly ours
        cluster.delete_credential(name)
    wait_for(lambda: not _expect_entries(cluster, writer, namespaces, lambda ns: set()), timeout=90,
             message="only the rude writer's entries left")


# --- 4. no needless requests -------------------------------------------------------------------


def test_a_sync_sends_one_request_per_change_and_none_bound_to_fail(
        cluster, operator, control_plane, tenant, wait_for):
    """A first sync of 40 namespaces: one create per copy and one patch per ServiceAccount,
    nothing else. Two fan-outs run (the CR is created, and the source Secret's watch fires),
    and the watch events echoing the 80 writes arrive at any time: each write goes into the
    caches as soon as it is answered, so no plan works from a version regcred replaced, and no
    guarded patch is refused or followed by a re-read (the audit log counts every request,
    refused ones included)."""
    namespaces = tenant(40)
    events_before = operator.metric_sum("regcred_watch_events_total")
    since = datetime.now(UTC).isoformat()
    create_synced(cluster, tenant.selector, namespaces)
    wait_for(lambda: operator.metric_sum("regcred_watch_events_total") - events_before >= 80,
             timeout=60, message="the watch events of the 80 writes")
    requests = Counter(
        (e["verb"], e["objectRef"]["resource"], e["responseStatus"]["code"])
        for e in control_plane.audit_events()
        if e.get("user", {}).get("username") == OPERATOR_USER
        and e.get("requestReceivedTimestamp", "") >= since
        and (e.get("objectRef") or {}).get("namespace") in namespaces
    )
    assert requests == {("create", "secrets", 201): 40, ("patch", "serviceaccounts", 200): 40}


# --- 5. deletion paths -------------------------------------------------------------------------


def test_namespaces_deleted_mid_sync_neither_block_nor_fail_the_credential(
        cluster, operator, tenant, wait_for):
    namespaces = tenant(24)
    name = unique("cr")
    cluster.put_source(name)
    cluster.create_credential(name, credential_spec(name, tenant.selector))
    wait_for(lambda: any(cluster.secret(ns, name) for ns in namespaces), interval=0.02,
             message="the first fan-out to start")
    doomed, kept = namespaces[::2], namespaces[1::2]
    for namespace in doomed:
        cluster.delete_namespace(namespace)

    rotated = password("mid-delete")
    for namespace in kept:
        wait_for(lambda ns=namespace: cluster.pull_secrets(ns) == [name], timeout=60,
                 message=f"entry in {namespace}")
    cluster.rotate_source(name, rotated)
    wait_for(lambda: any(cluster.docker_password(ns, name, SERVER) == rotated for ns in kept),
             interval=0.02, message="the rotation fan-out to start")
    doomed2, kept = kept[:4], kept[4:]
    for namespace in doomed2:
        cluster.delete_namespace(namespace)

    for namespace in doomed + doomed2:
        wait_for(lambda ns=namespace: _namespace_gone(cluster, ns), timeout=120,
                 message=f"namespace {namespace} deleted (regcred must not hold it up)")
    for namespace in kept:
        wait_for(lambda ns=namespace: cluster.docker_password(ns, name, SERVER) == rotated, timeout=60,
                 message=f"rotated copy in {namespace}")

    def settled() -> bool:
        status = (cluster.credential(name) or {}).get("status") or {}
        return (cluster.ready(name).get("status") == "True" and status.get("failedNamespaces") == []
                and status.get("matchedNamespaces") == status.get("syncedNamespaces") == len(kept))

    wait_for(settled, timeout=60, message=f"Ready {len(kept)}/{len(kept)} with no failed namespace: "
                                          f"{(cluster.credential(name) or {}).get('status')}")
    assert alive(operator)


def _namespace_gone(cluster: Cluster, namespace: str) -> bool:
    try:
        cluster.core.read_namespace(namespace)
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def test_credential_deleted_while_regcred_is_down_is_cleaned_up_when_it_returns(
        cluster, operator, tenant, wait_for):
    namespaces = tenant(3)
    for namespace in namespaces:
        cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": "builder"}})
        cluster.set_pull_secrets(namespace, ["first"], account="builder")
        cluster.set_pull_secrets(namespace, ["first"])
    name = create_synced(cluster, tenant.selector, namespaces,
                         serviceAccounts=["default", "builder"])
    for namespace in namespaces:
        wait_for(lambda ns=namespace: cluster.pull_secrets(ns, "builder") == ["first", name],
                 message="entry on builder")
        for account in ("default", "builder"):
            guarded_edit(cluster.core, namespace, lambda current: [*current, "last"], account=account)
    operator.stop()
    try:
        cluster.delete_credential(name)
        body = cluster.credential(name)
        assert body and body["metadata"].get("deletionTimestamp"), "our finalizer should hold the CR"
    finally:
        operator.start()
    wait_for(lambda: cluster.credential(name) is None, timeout=60, message="CR released at start")
    for namespace in namespaces:
        wait_for(lambda ns=namespace: cluster.secret(ns, name) is None, message="copy removed")
        for account in ("default", "builder"):
            wait_for(lambda ns=namespace, a=account: cluster.pull_secrets(ns, a) == ["first", "last"],
                     message=f"only our entry removed from {account}")
            assert annotation(cluster, namespace, account) == set()


def test_readme_finalizer_removal_when_regcred_is_gone_for_good(
        cluster, operator, tenant, wait_for, kubeconfig):
    """The command docs/operations.md gives, run literally; the garbage collector then removes
    the copies, and a regcred that comes back later removes its entries and nothing else."""
    namespaces = tenant(2)
    for namespace in namespaces:
        cluster.set_pull_secrets(namespace, ["first"])
    name = create_synced(cluster, tenant.selector, namespaces)
    for namespace in namespaces:
        guarded_edit(cluster.core, namespace, lambda current: [*current, "last"])
    operator.stop()
    try:
        cluster.delete_credential(name)
        operations = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
        command = """kubectl patch regcred NAME --type=merge -p '{"metadata":{"finalizers":null}}'"""
        assert command in operations, "docs/operations.md must give the finalizer removal command"
        subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "patch", "regcred", name, "--type=merge",
                        "-p", '{"metadata":{"finalizers":null}}'], check=True, capture_output=True)
        wait_for(lambda: cluster.credential(name) is None, message="CR gone")
        for namespace in namespaces:
            wait_for(lambda ns=namespace: cluster.secret(ns, name) is None, timeout=90,
                     message="copy removed by the garbage collector")
            assert cluster.pull_secrets(namespace) == ["first", name, "last"]
    finally:
        operator.start()
    for namespace in namespaces:
        wait_for(lambda ns=namespace: cluster.pull_secrets(ns) == ["first", "last"],
                 message="our entry removed at start, and only ours")


def test_many_credentials_deleted_at_once_none_stays_on_our_finalizer(
        cluster, operator, tenant, wait_for):
    """Healthy, suspended, refused and conflicted CRs, one copy held by somebody else's
    finalizer, all deleted at once: every CR goes while regcred is healthy."""
    namespaces = tenant(4)
    healthy = [create_synced(cluster, tenant.selector, namespaces) for _ in range(8)]
    suspended = healthy[:2]
    for name in suspended:
        cluster.patch_credential(name, {"suspend": True})
    missing = unique("missing")
    cluster.create_credential(missing, credential_spec(missing, tenant.selector))
    refused = unique("refused")
    cluster.create_credential(refused, credential_spec(refused, tenant.selector,
                                                sourceSecretRef={"name": "x", "namespace": "default"}))
    clash = unique("clash")
    cluster.put_source(clash)
    cluster.create_credential(clash, credential_spec(clash, tenant.selector,
                                              target={"secretName": healthy[-1]}))
    for name in suspended:
        wait_for(lambda n=name: cluster.ready(n).get("reason") == "Suspended", message="suspended")
    wait_for(lambda: cluster.ready(missing).get("reason") == "SourceNotFound", message="refused")
    wait_for(lambda: cluster.ready(refused).get("reason") == "SourceNotAllowed", message="refused")
    wait_for(lambda: cluster.ready(clash).get("reason") == "Conflict", message="conflict")
    held = healthy[2]
    cluster.core.patch_namespaced_secret(
        held, namespaces[0], {"metadata": {"finalizers": ["example.com/hold"]}}, _content_type=MERGE)

    every = [*healthy, missing, refused, clash]
    try:
        for name in every:
            cluster.delete_credential(name)
        converge(lambda: [f"{n}: {(body.get('metadata') or {}).get('finalizers')}" for n in every
                          if (body := cluster.credential(n) or {})], 90, "every CR to be gone")
    finally:
        cluster.core.patch_namespaced_secret(held, namespaces[0], {"metadata": {"finalizers": None}},
                                             _content_type=MERGE)
    for namespace in namespaces:
        wait_for(lambda ns=namespace: cluster.pull_secrets(ns) == [], message=f"no entry left in {namespace}")
        wait_for(lambda ns=namespace: not [n for n in healthy if cluster.secret(ns, n)], timeout=90,
                 message=f"no copy left in {namespace}")


# --- 6. secret hygiene (last) ----------------------------------------------------------------


def test_no_secret_material_in_logs_metrics_status_or_events(cluster, operator):
    """Runs last in this module: everything above used passwords carrying PASSWORD_MARK."""
    secret = f"{PASSWORD_MARK}-x"
    auth = base64.b64encode(f"robot:{secret}".encode()).decode()
    for offset in range(3):  # a copy's data: base64 of JSON holding the password and `auth`
        data = base64.b64encode(json.dumps({"auths": {"r": {"username": "robot"[:offset + 3],
                                                            "password": secret}}}).encode()).decode()
        assert leaks(data), "the check must find a base64-encoded password"
    assert leaks(secret) and leaks(auth), "the check must find what it looks for"
    assert_no_secret_material(cluster, operator)
    assert not programming_errors(operator.log()), "regcred's log shows a programming error"
