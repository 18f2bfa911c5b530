"""Reconciling: read observed state from the caches, plan with the core, apply with `Kube`.

Two operations, both level-triggered and idempotent:
- `sync_namespace(ns)`: one namespace against all credentials (namespace, ServiceAccount
  and copy events land here, which is what makes onboarding and drift repair immediate);
- `sync_credential(name)`: re-read the CR and its source Secret, then sync every namespace
  (CR changes, rotations and the periodic resync land here).

Per-namespace results go into the `Ledger`; `StatusPublisher` turns them into status. When
and how often these run (de-duplication, retries, the one cache check) is the work queue's
and the controller's business (workqueue.py, controller.py), not this module's.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from regcred.core.conditions import API_ERROR, CONFLICT
from regcred.core.errors import InvalidInput, Problem, SourceUnreadable
from regcred.core.matching import NamespaceInfo
from regcred.core.plan import (
    Action,
    AddPullSecret,
    Credential,
    ObservedCopy,
    ObservedServiceAccount,
    RemovePullSecret,
    ReplaceCopy,
    plan_namespace,
)
from regcred.core.source import RenderedConfig, SourceSecret, render
from regcred.core.spec import CredentialSpec, parse_credential
from regcred.core.status import Failure
from regcred.kube.errors import KubeError
from regcred.metrics import Metrics
from regcred.settings import Settings
from regcred.sync.executor import Applied
from regcred.sync.ledger import Ledger, StatusPublisher

log = structlog.get_logger("regcred.reconciler")

NAMESPACE_LOCKS = 1024


class CleanupIncomplete(Exception):
    """Some copies of a deleted CR could not be removed yet; the finalizer stays for a retry."""


class World(Protocol):
    """Observed cluster state as the watch caches hold it (`Caches` is the real one)."""

    def namespace_names(self) -> list[str]: ...
    def namespace(self, name: str) -> NamespaceInfo | None: ...
    def copies(self, namespace: str) -> list[ObservedCopy]: ...
    def service_accounts(self, namespace: str) -> list[ObservedServiceAccount]: ...
    def credential_bodies(self) -> list[Mapping[str, Any]]: ...
    def credential_body(self, name: str) -> Mapping[str, Any] | None: ...
    # take in an object as just written, if the cache still shows the version it was planned from
    def take_in(self, written: ObservedCopy | ObservedServiceAccount, planned_from: str | None) -> None: ...


class Api(Protocol):
    """The reads reconciling makes (`Kube` is the real one)."""

    def read_source(self, namespace: str, name: str) -> SourceSecret | None: ...
    def list_credentials(self, *, from_watch_cache: bool = False) -> Iterable[Mapping[str, Any]]: ...


class Apply(Protocol):
    """Carrying out a planned action (`Executor` is the real one)."""

    def apply(self, action: Action) -> Applied: ...


@dataclass
class NamespaceOutcome:
    wrote: int = 0
    rotated: dict[str, int] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)  # credentials whose ledger entry changed
    transient: bool = False  # an API call failed in a way worth retrying soon


@dataclass
class FanOutOutcome:
    """What a fan-out's namespace syncs did, summed as each finishes (none is kept)."""

    wrote: int = 0
    rotated: dict[str, int] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    transient: bool = False

    def add(self, outcome: NamespaceOutcome) -> None:
        self.wrote += outcome.wrote
        for credential, count in outcome.rotated.items():
            self.rotated[credential] = self.rotated.get(credential, 0) + count
        self.changed |= outcome.changed
        self.transient |= outcome.transient


@dataclass(frozen=True)
class CredentialOutcome:
    transient: bool = False  # the source could not be read, or a namespace failed transiently


