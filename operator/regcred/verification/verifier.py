"""Opt-in credential verification (spec.verify): does each registry accept the copy's
credential? `GET /v2/` with Basic or the Bearer token flow, TLS verified, a short timeout.

It never blocks syncing: checks run on threads of their own, and status publishing meets this
module in one place, `Verification.status_for` (a `ledger.StatusExtension`), called while a
CR's status is computed. That call only reads what the last checks found (the
CredentialsVerified condition and status.registries) and schedules a check when the rendered
content, the servers or the settings changed (a rotation); otherwise each CR is checked every
`intervalSeconds`, with jitter, and never on a plain resync. When a check ends, the status is
published again.

Neither the password nor a token is logged, put in status, events, metrics or exceptions.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog

from regcred.core.conditions import ANONYMOUS, TLS_ERROR, UNEXPECTED, UNREACHABLE, VERIFIED
from regcred.core.errors import InvalidInput
from regcred.core.source import RenderedConfig
from regcred.core.verification import (
    Refused,
    Result,
    Target,
    VerifySettings,
    basic_header,
    condition,
    next_check_delay,
    parse_challenge,
    parse_verify,
    registries_status,
    targets,
    token_from,
    token_url,
    verdict,
)
from regcred.metrics import Metrics
from regcred.workqueue import WorkQueue

log = structlog.get_logger("regcred.verification")

MAX_BODY = 64 * 1024
CHECK_WORKERS = 4


class EventPoster(Protocol):
    def post_event(self, credential: str, uid: str, kind: str, reason: str, message: str) -> None: ...


# --- one registry -------------------------------------------------------------------------


def check(target: Target, settings: VerifySettings) -> tuple[str, str]:
    """(result, message) for one registry; every failure becomes a result, never an exception."""
    try:
        context = ssl.create_default_context()
        if settings.ca_bundle:
            context.load_verify_locations(cadata=settings.ca_bundle)
    except (ssl.SSLError, ValueError):
        return TLS_ERROR, "spec.verify.caBundle cannot be loaded as PEM certificates"
    timeout = settings.timeout_seconds
    url = target.base + "/v2/"
    try:
        return _auth_flow(target, url, context, timeout)
    except Refused as error:
        return UNEXPECTED, str(error)
    except ssl.SSLCertVerificationError as error:
        return TLS_ERROR, f"TLS: {error.verify_message}; set spec.verify.caBundle for a private CA"
    except ssl.SSLError as error:
        return TLS_ERROR, f"TLS: {error.reason or type(error).__name__}"
    except TimeoutError:
        return UNREACHABLE, f"no answer within {timeout:g}s"
    except socket.gaierror:
        return UNREACHABLE, f"cannot resolve {urlsplit(url).hostname}"
    except (OSError, http.client.HTTPException) as error:
        why = getattr(error, "strerror", None) or "connection failed"
        return UNREACHABLE, f"{type(error).__name__}: {why}"


def _auth_flow(target: Target, url: str, context: ssl.SSLContext, timeout: float) -> tuple[str, str]:
    """`docker login`'s requests: anonymous `GET /v2/`, then Basic or the Bearer token flow as
    the challenge asks. Connection and TLS failures raise; `check` turns them into results."""
    status, challenge_header, _ = _get(url, None, context, timeout)
    if status == 200:
        return ANONYMOUS, "GET /v2/ answers 200 without credentials: nothing to verify"
    if status != 401:
        return UNEXPECTED, f"GET /v2/ without credentials: {status} (expected 401 with a challenge)"
    challenge = parse_challenge(challenge_header)
    basic = basic_header(target.username, target.password)
    if challenge.scheme == "basic":
        status, _, _ = _get(url, basic, context, timeout)
        return verdict("GET /v2/ (Basic)", status)
    if challenge.scheme == "bearer":
        realm = token_url(challenge, target.username)
        status, _, body = _get(realm, basic, context, timeout)
        realm_host = urlsplit(realm).netloc
        if status != 200:
            return verdict(f"token request to {realm_host}", status)
        status, _, _ = _get(url, "Bearer " + token_from(body), context, timeout)
        return verdict("GET /v2/ (Bearer token)", status)
    return UNEXPECTED, f"GET /v2/: 401 with an unsupported challenge {challenge.scheme or 'none'!r}"


def _get(url: str, authorization: str | None, context: ssl.SSLContext,
         timeout: float) -> tuple[int, str | None, bytes]:
    """One GET, no redirects followed (a credential must not follow one elsewhere)."""
    parts = urlsplit(url)
    connection = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout,
                                             context=context)
    headers = {"User-Agent": "regcred-verification", "Accept": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    try:
        connection.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                           headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("WWW-Authenticate"), response.read(MAX_BODY)
    finally:
        connection.close()


# --- scheduling ---------------------------------------------------------------------------


@dataclass
class _Tracked:
    """What one CR's checks are based on, and what they found."""

    key: tuple[Any, ...]  # settings, servers, content digest: a change means check now
    settings: VerifySettings
    servers: tuple[str, ...]
    config: RenderedConfig | None = field(repr=False)
    uid: str = ""
    results: dict[str, Result] = field(default_factory=dict)
    checked_key: tuple[Any, ...] | None = None
    running: bool = False
    due: float | None = None  # monotonic time of the next check, None while none is scheduled
    seen: float = field(default_factory=time.monotonic)  # last publish not caused by a check


