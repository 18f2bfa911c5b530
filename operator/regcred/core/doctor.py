"""`regcred doctor`: why a Pod cannot pull, decided from listed objects alone (no I/O here).

The CLI (regcred/doctor.py) lists each kind once and reduces every object with the
`observe_*` functions below; `diagnose` then walks every container image of every Pod:
its registry, its effective pull policy, the pull secret the kubelet would use (by the
kubelet's own matching rules, regcred/core/keyring.py), and each problem as a `Finding`
with a code, the evidence and the fix. Secret content is never kept: of a pull secret only
its `auths` keys (registry names) survive the reduction.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from regcred.core.conditions import (
    NAMESPACE_FAILURE_REASONS,
    PASSING,
    UNAUTHORIZED,
    RegistryResult,
    read_status,
)
from regcred.core.errors import InvalidInput
from regcred.core.images import IF_NOT_PRESENT, ImageRef, default_pull_policy, parse_image
from regcred.core.keyring import AuthsEntry, lookup, normalized_key
from regcred.core.matching import (
    SYSTEM_NAMESPACES,
    NamespaceInfo,
    namespace_matches,
    selector_matches,
    service_account_matches,
)
from regcred.core.pullsecret import check, kubelet_read
from regcred.core.source import DOCKERCONFIGJSON_KEY, DOCKERCONFIGJSON_TYPE, registry_key
from regcred.core.spec import (
    CREDENTIAL_LABEL,
    IGNORE_LABEL,
    CredentialSpec,
    parse_credential,
)

DOCKERCFG_TYPE = "kubernetes.io/dockercfg"
DOCKERCFG_KEY = ".dockercfg"
ERROR, WARNING = "error", "warning"
MAX_EVIDENCE_TEXT = 300

# Finding codes: (severity, one line on what it means). docs/doctor.md explains each.
CODES: dict[str, tuple[str, str]] = {
    "InvalidImageName": (ERROR, "the image reference cannot be parsed"),
    "PullSecretMissing": (ERROR, "the Pod names a pull secret that does not exist in its namespace"),
    "PullSecretWrongType": (ERROR, "a pull secret the Pod names is not a dockerconfigjson Secret"),
    "PullSecretInvalid": (ERROR, "a pull secret's content cannot be read by the kubelet"),
    "AuthsKeyMismatch": (ERROR, "a pull secret has an entry for this host, but not one that matches"),
    "RegistryNotCovered": (ERROR, "no pull secret and no RegistryCredential covers the registry"),
    "NamespaceNotMatched": (ERROR, "a RegistryCredential covers the registry but not this namespace"),
    "ServiceAccountNotMatched": (ERROR, "a RegistryCredential covers the registry but not this "
                                        "Pod's ServiceAccount"),
    "CredentialSuspended": (ERROR, "the RegistryCredential for the registry is suspended"),
    "CredentialNotReady": (ERROR, "the RegistryCredential for the registry is not Ready"),
    "CopyConflict": (ERROR, "a Secret not managed by regcred holds the copy's name"),
    "CopyMissing": (ERROR, "the RegistryCredential's copy is not in the namespace yet"),
    "ServiceAccountMissingEntry": (ERROR, "the ServiceAccount does not list the copy yet"),
    "PodAdmittedBeforeEntry": (ERROR, "the Pod was created before its ServiceAccount listed the copy"),
    "CredentialRejected": (ERROR, "the registry rejects the credential (regcred's verification)"),
    "PullUnauthorized": (ERROR, "pulls fail: the registry refused the credentials (401/403)"),
    "ImageNotFound": (ERROR, "pulls fail: the repository or tag does not exist (404)"),
    "RegistryUnreachable": (ERROR, "pulls fail: the registry cannot be reached (DNS or TCP)"),
    "RegistryTLSError": (ERROR, "pulls fail: the registry's TLS certificate is not trusted"),
    "ImageNeverPulled": (ERROR, "imagePullPolicy Never and the image is not on the node"),
    "PullFailed": (ERROR, "pulls fail for another reason (see the evidence)"),
    "IfNotPresentPrivateImage": (WARNING, "IfNotPresent on a private image: the node's copy may "
                                          "serve Pods without credentials"),
    "VerificationFailed": (WARNING, "regcred could not verify the credential at the registry"),
}

PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                          "RegistryUnavailable", "SignatureValidationFailed"})
# kubelet/containerd pull error texts -> finding code; the first match wins (DNS before TCP:
# a lookup failure also says "dial tcp").
_PULL_CAUSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ImageNeverPulled", re.compile(r"ErrImageNeverPull|pull policy of Never", re.I)),
    ("RegistryTLSError", re.compile(r"x509:|tls:|certificate", re.I)),
    ("RegistryUnreachable", re.compile(
        r"no such host|server misbehaving|name resolution|connection refused|i/o timeout|"
        r"no route to host|network is unreachable|connection reset|dial tcp|RegistryUnavailable", re.I)),
    ("PullUnauthorized", re.compile(
        r"\b401\b|\b403\b|unauthorized|authorization failed|authentication required|"
        r"no basic auth credentials|pull access denied|forbidden|denied", re.I)),
    ("ImageNotFound", re.compile(r"\b404\b|not found|manifest unknown|name unknown", re.I)),
)

# Texts that only repeat the state (`Error: ErrImagePull`, `Back-off pulling image "x"`): a
# cause only when nothing else says more.
_VAGUE = re.compile(r"(?:Error: )?(?:ErrImagePull|ImagePullBackOff)\s*$|^\w+: Back-off pulling image "
                    r'"[^"]*"\s*$|^(?:ErrImagePull|ImagePullBackOff)\b')


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


# --- the report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    code: str
    namespace: str
    pod: str
    container: str
    image: str
    message: str
    evidence: tuple[str, ...] = ()
    fix: str = ""
    commands: tuple[str, ...] = ()

    @property
    def severity(self) -> str:
        return CODES[self.code][0]


@dataclass(frozen=True)
class ImageReport:
    namespace: str
    pod: str
    container: str
    container_kind: str
    image: str
    registry: str
    repository: str
    tag: str
    digest: str
    pull_policy: str  # the effective one
    default_pull_policy: str  # what the API server fills in for this image when none is given
    pull_secret: AuthsEntry | None
    pull_secret_credential: str  # the CR whose copy it is, "" if not a regcred copy
    candidates: tuple[AuthsEntry, ...]
    state: str


@dataclass(frozen=True)
class Report:
    images: tuple[ImageReport, ...]
    findings: tuple[Finding, ...]
    pods: int

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def failed(self, fail_on: str = WARNING) -> bool:
        """Exit status 1 or 0: any error, or with `fail_on="warning"` any warning too."""
        severities = {ERROR} if fail_on == ERROR else {ERROR, WARNING}
        return any(f.severity in severities for f in self.findings)


def diagnose(snapshot: Snapshot) -> Report:
    """Every finding for every Pod of `snapshot`; a Pod's own pull-secret problems once per Pod
    (with container ""), the rest per container image."""
    images, findings = [], []
    events = _events_by_pod(snapshot.events)
    secret_namespaces: dict[str, list[str]] = {}
    for namespace, name in snapshot.secrets:
        secret_namespaces.setdefault(name, []).append(namespace)
    for pod in sorted(snapshot.pods, key=lambda p: (p.namespace, p.name)):
        pod_context = _Context(pod, None)
        entries = _pod_entries(snapshot, pod, secret_namespaces, pod_context)
        findings.extend(pod_context.findings)
        for container in pod.containers:
            image, found = _diagnose_image(snapshot, pod, container, entries,
                                           events.get((pod.namespace, pod.name), []))
            if image is not None:
                images.append(image)
            findings.extend(found)
    return Report(images=tuple(images), findings=tuple(findings), pods=len(snapshot.pods))


def _events_by_pod(events: Iterable[PullEvent]) -> dict[tuple[str, str], list[PullEvent]]:
    grouped: dict[tuple[str, str], list[PullEvent]] = {}
    for event in events:
        grouped.setdefault((event.namespace, event.pod), []).append(event)
    return grouped


class _Context:
    """One container image (or, with `container` None, the Pod itself) being diagnosed;
    collects findings with its coordinates."""

    def __init__(self, pod: PodInfo, container: ContainerImage | None) -> None:
        self.pod, self.container = pod, container
        self.findings: list[Finding] = []

    def add(self, code: str, message: str, evidence: Iterable[str] = (), fix: str = "",
            commands: Iterable[str] = ()) -> None:
        self.findings.append(Finding(
            code=code, namespace=self.pod.namespace, pod=self.pod.name,
            container=self.container.name if self.container else "",
            image=self.container.image if self.container else "", message=message,
            evidence=tuple(evidence), fix=fix, commands=tuple(commands)))


def _diagnose_image(snapshot: Snapshot, pod: PodInfo, container: ContainerImage,
                    entries: Sequence[AuthsEntry], events: Sequence[PullEvent],
                    ) -> tuple[ImageReport | None, list[Finding]]:
    context = _Context(pod, container)
    state = pod.states.get(container.name, ContainerState())
    try:
        ref = parse_image(container.image)
    except InvalidInput as error:
        context.add("InvalidImageName", error.message,
                    fix="fix the image in the Pod's template: [registry[:port]/]repository[:tag][@digest]")
        return None, context.findings
    default_policy = default_pull_policy(ref)
    policy = container.pull_policy or default_policy
    candidates = lookup(entries, ref.repository)
    used = candidates[0] if candidates else None
    used_copy = snapshot.secrets.get((pod.namespace, used.secret)) if used else None
    covering = [c for c in snapshot.credentials if _covering_server(c, ref)]
    failures = [] if state.pulled else _pull_failures(state, events, container.name, container.image)
    if used is None:
        _explain_uncovered(snapshot, pod, ref, covering, entries, bool(failures), context)
    elif used_copy is not None and used_copy.credential:
        _check_verification(snapshot, used_copy.credential, ref, context)
    _report_failures(failures, ref, used, context)
    private = used is not None or bool(covering)
    if policy == IF_NOT_PRESENT and private:
        context.add(
            "IfNotPresentPrivateImage",
            f"{container.image} is private and pulled with IfNotPresent",
            evidence=[f"imagePullPolicy {policy}" + (" (the API server's default for a tag other "
                                                     "than latest)" if policy == default_policy else ""),
                      "a node that has the image runs it for any Pod, without checking credentials, "
                      "unless its kubelet enforces KubeletEnsureSecretPulledImages (default since "
                      "1.35, except for images preloaded on the node); a wrong credential then stays "
                      "hidden until the Pod lands on a node without the image"],
            fix="set imagePullPolicy: Always on this container (pulls of unchanged images only "
                "fetch the manifest), or pin by digest and accept the node cache",
        )
    report = ImageReport(
        namespace=pod.namespace, pod=pod.name, container=container.name,
        container_kind=container.kind, image=container.image, registry=ref.registry,
        repository=ref.repository, tag=ref.tag, digest=ref.digest, pull_policy=policy,
        default_pull_policy=default_policy, pull_secret=used,
        pull_secret_credential=used_copy.credential if used_copy else "",
        candidates=tuple(candidates), state=_state_word(state),
    )
    return report, context.findings


def _state_word(state: ContainerState) -> str:
    if state.waiting_reason:
        return state.waiting_reason
    return "Pulled" if state.pulled else "Pending"


def _pod_entries(snapshot: Snapshot, pod: PodInfo, secret_namespaces: Mapping[str, list[str]],
                 context: _Context) -> list[AuthsEntry]:
    """The Pod's pull secrets as the kubelet reads them, reporting those it cannot."""
    entries: list[AuthsEntry] = []
    for name in pod.pull_secrets:
        secret = snapshot.secrets.get((pod.namespace, name))
        if secret is None:
            elsewhere = sorted(secret_namespaces.get(name, ()))
            evidence = [f"spec.imagePullSecrets names {name!r}; no Secret of that name in "
                        f"namespace {pod.namespace}"]
            if elsewhere:
                evidence.append(f"a Secret {name!r} exists in {', '.join(elsewhere)}: pull secrets are "
                                "namespaced, a Pod only uses those in its own namespace")
            context.add("PullSecretMissing", f"pull secret {name!r} does not exist", evidence,
                        fix=f"create the Secret in {pod.namespace} (or let a RegistryCredential copy "
                            "it there), or remove it from imagePullSecrets")
        elif not secret.pull_secret:
            context.add("PullSecretWrongType", f"pull secret {name!r} has type {secret.type}",
                        [f"the kubelet only reads {DOCKERCONFIGJSON_TYPE} (or {DOCKERCFG_TYPE}) "
                         "Secrets and ignores this one"],
                        fix=f"recreate it with `kubectl create secret docker-registry {name} -n "
                            f"{pod.namespace} ...`, or let a RegistryCredential manage it")
        else:
            if secret.problem:
                context.add("PullSecretInvalid", f"pull secret {name!r} cannot be read: {secret.problem}",
                            ["the kubelet fails every pull of this Pod while one of its pull secrets "
                             "does not parse" if secret.refused else
                             "the kubelet reads it, but not as it is written (regcred refuses to copy "
                             "such a source for the same reason)"],
                            fix="recreate the Secret with `kubectl create secret docker-registry`")
            entries.extend(AuthsEntry(name, key) for key in secret.keys)
    return entries


