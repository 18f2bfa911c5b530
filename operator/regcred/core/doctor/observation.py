"""What `regcred doctor` knows of the cluster: each listed object reduced to what the rules
read (no I/O here; regcred/doctor/command.py lists). Secret content is never kept: of a pull
secret only its type, whether it parses, and its `auths` keys (registry names) survive.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from regcred.core.conditions import (
    RegistryResult,
    read_status,
)
from regcred.core.errors import InvalidInput
from regcred.core.matching import (
    NamespaceInfo,
)
from regcred.core.pullsecret import check, kubelet_read
from regcred.core.source import DOCKERCONFIGJSON_KEY, DOCKERCONFIGJSON_TYPE
from regcred.core.spec import (
    CREDENTIAL_LABEL,
    CredentialSpec,
    parse_credential,
)

DOCKERCFG_TYPE = "kubernetes.io/dockercfg"
DOCKERCFG_KEY = ".dockercfg"
# The kubelet's waiting reasons that mean the image could not be pulled.
PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                          "RegistryUnavailable", "SignatureValidationFailed"})


# --- observed objects, reduced ------------------------------------------------------------


@dataclass(frozen=True)
class ContainerImage:
    name: str
    kind: str  # "initContainer", "container" or "ephemeralContainer"
    image: str
    pull_policy: str  # as in the spec ("" if unset, which the API server never leaves)


@dataclass(frozen=True)
class ContainerState:
    """What the Pod's status says about one container's image."""

    waiting_reason: str = ""
    waiting_message: str = ""
    pulled: bool = False  # running or terminated: its image was there


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    service_account: str
    pull_secrets: tuple[str, ...]
    created: str
    containers: tuple[ContainerImage, ...]
    states: Mapping[str, ContainerState] = field(default_factory=dict)
    owner: str = ""  # "ReplicaSet/web-7d9c" of the controlling owner, if any


@dataclass(frozen=True)
class ServiceAccountInfo:
    namespace: str
    name: str
    pull_secrets: tuple[str, ...]


@dataclass(frozen=True)
class PullSecretInfo:
    """A Secret as far as the kubelet's keyring cares: its type and `auths` keys, never values.
    `problem` says why regcred's check (core/pullsecret.py) refuses it (None: nothing wrong);
    `refused`: the kubelet refuses it altogether, so every pull of a Pod listing it fails."""

    namespace: str
    name: str
    type: str
    keys: tuple[str, ...] = ()
    problem: str | None = None
    refused: bool = False
    credential: str = ""  # the regcred.dev/credential label: a regcred copy of that CR
    owner_uids: tuple[str, ...] = ()

    @property
    def pull_secret(self) -> bool:
        return self.type in (DOCKERCONFIGJSON_TYPE, DOCKERCFG_TYPE)


@dataclass(frozen=True)
class PullEvent:
    namespace: str
    pod: str
    container: str  # from involvedObject.fieldPath, "" if absent
    reason: str
    message: str
    count: int
    last_seen: str


@dataclass(frozen=True)
class CredentialInfo:
    """A RegistryCredential with what the doctor reads from its status."""

    name: str
    uid: str
    spec: CredentialSpec | None
    problem: str = ""  # why the spec cannot be parsed
    ready: str = ""  # Ready condition status: "True", "False" or "" (no status yet)
    ready_reason: str = ""
    ready_message: str = ""
    failed_namespaces: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    verification: tuple[RegistryResult, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    pods: Sequence[PodInfo]
    service_accounts: Mapping[tuple[str, str], ServiceAccountInfo]
    secrets: Mapping[tuple[str, str], PullSecretInfo]
    events: Sequence[PullEvent]
    credentials: Sequence[CredentialInfo]
    namespaces: Mapping[str, NamespaceInfo]


def observe_pod(body: Mapping[str, Any]) -> PodInfo:
    meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    containers = tuple(
        ContainerImage(c.get("name", ""), kind, c.get("image") or "", c.get("imagePullPolicy") or "")
        for key, kind in (("initContainers", "initContainer"), ("containers", "container"),
                          ("ephemeralContainers", "ephemeralContainer"))
        for c in spec.get(key) or []
    )
    states = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for s in status.get(key) or []:
            state = s.get("state") or {}
            waiting = state.get("waiting") or {}
            states[s.get("name", "")] = ContainerState(
                waiting_reason=waiting.get("reason") or "",
                waiting_message=waiting.get("message") or "",
                # an image ID means the image is on the node (a crash loop after a pull too)
                pulled=bool(s.get("imageID")) and waiting.get("reason") not in PULL_REASONS,
            )
    owner = next((f"{ref.get('kind')}/{ref.get('name')}" for ref in meta.get("ownerReferences") or []
                  if ref.get("controller")), "")
    return PodInfo(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        service_account=spec.get("serviceAccountName") or "default",
        pull_secrets=tuple(ref.get("name", "") for ref in spec.get("imagePullSecrets") or []
                           if ref.get("name")),
        created=meta.get("creationTimestamp") or "",
        containers=containers,
        states=states,
        owner=owner,
    )


def observe_service_account(body: Mapping[str, Any]) -> ServiceAccountInfo:
    meta = body.get("metadata") or {}
    return ServiceAccountInfo(
        namespace=meta.get("namespace", ""), name=meta.get("name", ""),
        pull_secrets=tuple(ref.get("name", "") for ref in body.get("imagePullSecrets") or []),
    )


def observe_secret(body: Mapping[str, Any]) -> PullSecretInfo:
    """Reduce a Secret to its type and registry keys; the content is dropped here."""
    meta = body.get("metadata") or {}
    secret_type = body.get("type") or "Opaque"
    common = {
        "namespace": meta.get("namespace", ""), "name": meta.get("name", ""), "type": secret_type,
        "credential": (meta.get("labels") or {}).get(CREDENTIAL_LABEL, ""),
        "owner_uids": tuple(ref.get("uid", "") for ref in meta.get("ownerReferences") or []),
    }
    if secret_type not in (DOCKERCONFIGJSON_TYPE, DOCKERCFG_TYPE):
        return PullSecretInfo(**common)
    key = DOCKERCONFIGJSON_KEY if secret_type == DOCKERCONFIGJSON_TYPE else DOCKERCFG_KEY
    encoded = (body.get("data") or {}).get(key)
    if not encoded:
        return PullSecretInfo(**common, problem=f"it has no {key} key")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return PullSecretInfo(**common, problem=f"its {key} is not base64", refused=True)
    legacy = secret_type == DOCKERCFG_TYPE
    reading = kubelet_read(raw, legacy=legacy)
    try:
        check(reading)
        problem = None
    except InvalidInput as refusal:
        problem = f"its {key}: {refusal.message}"
    return PullSecretInfo(**common, keys=tuple(reading.entries),
                          problem=problem, refused=reading.error is not None)


def observe_event(body: Mapping[str, Any]) -> PullEvent | None:
    """A kubelet pull event about a Pod, or None for any other event."""
    involved = body.get("involvedObject") or {}
    reason = body.get("reason") or ""
    message = body.get("message") or ""
    if involved.get("kind") != "Pod" or body.get("type") != "Warning":
        return None
    if reason not in ("Failed", "ErrImageNeverPull", "InspectFailed") and "pull" not in message.lower():
        return None
    container = re.search(r"\{(.+)\}", involved.get("fieldPath") or "")
    return PullEvent(
        namespace=involved.get("namespace") or (body.get("metadata") or {}).get("namespace", ""),
        pod=involved.get("name", ""),
        container=container.group(1) if container else "",
        reason=reason, message=message, count=int(body.get("count") or 1),
        last_seen=body.get("lastTimestamp") or body.get("eventTime") or "",
    )


def observe_credential(body: Mapping[str, Any]) -> CredentialInfo:
    """A RegistryCredential; its source namespace is taken as allowed (the doctor does not know
    the operator's allow-list: the operator's own Ready condition reports refusals)."""
    meta = body.get("metadata") or {}
    ref = (body.get("spec") or {}).get("sourceSecretRef") or {}
    source_namespace = str(ref.get("namespace") or "regcred-system") if isinstance(ref, dict) \
        else "regcred-system"
    try:
        spec, problem = parse_credential(body, default_source_namespace=source_namespace,
                                         allowed_source_namespaces=frozenset({source_namespace})), ""
    except InvalidInput as error:
        spec, problem = None, error.message
    status = read_status(body)
    return CredentialInfo(
        name=meta.get("name", ""), uid=meta.get("uid", ""), spec=spec, problem=problem,
        ready=status.ready.status, ready_reason=status.ready.reason,
        ready_message=status.ready.message,
        failed_namespaces={f.namespace: (f.reason, f.message) for f in status.failed_namespaces},
        verification=status.registries,
    )


def snapshot_from(*, pods: Iterable[Mapping[str, Any]], service_accounts: Iterable[Mapping[str, Any]],
                  secrets: Iterable[Mapping[str, Any]], events: Iterable[Mapping[str, Any]],
                  credentials: Iterable[Mapping[str, Any]],
                  namespaces: Iterable[Mapping[str, Any]]) -> Snapshot:
    """A `Snapshot` from API bodies (iterables, so listings stream through: each Secret is
    reduced as it arrives and its content dropped)."""
    return Snapshot(
        pods=[observe_pod(body) for body in pods],
        service_accounts={(a.namespace, a.name): a for a in map(observe_service_account, service_accounts)},
        secrets={(s.namespace, s.name): s for s in map(observe_secret, secrets)},
        events=[e for e in map(observe_event, events) if e],
        credentials=[observe_credential(body) for body in credentials],
        namespaces={n.name: n for n in map(NamespaceInfo.from_body, namespaces)},
    )
