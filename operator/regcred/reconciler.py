"""Reconciles: read observed state from the caches, plan with the core, apply with `Kube`.

Two entry points, both level-triggered and idempotent:
- `sync_namespace(ns)`: one namespace against all credentials (namespace, ServiceAccount
  and copy events land here, which is what makes onboarding and drift repair immediate);
- `sync_credential(name)`: re-read the CR and its source Secret, then sync every namespace
  (CR changes, rotations and the periodic resync land here).

Per-namespace results go into a ledger from which each CR's status is computed.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from regcred.core.errors import InvalidInput
from regcred.core.matching import NamespaceInfo
from regcred.core.plan import (
    AddPullSecret,
    Credential,
    DeleteCopy,
    NamespacePlan,
    ObservedCopy,
    ObservedServiceAccount,
    RemovePullSecret,
    ReplaceCopy,
    plan_namespace,
)
from regcred.core.source import RenderedConfig, render
from regcred.core.spec import CredentialSpec, parse_credential
from regcred.core.status import Failure, build_status, status_differs
from regcred.kube import Applied, Kube, KubeError, NotOurs
from regcred.metrics import Metrics
from regcred.settings import Settings

log = structlog.get_logger("regcred.reconciler")

# After a transient API failure (no answer, a conflict, throttling, a 5xx) the work is done
# again after these delays (the last one repeats) instead of waiting for the periodic resync.
RETRY_DELAYS = (2.0, 4.0, 8.0, 15.0, 30.0)


class CleanupIncomplete(Exception):
    """Some copies of a deleted CR could not be removed yet; the finalizer stays for a retry."""


class World(Protocol):
    """Observed cluster state as the watch caches hold it."""

    def namespace_names(self) -> list[str]: ...
    def namespace(self, name: str) -> NamespaceInfo | None: ...
    def copies(self, namespace: str) -> list[ObservedCopy]: ...
    def service_accounts(self, namespace: str) -> list[ObservedServiceAccount]: ...
    def credential_bodies(self) -> list[Mapping[str, Any]]: ...
    def credential_body(self, name: str) -> Mapping[str, Any] | None: ...
    # uid -> namespace of the cached namespaces and copies; hide entries that are gone
    def cached_uids(self) -> dict[str, str]: ...
    def forget(self, uids: Iterable[str]) -> None: ...
    # take in an object as just written, if the cache still shows the version it was planned from
    def wrote(self, written: ObservedCopy | ObservedServiceAccount, planned_from: str | None) -> None: ...


@dataclass
class NamespaceOutcome:
    wrote: int = 0
    rotated: dict[str, int] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    transient: bool = False  # an API call failed in a way worth retrying soon


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    def __init__(self, kube: Kube, world: World, settings: Settings, metrics: Metrics,
                 clock: Callable[[], str] = utc_now) -> None:
        self._kube = kube
        self._world = world
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="regcred-sync")
        # Namespace syncs asked for by watch events: at most one queued per namespace; events
        # arriving while it waits are covered by it, since it reads the caches when it runs.
        self._events = ThreadPoolExecutor(settings.workers, thread_name_prefix="regcred-event")
        self._queued: set[str] = set()
        self._credentials_queued: set[str] = set()
        self._synced_generations: dict[str, int] = {}  # CR -> generation its last sync read
        self._configs: dict[str, tuple[int, RenderedConfig]] = {}
        self._problems: dict[str, InvalidInput] = {}
        self._ledger: dict[str, dict[str, Failure | None]] = defaultdict(dict)
        self._foreign: dict[str, set[str]] = defaultdict(set)
        self._statuses: dict[str, dict[str, Any]] = {}
        # CRs whose ledger is complete (one full fan-out done): only they get status from
        # namespace events, so a restart does not publish counts from a half-filled ledger.
        self._complete: set[str] = set()
        self._namespace_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._credential_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        # One status computation and write at a time per CR: two publishes racing could
        # otherwise let the one computed from an older ledger land last, and stay.
        self._publish_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._state_lock = threading.Lock()
        self._retries: dict[tuple[str, str], threading.Timer] = {}  # (kind, name) -> pending retry
        self._attempts: dict[tuple[str, str], int] = defaultdict(int)
        self._stopped = False
        self._verified = 0.0  # monotonic time of the last cache check against the API

    # --- what the planner sees ------------------------------------------------------------

    def parse(self, body: Mapping[str, Any]) -> CredentialSpec:
        return parse_credential(
            body,
            default_source_namespace=self._settings.operator_namespace,
            allowed_source_namespaces=self._settings.source_namespaces,
        )

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
            generation, config = self._configs.get(name, (None, None))
            usable = config if generation == spec.generation else None
            result.append(Credential(name, uid, spec, usable))
            if self._synced_generations.get(name) != spec.generation:
                self._sync_credential_soon(name)
        return result

    def _sync_credential_soon(self, name: str) -> None:
        """A CR this process has not synced at its generation: sync it, whether or not kopf
        calls a handler for it (a standby taking over after a CR was created while it was
        paused may see no cause for one), so it never stays frozen for want of a render."""
        with self._state_lock:
            if self._stopped or name in self._credentials_queued:
                return
            self._credentials_queued.add(name)

        def run() -> None:
            with self._state_lock:
                self._credentials_queued.discard(name)
            self.sync_credential(name)

        self._events.submit(run)

    def credentials_using_source(self, namespace: str, name: str) -> list[str]:
        return [
            c.name for c in self.credentials()
            if c.spec and (c.spec.source.namespace, c.spec.source.name) == (namespace, name)
        ]

    # --- one namespace --------------------------------------------------------------------

    def sync_namespace(self, namespace: str) -> NamespaceOutcome:
        """Converge one namespace; returns what it wrote and whose status changed."""
        started = time.monotonic()
        outcome = NamespaceOutcome()
        with self._namespace_locks[namespace]:
            info = self._world.namespace(namespace)
            plan = plan_namespace(
                info,
                self.credentials(),
                self._world.copies(namespace),
                self._world.service_accounts(namespace),
                frozenset(self._foreign.get(namespace, ())),
            )
            if _undoes(plan) and self._index_misses_credentials():
                plan = _without_undoing(plan)
                outcome.transient = True  # again shortly, once kopf has listed the CRs
            failures = {
                name: Failure(namespace, "Conflict", message)
                for name, message in plan.conflicts.items()
            }
            failed_secrets: set[str] = set()
            for action in plan.secret_actions:
                secret_name = action.secret_name
                try:
                    applied = self._kube.apply(action)
                except NotOurs as error:
                    self._foreign[namespace].add(secret_name)
                    failures[action.credential] = Failure(namespace, "Conflict", str(error))
                    failed_secrets.add(secret_name)
                    continue
                except KubeError as error:
                    failures[action.credential] = Failure(namespace, "ApiError", str(error))
                    failed_secrets.add(secret_name)
                    outcome.transient |= error.transient
                    continue
                self._count(outcome, action, applied)
                if applied.rotated:
                    outcome.rotated[action.credential] = outcome.rotated.get(action.credential, 0) + 1
            for action in plan.service_account_actions:
                if isinstance(action, AddPullSecret) and action.secret_name in failed_secrets:
                    continue
                try:
                    applied = self._kube.apply(action)
                except KubeError as error:
                    outcome.transient |= error.transient
                    if isinstance(action, AddPullSecret):
                        failures[action.credential] = Failure(namespace, "ApiError", str(error))
                    log.warning("serviceaccount edit failed", namespace=namespace,
                                service_account=action.service_account, error=str(error))
                    continue
                self._count(outcome, action, applied)
            outcome.changed = self._record(namespace, plan.matched, failures)
        self._metrics.observe_reconcile("namespace", bool(failures), time.monotonic() - started)
        return outcome

    def _index_misses_credentials(self) -> bool:
        """Whether a live CR is missing from kopf's index. A replica resuming after a pause
        handles namespace events before kopf has listed the CRs again (kopf arms its index
        gate only once per process), so a CR created meanwhile looks deleted; checked before
        any copy is deleted or entry removed (rare), never on the path that only adds."""
        try:
            live = {(body.get("metadata") or {}).get("name")
                    for body in self._kube.list_credentials(from_watch_cache=True)}
        except KubeError:
            return True
        return not live <= {(body.get("metadata") or {}).get("name")
                            for body in self._world.credential_bodies()}

    def _count(self, outcome: NamespaceOutcome, action: Any, applied: Applied) -> None:
        """Count and log a write, and put what it wrote into the caches at once."""
        if not applied.wrote:
            return
        outcome.wrote += 1
        if applied.written is not None:
            self._world.wrote(applied.written, _planned_from(action))
        credential = getattr(action, "credential", "")
        if isinstance(action, RemovePullSecret):
            log.info("removed pull secret entry", namespace=action.namespace,
                     service_account=action.service_account, secret=action.secret_name)
        else:
            log.info("applied", action=type(action).__name__, credential=credential,
                     namespace=action.namespace)

    def _record(self, namespace: str, matched: frozenset[str],
                failures: Mapping[str, Failure]) -> set[str]:
        """Update the ledger for one namespace; return the credentials whose entry changed."""
        changed = set()
        with self._state_lock:
            for credential in set(self._ledger) | matched:
                entries = self._ledger[credential]
                if credential in matched:
                    new = failures.get(credential)
                    if namespace not in entries or entries[namespace] != new:
                        entries[namespace] = new
                        changed.add(credential)
                elif namespace in entries:
                    del entries[namespace]
                    changed.add(credential)
        return changed

    def enqueue(self, namespace: str) -> None:
        """Entry point for namespace, ServiceAccount and copy events; never blocks, so kopf can
        call it from its event loop."""
        with self._state_lock:
            if self._stopped or namespace in self._queued:
                return
            self._queued.add(namespace)
        self._events.submit(self._run_queued, namespace)

    def _run_queued(self, namespace: str) -> None:
        with self._state_lock:
            self._queued.discard(namespace)  # events from now on queue another sync
        try:
            self.namespace_changed(namespace)
        except Exception:  # a thread pool would swallow it silently
            log.exception("namespace sync failed", namespace=namespace)
            self._retry_if(True, "namespace", namespace)

    def namespace_changed(self, namespace: str) -> None:
        """Sync one namespace, then publish the status of the CRs whose ledger entry changed."""
        outcome = self.sync_namespace(namespace)
        for credential in outcome.changed & self._complete:
            self.publish(credential, wrote=outcome.wrote > 0)
        self._retry_if(outcome.transient, "namespace", namespace)

    # --- retries after transient API failures ---------------------------------------------

    def _retry_if(self, failed: bool, kind: str, name: str) -> None:
        """Schedule the namespace or credential again if it `failed` transiently (with a
        growing delay), or forget its earlier attempts if it did not."""
        key = (kind, name)
        with self._state_lock:
            if not failed:
                self._attempts.pop(key, None)
                return
            if key in self._retries or self._stopped:
                return
            delay = RETRY_DELAYS[min(self._attempts[key], len(RETRY_DELAYS) - 1)]
            self._attempts[key] += 1
            timer = threading.Timer(delay, self._retry, args=(key,))
            timer.daemon = True
            self._retries[key] = timer
        log.info("retrying after a transient API failure", **{kind: name}, seconds=delay)
        timer.start()

    def _retry(self, key: tuple[str, str]) -> None:
        with self._state_lock:
            self._retries.pop(key, None)
        kind, name = key
        try:
            if kind == "namespace":
                self.namespace_changed(name)
            elif kind == "caches":
                self.verify_caches()
            else:
                self.sync_credential(name)
        except Exception:  # never lose the retry chain to an unexpected error
            log.exception("retry failed", **{kind: name})
            self._retry_if(True, kind, name)

    # --- objects deleted while a watch was down --------------------------------------------

    def verify_caches_soon(self) -> None:
        """A watch was re-listed: check the caches once the listing has had a moment."""
        with self._state_lock:
            if ("caches", "") in self._retries or self._stopped:
                return
            timer = threading.Timer(1.0, self._retry, args=(("caches", ""),))
            timer.daemon = True
            self._retries[("caches", "")] = timer
        timer.start()

    def verify_caches(self, max_age: float = 0.0) -> None:
        """Drop cached namespaces and copies that the API no longer has (their DELETED event
        was lost with a watch), then sync their namespaces: a copy deleted while regcred's
        watch was down is created again, a namespace deleted meanwhile leaves the status."""
        if max_age and time.monotonic() - self._verified < max_age:
            return
        cached = self._world.cached_uids()  # before the listing: newer entries are not judged
        try:
            live = self._kube.live_uids()
        except KubeError as error:
            log.warning("cannot check the caches", error=str(error))
            self._retry_if(error.transient, "caches", "")
            return
        self._verified = time.monotonic()
        self._retry_if(False, "caches", "")
        gone = {uid: namespace for uid, namespace in cached.items() if uid not in live}
        if not gone:
            return
        self._world.forget(gone)
        log.warning("dropped cache entries deleted while a watch was down", objects=len(gone))
        for namespace in sorted(set(gone.values())):
            self.namespace_changed(namespace)

    # --- one credential -------------------------------------------------------------------

    def sync_credential(self, name: str, *, resync: bool = False) -> None:
        """Re-render `name` from its source and converge every namespace."""
        started = time.monotonic()
        with self._credential_locks[name]:
            body = self._world.credential_body(name)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                return
            problem = self._refresh_config(name, body)
            self._synced_generations[name] = int((body.get("metadata") or {}).get("generation") or 0)
            if resync:
                self._foreign.clear()  # conflicts may have been resolved by hand: look again
            outcomes = list(self._pool.map(self.sync_namespace, self._world.namespace_names()))
            rotated = sum(o.rotated.get(name, 0) for o in outcomes)
            wrote = sum(o.wrote for o in outcomes)
            for other in set().union(*(o.changed for o in outcomes)) & self._complete - {name}:
                self.publish(other, wrote=False)
            self._complete.add(name)
            self.publish(name, wrote=wrote > 0, rotated=rotated, problem=problem)
            self._metrics.credential_synced(name, problem is None)
            unreadable = problem is not None and problem.reason == "SourceUnreadable"
            self._retry_if(unreadable or any(o.transient for o in outcomes), "credential", name)
        self._metrics.observe_reconcile("credential", problem is not None,
                                        time.monotonic() - started)

    def _refresh_config(self, name: str, body: Mapping[str, Any]) -> InvalidInput | None:
        """Render the CR's content; on any problem keep copies as they are (frozen)."""
        try:
            spec = self.parse(body)
            if spec.suspend:
                problem = None
            else:
                source = self._kube.read_source(spec.source.namespace, spec.source.name)
                if source is None:
                    raise InvalidInput(
                        "SourceNotFound",
                        f"source secret {spec.source.namespace}/{spec.source.name} not found; "
                        "create it or fix spec.sourceSecretRef",
                    )
                self._configs[name] = (spec.generation, render(spec, source))
                problem = None
        except InvalidInput as error:
            self._configs.pop(name, None)
            problem = error
        except KubeError as error:
            problem = InvalidInput("SourceUnreadable", f"cannot read the source secret: {error}")
        with self._state_lock:
            if problem is None:
                self._problems.pop(name, None)
            else:
                self._problems[name] = problem
        return problem

    def forget_credential(self, name: str) -> None:
        """The CR is being deleted: remove its copies and entries everywhere, then its state."""
        outcomes = list(self._pool.map(self.sync_namespace, self._world.namespace_names()))
        # A copy whose deletion is under way counts as gone, even if somebody else's
        # finalizer holds it: waiting for that would hold the CR on ours.
        leftovers = [c for ns in self._world.namespace_names() for c in self._world.copies(ns)
                     if c.credential == name and not c.deleting]
        if leftovers:
            raise CleanupIncomplete(f"{len(leftovers)} copies of {name} remain; retrying")
        with self._state_lock:
            for state in (self._configs, self._problems, self._ledger, self._statuses,
                          self._synced_generations):
                state.pop(name, None)
            self._complete.discard(name)
        self._metrics.forget(name)
        log.info("cleaned up", credential=name, writes=sum(o.wrote for o in outcomes))

    # --- status ---------------------------------------------------------------------------

    def publish(self, name: str, *, wrote: bool, rotated: int = 0,
                problem: InvalidInput | None = None) -> None:
        """Write the CR's status if it differs from what it shows; post events on news."""
        with self._publish_locks[name]:
            self._publish(name, wrote=wrote, rotated=rotated, problem=problem)

    def _publish(self, name: str, *, wrote: bool, rotated: int,
                 problem: InvalidInput | None) -> None:
        body = self._world.credential_body(name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return
        meta = body.get("metadata") or {}
        with self._state_lock:
            problem = problem or self._problems.get(name)
            entries = dict(self._ledger.get(name, {}))
            previous = self._statuses.get(name) or dict(body.get("status") or {})
            config = self._configs.get(name)
        failures = tuple(f for f in entries.values() if f)
        status = build_status(
            generation=int(meta.get("generation") or 0),
            previous=previous,
            now=self._clock(),
            problem=problem,
            suspended=bool((body.get("spec") or {}).get("suspend")),
            matched=len(entries),
            failures=failures,
            source_resource_version=config[1].source_resource_version if config else None,
            wrote=wrote,
            rotated=rotated > 0,
        )
        self._metrics.set_copies(name, len(entries) - len(failures))
        if not status_differs(status, previous):
            return
        try:
            self._kube.patch_status(name, status)
        except KubeError as error:
            log.warning("status update failed", credential=name, error=str(error))
            return
        with self._state_lock:
            self._statuses[name] = status
        self._post_news(name, meta.get("uid", ""), status, previous, rotated)

    def _post_news(self, name: str, uid: str, status: Mapping[str, Any],
                   previous: Mapping[str, Any], rotated: int) -> None:
        ready = status["conditions"][0]
        old = next(iter(previous.get("conditions") or []), {})
        if ready["status"] == "False" and (ready["reason"], ready["message"]) != (
            old.get("reason"), old.get("message")
        ):
            self._kube.post_event(name, uid, "Warning", ready["reason"], ready["message"])
            log.warning("not ready", credential=name, reason=ready["reason"],
                        message=ready["message"])
        if rotated:
            message = f"rotated {rotated} copies to source resourceVersion " \
                      f"{status['sourceResourceVersion']}"
            self._kube.post_event(name, uid, "Normal", "Rotated", message)
            log.info("rotated", credential=name, copies=rotated)

    def shutdown(self) -> None:
        with self._state_lock:
            self._stopped = True
            for timer in self._retries.values():
                timer.cancel()
            self._retries.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._events.shutdown(wait=False, cancel_futures=True)


def _undoes(plan: NamespacePlan) -> bool:
    return any(isinstance(a, DeleteCopy) for a in plan.secret_actions) or any(
        isinstance(a, RemovePullSecret) for a in plan.service_account_actions)


def _without_undoing(plan: NamespacePlan) -> NamespacePlan:
    """`plan` with only its creates, replaces and additions."""
    return replace(
        plan,
        secret_actions=tuple(a for a in plan.secret_actions if not isinstance(a, DeleteCopy)),
        service_account_actions=tuple(a for a in plan.service_account_actions
                                      if not isinstance(a, RemovePullSecret)),
    )


def _planned_from(action: Any) -> str | None:
    """The version of the object that `action` was planned from (None: it was absent)."""
    if isinstance(action, ReplaceCopy):
        return action.resource_version
    if isinstance(action, AddPullSecret | RemovePullSecret) and action.observed is not None:
        return action.observed.resource_version
    return None
