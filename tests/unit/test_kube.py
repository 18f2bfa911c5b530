"""The executor's conflict and retry paths, and the client's errors, against a fake of the
official client's CoreV1Api.

A real API server will not produce these races on demand (a Secret replaced between our
read and our write, a ServiceAccount that changes under every patch), so the client is faked
here, and only here; the happy paths run against the real control plane.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from structlog.testing import capture_logs

from regcred.core.plan import (
    AddPullSecret,
    CreateCopy,
    DeleteCopy,
    RemovePullSecret,
    ReplaceCopy,
    desired_copy,
    observe_service_account,
)
from regcred.kube import client as kube_client
from regcred.kube.client import Kube, Outage
from regcred.kube.errors import OVERLOADED, REFUSED, ApiConflict, ApiRefused, ApiUnavailable, api_error
from regcred.sync.executor import COPY_ATTEMPTS, SERVICE_ACCOUNT_ATTEMPTS, Executor
from support.builders import PASSWORD, PatchTestFailed, credential, json_patch, sa_body

NAMESPACE = "team-a"


class Response:
    def __init__(self, body: Any) -> None:
        self.data = json.dumps(body).encode() if body is not None else b""


def refusal(status: int, reason: str) -> ApiException:
    error = ApiException(status=status, reason=reason)
    error.body = json.dumps({"kind": "Status", "reason": reason, "message": f"it has {PASSWORD}"})
    return error


class FakeCore:
    """Secrets and ServiceAccounts of one namespace, with resourceVersions, preconditions and
    guarded JSON Patches as the API server checks them. `meddle(verb, name)` runs before each
    write, to play a concurrent writer."""

    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, Any]] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.version = 100
        self.meddle: Callable[[str, str], None] = lambda verb, name: None

    def bump(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        body["metadata"].setdefault("uid", f"uid-{body['metadata']['name']}")
        return body

    def create_namespaced_secret(self, namespace: str, body: dict[str, Any], **_: Any) -> Response:
        self.calls.append("create")
        name = body["metadata"]["name"]
        self.meddle("create", name)
        if name in self.secrets:
            raise refusal(409, "AlreadyExists")
        self.secrets[name] = self.bump(copy.deepcopy(body))
        return Response(self.secrets[name])

    def replace_namespaced_secret(self, name: str, namespace: str, body: dict[str, Any],
                                  **_: Any) -> Response:
        self.calls.append("replace")
        self.meddle("replace", name)
        if name not in self.secrets:
            raise refusal(404, "NotFound")
        if body["metadata"]["resourceVersion"] != self.secrets[name]["metadata"]["resourceVersion"]:
            raise refusal(409, "Conflict")
        uid = self.secrets[name]["metadata"]["uid"]
        self.secrets[name] = self.bump(copy.deepcopy(body))
        self.secrets[name]["metadata"]["uid"] = uid
        return Response(self.secrets[name])

    def read_namespaced_secret(self, name: str, namespace: str, **_: Any) -> Response:
        self.calls.append("get")
        if name not in self.secrets:
            raise refusal(404, "NotFound")
        return Response(self.secrets[name])

    def delete_namespaced_secret(self, name: str, namespace: str, body: dict[str, Any],
                                 **_: Any) -> Response:
        self.calls.append("delete")
        if name not in self.secrets:
            raise refusal(404, "NotFound")
        wanted = body["preconditions"]
        meta = self.secrets[name]["metadata"]
        if (meta["uid"], meta["resourceVersion"]) != (wanted["uid"], wanted["resourceVersion"]):
            raise refusal(409, "Conflict")
        del self.secrets[name]
        return Response({"kind": "Status", "status": "Success"})

    def read_namespaced_service_account(self, name: str, namespace: str, **_: Any) -> Response:
        self.calls.append("get-sa")
        if name not in self.accounts:
            raise refusal(404, "NotFound")
        return Response(self.accounts[name])

    def patch_namespaced_service_account(self, name: str, namespace: str, ops: list[Any],
                                         **_: Any) -> Response:
        self.calls.append("patch-sa")
        self.meddle("patch", name)
        if name not in self.accounts:
            raise refusal(404, "NotFound")
        try:
            patched = json_patch(self.accounts[name], ops)
        except PatchTestFailed:
            raise refusal(422, "Invalid") from None
        self.accounts[name] = self.bump(patched)
        return Response(self.accounts[name])


@pytest.fixture
def core() -> FakeCore:
    return FakeCore()


@pytest.fixture
def errors() -> list[int]:
    return []


@pytest.fixture
def kube(core: FakeCore, errors: list[int]) -> Kube:
    made = Kube(client.ApiClient(client.Configuration(host="https://api.example:6443")),
                on_error=errors.append)
    made._core = core  # the one seam: everything above the client is the real code
    return made


@pytest.fixture
def executor(kube: Kube) -> Executor:
    return Executor(kube)


HARBOR = credential("harbor")


def manifest(cred=HARBOR) -> dict[str, Any]:
    return desired_copy(cred, NAMESPACE)


def stored(core: FakeCore, body: dict[str, Any]) -> dict[str, Any]:
    core.secrets[body["metadata"]["name"]] = core.bump(copy.deepcopy(body))
    return core.secrets[body["metadata"]["name"]]


# --- copies ---------------------------------------------------------------------------------


def test_a_create_writes_once(executor, core):
    applied = executor.apply(CreateCopy(NAMESPACE, "harbor", manifest()))
    assert (applied.wrote, core.calls) == (True, ["create"])
    assert applied.written.resource_version == core.secrets["harbor"]["metadata"]["resourceVersion"]


def test_a_create_over_our_own_up_to_date_copy_writes_nothing(executor, core):
    stored(core, manifest())
    applied = executor.apply(CreateCopy(NAMESPACE, "harbor", manifest()))
    assert (applied.wrote, applied.not_ours, core.calls) == (False, None, ["create", "get"])


def test_a_create_over_a_secret_not_ours_leaves_it_alone(executor, core):
    foreign = stored(core, {"metadata": {"name": "harbor"}, "type": "Opaque", "data": {"x": "eA=="}})
    before = copy.deepcopy(foreign)
    applied = executor.apply(CreateCopy(NAMESPACE, "harbor", manifest()))
    assert applied.wrote is False
    assert applied.not_ours == "secret harbor exists and is not managed by regcred"
    assert core.secrets["harbor"] == before
    assert core.calls == ["create", "get"]


def test_a_create_over_our_outdated_copy_adopts_it_with_a_replace(executor, core):
    stored(core, manifest(credential("harbor", password="old")))
    applied = executor.apply(CreateCopy(NAMESPACE, "harbor", manifest()))
    assert (applied.wrote, applied.rotated) == (True, False)
    assert core.calls == ["create", "get", "replace"]
    assert core.secrets["harbor"]["data"] == manifest()["data"]


def test_a_copy_labelled_by_us_but_stripped_of_its_owner_is_still_ours(executor, core):
    body = manifest(credential("harbor", password="old"))
    body["metadata"]["ownerReferences"] = []
    stored(core, body)
    assert executor.apply(CreateCopy(NAMESPACE, "harbor", manifest())).wrote


def test_a_replace_from_a_stale_version_re_reads_and_keeps_the_rotation(executor, core):
    current = stored(core, manifest(credential("harbor", password="old")))
    stale = str(int(current["metadata"]["resourceVersion"]) - 1)
    applied = executor.apply(ReplaceCopy(NAMESPACE, "harbor", stale, True, manifest()))
    assert (applied.wrote, applied.rotated) == (True, True)
    assert core.calls == ["replace", "get", "replace"]


def test_a_replace_of_a_copy_deleted_meanwhile_creates_it(executor, core):
    applied = executor.apply(ReplaceCopy(NAMESPACE, "harbor", "7", True, manifest()))
    assert applied.wrote
    assert core.calls == ["replace", "get", "create"]


def test_a_replace_of_a_copy_somebody_else_took_over_leaves_it_alone(executor, core):
    stored(core, {"metadata": {"name": "harbor", "labels": {"app": "theirs"}}, "type": "Opaque"})
    applied = executor.apply(ReplaceCopy(NAMESPACE, "harbor", "1", False, manifest()))
    assert applied.not_ours is not None
    assert core.calls == ["replace", "get"]


def test_a_copy_changing_under_every_write_gives_up_after_the_stated_bound(executor, core):
    stored(core, manifest(credential("harbor", password="old")))

    def rewrite(verb: str, name: str) -> None:  # somebody replaces it before each of our writes
        if name in core.secrets:
            core.bump(core.secrets[name])

    core.meddle = rewrite
    with pytest.raises(ApiConflict) as raised:
        executor.apply(CreateCopy(NAMESPACE, "harbor", manifest()))
    assert raised.value.transient
    writes = [call for call in core.calls if call in ("create", "replace")]
    assert len(writes) == COPY_ATTEMPTS


def test_a_delete_of_a_copy_changed_meanwhile_is_refused_and_writes_nothing(executor, core):
    current = stored(core, manifest())
    applied = executor.apply(DeleteCopy(NAMESPACE, "harbor", "harbor", current["metadata"]["uid"], "1"))
    assert applied.wrote is False
    assert "harbor" in core.secrets


def test_a_delete_of_a_copy_gone_already_writes_nothing(executor, core):
    assert executor.apply(DeleteCopy(NAMESPACE, "harbor", "harbor", "uid", "1")).wrote is False


# --- ServiceAccounts --------------------------------------------------------------------------


def account(core: FakeCore, **kwargs: Any) -> dict[str, Any]:
    core.accounts["default"] = sa_body(namespace=NAMESPACE, **kwargs)
    return core.accounts["default"]


def test_an_entry_added_from_a_stale_cache_is_re_read_and_added_once(executor, core):
    cached = observe_service_account(account(core, pull_secrets=["theirs"]))
    core.bump(core.accounts["default"])  # somebody wrote since our cache saw it
    applied = executor.apply(AddPullSecret(NAMESPACE, "default", "harbor", "harbor", cached))
    assert applied.wrote
    assert core.calls == ["patch-sa", "get-sa", "patch-sa"]
    assert [ref["name"] for ref in core.accounts["default"]["imagePullSecrets"]] == ["theirs", "harbor"]


def test_a_service_account_busy_under_every_patch_gives_up_after_the_stated_bound(executor, core):
    account(core)
    core.meddle = lambda verb, name: core.bump(core.accounts[name])
    with pytest.raises(ApiConflict):
        executor.apply(AddPullSecret(NAMESPACE, "default", "harbor", "harbor"))
    assert core.calls.count("patch-sa") == SERVICE_ACCOUNT_ATTEMPTS


def test_an_entry_on_a_service_account_gone_meanwhile_writes_nothing(executor, core):
    assert executor.apply(AddPullSecret(NAMESPACE, "default", "harbor", "harbor")).wrote is False
    assert executor.apply(RemovePullSecret(NAMESPACE, "default", "harbor")).wrote is False


def test_an_entry_already_there_needs_no_patch(executor, core):
    cached = observe_service_account(account(core, pull_secrets=["harbor"], ours=["harbor"]))
    assert executor.apply(AddPullSecret(NAMESPACE, "default", "harbor", "harbor", cached)).wrote is False
    assert core.calls == []


# --- errors by meaning -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "transient"),
    [(0, ApiUnavailable, True), (500, ApiUnavailable, True), (429, ApiUnavailable, True),
     (409, ApiConflict, True), (403, ApiRefused, False), (400, ApiRefused, False)],
)
def test_a_failed_call_is_typed_by_what_it_means(status, kind, transient):
    error = api_error("get", "secret a/b", status, "Whatever")
    assert isinstance(error, kind)
    assert error.transient is transient


def test_a_refused_call_is_counted_and_its_message_holds_no_response_body(executor, core, errors):
    core.create_namespaced_secret = lambda *a, **k: (_ for _ in ()).throw(refusal(403, "Forbidden"))
    with pytest.raises(ApiRefused) as raised:
        executor.apply(CreateCopy(NAMESPACE, "harbor", manifest()))
    assert str(raised.value) == (
        "create secret team-a/harbor at https://api.example:6443: 403 Forbidden: RBAC does not allow "
        "it for this user; ask the cluster admin for a role that allows it")
    assert PASSWORD not in str(raised.value)
    assert errors == [403]


def test_no_answer_is_unavailable_with_status_zero(kube, core, errors):
    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise urllib3.exceptions.MaxRetryError(urllib3.HTTPConnectionPool("api.example"), "/api",
                                               ConnectionRefusedError(111, "Connection refused"))

    core.read_namespaced_secret = unreachable
    with pytest.raises(ApiUnavailable) as raised:
        kube.read_source("regcred-system", "robot")
    assert (raised.value.status, raised.value.reason, errors) == (0, "MaxRetryError", [0])


def test_a_missing_source_is_none_not_an_error(kube):
    assert kube.read_source("regcred-system", "robot") is None


def test_an_outage_is_logged_once_then_at_most_every_interval_and_when_it_ends(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(kube_client, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    outage = Outage("https://api.example:6443", every=30)
    refused = api_error("list", "namespaces", 0, "x", server="https://api.example:6443", cause=REFUSED)
    with capture_logs() as logs:
        outage.answered()  # nothing to end
        for _ in range(5):  # attempts within the interval: one line
            outage.failed(refused)
            clock[0] += 5
        clock[0] += 10
        outage.failed(refused)  # 30 s after the first line: the next, with the count since
        outage.failed(api_error("list", "namespaces", 503, "x", cause=OVERLOADED))  # a new cause
        outage.answered()
        outage.answered()
    assert [(line["event"], line.get("failures")) for line in logs] == [
        ("the API server cannot be used, retrying", 1), ("the API server cannot be used, retrying", 5),
        ("the API server cannot be used, retrying", 1), ("the API server answers again", None)]
    assert logs[0]["cause"] == "ConnectionRefused" and logs[0]["server"] == "https://api.example:6443"
    assert logs[-1]["after_seconds"] == 35.0
