"""The credential provider endpoint in `regcred run` (`--credential-provider`).

`regcred-credential-provider` (plugin.py), run by the kubelet for a pull, POSTs the image with
the Pod-bound ServiceAccount token as a Bearer token. The endpoint
1. asks the API server (TokenReview, regcred's own audience) whether the token is valid;
2. reads the Pod the token is bound to: it must exist with the token's uid, run under the
   token's ServiceAccount, and be on the token's node where the token names one;
3. resolves the image against the CRs delivered by the provider, from the operator's caches
   and the content it last rendered (the same the copies carry), with core/provider.py;
and answers a CredentialProviderResponse, or 403 with the refusal's reason. Each request is
counted by result and reason (metrics) and, per CR, in `status.pullTime`.

The server is the standard library's, on threads: each request makes two blocking API calls,
which is what threads are for. TLS like the admission webhook's: a CA of regcred's own and a
serving certificate it signs, kept in one Secret (`--credential-provider-tls-secret`) that
every replica shares; nodes trust that CA (`ca.crt` of the Secret). With peering, a replica
whose own view has nothing for the Pod (the paused standby's stands still) looks again at
live reads (`LiveServed`), so the Service may send a kubelet to either replica.
Neither tokens nor credentials are logged, counted or put in status.
"""

from __future__ import annotations

import json
import socket
import ssl
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import kopf
import structlog

from regcred.admission.tls import WebhookTLS
from regcred.admission.webhook import ensure_certificate
from regcred.core.errors import InvalidInput
from regcred.core.matching import NamespaceInfo
from regcred.core.plan import Credential
from regcred.core.provider import (
    BAD_REQUEST,
    NO_CREDENTIAL,
    NOT_MATCHED,
    UNAVAILABLE,
    Answer,
    Refusal,
    check_pod,
    resolve,
    token_claims,
)
from regcred.core.source import RenderedConfig, SourceSecret, render
from regcred.core.spec import CredentialSpec
from regcred.kube.client import Kube
from regcred.kube.config import api_client
from regcred.kube.errors import OPERATOR_ROLE, KubeError
from regcred.metrics import Metrics
from regcred.runtime import runtime_of
from regcred.settings import ProviderSettings, Settings
from regcred.sync.controller import SyncLoop
from regcred.sync.ledger import StatusPublisher

log = structlog.get_logger("regcred.provider")

PATH = "/v1/credentials"
API_VERSION = "credentialprovider.kubelet.k8s.io/v1"
MAX_BODY = 64 * 1024
API_THREADS = 16  # connections of its own: a fan-out never queues ahead of a pull
CERTIFICATE_CHECK_SECONDS = 3600.0
STATUS_PUBLISH_SECONDS = 10.0  # at most this often per CR, and only when its counts changed
LIVE_RENDER_SECONDS = 10.0  # how long a standby reuses a content it rendered from a live read


class Served(Protocol):
    """What the answer is made from: the operator's view of CRs, their content and namespaces."""

    def credentials(self) -> list[Credential]: ...
    def namespace(self, name: str) -> NamespaceInfo | None: ...


class Api(Protocol):
    def review_token(self, token: str, audience: str) -> dict[str, Any]: ...
    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...


class LiveApi(Protocol):
    def list_credentials(self, *, from_watch_cache: bool = False) -> Iterable[Mapping[str, Any]]: ...
    def read_namespace(self, name: str) -> dict[str, Any] | None: ...
    def read_source(self, namespace: str, name: str) -> SourceSecret | None: ...


