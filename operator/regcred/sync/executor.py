"""Carrying out the actions the core planned, through the thin client.

When the API refuses a write because the object is not what the plan saw, the executor
re-reads it and lets the core decide the next step (`next_copy_step`, `pull_secret_patch`),
within stated bounds; past them the namespace fails transiently and the work queue retries
it with its backoff. The retry policy is the reconciler's concern, so it lives here and not
in the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, assert_never

import structlog

from regcred.core.patches import pull_secret_patch
from regcred.core.plan import (
    Action,
    AddPullSecret,
    AlreadyRight,
    CopyStep,
    CreateCopy,
    DeleteCopy,
    NotOurs,
    ObservedCopy,
    ObservedServiceAccount,
    RemovePullSecret,
    ReplaceCopy,
    next_copy_step,
    observe_copy,
    observe_service_account,
)
from regcred.kube.client import Kube
from regcred.kube.errors import ApiConflict, ApiInvalid, ApiNotFound

log = structlog.get_logger("regcred.executor")

# Bounds on the re-read-and-retry loops after a refused write (then the work queue retries
# the whole namespace with a backoff).
SERVICE_ACCOUNT_ATTEMPTS = 5
COPY_ATTEMPTS = 5


@dataclass(frozen=True)
class Applied:
    """What applying one action did: whether it wrote, whether it rotated content, the object
    as written (reduced as the caches keep it, for them to take in at once), and, for a copy
    the core found is not ours, why it was left alone."""

    wrote: bool
    rotated: bool = False
    written: ObservedCopy | ObservedServiceAccount | None = None
    not_ours: str | None = None


def _copy_written(response: Mapping[str, Any], rotated: bool = False) -> Applied:
    return Applied(wrote=True, rotated=rotated, written=observe_copy(response))


class Executor:
    """Performs the calls the core decided on; retries a refused write within a stated bound
    (`COPY_ATTEMPTS`, `SERVICE_ACCOUNT_ATTEMPTS`), deciding each retry with the core."""

    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    def apply(self, action: Action) -> Applied:
        """Carry out one planned action; raises `KubeError` when the API fails it."""
        match action:
            case CreateCopy() | ReplaceCopy():
                return self._write_copy(action)
            case DeleteCopy():
                return self._delete_copy(action)
            case AddPullSecret():
                return self._edit_pull_secrets(action.namespace, action.service_account,
                                               action.secret_name, action.observed, present=True)
            case RemovePullSecret():
                return self._edit_pull_secrets(action.namespace, action.service_account,
                                               action.secret_name, action.observed, present=False)
        assert_never(action)

    def _write_copy(self, action: CreateCopy | ReplaceCopy) -> Applied:
        """Create or replace a copy; when the API refuses because the Secret is not what the
        plan saw, re-read it and let the core say what to do (`next_copy_step`)."""
        what = f"secret {action.namespace}/{action.secret_name}"
        step: CopyStep = action
        for _ in range(COPY_ATTEMPTS):
            match step:
                case AlreadyRight():
                    return Applied(wrote=False)  # our cache was behind: it is already right
                case NotOurs():
                    return Applied(wrote=False, not_ours=step.message)
                case CreateCopy():
                    try:
                        return _copy_written(self._kube.store_secret(step.manifest, None))
                    except ApiConflict:
                        pass  # it exists although our watch did not show it
                case ReplaceCopy():
                    try:
                        return _copy_written(self._kube.store_secret(step.manifest, step.resource_version),
                                             step.rotation)
                    except (ApiConflict, ApiNotFound):
                        pass  # someone wrote (or deleted) it since we looked
                case _:
                    assert_never(step)
            existing = self._kube.read_secret(action.namespace, action.secret_name)
            step = next_copy_step(action, observe_copy(existing) if existing else None)
        raise ApiConflict("write", what, 409, "Conflict")  # a busy Secret, not a bad write

    def _delete_copy(self, action: DeleteCopy) -> Applied:
        # Preconditions make the API refuse if the object was replaced or changed meanwhile.
        try:
            deleted = self._kube.delete_secret(action.namespace, action.secret_name, action.uid,
                                               action.resource_version)
        except ApiConflict:
            return Applied(wrote=False)  # changed meanwhile; its watch event re-plans it
        return Applied(wrote=deleted)  # False: it was gone already

    def _edit_pull_secrets(self, namespace: str, name: str, secret_name: str,
                           observed: ObservedServiceAccount | None, *, present: bool) -> Applied:
        """Add or remove our one entry by guarded JSON Patch; re-read and retry on conflicts.

        The first attempt trusts the cache; if it was stale the `test` op fails and the
        retries work from a fresh read.
        """
        what = f"serviceaccount {namespace}/{name}"
        for attempt in range(SERVICE_ACCOUNT_ATTEMPTS):
            if observed is None or attempt > 0:
                body = self._kube.read_service_account(namespace, name)
                if body is None:
                    return Applied(wrote=False)
                observed = observe_service_account(body)
            ops = pull_secret_patch(observed, secret_name, present=present)
            if ops is None:
                return Applied(wrote=False)
            try:
                patched = self._kube.patch_service_account(namespace, name, ops)
            except (ApiConflict, ApiInvalid):
                log.debug("serviceaccount changed meanwhile, retrying", namespace=namespace,
                          service_account=name, attempt=attempt + 1)
                continue
            if patched is None:  # the ServiceAccount is gone
                return Applied(wrote=False)
            return Applied(wrote=True, written=observe_service_account(patched))
        raise ApiConflict("patch", what, 409, "Conflict")  # a busy list, not a bad patch

