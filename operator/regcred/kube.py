"""The Kubernetes layer: the only code in regcred that talks to the API server.

It speaks raw JSON (no model classes): bodies go out as dicts, responses come back
as dicts, errors become a `KubeError` subclass that says what the failure means, carrying
the status code and the API's reason word, never a response body (a Secret's body is secret
material). It decides nothing: after a refused write it asks the core what to do next.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any, assert_never

import structlog
import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from regcred.core.patches import pull_secret_patch
from regcred.core.plan import (
    Action,
    AddPullSecret,
    AlreadyRight,
    CopyStep,
    CreateCopy,
    DeleteCopy,
    NotOurs,
    ObservedCopy,
    ObservedServiceAccount,
    RemovePullSecret,
    ReplaceCopy,
    next_copy_step,
    observe_copy,
    observe_service_account,
)
from regcred.core.source import SourceSecret
from regcred.core.spec import (
    GROUP,
    KIND,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    PLURAL,
    VERSION,
)

log = structlog.get_logger("regcred.kube")

# Bounds on the re-read-and-retry loops after a refused write (then the work queue retries
# the whole namespace with a backoff).
SERVICE_ACCOUNT_ATTEMPTS = 5
COPY_ATTEMPTS = 5
LIST_PAGE = 500
EVENT_NAMESPACE = "default"  # events about cluster-scoped objects live in "default", as for Nodes


SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class ConfigurationError(Exception):
    """No usable API configuration: a usage error, said in one line that names the file or
    the missing piece (`regcred run` exits with it at once)."""


def load_configuration(kubeconfig: str | None) -> client.Configuration:
    """The API configuration from a kubeconfig file, else from the pod's service account."""
    configuration = client.Configuration()
    try:
        if kubeconfig:
            _check_kubeconfig(kubeconfig)
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            _check_in_cluster()
            config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as error:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "the in-cluster configuration"
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise ConfigurationError(f"{where} cannot be used: {first_line}") from None
    return configuration


def _check_kubeconfig(path: str) -> None:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigurationError(f"kubeconfig {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigurationError(f"kubeconfig {path} cannot be read: {reason}") from None
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigurationError(f"kubeconfig {path} is not valid YAML") from None
    if not isinstance(parsed, dict) or not parsed.get("contexts"):
        raise ConfigurationError(f"kubeconfig {path} defines no context")
    if not parsed.get("current-context"):
        raise ConfigurationError(
            f"kubeconfig {path} has no current context; set one with kubectl config use-context")


def _check_in_cluster() -> None:
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise ConfigurationError(
            "no kubeconfig given (--kubeconfig, $REGCRED_KUBECONFIG or $KUBECONFIG) and not in a "
            "cluster ($KUBERNETES_SERVICE_HOST is not set)")
    if not SERVICE_ACCOUNT_TOKEN.exists():
        raise ConfigurationError(
            f"in-cluster start without a service-account token: {SERVICE_ACCOUNT_TOKEN} does not "
            "exist (is automountServiceAccountToken off?)")


def api_client(configuration: client.Configuration, threads: int) -> client.ApiClient:
    """An API client keeping a connection per thread.

    The client's default pool holds 5 x cores connections, fewer than the threads that
    call the API at once during a fan-out; a full pool discards connections, and each new
    one costs a TLS handshake on both ends (a third of regcred's CPU in a 1,000-namespace
    sync, see bench/results/profiles/).
    """
    configuration.connection_pool_maxsize = threads
    return client.ApiClient(configuration)


def connect(kubeconfig: str | None, threads: int) -> client.ApiClient:
    """An API client from a kubeconfig file (else in-cluster); raises `ConfigurationError`."""
    return api_client(load_configuration(kubeconfig), threads)


def connect_like_kubectl(kubeconfig: str | None, context: str | None) -> tuple[client.ApiClient, str]:
    """An API client and the default namespace, found the way kubectl finds them (for
    `regcred doctor`): the given kubeconfig, else $KUBECONFIG (a list of files), else
    ~/.kube/config, else in-cluster. Raises `ConfigurationError` saying what is wrong."""
    configuration = client.Configuration()
    try:
        if kubeconfig and not context:
            _check_kubeconfig(kubeconfig)
        config.load_kube_config(config_file=kubeconfig, context=context,
                                client_configuration=configuration)
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts if c["name"] == context), None) if context else active
        namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    except config.ConfigException as error:
        if kubeconfig or context or os.environ.get("KUBECONFIG") or not _in_cluster():
            first_line = (str(error).splitlines() or [type(error).__name__])[0]
            raise ConfigurationError(f"no usable kubeconfig: {first_line}") from None
        config.load_incluster_config(client_configuration=configuration)
        namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError as error:
        raise ConfigurationError(f"cannot read the kubeconfig: {error.strerror}") from None
    return client.ApiClient(configuration), namespace


