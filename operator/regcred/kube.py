"""The Kubernetes layer: the only code in regcred that talks to the API server.

It speaks raw JSON (no model classes): bodies go out as dicts, responses come back
as dicts, errors become `KubeError` carrying the status code and the API's reason word,
never a response body (a Secret's body is secret material).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import structlog
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from regcred.core.patches import pull_secret_patch
from regcred.core.plan import (
    AddPullSecret,
    CreateCopy,
    DeleteCopy,
    ObservedCopy,
    ObservedServiceAccount,
    RemovePullSecret,
    ReplaceCopy,
    copy_differs,
    observe_copy,
    observe_service_account,
)
from regcred.core.source import SourceSecret
from regcred.core.spec import (
    CREDENTIAL_LABEL,
    GROUP,
    KIND,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    PLURAL,
    VERSION,
)

log = structlog.get_logger("regcred.kube")

SERVICE_ACCOUNT_ATTEMPTS = 5
LIST_PAGE = 500
EVENT_NAMESPACE = "default"  # events about cluster-scoped objects live in "default", as for Nodes


def connect(kubeconfig: str | None, threads: int) -> client.ApiClient:
    """An API client (kubeconfig file, else in-cluster) keeping a connection per thread.

    The client's default pool holds 5 x cores connections, fewer than the threads that
    call the API at once during a fan-out; a full pool discards connections, and each new
    one costs a TLS handshake on both ends (a third of regcred's CPU in a 1,000-namespace
    sync, see bench/results/profiles/).
    """
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = threads
    return client.ApiClient(configuration)


class KubeError(Exception):
    """A failed API call: `status` is the HTTP code (0: no answer, e.g. the API server is
    unreachable), `reason` the API's reason word (or the connection error's type)."""

    def __init__(self, verb: str, what: str, status: int, reason: str) -> None:
        super().__init__(f"{verb} {what}: {status} {reason}")
        self.status = status
        self.reason = reason

    @property
    def transient(self) -> bool:
        """Worth trying again soon: no answer, a conflict, throttling or a server error."""
        return self.status in (0, 408, 409, 429) or self.status >= 500


class NotOurs(Exception):
    """A Secret with the target name exists and regcred does not own it."""


@dataclass(frozen=True)
class Applied:
    """What applying one action did: whether it wrote, whether it rotated content, and the
    object as written (reduced as the caches keep it), for the caches to take in at once."""

    wrote: bool
    rotated: bool = False
    written: ObservedCopy | ObservedServiceAccount | None = None


def _copy_written(response: Mapping[str, Any], rotated: bool = False) -> Applied:
    return Applied(wrote=True, rotated=rotated, written=observe_copy(response))


def owned_by(body: Mapping[str, Any], credential: str, uid: str) -> bool:
    """A Secret is ours if it names the credential in our label or points to it as owner."""
    meta = body.get("metadata") or {}
    if (meta.get("labels") or {}).get(CREDENTIAL_LABEL) == credential:
        return True
    return any(ref.get("uid") == uid for ref in meta.get("ownerReferences") or [])


class Kube:
    """Reads and writes the objects regcred manages, with the retries each one needs."""

    def __init__(self, api_client: client.ApiClient, *, on_error: Callable[[int], None] | None = None):
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._admission = client.AdmissionregistrationV1Api(api_client)
        self._on_error = on_error or (lambda status: None)

    # --- reads -------------------------------------------------------------------------

    def read_source(self, namespace: str, name: str) -> SourceSecret | None:
        body = self._call("get", f"secret {namespace}/{name}", self._core.read_namespaced_secret,
                          name, namespace, missing_ok=True)
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
        return self._call("get", f"secret {namespace}/{name}", self._core.read_namespaced_secret,
                          name, namespace, missing_ok=True)

    # --- actions -----------------------------------------------------------------------

    def apply(self, action: Any) -> Applied:
        """Carry out one planned action; raises `NotOurs` or `KubeError` when it cannot."""
        match action:
            case CreateCopy():
                return self._create_copy(action)
            case ReplaceCopy():
                return self._replace_copy(action.manifest, action.resource_version, action.rotation)
            case DeleteCopy():
                return self._delete_copy(action)
            case AddPullSecret():
                return self._edit_pull_secrets(action.namespace, action.service_account,
                                               action.secret_name, action.observed, present=True)
            case RemovePullSecret():
                return self._edit_pull_secrets(action.namespace, action.service_account,
                                               action.secret_name, action.observed, present=False)
        raise TypeError(f"unknown action {type(action).__name__}")

    def _create_copy(self, action: CreateCopy) -> Applied:
        meta = action.manifest["metadata"]
        what = f"secret {meta['namespace']}/{meta['name']}"
        try:
            return _copy_written(self._call("create", what, self._core.create_namespaced_secret,
                                            meta["namespace"], action.manifest))
        except KubeError as error:
            if error.status != 409:
                raise
        # It exists although our watch did not show it: adopt it only if it is ours.
        existing = self.read_secret(meta["namespace"], meta["name"])
        if existing is None:
            return self._create_copy(action)
        owner = meta["ownerReferences"][0]
        if not owned_by(existing, action.credential, owner["uid"]):
            raise NotOurs(f"secret {meta['name']} exists and is not managed by regcred")
        if not copy_differs(observe_copy(existing), action.manifest):
            return Applied(wrote=False)  # our cache was behind: it is already right
        return self._replace_copy(action.manifest, existing["metadata"]["resourceVersion"], False)

    def _replace_copy(self, manifest: Mapping[str, Any], resource_version: str,
                      rotation: bool) -> Applied:
        meta = manifest["metadata"]
        what = f"secret {meta['namespace']}/{meta['name']}"
        body = {**manifest, "metadata": {**meta, "resourceVersion": resource_version}}
        try:
            return _copy_written(self._call("replace", what, self._core.replace_namespaced_secret,
                                            meta["name"], meta["namespace"], body), rotation)
        except KubeError as error:
            if error.status not in (404, 409):
                raise
        # Someone wrote (or deleted) it since we looked: re-read and go again from there.
        existing = self.read_secret(meta["namespace"], meta["name"])
        owner = meta["ownerReferences"][0]
        if existing is None:
            return self._create_copy(CreateCopy(meta["namespace"], owner["name"], manifest))
        if not owned_by(existing, owner["name"], owner["uid"]):
            raise NotOurs(f"secret {meta['name']} exists and is not managed by regcred")
        if not copy_differs(observe_copy(existing), manifest):
            return Applied(wrote=False)  # our cache was behind: it is already right
        body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        return _copy_written(self._call("replace", what, self._core.replace_namespaced_secret,
                                        meta["name"], meta["namespace"], body), rotation)

    def _delete_copy(self, action: DeleteCopy) -> Applied:
        # Preconditions make the API refuse if the object was replaced or changed meanwhile.
        options = {"preconditions": {"uid": action.uid, "resourceVersion": action.resource_version}}
        try:
            deleted = self._call("delete", f"secret {action.namespace}/{action.secret_name}",
                                 self._core.delete_namespaced_secret, action.secret_name,
                                 action.namespace, body=options, missing_ok=True)
        except KubeError as error:
            if error.status != 409:
                raise
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
                if patched is None:  # the ServiceAccount is gone
                    return Applied(wrote=False)
                return Applied(wrote=True, written=observe_service_account(patched))
            except KubeError as error:
                if error.status not in (409, 422):
                    raise
                if attempt == SERVICE_ACCOUNT_ATTEMPTS - 1:  # a busy list, not a bad patch
                    raise KubeError("patch", what, 409, "Conflict") from None
                log.debug("serviceaccount changed meanwhile, retrying", namespace=namespace,
                          service_account=name, attempt=attempt + 1)
        return Applied(wrote=False)

    def list_namespaces(self) -> Iterator[dict[str, Any]]:
        return self._pages("namespaces", self._core.list_namespace)

    def list_service_accounts(self) -> Iterator[dict[str, Any]]:
        return self._pages("serviceaccounts", self._core.list_service_account_for_all_namespaces)

    def list_copies(self) -> Iterator[dict[str, Any]]:
        """Every regcred-managed Secret in the cluster."""
        return self._pages("managed secrets", self._core.list_secret_for_all_namespaces,
                           label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")

    def live_uids(self) -> set[str]:
        """uids of every namespace and every regcred-managed Secret, read from the API now."""
        return {item["metadata"]["uid"] for item in chain(self.list_namespaces(), self.list_copies())}

    def _pages(self, what: str, method: Callable[..., Any], **kwargs: Any) -> Iterator[dict[str, Any]]:
        """The items of a listing, fetched a page at a time so that a large cluster is never
        held in memory whole."""
        token = None
        while True:
            page = self._call("list", what, method, limit=LIST_PAGE, _continue=token, **kwargs)
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
        return self._call("get", f"namespace {name}", self._core.read_namespace, name, missing_ok=True)

    def list_credentials(self, *, from_watch_cache: bool = False) -> list[dict[str, Any]]:
        """Every RegistryCredential. `from_watch_cache`: as the API server's cache has them
        (resourceVersion 0), milliseconds behind at most; a consistent list of an idle
        resource waits for etcd's progress notification, about 100 ms (measured; too slow
        for the webhook, which asks on every ServiceAccount create)."""
        extra = {"resource_version": "0"} if from_watch_cache else {}
        page = self._call("list", "registrycredentials", self._custom.list_cluster_custom_object,
                          GROUP, VERSION, PLURAL, **extra)
        return list((page or {}).get("items") or [])

    def store_secret(self, body: Mapping[str, Any], resource_version: str | None) -> dict[str, Any]:
        """Create the Secret (`resource_version` None) or replace the version we read; a
        concurrent writer makes it fail with 409 (`KubeError`), and the caller reads again."""
        meta = body["metadata"]
        what = f"secret {meta['namespace']}/{meta['name']}"
        if resource_version is None:
            return self._call("create", what, self._core.create_namespaced_secret, meta["namespace"], body)
        guarded = {**body, "metadata": {**meta, "resourceVersion": resource_version}}
        return self._call("replace", what, self._core.replace_namespaced_secret,
                          meta["name"], meta["namespace"], guarded)

    def read_webhook_configuration(self, name: str) -> dict[str, Any] | None:
        return self._call("get", f"mutatingwebhookconfiguration {name}",
                          self._admission.read_mutating_webhook_configuration, name, missing_ok=True)

    def create_webhook_configuration(self, body: Mapping[str, Any]) -> None:
        self._call("create", f"mutatingwebhookconfiguration {body['metadata']['name']}",
                   self._admission.create_mutating_webhook_configuration, body)

    def patch_webhook_configuration(self, name: str, webhooks: list[dict[str, Any]]) -> None:
        self._call("patch", f"mutatingwebhookconfiguration {name}",
                   self._admission.patch_mutating_webhook_configuration, name, {"webhooks": webhooks},
                   _content_type="application/merge-patch+json")

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
            raise KubeError(verb, what, error.status or 0, _reason(error)) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:  # no answer at all
            self._on_error(0)
            raise KubeError(verb, what, 0, type(error).__name__) from None
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
