"""Parse and validate a RegistryCredential into an immutable `CredentialSpec`.

The API server's schema rejects most bad input; this module re-checks what the
operator relies on, so a CR stored before a schema change (or applied with
validation off) still yields a clear condition instead of a crash.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from regcred.core.errors import InvalidInput

GROUP = "regcred.dev"
VERSION = "v1alpha1"
PLURAL = "registrycredentials"
KIND = "RegistryCredential"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "regcred"
CREDENTIAL_LABEL = "regcred.dev/credential"
IGNORE_LABEL = "regcred.dev/ignore"
# Which imagePullSecrets entries of a ServiceAccount regcred added (comma-separated names).
# The list itself has no owner field, so this is how we know what is ours to remove.
PULL_SECRETS_ANNOTATION = "regcred.dev/image-pull-secrets"
RESERVED_LABELS = frozenset({MANAGED_BY_LABEL, CREDENTIAL_LABEL})

# spec.delivery: how a credential reaches the kubelet. Secrets: copies and ServiceAccount
# entries; CredentialProvider: answered at pull time by regcred's credential provider
# endpoint (docs/credential-provider.md), no copies; Both.
SECRETS, CREDENTIAL_PROVIDER, BOTH = "Secrets", "CredentialProvider", "Both"
DELIVERIES = (SECRETS, CREDENTIAL_PROVIDER, BOTH)

SELECTOR_OPERATORS = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SERVER = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?(/[-A-Za-z0-9._~]+)*$")


@dataclass(frozen=True)
class Requirement:
    """One `matchExpressions` entry of a label selector."""

    key: str
    operator: str
    values: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LabelSelector:
    """A metav1.LabelSelector; all of its terms must hold (logical AND)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()


@dataclass(frozen=True)
class SourceRef:
    namespace: str
    name: str


@dataclass(frozen=True)
class CredentialSpec:
    """A valid RegistryCredential, reduced to what the decisions need."""

    name: str
    uid: str
    created: str
    generation: int
    servers: tuple[str, ...]
    source: SourceRef
    email: str | None
    secret_name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    namespace_selector: LabelSelector | None = None
    namespaces: tuple[str, ...] = ()
    exclude_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ("default",)
    suspend: bool = False
    delivery: str = SECRETS

    @property
    def copies(self) -> bool:
        """Whether it delivers by copies and ServiceAccount entries."""
        return self.delivery in (SECRETS, BOTH)

    @property
    def served_at_pull(self) -> bool:
        """Whether the credential provider endpoint hands it out."""
        return self.delivery in (CREDENTIAL_PROVIDER, BOTH)


def parse_credential(
    body: Mapping[str, Any],
    *,
    default_source_namespace: str,
    allowed_source_namespaces: frozenset[str],
) -> CredentialSpec:
    """Turn a CR body into a `CredentialSpec`, or raise `InvalidInput` saying what to fix."""
    meta = body.get("metadata") or {}
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidInput("InvalidSpec", "spec is missing; set spec.registries and spec.sourceSecretRef")
    name = str(meta.get("name", ""))
    source = _parse_source_ref(spec.get("sourceSecretRef"), default_source_namespace)
    if source.namespace not in allowed_source_namespaces:
        allowed = ", ".join(sorted(allowed_source_namespaces)) or "(none)"
        raise InvalidInput(
            "SourceNotAllowed",
            f"source secret namespace {source.namespace!r} is not on the operator's allow-list "
            f"({allowed}); move the secret there or add the namespace to REGCRED_SOURCE_NAMESPACES",
        )
    target = _mapping(spec.get("target"), "spec.target")
    secret_name = str(target.get("secretName") or name)
    if len(secret_name) > 253 or not _DNS_SUBDOMAIN.match(secret_name):
        raise InvalidInput(
            "InvalidSpec",
            f"target secret name {secret_name!r} is not a valid DNS-1123 subdomain; "
            "set spec.target.secretName to lowercase letters, digits, '-' and '.'",
        )
    labels = _string_map(target.get("labels"), "spec.target.labels")
    reserved = sorted(RESERVED_LABELS & labels.keys())
    if reserved:
        raise InvalidInput(
            "InvalidSpec", f"spec.target.labels must not set {', '.join(reserved)}: regcred owns them"
        )
    email = spec.get("email")
    # null means "not set": the API server prunes it and applies the schema default too
    service_accounts = (
        ("default",) if spec.get("serviceAccounts") is None
        else _patterns(spec["serviceAccounts"], "spec.serviceAccounts")
    )
    delivery = spec.get("delivery") or SECRETS
    if delivery not in DELIVERIES:
        raise InvalidInput("InvalidSpec", f"spec.delivery {delivery!r} is not one of {', '.join(DELIVERIES)}")
    return CredentialSpec(
        name=name,
        uid=str(meta.get("uid", "")),
        created=str(meta.get("creationTimestamp", "")),
        generation=int(meta.get("generation") or 0),
        servers=_parse_servers(spec.get("registries")),
        source=source,
        email=str(email) if email else None,
        secret_name=secret_name,
        labels=labels,
        annotations=_string_map(target.get("annotations"), "spec.target.annotations"),
        namespace_selector=parse_selector(spec.get("namespaceSelector")),
        namespaces=_patterns(spec.get("namespaces"), "spec.namespaces"),
        exclude_namespaces=_patterns(spec.get("excludeNamespaces"), "spec.excludeNamespaces"),
        service_accounts=service_accounts,
        suspend=bool(spec.get("suspend", False)),
        delivery=str(delivery),
    )