def _covering_server(credential: CredentialInfo, ref: ImageRef) -> str:
    """The credential's server whose auths key would match `ref`, or ""."""
    if credential.spec is None:
        return ""
    entries = [AuthsEntry(server, registry_key(server)) for server in credential.spec.servers]
    found = lookup(entries, ref.repository)
    return found[0].secret if found else ""


def _explain_uncovered(snapshot: Snapshot, pod: PodInfo, ref: ImageRef,
                       covering: Sequence[CredentialInfo], entries: Sequence[AuthsEntry],
                       pull_failed: bool, context: _Context) -> None:
    """No pull secret of the Pod matches: say why, per RegistryCredential that should cover it.
    CRs that select the namespace explain it; the others only when none does."""
    namespace = snapshot.namespaces.get(pod.namespace, NamespaceInfo(pod.namespace))
    selecting = [c for c in covering if c.spec is not None and namespace_matches(c.spec, namespace)]
    for credential in selecting or covering:
        _explain_credential(snapshot, pod, ref, credential, context)
    if covering:
        return
    near = [e for e in entries if _same_host(e.key, ref.registry)]
    if near:
        context.add(
            "AuthsKeyMismatch",
            f"no auths entry matches {ref.repository}",
            [f"secret {e.secret!r} has key {e.key!r}, which the kubelet files under "
             f"{normalized_key(e.key)!r}" for e in near]
            + [f"the kubelet needs a key for host {ref.registry} with the same port (or none), and "
               "a path that is a prefix of the repository's"],
            fix=f"use the key {ref.registry!r} in the Secret's auths (or spec.registries "
                f"server {ref.registry!r} in the RegistryCredential)")
    elif pull_failed:
        context.add(
            "RegistryNotCovered",
            f"no pull secret of the Pod covers {ref.registry}, and no RegistryCredential lists it",
            [f"pull secrets of the Pod: {', '.join(pod.pull_secrets) or 'none'}",
             f"auths keys: {', '.join(sorted({e.key for e in entries})) or 'none'}"],
            fix=f"add {ref.registry!r} to spec.registries of a RegistryCredential (or create one) "
                "matching this namespace")


