"""The status block of a RegistryCredential, computed from reconcile results.

The status is a pure function of its inputs and keeps every timestamp it had unless
something really changed, so an idle resync produces an identical status: no write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from regcred.core.conditions import READY, SUSPENDED, SYNC_FAILED, SYNCED
from regcred.core.errors import Problem

MAX_FAILED_NAMESPACES = 20
MAX_MESSAGE = 512  # the CRD caps status messages; one long API error must not fail the write


@dataclass(frozen=True)
class Failure:
    """Why one namespace is not synced; `reason` is a CamelCase word, `message` says what to do."""

    namespace: str
    reason: str
    message: str


def build_status(
    *,
    generation: int,
    previous: Mapping[str, Any],
    now: str,
    problem: Problem | None = None,
    suspended: bool = False,
    matched: int = 0,
    failures: tuple[Failure, ...] = (),
    source_resource_version: str | None = None,
    wrote: bool = False,
    rotated: bool = False,
    extra_conditions: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The whole status; `previous` is the current status so timestamps survive idle passes.

    `extra_conditions` are conditions other than Ready (type, status, reason, message), such
    as a credential check's; they follow Ready, and keep their transition time the same way.
    """
    synced = matched - len(failures)
    if problem is not None:
        ready, reason, message = "False", problem.reason, problem.message
    elif suspended:
        ready, reason = "False", SUSPENDED
        message = "spec.suspend is true: existing copies are kept, nothing is written"
    elif failures:
        reasons = {failure.reason for failure in failures}
        reason = reasons.pop() if len(reasons) == 1 else SYNC_FAILED
        ready = "False"
        message = (
            f"{synced}/{matched} namespaces synced; {len(failures)} failed "
            "(see status.failedNamespaces)"
        )
    else:
        ready, reason, message = "True", SYNCED, f"{synced}/{matched} namespaces"

    ready_condition = {"type": READY, "status": ready, "reason": reason, "message": message}
    conditions = [
        _condition(wanted, generation, previous, now)
        for wanted in (ready_condition, *extra_conditions)
    ]

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": conditions,
        "matchedNamespaces": matched,
        "syncedNamespaces": synced,
        "failedNamespaces": [
            {"namespace": f.namespace, "reason": f.reason, "message": f.message[:MAX_MESSAGE]}
            for f in sorted(failures, key=lambda f: f.namespace)[:MAX_FAILED_NAMESPACES]
        ],
        "sourceResourceVersion": source_resource_version
        or previous.get("sourceResourceVersion")
        or "",
        "lastSyncTime": now if wrote or not previous.get("lastSyncTime") else previous["lastSyncTime"],
    }
    last_rotation = now if rotated else previous.get("lastRotationTime")
    if last_rotation:
        status["lastRotationTime"] = last_rotation
    return status


def _condition(wanted: Mapping[str, Any], generation: int, previous: Mapping[str, Any],
               now: str) -> dict[str, Any]:
    """A metav1.Condition; its transition time moves only when its status does."""
    condition = {
        "type": wanted["type"],
        "status": wanted["status"],
        "reason": wanted["reason"],
        "message": str(wanted["message"])[:MAX_MESSAGE],
        "observedGeneration": generation,
        "lastTransitionTime": now,
    }
    old = next((c for c in previous.get("conditions") or [] if c.get("type") == wanted["type"]), None)
    if old and old.get("status") == condition["status"] and old.get("lastTransitionTime"):
        condition["lastTransitionTime"] = old["lastTransitionTime"]
    return condition


def status_differs(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Whether writing `new` would change anything visible (kopf's bookkeeping aside)."""
    return any(new.get(key) != old.get(key) for key in new) or any(
        key not in new for key in old if key != "kopf"
    )
