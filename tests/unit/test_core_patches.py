"""JSON Patches for ServiceAccount.imagePullSecrets (`regcred.core.patches.pull_secret_patch`).

The ops are applied with a tiny RFC 6902 implementation (support.builders.json_patch) to
check the object that results, the way the API server would.
"""

from __future__ import annotations

import pytest

from regcred.core.patches import pull_secret_patch
from regcred.core.plan import observe_service_account
from support.builders import PatchTestFailed, json_patch, sa_body

ANNOTATION = "regcred.dev/image-pull-secrets"
ANNOTATION_PATH = "/metadata/annotations/regcred.dev~1image-pull-secrets"


def patched(body, name, *, present):
    ops = pull_secret_patch(observe_service_account(body), name, present=present)
    return ops, (json_patch(body, ops) if ops is not None else None)


def entries(body) -> list[str]:
    return [ref["name"] for ref in body.get("imagePullSecrets") or []]


def annotation(body) -> str | None:
    return (body["metadata"].get("annotations") or {}).get(ANNOTATION)


# --- add ------------------------------------------------------------------------------------


def test_add_to_absent_list_without_annotations():
    body = sa_body("default", pull_secrets=[])
    assert "annotations" not in body["metadata"] and "imagePullSecrets" not in body
    ops, after = patched(body, "harbor", present=True)
    assert ops == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": body["metadata"]["resourceVersion"]},
        {"op": "add", "path": "/imagePullSecrets", "value": [{"name": "harbor"}]},
        {"op": "add", "path": "/metadata/annotations", "value": {ANNOTATION: "harbor"}},
    ]
    assert entries(after) == ["harbor"]
    assert after["metadata"]["annotations"] == {ANNOTATION: "harbor"}


def test_add_to_empty_list():
    body = sa_body("default")
    body["imagePullSecrets"] = []
    _, after = patched(body, "harbor", present=True)
    assert entries(after) == ["harbor"]


def test_append_keeps_others_entries_and_order():
    body = sa_body("default", pull_secrets=["z-theirs", "a-theirs", "m-theirs"], annotations={"team": "x"})
    ops, after = patched(body, "harbor", present=True)
    assert ops[1] == {"op": "add", "path": "/imagePullSecrets/-", "value": {"name": "harbor"}}
    assert entries(after) == ["z-theirs", "a-theirs", "m-theirs", "harbor"]
    # other annotations untouched, ours added next to them
    assert after["metadata"]["annotations"] == {"team": "x", ANNOTATION: "harbor"}
    assert ops[-1] == {"op": "add", "path": ANNOTATION_PATH, "value": "harbor"}


def test_add_updates_our_annotation_sorted():
    body = sa_body("default", pull_secrets=["zeta", "theirs"], ours=["zeta"])
    _, after = patched(body, "alpha", present=True)
    assert entries(after) == ["zeta", "theirs", "alpha"]
    assert annotation(after) == "alpha,zeta"


@pytest.mark.parametrize("ours", [None, [], ["harbor"], ["other"]])
def test_no_op_when_present(ours):
    body = sa_body("default", pull_secrets=["a", "harbor", "b"], ours=ours)
    assert pull_secret_patch(observe_service_account(body), "harbor", present=True) is None


def test_repair_of_our_entry_removed_by_someone():
    body = sa_body("default", pull_secrets=["a"], ours=["harbor"])
    _, after = patched(body, "harbor", present=True)
    assert entries(after) == ["a", "harbor"]
    assert annotation(after) == "harbor"


def test_add_never_duplicates_when_replayed_after_a_concurrent_write():
    body = sa_body("default", pull_secrets=["a"])
    ops = pull_secret_patch(observe_service_account(body), "harbor", present=True)
    raced = json_patch(body, [{"op": "add", "path": "/imagePullSecrets/-", "value": {"name": "b"}}])
    raced["metadata"]["resourceVersion"] = "changed"
    assert ops is not None
    with pytest.raises(PatchTestFailed):
        json_patch(raced, ops)


# --- remove ---------------------------------------------------------------------------------