class Verification:
    """Schedules and runs the checks; `status_for` is status publishing's one touch point.

    `rendered(name)` gives the content a CR's copies hold, `exists(name)` whether the CR is
    still there, `republish(name)` publishes its status again after a check. With
    `stale_after`, a CR whose status nobody else published for that long (this replica lost
    leadership: its resyncs stopped) is no longer checked here.
    """

    def __init__(self, kube: EventPoster, metrics: Metrics, *,
                 rendered: Callable[[str], RenderedConfig | None], exists: Callable[[str], bool],
                 republish: Callable[[str], None],
                 check_registry: Callable[[Target, VerifySettings], tuple[str, str]] = check,
                 clock: Callable[[], str], stale_after: float | None = None) -> None:
        self._kube, self._metrics, self._clock = kube, metrics, clock
        self._stale_after = stale_after
        self._republishing = threading.local()  # set while our own republish runs
        self._rendered, self._exists, self._republish = rendered, exists, republish
        self._check = check_registry
        self._tracked: dict[str, _Tracked] = {}
        self._lock = threading.Lock()
        # Due checks, by CR name: the controller's queue semantics (one pending check per CR,
        # never two at once), drained by CHECK_WORKERS threads started with the first check.
        self._queue: WorkQueue[str] = WorkQueue()
        self._workers: list[threading.Thread] = []

    def status_for(self, name: str, body: Mapping[str, Any], previous: Mapping[str, Any],
                   ) -> tuple[tuple[Mapping[str, Any], ...], Mapping[str, Any]]:
        """The CR's verification condition and `registries` field (or the field's removal when
        verification is off); schedules a check if what it is based on changed."""
        spec = body.get("spec") or {}
        try:
            settings = parse_verify(spec)
        except InvalidInput:
            settings = VerifySettings()  # the CRD's schema rejects it; nothing to check
        if not settings.enabled:
            self.forget(name)
            return (), ({"registries": None} if previous.get("registries") is not None else {})
        config = self._rendered(name)
        servers = tuple(str(r.get("server", "")) for r in spec.get("registries") or []
                        if isinstance(r, Mapping))
        key = (settings, servers, config.digest if config else None)
        republishing = getattr(self._republishing, "active", False)
        with self._lock:
            tracked = self._tracked.get(name)
            if tracked is None and republishing:
                # Our own republish after a check whose CR was forgotten meanwhile (not ours
                # to check any more): it must not start tracking it again.
                return (condition([]),), {}
            if tracked is None:
                tracked = self._tracked[name] = _Tracked(key, settings, servers, config)
            if config is not None and tracked.key != key:
                tracked.key, tracked.settings, tracked.servers = key, settings, servers
                tracked.config = config
            due_later = tracked.due is None or tracked.due > time.monotonic()
            if config is not None and tracked.checked_key != key and not tracked.running and due_later:
                self._schedule(name, tracked, 0.0)
            tracked.uid = str((body.get("metadata") or {}).get("uid", ""))
            if not republishing:
                tracked.seen = time.monotonic()
            results = [r for server, r in tracked.results.items() if server in servers]
        source_version = config.source_resource_version if config else ""
        return (condition(results),), {"registries": registries_status(results, source_version)}

    def forget(self, name: str) -> None:
        with self._lock:
            tracked = self._tracked.pop(name, None)
            if tracked is not None:
                for server, result in tracked.results.items():
                    self._metrics.registry_verification(name, server, None, previous=result.result)

    def shutdown(self, wait: bool = False) -> None:
        """Stop scheduling; with `wait`, also wait for checks under way (each ends within its
        timeout), so nothing of this object runs after it returns."""
        self._queue.shutdown()
        if wait:
            with self._lock:
                workers = list(self._workers)
            for worker in workers:
                worker.join()

    # --- internals ----------------------------------------------------------------------

    def _schedule(self, name: str, tracked: _Tracked, delay: float) -> None:
        """Caller holds `_lock`. `tracked.due` is when the next check is due; a queued add
        that comes earlier (the check was put off since) is added again for that time."""
        tracked.due = time.monotonic() + delay
        if not self._workers:
            self._workers = [threading.Thread(target=self._work, name=f"regcred-verify-{index}",
                                              daemon=True) for index in range(CHECK_WORKERS)]
            for worker in self._workers:
                worker.start()
        self._queue.add_after(name, delay)

    def _work(self) -> None:
        while (name := self._queue.get()) is not None:
            try:
                self._take(name)
            finally:
                self._queue.done(name)

    def _take(self, name: str) -> None:
        """Run the CR's check if it is due now."""
        with self._lock:
            tracked = self._tracked.get(name)
            if tracked is None or tracked.running or tracked.due is None:
                return  # forgotten, or its check ran already
            now = time.monotonic()
            if tracked.due > now:
                self._queue.add_after(name, tracked.due - now)
                return
            stale = self._stale_after is not None and now - tracked.seen > self._stale_after
            if not stale:
                tracked.running, tracked.due = True, None
        if stale:
            self.forget(name)  # not ours to check any more
            return
        self._run(name, tracked)

    def _run(self, name: str, tracked: _Tracked) -> None:
        try:
            self._verify(name, tracked)
        except Exception:  # a thread pool would swallow it; keep the schedule alive
            log.exception("verification failed unexpectedly", credential=name)
            with self._lock:
                tracked.running = False
                self._schedule(name, tracked, tracked.settings.interval_seconds)

    def _verify(self, name: str, tracked: _Tracked) -> None:
        if not self._exists(name):  # deleted meanwhile: stop checking it
            self.forget(name)
            return
        with self._lock:
            key, settings, servers, config = tracked.key, tracked.settings, tracked.servers, tracked.config
        before = self._verdict_of(tracked)
        now = self._clock()
        found: dict[str, Result] = {}
        if config is not None:
            checkable, skipped = targets(servers, config)
            for target in checkable:
                answer, message = self._check(target, settings)
                found[target.server] = Result(target.server, answer, message, now)
            for server, message in skipped.items():
                found[server] = Result(server, "NotChecked", message, now)
        with self._lock:
            if self._tracked.get(name) is not tracked:
                return  # forgotten meanwhile
            old_results, tracked.results = tracked.results, found
            tracked.checked_key, tracked.running = key, False
            self._schedule(name, tracked, 0.0 if tracked.key != key else next_check_delay(settings))
            # Under the lock: a `forget` right after must find these series to remove.
            for server, outcome in found.items():
                previous = old_results.get(server)
                self._metrics.registry_verification(name, server, outcome.result,
                                                    previous=previous.result if previous else None)
        for server, outcome in found.items():
            log.info("registry checked", credential=name, registry=server, result=outcome.result,
                     detail=outcome.message)
        self._post_change(name, tracked, before)
        self._republishing.active = True
        try:
            self._republish(name)
        finally:
            self._republishing.active = False

    @staticmethod
    def _verdict_of(tracked: _Tracked) -> tuple[str, str]:
        if not tracked.results:
            return "", ""
        entry = condition(list(tracked.results.values()))
        return entry["status"], entry["reason"]

    def _post_change(self, name: str, tracked: _Tracked, before: tuple[str, str]) -> None:
        """A Warning event when verification starts failing or fails differently, a Normal one
        when it recovers."""
        entry = condition(list(tracked.results.values()))
        after = (entry["status"], entry["reason"])
        if after == before or after[0] == "Unknown":
            return
        if after[0] == "False":
            self._kube.post_event(name, tracked.uid, "Warning", f"Verification{after[1]}", entry["message"])
        elif before[0] == "False":
            self._kube.post_event(name, tracked.uid, "Normal", VERIFIED, entry["message"])