def _same_host(key: str, registry: str) -> bool:
    bare = key.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[2]
    return bare.split(":", 1)[0].lower() == registry.split(":", 1)[0].lower()


def _explain_credential(snapshot: Snapshot, pod: PodInfo, ref: ImageRef, credential: CredentialInfo,
                        context: _Context) -> None:
    spec = credential.spec
    assert spec is not None  # only parsed credentials cover anything
    namespace = snapshot.namespaces.get(pod.namespace, NamespaceInfo(pod.namespace))
    name = credential.name
    if not namespace_matches(spec, namespace):
        context.add("NamespaceNotMatched",
                    f"RegistryCredential {name} covers {ref.registry} but not namespace {pod.namespace}",
                    [_why_namespace_unmatched(spec, namespace)],
                    fix=_namespace_fix(spec, namespace))
        return
    if not service_account_matches(spec, pod.service_account):
        context.add("ServiceAccountNotMatched",
                    f"RegistryCredential {name} does not add its copy to ServiceAccount "
                    f"{pod.service_account}",
                    [f"spec.serviceAccounts is {list(spec.service_accounts)}; the Pod runs as "
                     f"{pod.service_account}"],
                    fix=f"add {pod.service_account!r} to spec.serviceAccounts of {name}, or list "
                        f"{spec.secret_name!r} in the Pod's imagePullSecrets")
        return
    if spec.suspend:
        context.add("CredentialSuspended", f"RegistryCredential {name} is suspended",
                    ["spec.suspend is true: regcred writes no new copies or entries"],
                    fix=f"kubectl patch registrycredential {name} --type merge -p "
                        "'{\"spec\":{\"suspend\":false}}'")
        return
    if spec.served_at_pull:
        # No pull secret is expected: the kubelet's credential provider asks regcred at pull
        # time (docs/credential-provider.md); a failing pull is reported from its events.
        _report_not_ready(credential, "the credential provider has nothing to hand out", context)
        return
    copy = snapshot.secrets.get((pod.namespace, spec.secret_name))
    if copy is not None and copy.credential != name and credential.uid not in copy.owner_uids:
        context.add("CopyConflict",
                    f"Secret {pod.namespace}/{spec.secret_name} exists and is not managed by regcred",
                    [f"RegistryCredential {name} refuses to overwrite it"],
                    fix=f"delete or rename that Secret, or set spec.target.secretName of {name}")
        return
    if copy is None:
        failed = credential.failed_namespaces.get(pod.namespace)
        if _report_not_ready(credential, f"there is no copy in {pod.namespace}", context):
            return
        evidence = [f"no Secret {spec.secret_name} in {pod.namespace}"]
        if failed:
            evidence.append(f"status.failedNamespaces: {failed[0]}: {failed[1]}")
        else:
            evidence.append("the operator has not written it: is regcred running? "
                            "(kubectl -n regcred-system get pods)")
        context.add("CopyMissing", f"RegistryCredential {name} has no copy in {pod.namespace}",
                    evidence, fix="check the operator's logs and the CR's status")
        return
    account = snapshot.service_accounts.get((pod.namespace, pod.service_account))
    if account is None or spec.secret_name not in account.pull_secrets:
        listed = ", ".join(account.pull_secrets) if account else "(no such ServiceAccount)"
        context.add("ServiceAccountMissingEntry",
                    f"ServiceAccount {pod.namespace}/{pod.service_account} does not list "
                    f"{spec.secret_name}",
                    [f"its imagePullSecrets: {listed or 'none'}"],
                    fix="regcred adds it within seconds while it runs; check the operator, or add "
                        f"{spec.secret_name!r} to the Pod's imagePullSecrets")
        return
    if spec.secret_name not in pod.pull_secrets:
        restart = [f"kubectl delete pod -n {pod.namespace} {pod.name}"]
        if pod.owner.startswith("ReplicaSet/"):
            restart.append(f"# or restart its workload: kubectl rollout restart -n {pod.namespace} "
                           f"deployment/{pod.owner.split('/', 1)[1].rsplit('-', 1)[0]}")
        context.add("PodAdmittedBeforeEntry",
                    f"the Pod was created before ServiceAccount {pod.service_account} listed "
                    f"{spec.secret_name}",
                    [f"ServiceAccount {pod.service_account} lists {spec.secret_name} now; the Pod "
                     f"(created {pod.created}) carries imagePullSecrets "
                     f"[{', '.join(pod.pull_secrets)}], copied at admission and never updated"],
                    fix="delete the Pod so that it is created again with the entry"
                        + (f" (its owner {pod.owner} recreates it)" if pod.owner else
                           " and create it again"),
                    commands=restart)