def parse_selector(raw: Any) -> LabelSelector | None:
    """Parse a LabelSelector; an empty selector (`{}`) counts as no selector at all."""
    if raw is None:
        return None
    raw = _mapping(raw, "spec.namespaceSelector")
    match_labels = tuple(sorted(_string_map(raw.get("matchLabels"), "matchLabels").items()))
    expressions = []
    for index, expr in enumerate(raw.get("matchExpressions") or []):
        where = f"spec.namespaceSelector.matchExpressions[{index}]"
        expr = _mapping(expr, where)
        operator = expr.get("operator")
        if not expr.get("key") or operator not in SELECTOR_OPERATORS:
            raise InvalidInput(
                "InvalidSpec",
                f"{where} needs a key and an operator of {', '.join(sorted(SELECTOR_OPERATORS))}",
            )
        values = frozenset(str(v) for v in expr.get("values") or [])
        if operator in ("In", "NotIn") and not values:
            raise InvalidInput("InvalidSpec", f"{where}: operator {operator} needs values")
        if operator in ("Exists", "DoesNotExist") and values:
            raise InvalidInput("InvalidSpec", f"{where}: operator {operator} takes no values")
        expressions.append(Requirement(str(expr["key"]), operator, values))
    if not match_labels and not expressions:
        return None
    return LabelSelector(match_labels, tuple(expressions))


def _parse_source_ref(raw: Any, default_namespace: str) -> SourceRef:
    ref = _mapping(raw, "spec.sourceSecretRef")
    name = ref.get("name")
    if not name or not _DNS_SUBDOMAIN.match(str(name)):
        raise InvalidInput(
            "InvalidSpec",
            "spec.sourceSecretRef.name must name a Secret (lowercase letters, digits, '-' and '.')",
        )
    namespace = str(ref.get("namespace") or default_namespace)
    if not _DNS_LABEL.match(namespace):
        raise InvalidInput(
            "InvalidSpec",
            f"spec.sourceSecretRef.namespace {namespace!r} is not a namespace name; "
            "use lowercase letters, digits and '-'",
        )
    return SourceRef(namespace=namespace, name=str(name))


def _parse_servers(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("InvalidSpec", "spec.registries needs at least one {server: ...} entry")
    servers = []
    for index, entry in enumerate(raw):
        server = str(_mapping(entry, f"spec.registries[{index}]").get("server") or "")
        if not _SERVER.match(server):
            raise InvalidInput(
                "InvalidSpec",
                f"spec.registries[{index}].server {server!r} is not host[:port][/path] "
                "(no scheme, no spaces, no trailing slash)",
            )
        servers.append(server)
    if len(set(servers)) != len(servers):
        raise InvalidInput("InvalidSpec", "spec.registries lists a server twice")
    return tuple(servers)


def _patterns(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(p, str) and p for p in raw):
        raise InvalidInput("InvalidSpec", f"{where} must be a list of names or globs")
    return tuple(raw)


def _mapping(raw: Any, where: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidInput("InvalidSpec", f"{where} must be an object")
    return raw


def _string_map(raw: Any, where: str) -> dict[str, str]:
    mapping = _mapping(raw, where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise InvalidInput("InvalidSpec", f"{where} must map strings to strings")
    return dict(mapping)
