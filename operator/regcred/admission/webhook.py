"""The ServiceAccount admission webhook, wired into kopf: thin handlers over the core.

Registered only with `--admission` (cli.run calls `register`). kopf's `WebhookServer` serves the
requests (TLS, certificate reloads, the listener's life) and hands each AdmissionReview to
`Reviewer`, not to kopf's admission engine and an `@kopf.on.mutate` handler: that engine
cost about 4 ms and a thread hop per ServiceAccount create, on the API server's critical path
(docs/admission.md, "Why not kopf's admission engine"). The decision is
`regcred.core.admission`. regcred writes the MutatingWebhookConfiguration itself rather than
through kopf's `settings.admission.managed`: kopf 1.45's managed configuration hard-codes
`timeoutSeconds: 30` (a dead webhook would hold every ServiceAccount create for 30 s), has no
`namespaceSelector`, and removes its webhooks when the process exits, which would leave the
surviving replica of an HA pair without one.

Every replica serves the webhook, the paused standby included, and decides from the namespace
as the sync feature's watch has it (every replica watches; read live when that watch has not
delivered it yet) and from the CRs as its own watch has them (`LiveCredentials`: kopf stops
its watches while paused), docs/admission.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import kopf
import structlog

from regcred.admission.tls import WebhookTLS, renewal, utc_now
from regcred.core.admission import (
    AdmissionCredential,
    admission_credentials,
    admission_patch,
    pull_secrets_at_creation,
    trusted_cached_namespace,
    webhook_namespace_selector,
)
from regcred.core.errors import InvalidInput
from regcred.core.matching import NamespaceInfo
from regcred.core.spec import GROUP, PLURAL, VERSION, CredentialSpec, parse_credential
from regcred.kube.client import Kube
from regcred.kube.config import api_client
from regcred.kube.errors import OPERATOR_ROLE, ApiConflict, ApiInvalid, KubeError
from regcred.runtime import Runtime, runtime_of
from regcred.settings import AdmissionSettings, Settings
from regcred.sync.controller import SyncLoop

log = structlog.get_logger("regcred.admission")

WEBHOOK_ID = "serviceaccount-pull-secrets"
CONFIGURATION_NAME = "regcred"
WEBHOOK_NAME = "serviceaccounts.regcred.dev"
TIMEOUT_SECONDS = 2  # regcred down must not noticeably slow ServiceAccount creation
SERVICE_PORT = 443
CERTIFICATE_CHECK_SECONDS = 3600.0
FILE_CHECK_SECONDS = 10.0  # how soon kopf's server picks up renewed certificate files
TEMP_PREFIX = "regcred-webhook-"
API_THREADS = 4  # the webhook's own connections, so a fan-out never queues ahead of it


# --- the decision --------------------------------------------------------------------------

class LiveCredentials:
    """The CRs as the API server has them, from a list+watch of this replica's own, and the
    ones the webhook may use, worked out once per change instead of on every request.

    Not kopf's index: kopf stops its watches on a paused standby, which serves the webhook
    too. Before this, every request listed the CRs (from the API server's watch cache, no
    fresher than this watch) and parsed each: an API call per ServiceAccount create."""

    def __init__(self, parse: Callable[[Mapping[str, Any]], CredentialSpec]) -> None:
        self._parse = parse
        self._lock = threading.Lock()
        self._bodies: dict[str, dict[str, Any]] = {}
        self._usable: list[AdmissionCredential] | None = None  # None until listed

    def usable(self) -> list[AdmissionCredential] | None:
        """What the webhook may use now; None until the CRs have been listed."""
        return self._usable

    def start(self, kube: Kube, stop: threading.Event) -> None:
        threading.Thread(target=self._follow, args=(kube, stop), name="admission-credentials",
                         daemon=True).start()

    def _follow(self, kube: Kube, stop: threading.Event) -> None:
        while not stop.is_set():
            listing = kube.listing("registrycredentials")
            try:
                self.listed(listing)
            except KubeError as error:
                log.warning("cannot list the RegistryCredentials yet", error=str(error))
                stop.wait(2)
                continue
            kube.follow("registrycredentials", listing.resource_version, self.changed, self.listed, stop)

    def listed(self, listing: Iterable[dict[str, Any]]) -> None:
        bodies = {(body.get("metadata") or {}).get("name", ""): body for body in listing}
        with self._lock:
            self._bodies = bodies
            self._usable = admission_credentials(bodies.values(), self._parse)

    def changed(self, type: str, body: dict[str, Any]) -> None:
        name = (body.get("metadata") or {}).get("name", "")
        with self._lock:
            if type == "DELETED":
                self._bodies.pop(name, None)
            else:
                self._bodies[name] = body
            self._usable = admission_credentials(self._bodies.values(), self._parse)


class Decider:
    """Takes the namespace as the sync feature's watch has it (read live when that cannot be
    trusted: `trusted_cached_namespace`), the CRs from `LiveCredentials` (or, until they are
    listed, from the API), and asks the core."""

    def __init__(self, kube: Kube, settings: Settings,
                 cached_namespace: Callable[[str], NamespaceInfo | None]) -> None:
        self._kube = kube
        self._cached_namespace = cached_namespace
        self._parse = functools.partial(
            parse_credential, default_source_namespace=settings.operator_namespace,
            allowed_source_namespaces=settings.source_namespaces)
        self.credentials = LiveCredentials(self._parse)

    def entries_for(self, namespace: str, service_account: str, live: bool) -> tuple[str, ...] | None:
        """Our entries for a new ServiceAccount. Without `live`, from memory alone: None when
        that needs a read from the API (the caller then asks again with `live`, off its loop)."""
        # The CRs may be a few ms behind (a CR is used only once synced, which takes longer).
        credentials = self.credentials.usable()
        if credentials is None:
            if not live:
                return None
            credentials = admission_credentials(self._kube.list_credentials(from_watch_cache=True),
                                                self._parse)
        if not credentials:
            return ()
        info = trusted_cached_namespace(self._cached_namespace(namespace))
        if info is None:
            if not live:
                return None
            body = self._kube.read_namespace(namespace)
            if body is None:
                return ()
            info = NamespaceInfo.from_body(body)
        return pull_secrets_at_creation(info, credentials, service_account)

    def specs(self, bodies: Iterable[Mapping[str, Any]]) -> list[CredentialSpec]:
        specs = []
        for body in bodies:
            with contextlib.suppress(InvalidInput):
                specs.append(self._parse(body))
        return specs


def register(registry: kopf.OperatorRegistry) -> None:
    """Register the webhook and its start-up, clean-up and CR handlers with `registry`."""
    kopf.on.startup(registry=registry)(start_admission)
    kopf.on.cleanup(registry=registry)(stop_admission)
    # kopf passes indexes to handlers as keyword arguments its protocols cannot name.
    kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)(credential_seen_by_admission)  # type: ignore[arg-type]


class Reviewer:
    """Answers each AdmissionReview kopf's `WebhookServer` receives: ServiceAccount CREATE
    only (the one rule the webhook configuration has), every other request allowed as it is."""

    def __init__(self, decider: Decider) -> None:
        self._decider = decider

    async def __call__(self, review: Mapping[str, Any], *, webhook: str | None = None,
                       headers: Mapping[str, str] | None = None,
                       sslpeer: Mapping[str, Any] | None = None) -> dict[str, Any]:
        request = review.get("request") or {}
        answer: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
        if (request.get("operation") == "CREATE"
                and (request.get("resource") or {}).get("resource") == "serviceaccounts"):
            account = request.get("object") or {}
            names = self.entries(request, account, live=False)  # on the loop: no I/O
            if names is None:  # a live read: off the loop
                names = await asyncio.to_thread(self.entries, request, account, True)
            patch = admission_patch(account, names or ())
            if patch:
                answer["patchType"] = "JSONPatch"
                answer["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        return {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
                "kind": "AdmissionReview", "response": answer}

    def entries(self, request: Mapping[str, Any], account: Mapping[str, Any],
                live: bool) -> tuple[str, ...] | None:
        """Our entries for a new ServiceAccount (None: `Decider.entries_for` needs `live`).
        Never refuses: an error admits it unchanged (an error answer would deny the create,
        whatever `failurePolicy` says) and the watch path adds the entries once the
        ServiceAccount is seen."""
        meta = account.get("metadata") or {}
        namespace = meta.get("namespace") or request.get("namespace") or ""
        name = meta.get("name") or request.get("name") or ""
        try:
            names = self._decider.entries_for(namespace, name, live)
        except KubeError as error:
            log.warning("admitted unchanged: cannot read the cluster", namespace=namespace,
                        service_account=name, error=str(error))
            return ()
        except Exception:  # a bug must not become a denied ServiceAccount
            log.exception("admitted unchanged after an unexpected error", namespace=namespace,
                          service_account=name)
            return ()
        if names:
            log.info("admitted with pull secret entries", namespace=namespace, service_account=name,
                     secrets=list(names), dry_run=bool(request.get("dryRun")), read_live=live)
        return names


# --- certificates --------------------------------------------------------------------------

def serving_hosts(options: AdmissionSettings, namespace: str) -> list[str]:
    """The names the API server reaches us by: the URL's host, or the Service's DNS names."""
    if options.url:
        return [urllib.parse.urlsplit(options.url).hostname or ""]
    service = f"{options.service}.{namespace}.svc"
    return [service, f"{service}.cluster.local"]


def ensure_certificate(kube: Kube, namespace: str, secret_name: str, hosts: list[str]) -> WebhookTLS:
    """The shared webhook certificate, made or renewed if needed. Replicas racing to store
    one lose with a 409 and use the winner's, so all of them serve what `caBundle` trusts."""
    for _ in range(5):
        body = kube.read_secret(namespace, secret_name)
        current = WebhookTLS.from_secret_data((body or {}).get("data") or {}) if body else None
        renewed = renewal(current, hosts, utc_now())
        if renewed is None:
            assert current is not None
            return current
        secret = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": secret_name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": "regcred",
                                    "app.kubernetes.io/component": "webhook"}},
            "data": renewed.secret_data(),
        }
        version = (body or {}).get("metadata", {}).get("resourceVersion") if body else None
        try:
            kube.store_secret(secret, version)
        except (ApiConflict, ApiInvalid):
            continue  # another replica stored one meanwhile: read it
        log.info("stored the webhook certificate", secret=f"{namespace}/{secret_name}",
                 renewed=current is not None)
        return renewed
    raise ApiConflict("store", f"secret {namespace}/{secret_name}", 409, "Conflict")