def _report_not_ready(credential: CredentialInfo, consequence: str, context: _Context) -> bool:
    """A CR whose source or spec is broken (not one failing in some namespaces): report it."""
    if credential.ready != "False" or credential.ready_reason in NAMESPACE_FAILURE_REASONS:
        return False
    context.add("CredentialNotReady",
                f"RegistryCredential {credential.name} is not Ready ({credential.ready_reason}), so "
                f"{consequence}",
                [credential.ready_message or credential.problem or "no message"],
                fix=f"fix what the message says; kubectl describe registrycredential {credential.name}")
    return True


def _why_namespace_unmatched(spec: CredentialSpec, namespace: NamespaceInfo) -> str:
    name = namespace.name
    if namespace.terminating:
        return f"namespace {name} is being deleted"
    if namespace.labels.get(IGNORE_LABEL) == "true":
        return f"namespace {name} is labelled {IGNORE_LABEL}=true"
    excluded = [p for p in spec.exclude_namespaces if fnmatchcase(name, p)]
    if excluded:
        return f"spec.excludeNamespaces pattern {excluded[0]!r} matches {name}"
    if name in SYSTEM_NAMESPACES:
        return f"{name} is a system namespace: it matches only when named in spec.namespaces"
    parts = []
    if spec.namespace_selector is not None and not selector_matches(spec.namespace_selector,
                                                                    namespace.labels):
        parts.append("spec.namespaceSelector does not match its labels")
    if spec.namespaces:
        parts.append(f"no spec.namespaces pattern matches it ({', '.join(spec.namespaces)})")
    return f"namespace {name}: " + " and ".join(parts)