def test_remove_only_when_in_our_annotation():
    body = sa_body("default", pull_secrets=["harbor", "a"], ours=["other"])
    assert pull_secret_patch(observe_service_account(body), "harbor", present=False) is None
    body = sa_body("default", pull_secrets=["harbor", "a"])
    assert pull_secret_patch(observe_service_account(body), "harbor", present=False) is None


def test_remove_ours_keeps_others_in_order_and_drops_the_annotation():
    body = sa_body("default", pull_secrets=["a", "harbor", "b"], ours=["harbor"], annotations={"keep": "1"})
    ops, after = patched(body, "harbor", present=False)
    assert ops == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": body["metadata"]["resourceVersion"]},
        {"op": "test", "path": "/imagePullSecrets/1/name", "value": "harbor"},
        {"op": "remove", "path": "/imagePullSecrets/1"},
        {"op": "remove", "path": ANNOTATION_PATH},
    ]
    assert entries(after) == ["a", "b"]
    assert after["metadata"]["annotations"] == {"keep": "1"}


def test_remove_one_of_ours_updates_the_annotation():
    body = sa_body("default", pull_secrets=["ghcr", "a", "harbor"], ours=["ghcr", "harbor", "quay"])
    ops, after = patched(body, "harbor", present=False)
    assert ops[-1] == {"op": "add", "path": ANNOTATION_PATH, "value": "ghcr,quay"}
    assert entries(after) == ["ghcr", "a"]
    assert annotation(after) == "ghcr,quay"


def test_remove_exactly_one_occurrence():
    body = sa_body("default", pull_secrets=["harbor", "a", "harbor", "b"], ours=["harbor"])
    ops, after = patched(body, "harbor", present=False)
    assert [op["op"] for op in ops].count("remove") == 2  # the entry and the annotation
    assert entries(after) == ["harbor", "a", "b"]


def test_remove_tests_the_element_name():
    body = sa_body("default", pull_secrets=["a", "harbor"], ours=["harbor"])
    ops = pull_secret_patch(observe_service_account(body), "harbor", present=False)
    moved = dict(body, imagePullSecrets=[{"name": "harbor"}, {"name": "a"}])
    # even with the same resourceVersion, the element test refuses to remove the wrong entry
    assert ops is not None
    with pytest.raises(PatchTestFailed):
        json_patch(moved, ops)


def test_remove_when_our_entry_is_already_gone_cleans_the_annotation():
    body = sa_body("default", pull_secrets=["a"], ours=["harbor"])
    ops, after = patched(body, "harbor", present=False)
    assert [op["op"] for op in ops] == ["test", "remove"]
    assert entries(after) == ["a"]
    assert annotation(after) is None


# --- always guarded -------------------------------------------------------------------------

CASES = [
    (["a"], None, "harbor", True),
    ([], None, "harbor", True),
    (["a"], ["harbor"], "harbor", True),
    (["a", "harbor"], ["harbor"], "harbor", False),
    (["a"], ["harbor", "b"], "harbor", False),
]


@pytest.mark.parametrize(("pull_secrets", "ours", "name", "present"), CASES)
def test_first_op_is_a_resource_version_test(pull_secrets, ours, name, present):
    body = sa_body("default", pull_secrets=pull_secrets, ours=ours)
    ops, after = patched(body, name, present=present)
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion",
                      "value": body["metadata"]["resourceVersion"]}
    assert (name in entries(after)) is present
    assert (name in observe_service_account(after).ours) is present
    stale = dict(body, metadata=dict(body["metadata"], resourceVersion="other"))
    with pytest.raises(PatchTestFailed):
        json_patch(stale, ops)


@pytest.mark.parametrize(("pull_secrets", "ours", "name", "present"), CASES)
def test_patch_is_idempotent_once_applied(pull_secrets, ours, name, present):
    body = sa_body("default", pull_secrets=pull_secrets, ours=ours)
    _, after = patched(body, name, present=present)
    assert pull_secret_patch(observe_service_account(after), name, present=present) is None
