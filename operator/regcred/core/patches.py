"""JSON Patches for `ServiceAccount.imagePullSecrets`, an atomic list with no merge key.

Merge patches and server-side apply replace the whole list and drop other people's
entries, so each edit adds or removes one entry and is guarded by a `test` op on the
resourceVersion: if anyone wrote in between, the API server refuses (422) and the
caller re-reads and tries again.
"""

from __future__ import annotations

from typing import Any

from regcred.core.plan import ObservedServiceAccount
from regcred.core.spec import PULL_SECRETS_ANNOTATION

_ANNOTATION_PATH = "/metadata/annotations/" + PULL_SECRETS_ANNOTATION.replace("~", "~0").replace(
    "/", "~1"
)


def pull_secret_patch(
    account: ObservedServiceAccount, secret_name: str, *, present: bool
) -> list[dict[str, Any]] | None:
    """Ops that add (or remove) our entry `secret_name`; None when nothing needs to change.

    An entry somebody else added is never claimed; an entry is only removed if our
    annotation says we added it, and then exactly one occurrence goes.
    """
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": account.resource_version}
    ]
    if present:
        if secret_name in account.pull_secrets:
            return None
        if account.pull_secrets:
            ops.append({"op": "add", "path": "/imagePullSecrets/-", "value": {"name": secret_name}})
        else:
            ops.append({"op": "add", "path": "/imagePullSecrets", "value": [{"name": secret_name}]})
        ours = account.ours | {secret_name}
    else:
        if secret_name not in account.ours:
            return None
        if secret_name in account.pull_secrets:
            index = len(account.pull_secrets) - 1 - account.pull_secrets[::-1].index(secret_name)
            path = f"/imagePullSecrets/{index}"
            ops.append({"op": "test", "path": f"{path}/name", "value": secret_name})
            ops.append({"op": "remove", "path": path})
        ours = account.ours - {secret_name}
    ops.append(_annotation_op(account, ours))
    return ops


def _annotation_op(account: ObservedServiceAccount, ours: frozenset[str]) -> dict[str, Any]:
    value = ",".join(sorted(ours))
    if not ours:
        return {"op": "remove", "path": _ANNOTATION_PATH}
    if not account.has_annotations:
        return {"op": "add", "path": "/metadata/annotations", "value": {PULL_SECRETS_ANNOTATION: value}}
    return {"op": "add", "path": _ANNOTATION_PATH, "value": value}
