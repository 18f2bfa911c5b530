"""The Kubernetes layer: the only code in regcred that talks to the API server.

It speaks raw JSON (no model classes): bodies go out as dicts, responses come back
as dicts, errors become a `KubeError` subclass that says what the failure means, carrying
the status code and the API's reason word, never a response body (a Secret's body is secret
material). It decides nothing: what to do after a refused write is the executor's
(regcred/sync/executor.py), which asks the core.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import structlog
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from regcred.core.source import SourceSecret
from regcred.core.spec import (
    GROUP,
    KIND,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    PLURAL,
    VERSION,
)
from regcred.kube.errors import (
    UNAUTHORIZED,
    Cause,
    KubeError,
    api_error,
    connection_cause,
    status_cause,
)

log = structlog.get_logger("regcred.kube")

LIST_PAGE = 500
WATCH_SECONDS = 300  # the API server ends a watch after this; it is opened again from where it was
RETRY_SECONDS = 1.0  # after a failed watch or listing, before the next try
PEERING = ("kopf.dev", "v1", "clusterkopfpeerings")
# A silent API server (a black-holed address) ends a call instead of hanging it forever.
CALL_TIMEOUT = (10.0, 60.0)
EVENT_NAMESPACE = "default"  # events about cluster-scoped objects live in "default", as for Nodes


class Kube:
    """One method per API call regcred makes; each answers a dict (or None for a missing
    object where that is an answer) or raises a `KubeError` by meaning."""

    def __init__(self, api_client: client.ApiClient, *,
                 on_error: Callable[[int], None] | None = None, role: str = "",
                 timeout: tuple[float, float] | None = CALL_TIMEOUT) -> None:
        """`role`: the ClusterRole that grants what the caller needs, named in a 403's fix;
        `timeout`: (connect, read) seconds for each call (watches have their own)."""
        self.server: str = api_client.configuration.host
        self._role = role
        self._timeout = {"_request_timeout": timeout} if timeout else {}
        self._outage = Outage(self.server)
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

    def delete_secret(self, namespace: str, name: str, uid: str, resource_version: str) -> bool:
        """Delete the Secret if it is still that uid at that version (preconditions make the
        API refuse with 409 otherwise); False if it was gone already."""
        preconditions = {"preconditions": {"uid": uid, "resourceVersion": resource_version}}
        deleted = self._call("delete", f"secret {namespace}/{name}",
                             self._core.delete_namespaced_secret, name, namespace,
                             body=preconditions, missing_ok=True)
        return deleted is not None

    def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        body: dict[str, Any] | None = self._call(
            "get", f"serviceaccount {namespace}/{name}", self._core.read_namespaced_service_account,
            name, namespace, missing_ok=True)
        return body

    def patch_service_account(self, namespace: str, name: str,
                              ops: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Apply a JSON Patch; None if the ServiceAccount is gone. A failed `test` op is
        `ApiInvalid` (422), a concurrent change `ApiConflict`."""
        body: dict[str, Any] | None = self._call(
            "patch", f"serviceaccount {namespace}/{name}", self._core.patch_namespaced_service_account,
            name, namespace, ops, missing_ok=True)
        return body

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
                           GROUP, VERSION, PLURAL, crd_collection=True, **extra)

    def check_crd(self) -> None:
        """Raise `KubeError` (cause: the CRD is not installed) unless RegistryCredentials can
        be listed: without the CRD, kopf only warns once and regcred would sit idle."""
        self._call("list", "registrycredentials", self._custom.list_cluster_custom_object,
                   GROUP, VERSION, PLURAL, limit=1, crd_collection=True)

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

    # --- list+watch of what regcred keeps in its caches (regcred/sync/watches.py) --------

    def listing(self, kind: str, name: str | None = None) -> Listing:
        """A paged listing of `kind` ("namespaces", "serviceaccounts", "copies",
        "registrycredentials", or "peering" with the peering object's `name`), to iterate
        once; its resourceVersion, to watch from, is known after the last page."""
        method, kwargs = self._followed(kind, name)
        return Listing(functools.partial(self._call, "list", kind, method, **kwargs))

    def follow(self, kind: str, resource_version: str, on_event: Callable[[str, dict[str, Any]], None],
               on_listed: Callable[[Listing], None], stop: threading.Event, name: str | None = None) -> None:
        """Watch `kind` from `resource_version` until `stop` is set, calling `on_event(type,
        body)` for each ADDED, MODIFIED and DELETED. Where the watch cannot go on from the
        last version it saw (410 Gone), it lists again, hands the listing to `on_listed`
        and watches on from there. Events are read as JSON lines: making the client's model
        objects of every event would cost more than handling it."""
        method, kwargs = self._followed(kind, name)
        version = resource_version
        while not stop.is_set():
            try:
                if not version:
                    listing = self.listing(kind, name)
                    on_listed(listing)
                    version = listing.resource_version
                    continue
                response = method(watch=True, resource_version=version, allow_watch_bookmarks=True,
                                  timeout_seconds=WATCH_SECONDS, _preload_content=False,
                                  _request_timeout=(10, WATCH_SECONDS + 30), **kwargs)
                self._outage.answered()
                try:
                    for line in iter_resp_lines(response):
                        event = json.loads(line)
                        what, body = event.get("type"), event.get("object") or {}
                        if what == "ERROR":  # our version is too old: list again
                            version = ""
                            break
                        version = (body.get("metadata") or {}).get("resourceVersion") or version
                        if what != "BOOKMARK":
                            on_event(what, body)
                        if stop.is_set():
                            return
                finally:
                    response.release_conn()
            except ApiException as error:
                self._on_error(error.status or 0)
                if error.status == 410:
                    version = ""
                    continue
                self._watch_failed(kind, error)
                stop.wait(RETRY_SECONDS)
            except KubeError:  # the listing failed, and said so (Outage)
                stop.wait(RETRY_SECONDS)
            except (urllib3.exceptions.HTTPError, OSError) as error:
                self._watch_failed(kind, error)
                stop.wait(RETRY_SECONDS)
            except ValueError:  # a line that is not JSON: watch again from the last version
                log.warning("a watch line was not JSON, watching again", kind=kind)
                stop.wait(RETRY_SECONDS)

    def _watch_failed(self, what: str, error: BaseException) -> None:
        """A watch that failed goes into the outage's rate-limited line, with its cause."""
        if isinstance(error, ApiException):
            status = error.status or 0
            self._outage.failed(api_error("watch", what, status, _reason(error), server=self.server,
                                          cause=status_cause(status, role=self._role)))
        else:
            self._outage.failed(api_error("watch", what, 0, type(error).__name__, server=self.server,
                                          cause=connection_cause(error)))

    def _followed(self, kind: str, name: str | None) -> tuple[Callable[..., Any], dict[str, Any]]:
        if kind == "namespaces":
            return self._core.list_namespace, {}
        if kind == "serviceaccounts":
            return self._core.list_service_account_for_all_namespaces, {}
        if kind == "copies":
            return (self._core.list_secret_for_all_namespaces,
                    {"label_selector": f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"})
        if kind == "registrycredentials":
            return functools.partial(self._custom.list_cluster_custom_object, GROUP, VERSION, PLURAL), {}
        if kind == "peering":
            return (functools.partial(self._custom.list_cluster_custom_object, *PEERING),
                    {"field_selector": f"metadata.name={name}"})
        raise ValueError(f"regcred does not list {kind}")

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
                    resource_version = self._list_sources(namespace, on_change)
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
            except KubeError:  # the listing failed, and said so (Outage)
                stop.wait(2)
            except ApiException as error:
                if error.status == 410:  # expired resourceVersion: list again
                    resource_version = ""
                    continue
                self._watch_failed(f"secrets in {namespace}", error)
                stop.wait(2)
            except (urllib3.exceptions.HTTPError, OSError) as error:  # connection drops, restarts
                self._watch_failed(f"secrets in {namespace}", error)
                stop.wait(2)
            except Exception as error:
                log.warning("source secret watch failed, retrying", namespace=namespace,
                            error=type(error).__name__)
                stop.wait(2)

    def _list_sources(self, namespace: str, on_change: Callable[[str, str], None]) -> str:
        """Call `on_change` for every Secret listed now; the listing's resourceVersion."""
        listing = self._call("list", f"secrets in {namespace}", self._core.list_namespaced_secret,
                             namespace)
        for item in listing.get("items") or []:
            on_change(namespace, item["metadata"]["name"])
        return str(listing["metadata"]["resourceVersion"])

    # --- admission (regcred/admission/webhook.py): live reads and the webhook's own objects -----

    def read_namespace(self, name: str) -> dict[str, Any] | None:
        body: dict[str, Any] | None = self._call("get", f"namespace {name}", self._core.read_namespace,
                                                 name, missing_ok=True)
        return body

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
              missing_ok: bool = False, crd_collection: bool = False, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            response = method(*args, _preload_content=False, **self._timeout, **kwargs)
        except ApiException as error:
            status = error.status or 0
            if missing_ok and status == 404:
                self._outage.answered()
                return None
            self._on_error(status)
            cause = status_cause(status, role=self._role, crd_collection=crd_collection)
            failed = api_error(verb, what, status, _reason(error), server=self.server, cause=cause)
            if cause is not None and (failed.transient or cause is UNAUTHORIZED):  # the whole API
                self._outage.failed(failed)
            else:
                self._outage.answered()
            raise failed from None
        except (urllib3.exceptions.HTTPError, OSError) as error:  # no answer at all
            self._on_error(0)
            failed = api_error(verb, what, 0, type(error).__name__, server=self.server,
                               cause=connection_cause(error))
            self._outage.failed(failed)
            raise failed from None
        finally:
            log.debug("api call", verb=verb, what=what,
                      ms=round((time.monotonic() - started) * 1000, 1))
        self._outage.answered()
        data = response.data
        return json.loads(data) if data else None


class Listing:
    """One paged listing, iterated once (a page is let go before the next is asked for);
    `resource_version`, the version to watch from, is known once the last page is in."""

    def __init__(self, fetch: Callable[..., Any]) -> None:
        self._fetch = fetch
        self.resource_version = ""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            page = self._fetch(limit=LIST_PAGE, _continue=token)
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            items = page.get("items") or []
            del page
            yield from items
            if not token:
                self.resource_version = meta.get("resourceVersion") or ""
                return


class Outage:
    """One log line for an outage, not one per failed call: the first failure, then at most one
    line every `every` seconds while it lasts (with the count since), and one when the API
    server answers again. urllib3's own retry warnings are silenced (regcred/logs.py)."""

    def __init__(self, server: str, every: float = 30.0) -> None:
        self._server = server
        self._every = every
        self._lock = threading.Lock()
        self._since: float | None = None
        self._last_line = 0.0
        self._failures = 0
        self._cause: Cause | None = None

    def failed(self, error: KubeError) -> None:
        now = time.monotonic()
        with self._lock:
            self._failures += 1
            first = self._since is None
            if first:
                self._since = now
            if not (first or error.cause != self._cause or now - self._last_line >= self._every):
                return
            self._last_line, self._cause = now, error.cause
            failures, self._failures = self._failures, 0
        cause = error.cause
        log.warning("the API server cannot be used, retrying", server=self._server,
                    cause=cause.code if cause else error.reason, error=str(error),
                    failures=failures)

    def answered(self) -> None:
        if self._since is None:  # no lock on the fast path: a stale read only delays the line
            return
        with self._lock:
            since, self._since, self._cause, self._failures = self._since, None, None, 0
        if since is not None:
            log.info("the API server answers again", server=self._server,
                     after_seconds=round(time.monotonic() - since, 1))


def _reason(error: ApiException) -> str:
    """The Status reason word (AlreadyExists, Conflict, Invalid...), never the message text."""
    try:
        return str(json.loads(error.body).get("reason") or error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(error.reason or "Error")