def _namespace_fix(spec: CredentialSpec, namespace: NamespaceInfo) -> str:
    if namespace.labels.get(IGNORE_LABEL) == "true":
        return f"kubectl label namespace {namespace.name} {IGNORE_LABEL}-"
    if any(fnmatchcase(namespace.name, p) for p in spec.exclude_namespaces):
        return f"remove the pattern from spec.excludeNamespaces of {spec.name}"
    return f"add {namespace.name!r} to spec.namespaces of {spec.name}, or label the namespace to " \
           "match spec.namespaceSelector"


def _check_verification(snapshot: Snapshot, credential_name: str, ref: ImageRef,
                        context: _Context) -> None:
    credential = next((c for c in snapshot.credentials if c.name == credential_name), None)
    if credential is None:
        return
    server = _covering_server(credential, ref)
    result = next((v for v in credential.verification if v.server == server), None)
    if result is None or result.result in PASSING:
        return
    if result.result == UNAUTHORIZED:
        context.add("CredentialRejected",
                    f"{server} rejects the credential of RegistryCredential {credential_name}",
                    [f"status.registries[{server}]: {result.result}: {result.message}"],
                    fix=f"update the source Secret of {credential_name} (the robot account may have "
                        "expired or been rotated at the registry)")
    else:
        context.add("VerificationFailed",
                    f"regcred could not verify the credential for {server}: {result.result}",
                    [result.message], fix="check the operator's network access to the registry")


