"""Which namespaces get a copy, and which ServiceAccounts get our entry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from regcred.core.compact import text
from regcred.core.spec import IGNORE_LABEL, CredentialSpec, LabelSelector

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    terminating: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NamespaceInfo:
        """A Namespace body (from a watch, a listing or an admission review) as the matching
        rule sees it."""
        meta = body.get("metadata") or {}
        labels = {text(key): text(value) for key, value in (meta.get("labels") or {}).items()}
        return cls(text(meta.get("name", "")), labels, bool(meta.get("deletionTimestamp")))


def namespace_matches(spec: CredentialSpec, namespace: NamespaceInfo) -> bool:
    """The one rule deciding whether `namespace` gets a copy of `spec`'s secret.

    Exclusions win over inclusions: a terminating namespace, the ignore label, an
    `excludeNamespaces` glob, and the system namespaces unless named literally.
    Otherwise, with no selector and no names every namespace matches; with either,
    the selector **or** a name pattern must match.
    """
    name = namespace.name
    if namespace.terminating or namespace.labels.get(IGNORE_LABEL) == "true":
        return False
    if any(fnmatchcase(name, pattern) for pattern in spec.exclude_namespaces):
        return False
    if name in SYSTEM_NAMESPACES and name not in spec.namespaces:
        return False
    if spec.namespace_selector is None and not spec.namespaces:
        return True
    if spec.namespace_selector is not None and selector_matches(
        spec.namespace_selector, namespace.labels
    ):
        return True
    return any(fnmatchcase(name, pattern) for pattern in spec.namespaces)


def service_account_matches(spec: CredentialSpec, service_account: str) -> bool:
    return any(fnmatchcase(service_account, pattern) for pattern in spec.service_accounts)


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: every matchLabels pair and every expression must hold."""
    if any(labels.get(key) != value for key, value in selector.match_labels):
        return False
    for requirement in selector.match_expressions:
        present = requirement.key in labels
        value = labels.get(requirement.key)
        if requirement.operator == "In" and value not in requirement.values:
            return False
        if requirement.operator == "NotIn" and present and value in requirement.values:
            return False
        if requirement.operator == "Exists" and not present:
            return False
        if requirement.operator == "DoesNotExist" and present:
            return False
    return True
