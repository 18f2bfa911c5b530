"""Small builders shared by the unit tests of the pure core (not a test module).

Everything here is in memory: no cluster, no network.
"""

from __future__ import annotations

import base64
import copy as copy_module
import itertools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from regcred.core.matching import NamespaceInfo
from regcred.core.patches import pull_secret_patch
from regcred.core.plan import (
    AddPullSecret,
    CreateCopy,
    Credential,
    DeleteCopy,
    NamespacePlan,
    ObservedCopy,
    RemovePullSecret,
    ReplaceCopy,
    desired_copy,
    observe_copy,
    observe_service_account,
    plan_namespace,
)
from regcred.core.source import BASIC_AUTH_TYPE, RenderedConfig, SourceSecret, render
from regcred.core.spec import CredentialSpec, LabelSelector, Requirement, SourceRef

PASSWORD = "s3cr3t-Pa55-XYZ"
OPERATOR_NAMESPACE = "regcred-system"
T0 = "2024-01-01T00:00:00Z"


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


# --- CR bodies and specs -------------------------------------------------------------------


def cr_body(name: str = "harbor-prod", *, generation: int = 3, **spec: Any) -> dict[str, Any]:
    """A RegistryCredential body (the one builder of them); `spec` keys (camelCase) override
    the minimal valid spec, and one set to `...` is left out."""
    base: dict[str, Any] = {
        "registries": [{"server": "harbor.example.com"}],
        "sourceSecretRef": {"name": "harbor-robot"},
    }
    base.update(spec)
    return {
        "apiVersion": "regcred.dev/v1alpha1",
        "kind": "RegistryCredential",
        "metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": T0, "generation": generation},
        "spec": {k: v for k, v in base.items() if v is not ...},
    }


def selector(match_labels: Mapping[str, str] | None = None, *expressions: Requirement) -> LabelSelector:
    return LabelSelector(tuple(sorted((match_labels or {}).items())), tuple(expressions))


def req(key: str, operator: str, *values: str) -> Requirement:
    return Requirement(key, operator, frozenset(values))


def make_spec(name: str = "harbor-prod", **overrides: Any) -> CredentialSpec:
    """A CredentialSpec built directly (bypassing the parser); keyword args override fields."""
    fields: dict[str, Any] = {
        "name": name,
        "uid": f"uid-{name}",
        "created": T0,
        "generation": 1,
        "servers": ("harbor.example.com",),
        "source": SourceRef(OPERATOR_NAMESPACE, "harbor-robot"),
        "email": None,
        "secret_name": name,
    }
    fields.update(overrides)
    return CredentialSpec(**fields)


# --- source Secrets ------------------------------------------------------------------------


def basic_source(
    username: str = "robot",
    password: str = PASSWORD,
    *,
    type: str = BASIC_AUTH_TYPE,
    resource_version: str = "100",
    **extra: str,
) -> SourceSecret:
    data = {"username": b64(username), "password": b64(password)}
    data.update(extra)
    return SourceSecret(OPERATOR_NAMESPACE, "harbor-robot", type, resource_version, data)


def raw_source(type: str, data: Mapping[str, str], resource_version: str = "100") -> SourceSecret:
    return SourceSecret(OPERATOR_NAMESPACE, "harbor-robot", type, resource_version, dict(data))


# --- the planner's inputs ------------------------------------------------------------------


def ns(name: str, labels: Mapping[str, str] | None = None, *, terminating: bool = False) -> NamespaceInfo:
    return NamespaceInfo(name, dict(labels or {}), terminating)


def credential(
    name: str,
    *,
    password: str | None = None,
    created: str = T0,
    frozen: str | None = None,
    **spec_overrides: Any,
) -> Credential:
    """An active credential with a rendered config, or a frozen one.

    frozen: None (active), "suspended", "config" (no rendered config) or "spec" (invalid CR).
    """
    spec = make_spec(name, created=created, **spec_overrides)
    if frozen == "suspended":
        spec = replace(spec, suspend=True)
    if frozen == "spec":
        return Credential(name, spec.uid)
    config = None if frozen == "config" else render(spec, basic_source(password=password or f"pw-{name}"))
    return Credential(name, spec.uid, spec, config)


def with_password(cred: Credential, password: str) -> Credential:
    """The same credential after a rotation of its source Secret."""
    assert cred.spec is not None
    config = render(cred.spec, basic_source(password=password, resource_version="200"))
    return replace(cred, config=config)


_resource_versions = itertools.count(1000)


def next_rv() -> str:
    return str(next(_resource_versions))


def live_copy(cred: Credential, namespace: str, **meta_overrides: Any) -> dict[str, Any]:
    """The Secret body the API would return for a copy of `cred` (uid and resourceVersion added)."""
    body = copy_module.deepcopy(desired_copy(cred, namespace))
    body["metadata"]["uid"] = f"secret-uid-{namespace}-{body['metadata']['name']}"
    body["metadata"]["resourceVersion"] = next_rv()
    body["metadata"].update(meta_overrides)
    return body


def observed(cred: Credential, namespace: str, **meta_overrides: Any) -> ObservedCopy:
    return observe_copy(live_copy(cred, namespace, **meta_overrides))