def _pull_failures(state: ContainerState, events: Sequence[PullEvent], container: str,
                   image: str) -> list[tuple[str, str, int]]:
    """(code, evidence text, count) of this container's current pull failures."""
    texts: list[tuple[str, int]] = []
    if state.waiting_reason in PULL_REASONS:
        texts.append((f"{state.waiting_reason}: {state.waiting_message}".strip(": "), 1))
    for event in events:
        if event.container == container or (not event.container and f'"{image}"' in event.message):
            texts.append((f"{event.reason}: {event.message}", event.count))
    causes: dict[str, tuple[str, int]] = {}
    vague: list[tuple[str, int]] = []
    for text, count in texts:
        if text.startswith("InvalidImageName"):
            continue  # reported from the parse
        code = next((code for code, pattern in _PULL_CAUSES if pattern.search(text)), None)
        if code is None:
            if _VAGUE.search(text):
                vague.append((text, count))
                continue
            code = "PullFailed"
        seen, total = causes.get(code, (text, 0))
        causes[code] = (seen, total + count)
    if vague and not causes:
        causes["PullFailed"] = (vague[0][0], sum(count for _, count in vague))
    return [(code, text, count) for code, (text, count) in causes.items()]


def _report_failures(failures: Sequence[tuple[str, str, int]], ref: ImageRef,
                     used: AuthsEntry | None, context: _Context) -> None:
    fixes = {
        "PullUnauthorized": (f"the registry refused the credential from secret {used.secret!r} "
                             f"(key {used.key!r}): update the password or token at its source"
                             if used else
                             f"no pull secret covers {ref.registry}: give the Pod one (see the other "
                             "findings)"),
        "ImageNotFound": f"check that {ref.repository}:{ref.tag or ref.digest} exists "
                         "(a typo in the tag, or a repository the credential cannot see)",
        "RegistryUnreachable": f"check DNS and the network path from the node to {ref.registry}",
        "RegistryTLSError": f"give the node's container runtime the CA of {ref.registry} "
                            "(e.g. containerd's hosts.toml)",
        "ImageNeverPulled": "imagePullPolicy is Never: pre-load the image on the node, or use "
                            "IfNotPresent/Always",
        "PullFailed": "see the evidence",
    }
    for code, text, count in failures:
        context.add(code, f"pulling {ref.image} fails: {CODES[code][1].split(': ', 1)[-1]}",
                    [f"{count}x {text[:MAX_EVIDENCE_TEXT]}"], fix=fixes[code])


