"""What regcred knows about each credential's progress, and the status it publishes from it.

`Ledger`: for each credential, every namespace it matches and, per namespace, synced or why
not; plus the credential's own problem (bad input, unreadable source) and the source version
it last rendered. Namespace syncs record into it; the status is computed from it.

`StatusPublisher`: computes a credential's status from the ledger with the pure
`core.status.build_status`, writes it only when it differs from what the CR shows, and posts
an Event on news (a new reason for not being Ready, a rotation). Conditions other than Ready
and fields of their own come from the one `StatusExtension` (regcred/verification/verifier.py),
asked at each publish.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from regcred.core.conditions import ROTATED, read_status
from regcred.core.errors import Problem
from regcred.core.status import Failure, build_status, status_differs
from regcred.kube.errors import KubeError
from regcred.metrics import Metrics

log = structlog.get_logger("regcred.ledger")


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Ledger:
    """Thread-safe: namespace syncs record from many threads at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Failure | None]] = defaultdict(dict)
        # Credentials with one full fan-out done: only their ledger is complete, so only they
        # get status from namespace syncs (a restart must not publish half-filled counts).
        self._complete: set[str] = set()
        self._problems: dict[str, Problem] = {}
        self._source_versions: dict[str, str] = {}

    def record(self, namespace: str, matched: frozenset[str],
               failures: Mapping[str, Failure]) -> set[str]:
        """Take in one namespace's outcome; return the credentials whose entry changed."""
        changed = set()
        with self._lock:
            for credential in set(self._entries) | matched:
                entries = self._entries[credential]
                if credential in matched:
                    new = failures.get(credential)
                    if namespace not in entries or entries[namespace] != new:
                        entries[namespace] = new
                        changed.add(credential)
                elif namespace in entries:
                    del entries[namespace]
                    changed.add(credential)
        return changed

    def entries(self, credential: str) -> dict[str, Failure | None]:
        with self._lock:
            return dict(self._entries.get(credential, {}))

    def rendered(self, credential: str, problem: Problem | None, source_version: str | None) -> None:
        """The credential was just rendered (or failed to be); None: no version is rendered."""
        with self._lock:
            if problem is None:
                self._problems.pop(credential, None)
            else:
                self._problems[credential] = problem
            if source_version is None:
                self._source_versions.pop(credential, None)
            else:
                self._source_versions[credential] = source_version

    def problem(self, credential: str) -> Problem | None:
        with self._lock:
            return self._problems.get(credential)

    def source_version(self, credential: str) -> str | None:
        with self._lock:
            return self._source_versions.get(credential)

    def mark_complete(self, credential: str) -> None:
        with self._lock:
            self._complete.add(credential)

    def complete(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._complete)

    def forget(self, credential: str) -> None:
        with self._lock:
            for state in (self._entries, self._problems, self._source_versions):
                state.pop(credential, None)
            self._complete.discard(credential)


class StatusWriter(Protocol):
    """The two API calls publishing needs (`Kube` has them)."""

    def patch_status(self, name: str, status: Mapping[str, Any]) -> None: ...
    def post_event(self, credential: str, uid: str, kind: str, reason: str, message: str) -> None: ...


class StatusExtension(Protocol):
    """Extra status computed at publish time: conditions (type, status, reason, message) that
    follow Ready, and top-level fields (a None value removes a field: merge-patch semantics)."""

    def status_for(self, name: str, body: Mapping[str, Any], previous: Mapping[str, Any],
                   ) -> tuple[tuple[Mapping[str, Any], ...], Mapping[str, Any]]: ...


class CredentialBodies(Protocol):
    def credential_body(self, name: str) -> Mapping[str, Any] | None: ...


class StatusPublisher:
    def __init__(self, kube: StatusWriter, credentials: CredentialBodies, ledger: Ledger,
                 metrics: Metrics, clock: Callable[[], str] = utc_now) -> None:
        self._kube = kube
        self._credentials = credentials
        self._ledger = ledger
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._published: dict[str, dict[str, Any]] = {}  # the status we last wrote, per CR
        # One computation and write at a time per CR: two publishes racing could otherwise
        # let the one computed from an older ledger land last, and stay.
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._extensions: list[StatusExtension] = []

    def extend(self, extension: StatusExtension) -> None:
        self._extensions.append(extension)

    def publish(self, name: str, *, wrote: bool, rotated: int = 0) -> None:
        """Write the CR's status if it differs from what it shows; post events on news."""
        with self._lock:
            lock = self._locks[name]
        with lock:
            self._publish(name, wrote=wrote, rotated=rotated)

    def forget(self, name: str) -> None:
        with self._lock:
            self._published.pop(name, None)

    def _publish(self, name: str, *, wrote: bool, rotated: int) -> None:
        body = self._credentials.credential_body(name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return
        meta = body.get("metadata") or {}
        entries = self._ledger.entries(name)
        with self._lock:
            previous = self._published.get(name) or dict(body.get("status") or {})
        failures = tuple(f for f in entries.values() if f)
        conditions: tuple[Mapping[str, Any], ...] = ()
        fields: dict[str, Any] = {}
        for extension in self._extensions:
            more_conditions, more_fields = extension.status_for(name, body, previous)
            conditions += more_conditions
            fields.update(more_fields)
        status = build_status(
            generation=int(meta.get("generation") or 0),
            previous=previous,
            now=self._clock(),
            problem=self._ledger.problem(name),
            suspended=bool((body.get("spec") or {}).get("suspend")),
            matched=len(entries),
            failures=failures,
            source_resource_version=self._ledger.source_version(name),
            wrote=wrote,
            rotated=rotated > 0,
            extra_conditions=conditions,
        )
        status.update(fields)
        self._metrics.set_copies(name, len(entries) - len(failures))
        if not status_differs(status, previous):
            return
        try:
            self._kube.patch_status(name, status)
        except KubeError as error:  # a status write never fails a sync; the next one retries
            log.warning("status update failed", credential=name, error=str(error))
            return
        with self._lock:
            self._published[name] = status
        self._post_news(name, meta.get("uid", ""), status, previous, rotated)

    def _post_news(self, name: str, uid: str, status: Mapping[str, Any],
                   previous: Mapping[str, Any], rotated: int) -> None:
        ready = read_status({"status": status}).ready
        old = read_status({"status": previous}).ready
        if ready.status == "False" and (ready.reason, ready.message) != (old.reason, old.message):
            self._kube.post_event(name, uid, "Warning", ready.reason, ready.message)
            log.warning("not ready", credential=name, reason=ready.reason, message=ready.message)
        if rotated:
            message = f"rotated {rotated} copies to source resourceVersion " \
                      f"{status['sourceResourceVersion']}"
            self._kube.post_event(name, uid, "Normal", ROTATED, message)
            log.info("rotated", credential=name, copies=rotated)