class CertificateFiles:
    """The certificate as files for kopf's server, in a private directory removed on exit;
    directories left by a killed process are swept at the next start."""

    def __init__(self) -> None:
        sweep_orphaned_directories()
        self.directory = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
        self.ca, self.cert, self.key = (self.directory / n for n in ("ca.crt", "tls.crt", "tls.key"))

    def write(self, tls: WebhookTLS) -> None:
        """Write only what changed: kopf's server restarts its listener when a file changes."""
        for path, content in ((self.ca, tls.ca_cert), (self.cert, tls.cert), (self.key, tls.key)):
            if not path.exists() or path.read_bytes() != content:
                partial = path.with_suffix(".partial")
                partial.write_bytes(content)
                partial.chmod(0o600)
                partial.replace(path)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def sweep_orphaned_directories() -> None:
    for path in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        pid = path.name.removeprefix(TEMP_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the webhook configuration -------------------------------------------------------------

def client_config(options: AdmissionSettings, namespace: str, ca_bundle: str) -> dict[str, Any]:
    if options.url:
        return {"url": f"{options.url.rstrip('/')}/{WEBHOOK_ID}", "caBundle": ca_bundle}
    return {"service": {"namespace": namespace, "name": options.service, "port": SERVICE_PORT,
                        "path": f"/{WEBHOOK_ID}"}, "caBundle": ca_bundle}


def webhooks(config: Mapping[str, Any], namespace_selector: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The one webhook: ServiceAccount CREATE only, never in the way when regcred is down."""
    return [{
        "name": WEBHOOK_NAME,
        "clientConfig": dict(config),
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                   "resources": ["serviceaccounts"], "scope": "Namespaced"}],
        "namespaceSelector": dict(namespace_selector),
        "failurePolicy": "Ignore",
        "sideEffects": "None",
        "timeoutSeconds": TIMEOUT_SECONDS,
        "matchPolicy": "Equivalent",
        "reinvocationPolicy": "Never",
        "admissionReviewVersions": ["v1"],
    }]


def configuration_differs(current: Mapping[str, Any], wanted: list[dict[str, Any]]) -> bool:
    """Whether the stored configuration lacks what we want (fields the API server defaults
    and we do not set are not compared)."""
    stored = current.get("webhooks") or []
    if len(stored) != len(wanted):
        return True
    return any(have.get(key) != value for have, want in zip(stored, wanted, strict=True)
               for key, value in want.items())


class Registrar:
    """Keeps the MutatingWebhookConfiguration as this replica's options and the CRs say."""

    def __init__(self, kube: Kube, options: AdmissionSettings, namespace: str,
                 specs_now: Callable[[], list[CredentialSpec]]) -> None:
        self._kube = kube
        self._specs_now = specs_now  # a live read, for when no CR event has told us yet
        self._options = options
        self._namespace = namespace
        self._lock = threading.Lock()
        self._ca_bundle: str | None = None
        self._selector: dict[str, Any] | None = None

    def register(self, ca_bundle: str | None = None, specs: list[CredentialSpec] | None = None) -> None:
        with self._lock:
            self._ca_bundle = ca_bundle or self._ca_bundle
            if specs is not None:
                selector = webhook_namespace_selector(specs)
                if selector == self._selector:
                    return
                self._selector = selector
            if self._ca_bundle is None:
                return
            if self._selector is None:
                self._selector = webhook_namespace_selector(self._specs_now())
            wanted = webhooks(client_config(self._options, self._namespace, self._ca_bundle),
                              self._selector)
            current = self._kube.read_webhook_configuration(CONFIGURATION_NAME)
            if current is None:
                try:
                    self._kube.create_webhook_configuration({
                        "apiVersion": "admissionregistration.k8s.io/v1",
                        "kind": "MutatingWebhookConfiguration",
                        "metadata": {"name": CONFIGURATION_NAME,
                                     "labels": {"app.kubernetes.io/name": "regcred"}},
                        "webhooks": wanted,
                    })
                    log.info("registered the admission webhook", configuration=CONFIGURATION_NAME)
                    return
                except ApiConflict:  # another replica created it meanwhile
                    current = self._kube.read_webhook_configuration(CONFIGURATION_NAME) or {}
            if configuration_differs(current, wanted):
                self._kube.patch_webhook_configuration(CONFIGURATION_NAME, wanted)
                log.info("updated the admission webhook", configuration=CONFIGURATION_NAME)


# --- the server ----------------------------------------------------------------------------

@dataclass
class Admission:
    decider: Decider
    registrar: Registrar
    server: AdmissionServer


class AdmissionServer:
    """kopf's `WebhookServer` with regcred's certificate; each time it (re)starts listening,
    the webhook configuration is registered with the CA that signed what it serves."""

    def __init__(self, kube: Kube, settings: Settings, registrar: Registrar, reviewer: Reviewer) -> None:
        assert settings.admission is not None
        self._kube = kube
        self._reviewer = reviewer
        self._options = settings.admission
        self._namespace = settings.operator_namespace
        self._registrar = registrar
        self._files = CertificateFiles()
        self.stopped = threading.Event()

    def refresh_certificate(self) -> WebhookTLS:
        tls = ensure_certificate(self._kube, self._namespace, self._options.tls_secret,
                                 serving_hosts(self._options, self._namespace))
        self._files.write(tls)
        return tls

    def _renew_periodically(self) -> None:
        while not self.stopped.wait(CERTIFICATE_CHECK_SECONDS):
            try:
                self.refresh_certificate()
            except KubeError as error:
                log.warning("cannot check the webhook certificate", error=str(error))

    async def __call__(self, _kopf_engine: Any) -> AsyncIterator[Any]:
        """kopf starts this with its admission engine; the requests go to our `Reviewer`."""
        while True:
            try:
                await asyncio.to_thread(self.refresh_certificate)
                break
            except KubeError as error:
                log.warning("cannot get the webhook certificate yet", error=str(error))
                await asyncio.sleep(2)
        threading.Thread(target=self._renew_periodically, name="webhook-certificate",
                         daemon=True).start()
        server = kopf.WebhookServer(
            addr=self._options.listen_host, port=self._options.listen_port,
            certfile=self._files.cert, pkeyfile=self._files.key, cafile=self._files.ca,
            file_check_interval=FILE_CHECK_SECONDS)
        # kopf types a review as TypedDicts it does not export; the Reviewer reads plain mappings.
        async for config in server(cast(kopf.WebhookFn, self._reviewer)):
            try:
                await asyncio.to_thread(self._registrar.register, config.get("caBundle"))
            except KubeError as error:  # the configuration follows on the next CR event
                log.warning("cannot register the admission webhook", error=str(error))
            yield config

    def close(self) -> None:
        self.stopped.set()
        self._files.remove()


def start_admission(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    runtime = runtime_of(memo)
    regcred_settings = runtime.settings
    if runtime.get(Admission) is not None:  # kopf retries start-up steps: build once
        return
    kube = Kube(api_client(runtime.api_configuration, API_THREADS), on_error=runtime.metrics.api_error,
                role=OPERATOR_ROLE)
    assert regcred_settings.admission is not None
    decider = Decider(kube, regcred_settings, functools.partial(_cached_namespace, runtime))
    registrar = Registrar(kube, regcred_settings.admission, regcred_settings.operator_namespace,
                          lambda: decider.specs(kube.list_credentials()))
    server = AdmissionServer(kube, regcred_settings, registrar, Reviewer(decider))
    runtime.add(Admission(decider, registrar, server))
    decider.credentials.start(kube, server.stopped)
    settings.admission.server = server
    settings.admission.managed = None  # regcred writes the configuration (see the docstring)


def _cached_namespace(runtime: Runtime, name: str) -> NamespaceInfo | None:
    """The namespace as the sync feature's watch has it, on every replica (the paused standby's
    watches keep its caches current too); None before its start-up step has built them."""
    sync = runtime.get(SyncLoop)
    return sync.caches.namespace(name) if sync is not None else None


def stop_admission(memo: kopf.Memo, **_: Any) -> None:
    admission = runtime_of(memo).get(Admission)
    if admission is not None:
        admission.server.close()


def _admission(memo: kopf.Memo) -> Admission:
    return runtime_of(memo).started(Admission)  # built by the start-up step, before any handler


def credential_seen_by_admission(memo: kopf.Memo, credential_index: kopf.Index[str, dict[str, Any]],
                                 **_: Any) -> None:
    """A CR changed (on the active replica): the namespaceSelector may name other system
    namespaces now. Written only when it changes."""
    bodies = [body for store in credential_index.values() for body in store]
    try:
        admission = _admission(memo)
        admission.registrar.register(specs=admission.decider.specs(bodies))
    except KubeError as error:  # the next CR event, or the next start, tries again
        log.warning("cannot update the admission webhook", error=str(error))
