"""What a ServiceAccount carries at its creation: the admission decision, without I/O.

The mutating webhook calls this with a live read of the namespace and of the CRs, the
reconciler's plan decides the same question for ServiceAccounts that already exist; both go
through `namespace_matches` and `service_account_matches`, so the two can never disagree on
which ServiceAccount gets which entry. The webhook only ever adds: entries given in the
manifest stay first and in order, and an entry already there is not added twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from regcred.core.conditions import read_status
from regcred.core.errors import InvalidInput
from regcred.core.matching import SYSTEM_NAMESPACES, NamespaceInfo, namespace_matches, service_account_matches
from regcred.core.plan import Credential
from regcred.core.spec import IGNORE_LABEL, PULL_SECRETS_ANNOTATION, CredentialSpec

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace


@dataclass(frozen=True)
class AdmissionCredential:
    """A CR the webhook may act on: valid, rendered at its generation, not suspended."""

    credential: Credential
    conflicted_namespaces: frozenset[str] = frozenset()  # its status says another owns the name

    @property
    def spec(self) -> CredentialSpec:
        assert self.credential.spec is not None
        return self.credential.spec


def admission_credentials(
    bodies: Iterable[Mapping[str, Any]], parse: Callable[[Mapping[str, Any]], CredentialSpec],
) -> list[AdmissionCredential]:
    """The CRs whose entry a new ServiceAccount may get: the webhook has no rendered content
    to look at (a paused replica has none), so it trusts the status the active replica wrote
    for this very generation. A CR that is new, changed since, suspended, being deleted,
    invalid or not rendered adds nothing; the watch path takes over once it is synced."""
    usable = []
    for body in bodies:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            continue
        try:
            spec = parse(body)
        except InvalidInput:
            continue
        status = read_status(body)
        current = status.observed_generation == spec.generation == status.ready.observed_generation
        if spec.suspend or not spec.copies or not status.rendered or not current:
            continue
        usable.append(AdmissionCredential(Credential(spec.name, spec.uid, spec),
                                          status.conflicted_namespaces))
    return usable


def pull_secrets_at_creation(namespace: NamespaceInfo, credentials: Iterable[AdmissionCredential],
                             service_account: str) -> tuple[str, ...]:
    """Our entries a ServiceAccount named `service_account` gets when it is created in
    `namespace`, in a stable order. Where two CRs claim one Secret name the senior one
    decides, as in the plan; where the status reports the name taken in this namespace
    (a Conflict), that CR adds nothing here."""
    deciding: dict[str, AdmissionCredential] = {}
    for candidate in sorted(credentials, key=lambda c: c.credential.seniority):
        if namespace.name in candidate.conflicted_namespaces:
            continue
        if namespace_matches(candidate.spec, namespace):
            deciding.setdefault(candidate.spec.secret_name, candidate)
    return tuple(
        name for name, candidate in sorted(deciding.items())
        if service_account_matches(candidate.spec, service_account)
    )


def add_pull_secrets(service_account: MutableMapping[str, Any], secret_names: Iterable[str]) -> list[str]:
    """Append our entries not yet in `service_account` (in place) and list them in our
    annotation; return the names added. Entries already there, ours or not, are kept as
    they are, in order, and not claimed."""
    entries = list(service_account.get("imagePullSecrets") or [])
    present = {entry.get("name") for entry in entries if isinstance(entry, Mapping)}
    added = [name for name in dict.fromkeys(secret_names) if name not in present]
    if not added:
        return []
    service_account["imagePullSecrets"] = entries + [{"name": name} for name in added]
    meta = service_account.setdefault("metadata", {})
    annotations = meta.get("annotations") or {}
    ours = {name for name in annotations.get(PULL_SECRETS_ANNOTATION, "").split(",") if name}
    meta["annotations"] = {**annotations, PULL_SECRETS_ANNOTATION: ",".join(sorted(ours | set(added)))}
    return added


def webhook_namespace_selector(specs: Iterable[CredentialSpec]) -> dict[str, Any]:
    """The webhook's `namespaceSelector`: the API server does not even call us for ignored
    namespaces, nor for the system namespaces that no CR names explicitly."""
    named = {namespace for spec in specs for namespace in spec.namespaces}
    excluded = sorted(SYSTEM_NAMESPACES - named)
    expressions = [{"key": IGNORE_LABEL, "operator": "NotIn", "values": ["true"]}]
    if excluded:
        expressions.append({"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": excluded})
    return {"matchExpressions": expressions}


def admission_patch(service_account: Mapping[str, Any], secret_names: Iterable[str]) -> list[dict[str, Any]]:
    """The JSON Patch an AdmissionReview answer carries: the ServiceAccount's
    `imagePullSecrets` and annotations as `add_pull_secrets` makes them, each set whole
    ("add" replaces a member that exists); empty when nothing is added."""
    meta = service_account.get("metadata") or {}
    changed: dict[str, Any] = {"imagePullSecrets": service_account.get("imagePullSecrets"),
                               "metadata": {"annotations": meta.get("annotations")}}
    if not add_pull_secrets(changed, secret_names):
        return []
    return [{"op": "add", "path": "/imagePullSecrets", "value": changed["imagePullSecrets"]},
            {"op": "add", "path": "/metadata/annotations", "value": changed["metadata"]["annotations"]}]
