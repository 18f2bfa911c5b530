"""Observed state of one namespace + all RegistryCredentials -> the actions that converge it.

The namespace is the unit of reconciliation: copies of different credentials can
claim one Secret name, and ServiceAccount entries of all credentials share one
list, so only a view across credentials decides them safely. A CR change simply
re-plans every namespace.

Ownership rules, in one place:
- a copy belongs to the live credential named by its `regcred.dev/credential` label
  (or, if the label was stripped, the one its ownerReference points to);
- a copy whose credential is gone is an orphan: deleted, or adopted by a claimant;
- a ServiceAccount entry is ours only if it is listed in our annotation;
- a *frozen* credential (suspended, invalid, or not rendered yet) keeps what it has:
  nothing of it is created, replaced, deleted, added or removed;
- a credential delivered only by the credential provider (`spec.delivery`) wants no copy
  and no entry: what it made while it delivered Secrets is removed once it is rendered.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from regcred.core.compact import shared, text
from regcred.core.matching import NamespaceInfo, namespace_matches, service_account_matches
from regcred.core.source import DOCKERCONFIGJSON_KEY, DOCKERCONFIGJSON_TYPE, RenderedConfig
from regcred.core.spec import (
    CREDENTIAL_LABEL,
    GROUP,
    KIND,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    PULL_SECRETS_ANNOTATION,
    VERSION,
    CredentialSpec,
)


@dataclass(frozen=True)
class Credential:
    """A RegistryCredential as the planner sees it; `spec`/`config` are None when unusable."""

    name: str
    uid: str
    spec: CredentialSpec | None = None
    config: RenderedConfig | None = None

    @property
    def active(self) -> bool:
        return self.spec is not None and self.config is not None and not self.spec.suspend

    @property
    def valid_spec(self) -> CredentialSpec:
        """The spec of a credential known to be valid (every matched one is)."""
        if self.spec is None:
            raise ValueError(f"credential {self.name} has no valid spec")
        return self.spec

    @property
    def content(self) -> RenderedConfig:
        """What every copy of an active credential holds."""
        if self.config is None:
            raise ValueError(f"credential {self.name} is not rendered")
        return self.config

    @property
    def seniority(self) -> tuple[str, str]:
        """Older credentials win a contested Secret name; the name breaks ties."""
        return (self.spec.created if self.spec else "", self.name)


@dataclass(frozen=True, slots=True)
class ObservedCopy:
    """A regcred-managed Secret as the watch saw it: fingerprints, never the secret itself.

    One is cached for every copy in the cluster, so it is slotted and holds tuples.
    """

    namespace: str
    name: str
    credential: str
    owner_uids: tuple[str, ...]
    data_digest: str
    meta_fingerprint: str
    uid: str = ""
    resource_version: str = ""
    deleting: bool = False  # deletion requested; somebody else's finalizer may hold it a while


@dataclass(frozen=True, slots=True)
class ObservedServiceAccount:
    namespace: str
    name: str
    pull_secrets: tuple[str, ...] = ()
    ours: frozenset[str] = frozenset()
    resource_version: str = ""
    has_annotations: bool = False


@dataclass(frozen=True)
class CreateCopy:
    namespace: str
    credential: str
    manifest: Mapping[str, Any] = field(repr=False)

    @property
    def secret_name(self) -> str:
        return str(self.manifest["metadata"]["name"])


@dataclass(frozen=True)
class ReplaceCopy:
    namespace: str
    credential: str
    resource_version: str
    rotation: bool
    manifest: Mapping[str, Any] = field(repr=False)

    @property
    def secret_name(self) -> str:
        return str(self.manifest["metadata"]["name"])


@dataclass(frozen=True)
class DeleteCopy:
    namespace: str
    secret_name: str
    credential: str
    uid: str
    resource_version: str


@dataclass(frozen=True)
class AddPullSecret:
    namespace: str
    service_account: str
    secret_name: str
    credential: str
    # What the cache showed: the first patch attempt is built on it, saving a read.
    observed: ObservedServiceAccount | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RemovePullSecret:
    namespace: str
    service_account: str
    secret_name: str
    observed: ObservedServiceAccount | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class AlreadyRight:
    """The Secret is ours and already as desired: nothing to write."""


@dataclass(frozen=True)
class NotOurs:
    """A Secret with the target name exists and regcred does not own it: leave it alone."""

    message: str


SecretAction = CreateCopy | ReplaceCopy | DeleteCopy
# What to do about a copy once the API refused a write of it (see `next_copy_step`).
CopyStep = CreateCopy | ReplaceCopy | AlreadyRight | NotOurs
ServiceAccountAction = AddPullSecret | RemovePullSecret
Action = SecretAction | ServiceAccountAction


@dataclass(frozen=True)
class NamespacePlan:
    namespace: str
    secret_actions: tuple[SecretAction, ...] = ()
    service_account_actions: tuple[ServiceAccountAction, ...] = ()
    matched: frozenset[str] = frozenset()
    conflicts: Mapping[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.secret_actions and not self.service_account_actions

    @property
    def undoes(self) -> bool:
        """Whether it deletes a copy or removes an entry (what a missed CR would undo)."""
        return any(isinstance(a, DeleteCopy) for a in self.secret_actions) or any(
            isinstance(a, RemovePullSecret) for a in self.service_account_actions)

    def only_adding(self) -> NamespacePlan:
        """This plan with only its creates, replaces and additions."""
        return replace(
            self,
            secret_actions=tuple(a for a in self.secret_actions if not isinstance(a, DeleteCopy)),
            service_account_actions=tuple(a for a in self.service_account_actions
                                          if not isinstance(a, RemovePullSecret)),
        )


def plan_namespace(
    namespace: NamespaceInfo | None,
    credentials: Iterable[Credential],
    copies: Iterable[ObservedCopy],
    service_accounts: Iterable[ObservedServiceAccount],
    foreign_secrets: frozenset[str] = frozenset(),
) -> NamespacePlan:
    """Compare desired with observed for one namespace; an empty plan means nothing differs.

    `foreign_secrets` are names known to exist here without being ours (the managed-Secret
    watch cannot see them; the executor learns them from a refused create).
    """
    if namespace is None or namespace.terminating:
        return NamespacePlan(namespace.name if namespace else "")
    by_name = {credential.name: credential for credential in credentials}
    copies = list(copies)
    holders = {copy.name: _holder(copy, by_name) for copy in copies}
    matched = [c for c in by_name.values() if c.spec and namespace_matches(c.spec, namespace)]

    # Only credentials delivered by copies claim a Secret name: leaving Secrets (spec.delivery)
    # makes an active credential's copies and entries undesired, so they are removed.
    copying = [c for c in matched if c.valid_spec.copies]
    desired, conflicts = _assign_secret_names(copying, holders, foreign_secrets)
    secret_actions: list[SecretAction] = []
    observed = {copy.name: copy for copy in copies}
    for secret_name, winner in sorted(desired.items()):
        manifest = desired_copy(winner, namespace.name)
        current = observed.get(secret_name)
        if current is None:
            secret_actions.append(CreateCopy(namespace.name, winner.name, manifest))
        elif copy_differs(current, manifest):
            rotation = current.data_digest != winner.content.digest
            secret_actions.append(
                ReplaceCopy(namespace.name, winner.name, current.resource_version, rotation, manifest)
            )
    for copy in copies:
        holder = holders[copy.name]
        if copy.name not in desired and not (holder and not holder.active) and not copy.deleting:
            secret_actions.append(
                DeleteCopy(copy.namespace, copy.name, copy.credential, copy.uid, copy.resource_version)
            )

    kept = {c.valid_spec.secret_name for c in matched if not c.active}
    kept |= {name for name, holder in holders.items() if holder and not holder.active}
    sa_actions: list[ServiceAccountAction] = []
    for account in sorted(service_accounts, key=lambda sa: sa.name):
        wanted = {
            name for name, winner in desired.items()
            if service_account_matches(winner.valid_spec, account.name)
        }
        for name in sorted(wanted - set(account.pull_secrets)):
            sa_actions.append(AddPullSecret(namespace.name, account.name, name, desired[name].name, account))
        for name in sorted(account.ours - wanted - kept):
            sa_actions.append(RemovePullSecret(namespace.name, account.name, name, account))

    return NamespacePlan(
        namespace=namespace.name,
        secret_actions=tuple(secret_actions),
        service_account_actions=tuple(sa_actions),
        matched=frozenset(c.name for c in matched),
        conflicts=conflicts,
    )


def _assign_secret_names(
    matched: list[Credential],
    holders: Mapping[str, Credential | None],
    foreign_secrets: frozenset[str],
) -> tuple[dict[str, Credential], dict[str, str]]:
    """Decide which active credential gets each Secret name; everyone else is in conflict."""
    claims: dict[str, list[Credential]] = {}
    for credential in sorted((c for c in matched if c.active), key=lambda c: c.seniority):
        claims.setdefault(credential.valid_spec.secret_name, []).append(credential)
    desired: dict[str, Credential] = {}
    conflicts: dict[str, str] = {}
    for secret_name, claimants in claims.items():
        holder = holders.get(secret_name)
        if secret_name in foreign_secrets and secret_name not in holders:
            winner = None
            reason = f"secret {secret_name} exists and is not managed by regcred"
        elif holder is not None and holder not in claimants:
            winner = None
            reason = f"secret {secret_name} is managed by RegistryCredential {holder.name}"
        else:
            winner = holder or claimants[0]
            reason = f"secret {secret_name} is managed by RegistryCredential {winner.name}"
            desired[secret_name] = winner
        for credential in claimants:
            if credential is not winner:
                conflicts[credential.name] = reason
    return desired, conflicts


def is_ours(copy: ObservedCopy, credential: str, uid: str) -> bool:
    """A Secret is ours if it names the credential in our label or points to it as owner."""
    return copy.credential == credential or uid in copy.owner_uids


def next_copy_step(action: CreateCopy | ReplaceCopy, existing: ObservedCopy | None) -> CopyStep:
    """The write of `action` was refused because the Secret is not what the plan saw (it
    exists although the cache showed none, or it changed or vanished since): decide from the
    Secret as it is now. Absent: create it. Not ours: leave it alone. Ours and right (the cache
    was behind): nothing. Ours and different: replace it at its current version (adopt it)."""
    if existing is None:
        return CreateCopy(action.namespace, action.credential, action.manifest)
    owner_uid = action.manifest["metadata"]["ownerReferences"][0]["uid"]
    if not is_ours(existing, action.credential, owner_uid):
        return NotOurs(f"secret {action.secret_name} exists and is not managed by regcred")
    if not copy_differs(existing, action.manifest):
        return AlreadyRight()
    rotation = action.rotation if isinstance(action, ReplaceCopy) else False
    return ReplaceCopy(action.namespace, action.credential, existing.resource_version, rotation,
                       action.manifest)


def _holder(copy: ObservedCopy, credentials: Mapping[str, Credential]) -> Credential | None:
    holder = credentials.get(copy.credential)
    if holder is not None:
        return holder
    return next((c for c in credentials.values() if c.uid and c.uid in copy.owner_uids), None)


def copy_differs(current: ObservedCopy, manifest: Mapping[str, Any]) -> bool:
    """Whether an existing copy needs a replace to look like `manifest`."""
    content = base64.b64decode(manifest["data"][DOCKERCONFIGJSON_KEY])
    return (
        current.data_digest != hashlib.sha256(content).hexdigest()
        or current.meta_fingerprint != meta_fingerprint(manifest)
    )


def desired_copy(credential: Credential, namespace: str) -> dict[str, Any]:
    """The Secret manifest every copy of `credential` has in `namespace`."""
    spec = credential.valid_spec
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": DOCKERCONFIGJSON_TYPE,
        "metadata": {
            "name": spec.secret_name,
            "namespace": namespace,
            "labels": {
                **spec.labels,
                MANAGED_BY_LABEL: MANAGED_BY_VALUE,
                CREDENTIAL_LABEL: credential.name,
            },
            "annotations": dict(spec.annotations),
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "name": credential.name,
                    "uid": credential.uid,
                    "controller": True,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "data": {DOCKERCONFIGJSON_KEY: credential.content.encoded},
    }


def observe_copy(body: Mapping[str, Any]) -> ObservedCopy:
    """Reduce a Secret body to what the planner compares; the data is kept only as a digest."""
    meta = body.get("metadata") or {}
    data = body.get("data") or {}
    content = base64.b64decode(data.get(DOCKERCONFIGJSON_KEY) or "")
    return ObservedCopy(
        namespace=text(meta.get("namespace", "")),
        name=text(meta.get("name", "")),
        credential=text((meta.get("labels") or {}).get(CREDENTIAL_LABEL, "")),
        owner_uids=shared(tuple(text(ref.get("uid", "")) for ref in meta.get("ownerReferences") or [])),
        data_digest=text(hashlib.sha256(content).hexdigest() if list(data) == [DOCKERCONFIGJSON_KEY] else ""),
        meta_fingerprint=text(meta_fingerprint(body)),
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def observe_service_account(body: Mapping[str, Any]) -> ObservedServiceAccount:
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    ours = annotations.get(PULL_SECRETS_ANNOTATION, "")
    return ObservedServiceAccount(
        namespace=text(meta.get("namespace", "")),
        name=text(meta.get("name", "")),
        pull_secrets=shared(tuple(text(ref.get("name", "")) for ref in body.get("imagePullSecrets") or [])),
        ours=shared(frozenset(text(name) for name in ours.split(",") if name)),
        resource_version=meta.get("resourceVersion", ""),
        has_annotations=bool(annotations),
    )


def meta_fingerprint(body: Mapping[str, Any]) -> str:
    """Everything but the data that a copy must match: type, labels, annotations, owners."""
    meta = body.get("metadata") or {}
    owners = sorted(
        (
            ref.get("apiVersion", ""), ref.get("kind", ""), ref.get("name", ""), ref.get("uid", ""),
            bool(ref.get("controller")), bool(ref.get("blockOwnerDeletion")),
        )
        for ref in meta.get("ownerReferences") or []
    )
    canonical = json.dumps(
        [body.get("type"), meta.get("labels") or {}, meta.get("annotations") or {}, owners],
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
