"""The Kubernetes layer: the only code in regcred that talks to the API server.

It speaks raw JSON (no model classes): bodies go out as dicts, responses come back
as dicts, errors become a `KubeError` subclass that says what the failure means, carrying
the status code and the API's reason word, never a response body (a Secret's body is secret
material). It decides nothing: what to do after a refused write is the executor's
(regcred/sync/executor.py), which asks the core.
"""

from __future__ import annotations

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

from regcred.core.source import SourceSecret
from regcred.core.spec import (
    GROUP,
    KIND,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    PLURAL,
    VERSION,
)
from regcred.kube.errors import KubeError, api_error

log = structlog.get_logger("regcred.kube")

LIST_PAGE = 500
EVENT_NAMESPACE = "default"  # events about cluster-scoped objects live in "default", as for Nodes


class Kube:
    """One method per API call regcred makes; each answers a dict (or None for a missing
    object where that is an answer) or raises a `KubeError` by meaning."""

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
