"""Test vocabulary for driving a real cluster: CRs, source Secrets, namespaces, lookups.

Every password used here is recognisable (`PASSWORD_MARK`) so suites can assert it never
shows up in logs, events, status or metrics.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from support.wait import wait_for

GROUP, VERSION, PLURAL = "regcred.dev", "v1alpha1", "registrycredentials"
OPERATOR_NAMESPACE = "regcred-system"
PASSWORD_MARK = "pw-MARK-7f3a9c"
MERGE = "application/merge-patch+json"
SERVER = "registry.example.com"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def password(tag: str = "") -> str:
    return f"{PASSWORD_MARK}-{tag or uuid.uuid4().hex[:6]}"


class Cluster:
    """Thin helpers over the official client, for tests only."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    # --- namespaces -------------------------------------------------------------------

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})

    def label_namespace(self, name: str, labels: dict[str, str | None]) -> None:
        self.core.patch_namespace(name, {"metadata": {"labels": labels}}, _content_type=MERGE)

    def delete_namespace(self, name: str) -> None:
        try:
            self.core.delete_namespace(name)
        except ApiException as error:
            if error.status != 404:
                raise

    # --- source secrets ---------------------------------------------------------------

    def put_source(self, name: str, *, username: str = "robot", secret: str | None = None,
                   type_: str = "kubernetes.io/basic-auth", data: dict[str, str] | None = None,
                   namespace: str = OPERATOR_NAMESPACE) -> str:
        """Create or replace a source Secret; returns the password it holds."""
        secret = secret or password()
        if data is None:
            data = {"username": _b64(username), "password": _b64(secret)}
        body = {"metadata": {"name": name, "namespace": namespace}, "type": type_, "data": data}
        try:
            self.core.create_namespaced_secret(namespace, body)
        except ApiException as error:
            if error.status != 409:
                raise
            self.core.delete_namespaced_secret(name, namespace)
            self.core.create_namespaced_secret(namespace, body)
        return secret

    def rotate_source(self, name: str, secret: str, namespace: str = OPERATOR_NAMESPACE) -> None:
        self.core.patch_namespaced_secret(name, namespace, {"data": {"password": _b64(secret)}},
                                          _content_type=MERGE)

    # --- credentials ------------------------------------------------------------------

    def create_credential(self, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RegistryCredential",
                "metadata": {"name": name}, "spec": spec}
        self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)

    def patch_credential(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"spec": spec},
                                                _content_type=MERGE)

    def credential(self, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def credentials(self) -> list[dict[str, Any]]:
        return self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]

    def delete_credential(self, name: str) -> None:
        try:
            self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except ApiException as error:
            if error.status != 404:
                raise

    def ready(self, name: str) -> dict[str, Any]:
        """The Ready condition (empty dict if none yet)."""
        body = self.credential(name) or {}
        conditions = (body.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c.get("type") == "Ready"), {})

    # --- copies and service accounts --------------------------------------------------

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.core.api_client.sanitize_for_serialization(
                self.core.read_namespaced_secret(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def docker_password(self, namespace: str, name: str, server: str) -> str | None:
        body = self.secret(namespace, name)
        if not body:
            return None
        config = json.loads(base64.b64decode(body["data"][".dockerconfigjson"]))
        return config["auths"].get(server, {}).get("password")

    def pull_secrets(self, namespace: str, account: str = "default") -> list[str] | None:
        try:
            sa = self.core.read_namespaced_service_account(account, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return [ref.name for ref in sa.image_pull_secrets or []]

    def set_pull_secrets(self, namespace: str, names: list[str], account: str = "default") -> None:
        """Replace the list as a foreign writer would (a JSON patch of the whole list)."""
        self.core.patch_namespaced_service_account(
            account, namespace,
            [{"op": "add", "path": "/imagePullSecrets", "value": [{"name": n} for n in names]}],
        )

    def resource_version(self, kind: str, namespace: str, name: str) -> str:
        read: Callable[..., Any] = {
            "secret": self.core.read_namespaced_secret,
            "serviceaccount": self.core.read_namespaced_service_account,
        }[kind]
        return read(name, namespace).metadata.resource_version

    def events_for(self, name: str) -> list[Any]:
        events = self.core.list_event_for_all_namespaces(
            field_selector=f"involvedObject.name={name},involvedObject.kind=RegistryCredential")
        return list(events.items)


def credential_spec(source: str, selector: Mapping[str, str], **overrides: Any) -> dict[str, Any]:
    """A RegistryCredential spec for `SERVER`, reading Secret `source`, selecting by labels."""
    spec = {"registries": [{"server": SERVER}], "sourceSecretRef": {"name": source},
            "namespaceSelector": {"matchLabels": dict(selector)}}
    spec.update(overrides)
    return spec


def create_synced(cluster: Cluster, selector: Mapping[str, str], namespaces: list[str],
                  name: str | None = None, source_namespace: str = OPERATOR_NAMESPACE,
                  **overrides: Any) -> str:
    """A CR (and its source Secret, in `source_namespace`: the operator's own) selecting
    `selector`, waited on until every namespace in `namespaces` has our entry on its default
    ServiceAccount and the CR is Ready."""
    name = name or unique("cr")
    cluster.put_source(name, namespace=source_namespace)
    cluster.create_credential(name, credential_spec(name, selector, **overrides))
    for namespace in namespaces:
        wait_for(lambda ns: name in (cluster.pull_secrets(ns) or []), namespace, timeout=60,
                 message=f"entry in {namespace}")
    wait_for(lambda: cluster.ready(name).get("status") == "True", timeout=60, message=f"{name} Ready")
    return name


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