# --- serialisation ------------------------------------------------------------------------

SCHEMA_VERSION = "regcred.dev/doctor/v1"


def report_json(report: Report, scope: Mapping[str, Any]) -> dict[str, Any]:
    """The `-o json` document (docs/doctor.md documents every field)."""
    return {
        "apiVersion": SCHEMA_VERSION,
        "kind": "DoctorReport",
        "scope": dict(scope),
        "summary": {
            "pods": report.pods, "images": len(report.images),
            "errors": report.count(ERROR), "warnings": report.count(WARNING),
            "healthy": not report.findings,
        },
        "images": [
            {
                "namespace": i.namespace, "pod": i.pod, "container": i.container,
                "containerType": i.container_kind, "image": i.image, "registry": i.registry,
                "repository": i.repository, "tag": i.tag, "digest": i.digest,
                "pullPolicy": i.pull_policy, "defaultPullPolicy": i.default_pull_policy,
                "pullSecret": _entry_json(i.pull_secret, i.pull_secret_credential),
                "candidates": [_entry_json(c, "") for c in i.candidates],
                "state": i.state,
            }
            for i in report.images
        ],
        "findings": [
            {
                "code": f.code, "severity": f.severity, "namespace": f.namespace, "pod": f.pod,
                "container": f.container, "image": f.image, "message": f.message,
                "evidence": list(f.evidence), "fix": f.fix, "commands": list(f.commands),
            }
            for f in report.findings
        ],
    }


def _entry_json(entry: AuthsEntry | None, credential: str) -> dict[str, str] | None:
    if entry is None:
        return None
    out = {"secret": entry.secret, "key": entry.key}
    if credential:
        out["credential"] = credential
    return out