SERVICE_ACCOUNT_NAMESPACE = SERVICE_ACCOUNT_TOKEN.with_name("namespace")


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and SERVICE_ACCOUNT_NAMESPACE.exists()


class KubeError(Exception):
    """A failed API call: `status` is the HTTP code (0: no answer, e.g. the API server is
    unreachable), `reason` the API's reason word (or the connection error's type).

    `api_error` makes the subclass that says what the failure means, so callers catch by
    meaning (`ApiConflict`, `ApiNotFound`...) and never look at the reason word.
    """

    def __init__(self, verb: str, what: str, status: int, reason: str) -> None:
        super().__init__(f"{verb} {what}: {status} {reason}")
        self.status = status
        self.reason = reason

    @property
    def transient(self) -> bool:
        """Worth trying again soon: no answer, a conflict, throttling or a server error."""
        return self.status in (0, 408, 409, 429) or self.status >= 500


class ApiUnavailable(KubeError):
    """No answer, a timeout, throttling or a server error: try again later."""


class ApiConflict(KubeError):
    """409: the object changed since it was read, or exists already."""


class ApiNotFound(KubeError):
    """404 where the object was expected to exist."""


class ApiInvalid(KubeError):
    """422: the API refused the request body; for a guarded JSON Patch, a `test` op failed."""


class ApiRefused(KubeError):
    """Any other refusal (400, 401, 403...): trying again will not help."""


def api_error(verb: str, what: str, status: int, reason: str) -> KubeError:
    """The `KubeError` subclass for an HTTP status."""
    kind: type[KubeError]
    if status == 409:
        kind = ApiConflict
    elif status == 404:
        kind = ApiNotFound
    elif status == 422:
        kind = ApiInvalid
    elif status in (0, 408, 429) or status >= 500:
        kind = ApiUnavailable
    else:
        kind = ApiRefused
    return kind(verb, what, status, reason)


@dataclass(frozen=True)
class Applied:
    """What applying one action did: whether it wrote, whether it rotated content, the object
    as written (reduced as the caches keep it, for them to take in at once), and, for a copy
    the core found is not ours, why it was left alone."""

    wrote: bool
    rotated: bool = False
    written: ObservedCopy | ObservedServiceAccount | None = None
    not_ours: str | None = None


def _copy_written(response: Mapping[str, Any], rotated: bool = False) -> Applied:
    return Applied(wrote=True, rotated=rotated, written=observe_copy(response))