def sa_body(
    name: str = "default",
    namespace: str = "team-a",
    pull_secrets: Iterable[str] = (),
    ours: Iterable[str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "resourceVersion": next_rv()}
    notes = dict(annotations or {})
    if ours is not None:
        notes["regcred.dev/image-pull-secrets"] = ",".join(ours)
    if notes:
        meta["annotations"] = notes
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}
    pull_secrets = list(pull_secrets)
    if pull_secrets:
        body["imagePullSecrets"] = [{"name": n} for n in pull_secrets]
    return body


# --- a tiny RFC 6902 JSON Patch (add, remove, replace, test) -------------------------------


class PatchTestFailed(Exception):
    """A `test` op did not hold: what the API server answers with 422."""


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def json_patch(doc: Mapping[str, Any], ops: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Apply `ops` to a deep copy of `doc`; raise PatchTestFailed or KeyError/IndexError like a server."""
    patched: dict[str, Any] = copy_module.deepcopy(dict(doc))
    for op in ops:
        parts = _pointer(op["path"])
        apply = _PATCH_OPS.get(op["op"])
        if apply is None:  # pragma: no cover - the core only emits the ops below
            raise AssertionError(f"unexpected op {op['op']}")
        apply(_parent(patched, parts), parts[-1], op)
    return patched


def _patch_test(parent: Any, last: str, op: Mapping[str, Any]) -> None:
    current = parent[int(last)] if isinstance(parent, list) else parent[last]
    if current != op["value"]:
        raise PatchTestFailed(op["path"])


def _patch_add(parent: Any, last: str, op: Mapping[str, Any]) -> None:
    value = copy_module.deepcopy(op["value"])
    if not isinstance(parent, list):
        parent[last] = value
    elif last == "-":
        parent.append(value)
    else:
        index = int(last)
        if index > len(parent):
            raise IndexError(op["path"])
        parent.insert(index, value)


def _patch_remove(parent: Any, last: str, op: Mapping[str, Any]) -> None:
    if isinstance(parent, list):
        del parent[int(last)]
    else:
        del parent[last]


def _patch_replace(parent: Any, last: str, op: Mapping[str, Any]) -> None:
    if isinstance(parent, list):
        parent[int(last)] = copy_module.deepcopy(op["value"])
        return
    if last not in parent:
        raise KeyError(op["path"])
    parent[last] = copy_module.deepcopy(op["value"])


_PATCH_OPS: dict[str, Callable[[Any, str, Mapping[str, Any]], None]] = {
    "test": _patch_test, "add": _patch_add, "remove": _patch_remove, "replace": _patch_replace,
}


def json_roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value))


# --- an in-memory namespace that plans can be applied to -----------------------------------


@dataclass
class PlannedNamespace:
    """One namespace as the planner observes it; `apply` plays the executor, API server included.
    (The reconciler's `World`, the watch caches, is faked by `support.fakes.World`.)"""

    namespace: NamespaceInfo | None
    credentials: list[Credential]
    copies: dict[str, dict[str, Any]] = field(default_factory=dict)  # Secret name -> body
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)  # SA name -> body
    foreign: frozenset[str] = frozenset()

    def plan(self) -> NamespacePlan:
        return plan_namespace(
            self.namespace,
            self.credentials,
            [observe_copy(body) for body in self.copies.values()],
            [observe_service_account(body) for body in self.accounts.values()],
            self.foreign,
        )

    def apply(self, plan: NamespacePlan) -> None:
        for action in plan.secret_actions:
            if isinstance(action, CreateCopy):
                assert action.secret_name not in self.copies, "create over an existing copy"
                assert action.secret_name not in self.foreign, "create over a foreign secret"
                self.copies[action.secret_name] = self._stored(action.manifest)
            elif isinstance(action, ReplaceCopy):
                current = self.copies[action.secret_name]
                assert current["metadata"]["resourceVersion"] == action.resource_version
                self.copies[action.secret_name] = self._stored(action.manifest, current)
            elif isinstance(action, DeleteCopy):
                assert self.copies[action.secret_name]["metadata"]["uid"] == action.uid
                del self.copies[action.secret_name]
            else:  # pragma: no cover
                raise AssertionError(action)
        for account_action in plan.service_account_actions:
            body = self.accounts[account_action.service_account]
            present = isinstance(account_action, AddPullSecret)
            assert present or isinstance(account_action, RemovePullSecret)
            ops = pull_secret_patch(observe_service_account(body), account_action.secret_name,
                                    present=present)
            if ops is None:
                continue
            body = json_patch(body, ops)
            body["metadata"]["resourceVersion"] = next_rv()
            self.accounts[account_action.service_account] = body

    def converge(self, max_passes: int = 5) -> int:
        """Plan and apply until the plan is empty; the number of non-empty passes."""
        for passes in range(max_passes):
            plan = self.plan()
            if plan.empty:
                return passes
            self.apply(plan)
        raise AssertionError(f"no fixed point after {max_passes} passes: {self.plan()}")

    def pull_secrets(self, account: str = "default") -> list[str]:
        return [ref["name"] for ref in self.accounts[account].get("imagePullSecrets") or []]

    def ours(self, account: str = "default") -> frozenset[str]:
        return observe_service_account(self.accounts[account]).ours

    @staticmethod
    def _stored(manifest: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = json_roundtrip(manifest)
        uid = current["metadata"]["uid"] if current else f"secret-uid-{next_rv()}"
        body["metadata"]["uid"] = uid
        body["metadata"]["resourceVersion"] = next_rv()
        return body


def rendered(cred: Credential) -> RenderedConfig:
    assert cred.config is not None
    return cred.config