class LiveServed:
    """The answer's inputs read now, for a replica that does not sync: kopf stops a paused
    standby's watches, so its CR index and namespace cache stand still, and it renders
    nothing. The CRs come from the API server's watch cache, the namespace from a read, the
    content from the source Secret, rendered here and reused for `LIVE_RENDER_SECONDS`."""

    def __init__(self, kube: LiveApi, parse: Callable[[Mapping[str, Any]], CredentialSpec],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube, self._parse, self._clock = kube, parse, clock
        self._lock = threading.Lock()
        self._renders: dict[tuple[str, int], tuple[float, RenderedConfig | None]] = {}

    def credentials(self) -> list[Credential]:
        result = []
        for body in self._kube.list_credentials(from_watch_cache=True):
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                continue
            try:
                spec = self._parse(body)
            except InvalidInput:
                continue
            if spec.served_at_pull and not spec.suspend:
                result.append(Credential(spec.name, spec.uid, spec, self._rendered(spec)))
        return result

    def namespace(self, name: str) -> NamespaceInfo | None:
        body = self._kube.read_namespace(name)
        return NamespaceInfo.from_body(body) if body is not None else None

    def _rendered(self, spec: CredentialSpec) -> RenderedConfig | None:
        now, key = self._clock(), (spec.name, spec.generation)
        with self._lock:
            self._renders = {k: v for k, v in self._renders.items() if v[0] > now}
            if key in self._renders:
                return self._renders[key][1]
        source = self._kube.read_source(spec.source.namespace, spec.source.name)
        try:
            config = render(spec, source) if source is not None else None
        except InvalidInput:  # the active replica reports it in the CR's status
            config = None
        with self._lock:
            self._renders[key] = (now + LIVE_RENDER_SECONDS, config)
        return config


# --- the decision, as I/O around the core ---------------------------------------------------

class Endpoint:
    """One request in, one answer out: (HTTP status, JSON body)."""

    def __init__(self, kube: Api, served: Served, options: ProviderSettings,
                 metrics: Metrics, tally: PullTally, live: Served | None = None) -> None:
        """`live`: where to look again when `served` has nothing for the Pod (with peering,
        this replica may be the paused standby, whose own view stands still)."""
        self._kube, self._served, self._options = kube, served, options
        self._metrics, self._tally, self._live = metrics, tally, live

    def answer(self, token: str, image: str) -> tuple[int, dict[str, Any]]:
        started = time.monotonic()
        outcome = self._decide(token, image)
        self._metrics.provider_request(outcome.reason if isinstance(outcome, Refusal) else None,
                                       time.monotonic() - started)
        self._tally.record(outcome)
        if isinstance(outcome, Refusal):
            log.info("pull-time request refused", reason=outcome.reason, message=outcome.message)
            status = 503 if outcome.reason == UNAVAILABLE else 403
            return status, {"reason": outcome.reason, "message": outcome.message}
        log.info("pull-time request answered", image=image, credentials=list(outcome.credentials))
        return 200, {
            "apiVersion": API_VERSION, "kind": "CredentialProviderResponse",
            # Per image: a Registry key would reuse an answer for images of the same host
            # that the answer's keys (which may carry a path) do not cover.
            "cacheKeyType": "Image",
            "cacheDuration": f"{self._options.cache_seconds}s",
            "auth": {key: {"username": login.username, "password": login.password}
                     for key, login in outcome.auths.items()},
        }

    def _decide(self, token: str, image: str) -> Answer | Refusal:
        if not token or not image:
            return Refusal(BAD_REQUEST, "send the image in the body and the token as a Bearer token")
        try:
            self._metrics.token_reviews.inc()
            claims = token_claims(self._kube.review_token(token, self._options.audience),
                                  self._options.audience)
            if isinstance(claims, Refusal):
                return claims
            identity = check_pod(claims, self._kube.read_pod(claims.namespace, claims.pod_name))
            if isinstance(identity, Refusal):
                return identity
            outcome = resolve(self._served.credentials(), self._served.namespace(identity.namespace),
                              identity.service_account, image)
            if isinstance(outcome, Refusal) and outcome.reason in (NO_CREDENTIAL, NOT_MATCHED) \
                    and self._live is not None:
                outcome = resolve(self._live.credentials(), self._live.namespace(identity.namespace),
                                  identity.service_account, image)
                log.debug("looked again at live reads", namespace=identity.namespace,
                          answered=isinstance(outcome, Answer))
        except KubeError as error:
            return Refusal(UNAVAILABLE, f"cannot ask the API server: {error}")
        return outcome


# --- status.pullTime ------------------------------------------------------------------------

class PullTally:
    """Answered and refused requests per CR over the last `window` seconds, published in
    `status.pullTime` (a `ledger.StatusExtension`); a changed count is published within
    `STATUS_PUBLISH_SECONDS`, by a thread of its own, never by the request."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._window, self._clock = window, clock
        self._lock = threading.Lock()
        self._events: dict[str, deque[tuple[float, bool]]] = defaultdict(deque)
        self._changed: set[str] = set()

    def record(self, outcome: Answer | Refusal) -> None:
        answered = isinstance(outcome, Answer)
        now = self._clock()
        with self._lock:
            for name in outcome.credentials:
                self._events[name].append((now, answered))
                self._changed.add(name)

    def counts(self, name: str) -> tuple[int, int]:
        """(answered, refused) within the window."""
        with self._lock:
            self._expire(name)
            events = self._events.get(name, ())
            answered = sum(1 for _, ok in events if ok)
            return answered, len(events) - answered

    def changed(self) -> set[str]:
        """CRs whose counts changed since the last call (requests, or ones ageing out)."""
        with self._lock:
            for name in list(self._events):
                self._expire(name)
            changed, self._changed = self._changed, set()
            return changed

    def _expire(self, name: str) -> None:
        events = self._events.get(name)
        horizon = self._clock() - self._window
        while events and events[0][0] < horizon:
            events.popleft()
            self._changed.add(name)
        if events is not None and not events:
            del self._events[name]

    def status_for(self, name: str, body: Mapping[str, Any], previous: Mapping[str, Any],
                   ) -> tuple[tuple[Mapping[str, Any], ...], Mapping[str, Any]]:
        delivery = (body.get("spec") or {}).get("delivery") or "Secrets"
        if delivery == "Secrets":
            return (), {"pullTime": None}
        answered, refused = self.counts(name)
        return (), {"pullTime": {"answered": answered, "refused": refused,
                                 "windowSeconds": int(self._window)}}


# --- HTTPS ----------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server: ProviderServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        if self.path != PATH:
            self._send(404, {"reason": "NotFound", "message": f"POST {PATH}"})
            return
        length = self.headers.get("Content-Length") or ""
        if not length.isdigit() or not 0 < int(length) <= MAX_BODY:
            self._send(400, {"reason": BAD_REQUEST, "message": "a JSON body {\"image\": ...} is needed"})
            return
        try:
            image = json.loads(self.rfile.read(int(length))).get("image")
        except (ValueError, AttributeError):
            image = None
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        status, body = self.server.endpoint.answer(token if scheme == "Bearer" else "",
                                                   image if isinstance(image, str) else "")
        self._send(status, body)

    def _send(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are logged by `Endpoint` (structured, without the token)."""


class ProviderServer(ThreadingHTTPServer):
    """HTTPS on threads; each connection is wrapped with the context current at accept time,
    so a renewed certificate serves the next connection without a restart."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._context: ssl.SSLContext | None = None
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def use_certificate(self, tls: WebhookTLS) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory(prefix="regcred-provider-") as directory:
            cert, key = Path(directory) / "tls.crt", Path(directory) / "tls.key"
            cert.write_bytes(tls.cert)
            key.touch(0o600)
            key.write_bytes(tls.key)
            context.load_cert_chain(cert, key)
        self._context = context

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        assert self._context is not None, "use_certificate first"
        connection.settimeout(30)
        return self._context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError):
            return  # a client that does not trust us, or went away: nothing to answer
        super().finish_request(request, client_address)


def serving_hosts(options: ProviderSettings, namespace: str) -> list[str]:
    if options.hosts:
        return list(options.hosts)
    service = f"{options.service}.{namespace}.svc"
    return [service, f"{service}.cluster.local"]


# --- kopf wiring ----------------------------------------------------------------------------

@dataclass
class Provider:
    server: ProviderServer
    stop: threading.Event


class _FromController:
    """`Served` from the running operator: its reconciler's renders, its namespace cache."""

    def __init__(self, sync: SyncLoop) -> None:
        self._reconciler = sync.controller.reconciler
        self._caches = sync.caches

    def credentials(self) -> list[Credential]:
        result: list[Credential] = self._reconciler.credentials()
        return result

    def namespace(self, name: str) -> NamespaceInfo | None:
        info: NamespaceInfo | None = self._caches.namespace(name)
        return info


def register(registry: kopf.OperatorRegistry) -> None:
    """Register the endpoint's start-up (after the operator's own) and clean-up."""
    kopf.on.startup(registry=registry)(start_provider)
    kopf.on.cleanup(registry=registry)(stop_provider)


def start_provider(memo: kopf.Memo, **_: Any) -> None:
    runtime = runtime_of(memo)
    if runtime.get(Provider) is not None:  # kopf retries start-up steps: build once
        return
    sync = runtime.get(SyncLoop)
    if sync is None:
        raise kopf.TemporaryError("waiting for the operator to start", delay=1)
    settings = runtime.settings
    options = settings.provider
    assert options is not None
    publisher = sync.controller.publisher
    assert publisher is not None  # controller.build always gives it one
    kube = Kube(api_client(runtime.api_configuration, API_THREADS), on_error=runtime.metrics.api_error,
                role=OPERATOR_ROLE)
    tally = PullTally(options.window_seconds)
    publisher.extend(tally)
    served = _FromController(sync)
    live = LiveServed(kube, sync.controller.reconciler.parse) if settings.peering else None
    endpoint = Endpoint(kube, served, options, runtime.metrics, tally, live)
    hosts = serving_hosts(options, settings.operator_namespace)
    try:
        tls = ensure_certificate(kube, settings.operator_namespace, options.tls_secret, hosts)
    except KubeError as error:
        raise kopf.TemporaryError(f"cannot get the endpoint's certificate yet: {error}", delay=2) from None
    server = ProviderServer((options.listen_host, options.listen_port), endpoint)
    server.use_certificate(tls)
    stop = threading.Event()
    runtime.add(Provider(server, stop))
    threading.Thread(target=server.serve_forever, name="credential-provider", daemon=True).start()
    synced_here = sync.controller.reconciler.has_synced
    threading.Thread(target=_maintain,
                     args=(kube, server, tally, publisher, synced_here, settings, hosts, stop),
                     name="credential-provider-upkeep", daemon=True).start()
    log.info("serving the credential provider endpoint",
             listen=f"{options.listen_host}:{options.listen_port}", audience=options.audience)


def _maintain(kube: Kube, server: ProviderServer, tally: PullTally, publisher: StatusPublisher,
              synced_here: Callable[[str], bool], settings: Settings, hosts: list[str],
              stop: threading.Event) -> None:
    """Publish changed counts every few seconds; renew the certificate every hour."""
    assert settings.provider is not None
    last_check = time.monotonic()
    while not stop.wait(STATUS_PUBLISH_SECONDS):
        publish_counts(tally, synced_here, publisher.publish)
        if time.monotonic() - last_check >= CERTIFICATE_CHECK_SECONDS:
            last_check = time.monotonic()
            try:
                server.use_certificate(ensure_certificate(
                    kube, settings.operator_namespace, settings.provider.tls_secret, hosts))
            except KubeError as error:
                log.warning("cannot check the endpoint's certificate", error=str(error))


def publish_counts(tally: PullTally, synced_here: Callable[[str], bool],
                   publish: Callable[..., None]) -> None:
    """Publish the CRs whose counts changed, where this replica writes the rest of their
    status: a paused standby's ledger is empty, and its status would overwrite the active's."""
    for name in tally.changed():
        if synced_here(name):
            publish(name, wrote=False)


def stop_provider(memo: kopf.Memo, **_: Any) -> None:
    provider = runtime_of(memo).get(Provider)
    if provider is not None:
        provider.stop.set()
        provider.server.shutdown()
        provider.server.server_close()