class Kube:
    """Performs the calls the core decided on; retries a refused write within a stated bound
    (`COPY_ATTEMPTS`, `SERVICE_ACCOUNT_ATTEMPTS`), deciding each retry with the core."""

    def __init__(self, api_client: client.ApiClient, *,
                 on_error: Callable[[int], None] | None = None) -> None:
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._admission = client.AdmissionregistrationV1Api(api_client)
        self._authentication = client.AuthenticationV1Api(api_client)
        self._on_error = on_error or (lambda status: None)

    # --- reads -------------------------------------------------------------------------

    def read_source(self, namespace: str, name: str) -> SourceSecret | None:
        body = self.read_secret(namespace, name)
        if body is None:
            return None
        meta = body.get("metadata") or {}
        return SourceSecret(
            namespace=namespace,
            name=name,
            type=body.get("type") or "Opaque",
            resource_version=meta.get("resourceVersion", ""),
            data=body.get("data") or {},
        )

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        body: dict[str, Any] | None = self._call(
            "get", f"secret {namespace}/{name}", self._core.read_namespaced_secret,
            name, namespace, missing_ok=True)
        return body

    # --- actions -----------------------------------------------------------------------

    def apply(self, action: Action) -> Applied:
        """Carry out one planned action; raises `KubeError` when the API fails it."""
        match action:
            case CreateCopy() | ReplaceCopy():
                return self._write_copy(action)
            case DeleteCopy():
                return self._delete_copy(action)
            case AddPullSecret():
                return self._edit_pull_secrets(action.namespace, action.service_account,
                                               action.secret_name, action.observed, present=True)
            case RemovePullSecret():
                return self._edit_pull_secrets(action.namespace, action.service_account,
                                               action.secret_name, action.observed, present=False)
        assert_never(action)

    def _write_copy(self, action: CreateCopy | ReplaceCopy) -> Applied:
        """Create or replace a copy; when the API refuses because the Secret is not what the
        plan saw, re-read it and let the core say what to do (`next_copy_step`)."""
        what = f"secret {action.namespace}/{action.secret_name}"
        step: CopyStep = action
        for _ in range(COPY_ATTEMPTS):
            match step:
                case AlreadyRight():
                    return Applied(wrote=False)  # our cache was behind: it is already right
                case NotOurs():
                    return Applied(wrote=False, not_ours=step.message)
                case CreateCopy():
                    try:
                        return _copy_written(self._call(
                            "create", what, self._core.create_namespaced_secret,
                            step.namespace, step.manifest))
                    except ApiConflict:
                        pass  # it exists although our watch did not show it
                case ReplaceCopy():
                    body = {**step.manifest,
                            "metadata": {**step.manifest["metadata"],
                                         "resourceVersion": step.resource_version}}
                    try:
                        return _copy_written(self._call(
                            "replace", what, self._core.replace_namespaced_secret,
                            step.secret_name, step.namespace, body), step.rotation)
                    except (ApiConflict, ApiNotFound):
                        pass  # someone wrote (or deleted) it since we looked
                case _:
                    assert_never(step)
            existing = self.read_secret(action.namespace, action.secret_name)
            step = next_copy_step(action, observe_copy(existing) if existing else None)
        raise ApiConflict("write", what, 409, "Conflict")  # a busy Secret, not a bad write

    def _delete_copy(self, action: DeleteCopy) -> Applied:
        # Preconditions make the API refuse if the object was replaced or changed meanwhile.
        options = {"preconditions": {"uid": action.uid, "resourceVersion": action.resource_version}}
        try:
            deleted = self._call("delete", f"secret {action.namespace}/{action.secret_name}",
                                 self._core.delete_namespaced_secret, action.secret_name,
                                 action.namespace, body=options, missing_ok=True)
        except ApiConflict:
            return Applied(wrote=False)  # changed meanwhile; its watch event re-plans it
        return Applied(wrote=deleted is not None)  # None: it was gone already

    def _edit_pull_secrets(self, namespace: str, name: str, secret_name: str,
                           observed: ObservedServiceAccount | None, *, present: bool) -> Applied:
        """Add or remove our one entry by guarded JSON Patch; re-read and retry on conflicts.

        The first attempt trusts the cache; if it was stale the `test` op fails and the
        retries work from a fresh read.
        """
        what = f"serviceaccount {namespace}/{name}"
        for attempt in range(SERVICE_ACCOUNT_ATTEMPTS):
            if observed is None or attempt > 0:
                body = self._call("get", what, self._core.read_namespaced_service_account,
                                  name, namespace, missing_ok=True)
                if body is None:
                    return Applied(wrote=False)
                observed = observe_service_account(body)
            ops = pull_secret_patch(observed, secret_name, present=present)
            if ops is None:
                return Applied(wrote=False)
            try:
                patched = self._call("patch", what, self._core.patch_namespaced_service_account,
                                     name, namespace, ops, missing_ok=True)
            except (ApiConflict, ApiInvalid):
                log.debug("serviceaccount changed meanwhile, retrying", namespace=namespace,
                          service_account=name, attempt=attempt + 1)
                continue
            if patched is None:  # the ServiceAccount is gone
                return Applied(wrote=False)
            return Applied(wrote=True, written=observe_service_account(patched))
        raise ApiConflict("patch", what, 409, "Conflict")  # a busy list, not a bad patch

    def list_namespaces(self) -> Iterator[dict[str, Any]]:
        return self._pages("namespaces", self._core.list_namespace)

    def list_service_accounts(self, namespace: str | None = None) -> Iterator[dict[str, Any]]:
        """Those in `namespace`, or in every namespace."""
        return self._scoped_pages("serviceaccounts", namespace,
                                  self._core.list_namespaced_service_account,
                                  self._core.list_service_account_for_all_namespaces)

    def list_copies(self) -> Iterator[dict[str, Any]]:
        """Every regcred-managed Secret in the cluster."""
        return self._pages("managed secrets", self._core.list_secret_for_all_namespaces,
                           label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")

    # --- read-only listings for `regcred doctor`: one paged list per kind -----------------

    def list_pods(self, namespace: str | None, label_selector: str | None = None,
                  ) -> Iterator[dict[str, Any]]:
        selector = {"label_selector": label_selector} if label_selector else {}
        return self._scoped_pages("pods", namespace, self._core.list_namespaced_pod,
                                  self._core.list_pod_for_all_namespaces, **selector)

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        body: dict[str, Any] | None = self._call("get", f"pod {namespace}/{name}",
                                                 self._core.read_namespaced_pod, name, namespace,
                                                 missing_ok=True)
        return body

    def list_secrets(self, namespace: str | None) -> Iterator[dict[str, Any]]:
        return self._scoped_pages("secrets", namespace, self._core.list_namespaced_secret,
                                  self._core.list_secret_for_all_namespaces)

    def list_pod_warnings(self, namespace: str | None, pod: str | None = None,
                          ) -> Iterator[dict[str, Any]]:
        """Warning events about Pods (the kubelet's pull failures among them)."""
        selector = "involvedObject.kind=Pod,type=Warning"
        if pod:
            selector += f",involvedObject.name={pod}"
        return self._scoped_pages("events", namespace, self._core.list_namespaced_event,
                                  self._core.list_event_for_all_namespaces, field_selector=selector)

    def list_credentials(self, *, from_watch_cache: bool = False) -> Iterator[dict[str, Any]]:
        """Every RegistryCredential. `from_watch_cache`: as the API server's cache has them
        (resourceVersion 0), milliseconds behind at most; a consistent list of an idle
        resource waits for etcd's progress notification, about 100 ms (measured; too slow
        for the admission webhook, which asks on every ServiceAccount create)."""
        extra: dict[str, Any] = {"resource_version": "0"} if from_watch_cache else {}
        return self._pages("registrycredentials", self._custom.list_cluster_custom_object,
                           GROUP, VERSION, PLURAL, **extra)

    def _scoped_pages(self, what: str, namespace: str | None, namespaced: Callable[..., Any],
                      cluster_wide: Callable[..., Any], **kwargs: Any) -> Iterator[dict[str, Any]]:
        if namespace is None:
            return self._pages(what, cluster_wide, **kwargs)
        return self._pages(f"{what} in {namespace}", namespaced, namespace, **kwargs)

    def live_uids(self) -> set[str]:
        """uids of every namespace and every regcred-managed Secret, read from the API now."""
        return {item["metadata"]["uid"] for item in chain(self.list_namespaces(), self.list_copies())}

    def _pages(self, what: str, method: Callable[..., Any], *args: Any,
               **kwargs: Any) -> Iterator[dict[str, Any]]:
        """The items of a listing, fetched a page at a time so that a large cluster is never
        held in memory whole."""
        token = None
        while True:
            page = self._call("list", what, method, *args, limit=LIST_PAGE, _continue=token, **kwargs)
            yield from page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    # --- the custom resource -----------------------------------------------------------

    def patch_status(self, name: str, status: Mapping[str, Any]) -> None:
        self._call("patch", f"registrycredential {name} status",
                   self._custom.patch_cluster_custom_object_status,
                   GROUP, VERSION, PLURAL, name, {"status": status}, missing_ok=True,
                   _content_type="application/merge-patch+json")

    def post_event(self, credential: str, uid: str, kind: str, reason: str, message: str) -> None:
        """A core/v1 Event on the CR, shown by `kubectl describe registrycredential`."""
        now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        body = {
            "metadata": {"generateName": f"{credential}.", "namespace": EVENT_NAMESPACE},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                               "name": credential, "uid": uid},
            "type": kind, "reason": reason, "message": message[:1024],
            "source": {"component": "regcred"}, "reportingComponent": "regcred",
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self._call("create", "event", self._core.create_namespaced_event, EVENT_NAMESPACE, body)
        except KubeError as error:  # events are best effort, never a reason to fail a sync
            log.warning("could not post event", credential=credential, error=str(error))

    # --- watching source secrets -------------------------------------------------------

    def watch_secrets(self, namespace: str, on_change: Callable[[str, str], None],
                      stop: threading.Event) -> None:
        """Call `on_change(namespace, name)` for every Secret change in one namespace, forever.

        Source Secrets carry no label of ours, so kopf's label-filtered Secret watch
        cannot see them; this watch is scoped to one allow-listed namespace instead of
        streaming every Secret in the cluster.
        """
        resource_version = ""
        while not stop.is_set():
            try:
                if not resource_version:
                    listing = self._call("list", f"secrets in {namespace}",
                                         self._core.list_namespaced_secret, namespace)
                    resource_version = listing["metadata"]["resourceVersion"]
                    for item in listing.get("items") or []:
                        on_change(namespace, item["metadata"]["name"])
                stream = watch.Watch().stream(
                    self._core.list_namespaced_secret, namespace,
                    resource_version=resource_version, timeout_seconds=300,
                    allow_watch_bookmarks=True,
                )
                for event in stream:
                    if stop.is_set():
                        return
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        resource_version = ""
                        break
                    if event["type"] == "BOOKMARK":  # the client leaves its object a plain dict
                        resource_version = obj["metadata"]["resourceVersion"]
                        continue
                    resource_version = obj.metadata.resource_version
                    on_change(namespace, obj.metadata.name)
            except ApiException as error:
                if error.status == 410:  # expired resourceVersion: list again
                    resource_version = ""
                    continue
                log.warning("source secret watch failed, retrying", namespace=namespace,
                            status=error.status)
                stop.wait(2)
            except Exception as error:  # connection drops, API server restarts
                log.warning("source secret watch failed, retrying", namespace=namespace,
                            error=type(error).__name__)
                stop.wait(2)

    # --- admission (regcred/admission.py): live reads and the webhook's own objects -----

    def read_namespace(self, name: str) -> dict[str, Any] | None:
        body: dict[str, Any] | None = self._call("get", f"namespace {name}", self._core.read_namespace,
                                                 name, missing_ok=True)
        return body

    def store_secret(self, body: Mapping[str, Any], resource_version: str | None) -> dict[str, Any]:
        """Create the Secret (`resource_version` None) or replace the version we read; a
        concurrent writer makes it fail with 409 (`KubeError`), and the caller reads again."""
        meta = body["metadata"]
        what = f"secret {meta['namespace']}/{meta['name']}"
        stored: dict[str, Any]
        if resource_version is None:
            stored = self._call("create", what, self._core.create_namespaced_secret,
                                meta["namespace"], body)
        else:
            guarded = {**body, "metadata": {**meta, "resourceVersion": resource_version}}
            stored = self._call("replace", what, self._core.replace_namespaced_secret,
                                meta["name"], meta["namespace"], guarded)
        return stored

    def read_webhook_configuration(self, name: str) -> dict[str, Any] | None:
        body: dict[str, Any] | None = self._call(
            "get", f"mutatingwebhookconfiguration {name}",
            self._admission.read_mutating_webhook_configuration, name, missing_ok=True)
        return body

    def create_webhook_configuration(self, body: Mapping[str, Any]) -> None:
        self._call("create", f"mutatingwebhookconfiguration {body['metadata']['name']}",
                   self._admission.create_mutating_webhook_configuration, body)

    def patch_webhook_configuration(self, name: str, webhooks: list[dict[str, Any]]) -> None:
        self._call("patch", f"mutatingwebhookconfiguration {name}",
                   self._admission.patch_mutating_webhook_configuration, name, {"webhooks": webhooks},
                   _content_type="application/merge-patch+json")

    # --- the credential provider endpoint (regcred/provider/) ----------------------------

    def review_token(self, token: str, audience: str) -> dict[str, Any]:
        """A TokenReview's status: whether the API server accepts `token` for `audience`, and
        whose it is. The token goes only into the request body."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": token, "audiences": [audience]}}
        answer = self._call("create", "tokenreview", self._authentication.create_token_review, review)
        status: dict[str, Any] = (answer or {}).get("status") or {}
        return status

    # --- plumbing ----------------------------------------------------------------------

    def _call(self, verb: str, what: str, method: Callable[..., Any], *args: Any,
              missing_ok: bool = False, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            response = method(*args, _preload_content=False, **kwargs)
        except ApiException as error:
            if missing_ok and error.status == 404:
                return None
            self._on_error(error.status or 0)
            raise api_error(verb, what, error.status or 0, _reason(error)) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:  # no answer at all
            self._on_error(0)
            raise api_error(verb, what, 0, type(error).__name__) from None
        finally:
            log.debug("api call", verb=verb, what=what,
                      ms=round((time.monotonic() - started) * 1000, 1))
        data = response.data
        return json.loads(data) if data else None


def _reason(error: ApiException) -> str:
    """The Status reason word (AlreadyExists, Conflict, Invalid...), never the message text."""
    try:
        return str(json.loads(error.body).get("reason") or error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(error.reason or "Error")