class Reconciler:
    def __init__(self, kube: Api, executor: Apply, world: World, settings: Settings, metrics: Metrics,
                 ledger: Ledger, publisher: StatusPublisher,
                 request_credential_sync: Callable[[str], None]) -> None:
        self._kube = kube
        self._executor = executor
        self._world = world
        self._settings = settings
        self._metrics = metrics
        self._ledger = ledger
        self._publisher = publisher
        # A CR this process has not synced at its generation gets synced, whether or not kopf
        # calls a handler for it (a standby taking over after a CR was created while it was
        # paused may see no cause for one), so it never stays frozen for want of a render.
        self._request_credential_sync = request_credential_sync
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="regcred-sync")
        self._lock = threading.Lock()
        self._synced_generations: dict[str, int] = {}  # CR -> generation its last sync read
        self._configs: dict[str, tuple[int, RenderedConfig]] = {}
        self._parsed: dict[str, tuple[str, CredentialSpec | InvalidInput]] = {}  # CR -> (version, spec)
        # namespace -> Secret names a refused create showed exist there and are not ours (the
        # managed-Secret watch cannot see them); a credential's resync looks again.
        self._foreign: dict[str, set[str]] = defaultdict(set)
        # A namespace is synced by one thread at a time: its event syncs and fan-outs meet here,
        # at one of a fixed set of locks chosen by its name, so that no lock is kept per
        # namespace ever seen; two namespaces sharing one rarely meet (a few dozen syncs run).
        self._namespace_locks = tuple(threading.Lock() for _ in range(NAMESPACE_LOCKS))

    # --- what the planner sees (reads only) --------------------------------------------------

    def rendered(self, name: str) -> RenderedConfig | None:
        """The content last rendered for `name` (what its copies hold), None if none is."""
        with self._lock:
            config = self._configs.get(name)
        return config[1] if config else None

    def parse(self, body: Mapping[str, Any]) -> CredentialSpec:
        """The CR's spec, parsed once per resourceVersion: every namespace sync reads every
        CR, 20,000 times in a fan-out at 20,000 namespaces, and a CR seldom changes."""
        meta = body.get("metadata") or {}
        name, version = str(meta.get("name", "")), meta.get("resourceVersion")
        with self._lock:
            cached = self._parsed.get(name)
        if version is not None and cached is not None and cached[0] == version:
            parsed = cached[1]
        else:
            try:
                parsed = parse_credential(
                    body,
                    default_source_namespace=self._settings.operator_namespace,
                    allowed_source_namespaces=self._settings.source_namespaces,
                )
            except InvalidInput as error:  # kept without its traceback (and the frames in it)
                parsed = InvalidInput(error.reason, error.message)
            if version is not None:
                with self._lock:
                    self._parsed[name] = (str(version), parsed)
        if isinstance(parsed, InvalidInput):
            raise InvalidInput(parsed.reason, parsed.message)  # a fresh one: threads share the kept one
        return parsed

    def credentials(self) -> list[Credential]:
        """Every live CR; one being deleted counts as gone so that its copies get cleaned up."""
        result = []
        for body in self._world.credential_bodies():
            meta = body.get("metadata") or {}
            if meta.get("deletionTimestamp"):
                continue
            name, uid = meta.get("name", ""), meta.get("uid", "")
            try:
                spec = self.parse(body)
            except InvalidInput:
                result.append(Credential(name, uid))
                continue
            with self._lock:
                generation, config = self._configs.get(name, (None, None))
            usable = config if generation == spec.generation else None
            result.append(Credential(name, uid, spec, usable))
        return result

    def unsynced(self, credentials: list[Credential]) -> list[str]:
        """The credentials this process has not synced at their current generation."""
        with self._lock:
            return [c.name for c in credentials
                    if c.spec and self._synced_generations.get(c.name) != c.spec.generation]

    def has_synced(self, name: str) -> bool:
        """Whether this process synced `name` (a paused standby syncs nothing)."""
        with self._lock:
            return name in self._synced_generations

    def credentials_using_source(self, namespace: str, name: str) -> list[str]:
        return [
            c.name for c in self.credentials()
            if c.spec and (c.spec.source.namespace, c.spec.source.name) == (namespace, name)
        ]

    # --- one namespace --------------------------------------------------------------------

    def sync_namespace(self, namespace: str) -> NamespaceOutcome:
        """Converge one namespace; returns what it wrote and whose ledger entry changed."""
        started = time.monotonic()
        outcome = NamespaceOutcome()
        with self._namespace_locks[hash(namespace) % NAMESPACE_LOCKS]:
            indexed = self._indexed_names()  # before the plan's read: the index only grows meanwhile
            credentials = self.credentials()
            for name in self.unsynced(credentials):
                self._request_credential_sync(name)
            with self._lock:
                foreign = frozenset(self._foreign.get(namespace, ()))
            plan = plan_namespace(
                self._world.namespace(namespace),
                credentials,
                self._world.copies(namespace),
                self._world.service_accounts(namespace),
                foreign,
            )
            if plan.undoes and self._index_missed_credentials(indexed):
                plan = plan.only_adding()
                outcome.transient = True  # again shortly, once kopf has listed the CRs
            failures = {
                name: Failure(namespace, CONFLICT, message)
                for name, message in plan.conflicts.items()
            }
            failed_secrets: set[str] = set()
            for secret_action in plan.secret_actions:
                try:
                    applied = self._executor.apply(secret_action)
                except KubeError as error:
                    failures[secret_action.credential] = Failure(namespace, API_ERROR, str(error))
                    failed_secrets.add(secret_action.secret_name)
                    outcome.transient |= error.transient
                    continue
                if applied.not_ours is not None:
                    with self._lock:
                        self._foreign[namespace].add(secret_action.secret_name)
                    failures[secret_action.credential] = Failure(namespace, CONFLICT, applied.not_ours)
                    failed_secrets.add(secret_action.secret_name)
                    continue
                self._took_effect(outcome, secret_action, applied)
                self._take_in(secret_action, applied)
                if applied.rotated:
                    credential = secret_action.credential
                    outcome.rotated[credential] = outcome.rotated.get(credential, 0) + 1
            for account_action in plan.service_account_actions:
                if isinstance(account_action, AddPullSecret) and account_action.secret_name in failed_secrets:
                    continue
                try:
                    applied = self._executor.apply(account_action)
                except KubeError as error:
                    outcome.transient |= error.transient
                    if isinstance(account_action, AddPullSecret):
                        failures[account_action.credential] = Failure(namespace, API_ERROR, str(error))
                    log.warning("serviceaccount edit failed", namespace=namespace,
                                service_account=account_action.service_account, error=str(error))
                    continue
                self._took_effect(outcome, account_action, applied)
                self._take_in(account_action, applied)
            outcome.changed = self._ledger.record(namespace, plan.matched, failures)
        self._metrics.observe_reconcile("namespace", bool(failures), time.monotonic() - started)
        return outcome

    def _indexed_names(self) -> set[str]:
        return {(body.get("metadata") or {}).get("name", "") for body in self._world.credential_bodies()}

    def _index_missed_credentials(self, indexed: set[str]) -> bool:
        """Whether a live CR was missing from kopf's index when the plan read it (`indexed`).
        A replica resuming after a pause handles namespace events before kopf has listed the
        CRs again (kopf arms its index gate only once per process), so a CR created meanwhile
        looks deleted; checked before any copy is deleted or entry removed (rare), never on
        the path that only adds."""
        try:
            live = {(body.get("metadata") or {}).get("name", "")
                    for body in self._kube.list_credentials(from_watch_cache=True)}
        except KubeError:
            return True
        return not live <= indexed

    def _take_in(self, action: Action, applied: Applied) -> None:
        """Hand what a write wrote to the caches at once, so that the next plan sees it."""
        if applied.written is not None:
            self._world.take_in(applied.written, _planned_from(action))

    def _took_effect(self, outcome: NamespaceOutcome, action: Action, applied: Applied) -> None:
        """Count and log a write."""
        if not applied.wrote:
            return
        outcome.wrote += 1
        if isinstance(action, RemovePullSecret):
            log.info("removed pull secret entry", namespace=action.namespace,
                     service_account=action.service_account, secret=action.secret_name)
        else:
            log.info("applied", action=type(action).__name__, credential=action.credential,
                     namespace=action.namespace)

    def publish_changed(self, outcome: NamespaceOutcome) -> None:
        """Publish the status of the complete credentials a namespace sync changed."""
        for credential in outcome.changed & self._ledger.complete():
            self._publisher.publish(credential, wrote=outcome.wrote > 0)

    # --- one credential -------------------------------------------------------------------

    def forget_foreign(self, name: str) -> None:
        """Conflicts of `name` with Secrets not ours may have been resolved by hand: look again
        at its next sync (its periodic resync asks for this)."""
        body = self._world.credential_body(name)
        if body is None:
            return
        try:
            secret_name = self.parse(body).secret_name
        except InvalidInput:
            return
        with self._lock:
            for names in self._foreign.values():
                names.discard(secret_name)

    def sync_credential(self, name: str) -> CredentialOutcome:
        """Re-render `name` from its source and converge every namespace."""
        started = time.monotonic()
        body = self._world.credential_body(name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return CredentialOutcome()
        problem = self._render(name, body)
        with self._lock:
            self._synced_generations[name] = int((body.get("metadata") or {}).get("generation") or 0)
        outcome = self._fan_out()
        for other in outcome.changed & self._ledger.complete() - {name}:
            self._publisher.publish(other, wrote=False)
        self._ledger.mark_complete(name)
        self._publisher.publish(name, wrote=outcome.wrote > 0, rotated=outcome.rotated.get(name, 0))
        self._metrics.credential_synced(name, problem is None)
        self._metrics.observe_reconcile("credential", problem is not None, time.monotonic() - started)
        unreadable = isinstance(problem, SourceUnreadable)
        return CredentialOutcome(transient=unreadable or outcome.transient)

    def _fan_out(self) -> FanOutOutcome:
        """Sync every namespace on the pool, with at most two per worker in flight.

        `pool.map` would make a future for every namespace up front and keep every outcome
        until the last: at 20,000 namespaces tens of MB per fan-out, freed in pieces the
        allocator could not give back (RSS rose 50 MB over three fan-outs; docs/performance.md).
        """
        total = FanOutOutcome()
        pending: set[Future[NamespaceOutcome]] = set()
        try:
            for namespace in self._world.namespace_names():
                if len(pending) >= 2 * self._settings.workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        total.add(future.result())
                pending.add(self._pool.submit(self.sync_namespace, namespace))
            for future in wait(pending).done:
                total.add(future.result())
        finally:
            for future in pending:
                future.cancel()
        return total

    def _render(self, name: str, body: Mapping[str, Any]) -> Problem | None:
        """Render the CR's content; on any problem keep copies as they are (frozen)."""
        problem: Problem | None = None
        try:
            spec = self.parse(body)
            if not spec.suspend:
                source = self._kube.read_source(spec.source.namespace, spec.source.name)
                if source is None:
                    raise InvalidInput(
                        "SourceNotFound",
                        f"source secret {spec.source.namespace}/{spec.source.name} not found; "
                        "create it or fix spec.sourceSecretRef",
                    )
                rendered = render(spec, source)
                with self._lock:
                    self._configs[name] = (spec.generation, rendered)
        except InvalidInput as error:
            with self._lock:
                self._configs.pop(name, None)
            problem = error
        except KubeError as error:  # the copies keep the content last rendered
            problem = SourceUnreadable(f"cannot read the source secret: {error}")
        with self._lock:
            config = self._configs.get(name)
        self._ledger.rendered(name, problem, config[1].source_resource_version if config else None)
        return problem

    def forget_credential(self, name: str) -> None:
        """The CR is being deleted: remove its copies and entries everywhere, then its state."""
        outcome = self._fan_out()
        # A copy whose deletion is under way counts as gone, even if somebody else's
        # finalizer holds it: waiting for that would hold the CR on ours.
        leftovers = [c for ns in self._world.namespace_names() for c in self._world.copies(ns)
                     if c.credential == name and not c.deleting]
        if leftovers:
            raise CleanupIncomplete(f"{len(leftovers)} copies of {name} remain; retrying")
        with self._lock:
            self._configs.pop(name, None)
            self._synced_generations.pop(name, None)
            self._parsed.pop(name, None)
        self._ledger.forget(name)
        self._publisher.forget(name)
        self._metrics.forget(name)
        log.info("cleaned up", credential=name, writes=outcome.wrote)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _planned_from(action: Action) -> str | None:
    """The version of the object that `action` was planned from (None: it was absent)."""
    if isinstance(action, ReplaceCopy):
        return action.resource_version
    if isinstance(action, AddPullSecret | RemovePullSecret) and action.observed is not None:
        return action.observed.resource_version
    return None
