"""The status contract's words: condition types, their reasons, and reading a CR's status.

Other processes read what regcred writes (a standby's admission webhook, `regcred doctor`,
kubectl's printer columns), so a reason renamed in one place would break them silently:
every writer and reader takes the words from here. The reasons of bad input (`InvalidSpec`,
`SourceNotFound`...) are each raised by the one rule that refuses the input
(`core/spec.py`, `core/source.py`) and read by nobody, so they stay with their rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Condition types.
READY = "Ready"
CREDENTIALS_VERIFIED = "CredentialsVerified"

# Ready's reasons (besides bad input's).
SYNCED = "Synced"
SUSPENDED = "Suspended"
SYNC_FAILED = "SyncFailed"  # namespaces failed for more than one reason
CONFLICT = "Conflict"  # a Secret not ours holds the copy's name (also a failed namespace's reason)
API_ERROR = "ApiError"  # the API failed a write (also a failed namespace's reason)
SOURCE_UNREADABLE = "SourceUnreadable"
# Ready=False for these reasons means some namespaces failed, not the CR: its content was
# rendered and the other namespaces have their copies.
NAMESPACE_FAILURE_REASONS = frozenset({CONFLICT, API_ERROR, SYNC_FAILED})

# CredentialsVerified's reasons, which are also each registry's result in status.registries.
VERIFIED, ANONYMOUS = "Verified", "Anonymous"
UNAUTHORIZED, UNREACHABLE, TLS_ERROR, UNEXPECTED = "Unauthorized", "Unreachable", "TLSError", \
    "UnexpectedResponse"
NOT_CHECKED = "NotChecked"
PENDING = "Pending"  # the condition's reason before the first check
PASSING = frozenset({VERIFIED, ANONYMOUS})

# Event reasons besides a condition's: a rotation (Normal). A CR that stops being Ready posts
# a Warning with Ready's reason; verification posts `Verification<reason>`, then `Verified`.
ROTATED = "Rotated"


@dataclass(frozen=True)
class ConditionView:
    """One condition as a reader sees it; all empty when the CR does not have it."""

    status: str = ""  # "True", "False", "Unknown" or "" (absent)
    reason: str = ""
    message: str = ""
    observed_generation: int | None = None


@dataclass(frozen=True)
class FailedNamespace:
    namespace: str
    reason: str
    message: str


@dataclass(frozen=True)
class RegistryResult:
    """One registry's verification result as status.registries shows it."""

    server: str
    result: str
    message: str = ""


@dataclass(frozen=True)
class StatusView:
    """What a CR's status says, read the one way every reader reads it."""

    observed_generation: int | None
    ready: ConditionView
    verified: ConditionView
    failed_namespaces: tuple[FailedNamespace, ...]
    registries: tuple[RegistryResult, ...]

    @property
    def rendered(self) -> bool:
        """The CR's content was rendered at `ready.observed_generation`: Ready, or not Ready
        only because some namespaces failed."""
        return self.ready.status == "True" or self.ready.reason in NAMESPACE_FAILURE_REASONS

    @property
    def conflicted_namespaces(self) -> frozenset[str]:
        """Namespaces where a Secret not ours holds the copy's name."""
        return frozenset(f.namespace for f in self.failed_namespaces if f.reason == CONFLICT)


def read_status(body: Mapping[str, Any]) -> StatusView:
    """A RegistryCredential body's status; missing parts read as empty."""
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    return StatusView(
        observed_generation=status.get("observedGeneration"),
        ready=_condition(conditions.get(READY)),
        verified=_condition(conditions.get(CREDENTIALS_VERIFIED)),
        failed_namespaces=tuple(
            FailedNamespace(f.get("namespace", ""), f.get("reason", ""), f.get("message", ""))
            for f in status.get("failedNamespaces") or []),
        registries=tuple(
            RegistryResult(r.get("server", ""), r.get("result", ""), r.get("message", ""))
            for r in status.get("registries") or []),
    )


def _condition(raw: Mapping[str, Any] | None) -> ConditionView:
    if not raw:
        return ConditionView()
    return ConditionView(raw.get("status", ""), raw.get("reason", ""), raw.get("message", ""),
                         raw.get("observedGeneration"))
