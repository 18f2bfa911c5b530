"""Planning one namespace (`regcred.core.plan.plan_namespace`), and that plans converge."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace

import pytest

from regcred.core.plan import (
    AddPullSecret,
    AlreadyRight,
    CreateCopy,
    DeleteCopy,
    NamespacePlan,
    NotOurs,
    ObservedServiceAccount,
    RemovePullSecret,
    ReplaceCopy,
    desired_copy,
    is_ours,
    next_copy_step,
    observe_copy,
    observe_service_account,
    plan_namespace,
)
from support.builders import (
    PASSWORD,
    PlannedNamespace,
    credential,
    live_copy,
    make_spec,
    ns,
    observed,
    sa_body,
    with_password,
)

NS = "team-a"


def world(*creds, copies=(), accounts=None, foreign=frozenset(), namespace=None) -> PlannedNamespace:
    """A namespace `team-a` with the given credentials, copies (bodies) and ServiceAccounts."""
    accounts = [sa_body("default", NS)] if accounts is None else accounts
    return PlannedNamespace(
        namespace=namespace or ns(NS, {"team": "a"}),
        credentials=list(creds),
        copies={body["metadata"]["name"]: body for body in copies},
        accounts={body["metadata"]["name"]: body for body in accounts},
        foreign=frozenset(foreign),
    )


def kinds(plan: NamespacePlan) -> list[tuple[str, ...]]:
    """A readable summary of a plan's actions."""
    summary: list[tuple[str, ...]] = []
    for action in plan.secret_actions:
        name = action.secret_name
        if isinstance(action, ReplaceCopy):
            summary.append(("replace", name, "rotation" if action.rotation else "meta"))
        else:
            summary.append(("create" if isinstance(action, CreateCopy) else "delete", name))
    for sa_action in plan.service_account_actions:
        verb = "add" if isinstance(sa_action, AddPullSecret) else "remove"
        summary.append((verb, sa_action.service_account, sa_action.secret_name))
    return summary


# --- the copy itself ------------------------------------------------------------------------


def test_desired_copy_shape():
    cred = credential("harbor-prod", labels={"team": "platform"}, annotations={"note": "x"},
                      secret_name="harbor-pull")
    body = desired_copy(cred, NS)
    assert body["type"] == "kubernetes.io/dockerconfigjson"
    assert body["metadata"]["name"] == "harbor-pull"
    assert body["metadata"]["namespace"] == NS
    assert body["metadata"]["labels"] == {
        "team": "platform",
        "app.kubernetes.io/managed-by": "regcred",
        "regcred.dev/credential": "harbor-prod",
    }
    assert body["metadata"]["annotations"] == {"note": "x"}
    assert body["metadata"]["ownerReferences"] == [{
        "apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential", "name": "harbor-prod",
        "uid": "uid-harbor-prod", "controller": True, "blockOwnerDeletion": False,
    }]
    assert cred.config is not None
    assert body["data"] == {".dockerconfigjson": cred.config.encoded}


def test_observe_copy_keeps_fingerprints_not_the_secret():
    cred = credential("harbor-prod", password=PASSWORD)
    copy = observe_copy(live_copy(cred, NS))
    assert cred.config is not None
    assert copy.credential == "harbor-prod"
    assert copy.owner_uids == ("uid-harbor-prod",)
    assert copy.data_digest == cred.config.digest
    for text in (repr(copy), str(copy)):
        assert cred.config.encoded not in text and PASSWORD not in text


def test_observe_copy_with_extra_data_keys_never_looks_up_to_date():
    cred = credential("harbor-prod")
    body = live_copy(cred, NS)
    body["data"]["extra"] = "eA=="
    assert observe_copy(body).data_digest == ""


# --- create / nothing / replace / delete ----------------------------------------------------


def test_create_when_missing():
    cred = credential("harbor-prod")
    plan = world(cred).plan()
    assert kinds(plan) == [("create", "harbor-prod"), ("add", "default", "harbor-prod")]
    (create,) = plan.secret_actions
    assert create == CreateCopy(NS, "harbor-prod", desired_copy(cred, NS))
    assert plan.service_account_actions == (AddPullSecret(NS, "default", "harbor-prod", "harbor-prod"),)
    assert plan.matched == {"harbor-prod"}
    assert plan.conflicts == {}


def test_nothing_when_equal():
    cred = credential("harbor-prod")
    w = world(cred, copies=[live_copy(cred, NS)],
              accounts=[sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"])])
    plan = w.plan()
    assert plan.empty and kinds(plan) == []
    assert plan.matched == {"harbor-prod"}


def test_rotation_replaces_the_copy_only():
    old = credential("harbor-prod", password="old-" + PASSWORD)
    new = with_password(old, "new-" + PASSWORD)
    stored = live_copy(old, NS)
    w = world(new, copies=[stored], accounts=[sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"])])
    plan = w.plan()
    assert kinds(plan) == [("replace", "harbor-prod", "rotation")]
    (action,) = plan.secret_actions
    assert isinstance(action, ReplaceCopy)
    assert action.resource_version == stored["metadata"]["resourceVersion"]
    assert action.manifest == desired_copy(new, NS)
    assert action.credential == "harbor-prod"


def _drop_label(body):
    del body["metadata"]["labels"]["app.kubernetes.io/managed-by"]


def _extra_label(body):
    body["metadata"]["labels"]["someone"] = "else"


def _extra_annotation(body):
    body["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{}"}


def _owner_block(body):
    body["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = True


def _second_owner(body):
    body["metadata"]["ownerReferences"].append({"apiVersion": "v1", "kind": "ConfigMap", "name": "x",
                                                "uid": "cm-uid"})


def _type(body):
    body["type"] = "Opaque"


@pytest.mark.parametrize("drift", [_drop_label, _extra_label, _extra_annotation, _owner_block,
                                   _second_owner, _type])
def test_metadata_drift_is_repaired_without_rotation(drift):
    cred = credential("harbor-prod")
    body = live_copy(cred, NS)
    drift(body)
    w = world(cred, copies=[body], accounts=[sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"])])
    assert kinds(w.plan()) == [("replace", "harbor-prod", "meta")]


@pytest.mark.parametrize(
    "change",
    [{"labels": {"team": "platform"}}, {"annotations": {"note": "new"}}],
)
def test_spec_label_or_annotation_change_replaces_without_rotation(change):
    before = credential("harbor-prod")
    after = credential("harbor-prod", **change)
    w = world(after, copies=[live_copy(before, NS)],
              accounts=[sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"])])
    assert kinds(w.plan()) == [("replace", "harbor-prod", "meta")]


def test_data_tampered_with_is_a_rotation_replace():
    cred = credential("harbor-prod")
    body = live_copy(cred, NS)
    body["data"][".dockerconfigjson"] = base64.b64encode(b'{"auths":{}}').decode()
    assert kinds(world(cred, copies=[body], accounts=[]).plan()) == [("replace", "harbor-prod", "rotation")]


def test_copy_with_stripped_label_but_our_owner_is_still_ours():
    cred = credential("harbor-prod")
    body = live_copy(cred, NS)
    del body["metadata"]["labels"]["regcred.dev/credential"]
    plan = world(cred, copies=[body], accounts=[]).plan()
    assert kinds(plan) == [("replace", "harbor-prod", "meta")]
    assert plan.conflicts == {}


@pytest.mark.parametrize(
    "stops_matching",
    [
        {"namespaces": ("other",)},
        {"exclude_namespaces": ("team-*",)},
        {"namespace_selector": make_spec().namespace_selector, "namespaces": ("ci",)},
    ],
)
def test_delete_when_namespace_stops_matching(stops_matching):
    before = credential("harbor-prod")
    after = credential("harbor-prod", **stops_matching)
    stored = live_copy(before, NS)
    accounts = [sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"])]
    w = world(after, copies=[stored], accounts=accounts)
    plan = w.plan()
    assert kinds(plan) == [("delete", "harbor-prod"), ("remove", "default", "harbor-prod")]
    assert plan.secret_actions[0] == DeleteCopy(
        NS, "harbor-prod", "harbor-prod", stored["metadata"]["uid"], stored["metadata"]["resourceVersion"]
    )
    assert plan.matched == frozenset()


def test_delete_when_namespace_gets_the_ignore_label():
    cred = credential("harbor-prod")
    w = world(cred, copies=[live_copy(cred, NS)], namespace=ns(NS, {"regcred.dev/ignore": "true"}),
              accounts=[sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"])])
    assert kinds(w.plan()) == [("delete", "harbor-prod"), ("remove", "default", "harbor-prod")]


def test_orphan_deleted_when_cr_is_gone():
    gone = credential("harbor-prod")
    w = world(copies=[live_copy(gone, NS)],
              accounts=[sa_body("default", NS, ["other", "harbor-prod"], ours=["harbor-prod"])])
    plan = w.plan()
    assert kinds(plan) == [("delete", "harbor-prod"), ("remove", "default", "harbor-prod")]
    assert plan.service_account_actions == (RemovePullSecret(NS, "default", "harbor-prod"),)


def test_cr_recreated_under_the_same_name_takes_its_copies_back():
    old = credential("harbor-prod")
    new = replace(credential("harbor-prod"), uid="uid-recreated")
    assert new.spec is not None
    new = replace(new, spec=replace(new.spec, uid="uid-recreated"))
    w = world(new, copies=[live_copy(old, NS)],
              accounts=[sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"])])
    plan = w.plan()
    assert kinds(plan) == [("replace", "harbor-prod", "meta")]
    (action,) = plan.secret_actions
    assert isinstance(action, ReplaceCopy)
    assert action.manifest["metadata"]["ownerReferences"][0]["uid"] == "uid-recreated"


def test_orphan_of_a_gone_cr_is_adopted_by_a_claimant():
    gone = credential("old-cred", secret_name="pull")
    cred = credential("new-cred", secret_name="pull")
    w = world(cred, copies=[live_copy(gone, NS)],
              accounts=[sa_body("default", NS, ["pull"], ours=["pull"])])
    plan = w.plan()
    assert kinds(plan) == [("replace", "pull", "rotation")]
    assert plan.secret_actions[0].credential == "new-cred"
    assert plan.conflicts == {}


def test_secret_name_change_renames_the_copy():
    before = credential("harbor-prod")
    after = credential("harbor-prod", secret_name="harbor-pull")
    w = world(after, copies=[live_copy(before, NS)],
              accounts=[sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"])])
    assert kinds(w.plan()) == [
        ("create", "harbor-pull"),
        ("delete", "harbor-prod"),
        ("add", "default", "harbor-pull"),
        ("remove", "default", "harbor-prod"),
    ]


@pytest.mark.parametrize("namespace", [None, ns(NS, terminating=True)])
def test_terminating_or_unknown_namespace_gets_an_empty_plan(namespace):
    cred = credential("harbor-prod")
    gone = credential("gone")
    copies = [observed(cred, NS), observed(gone, NS)]
    accounts = [observe_service_account(sa_body("default", NS, ["gone"], ours=["gone"]))]
    plan = plan_namespace(namespace, [cred], copies, accounts, frozenset({"x"}))
    assert plan.empty
    assert plan.namespace == (NS if namespace else "")
    assert plan.matched == frozenset() and plan.conflicts == {}


# --- frozen credentials ---------------------------------------------------------------------

FROZEN = ["suspended", "config", "spec"]


@pytest.mark.parametrize("frozen", FROZEN)
def test_frozen_credential_creates_and_adds_nothing(frozen):
    cred = credential("harbor-prod", frozen=frozen)
    plan = world(cred).plan()
    assert plan.empty
    assert plan.conflicts == {}


@pytest.mark.parametrize("frozen", FROZEN)
def test_frozen_credential_keeps_a_stale_drifted_copy_and_entries(frozen):
    old = credential("harbor-prod", password="old")
    cred = credential("harbor-prod", frozen=frozen)
    body = live_copy(old, NS)
    _extra_label(body)
    accounts = [
        sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"]),
        # an SA the (frozen) spec does not select, with our entry: left as it is
        sa_body("builder", NS, ["harbor-prod"], ours=["harbor-prod"]),
        # our entry removed by someone: not repaired while frozen
        sa_body("deployer", NS, [], ours=["harbor-prod"]),
    ]
    assert world(cred, copies=[body], accounts=accounts).plan().empty


@pytest.mark.parametrize("frozen", FROZEN)
def test_frozen_credential_keeps_its_copy_in_a_namespace_it_no_longer_matches(frozen):
    old = credential("harbor-prod")
    cred = credential("harbor-prod", frozen=frozen, namespaces=("elsewhere",))
    w = world(cred, copies=[live_copy(old, NS)],
              accounts=[sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"])])
    assert w.plan().empty


@pytest.mark.parametrize("frozen", ["suspended", "config"])
def test_frozen_holder_keeps_its_name_against_a_newcomer(frozen):
    holder = credential("a-holder", secret_name="pull", frozen=frozen, created="2024-06-01T00:00:00Z")
    newcomer = credential("b-new", secret_name="pull", created="2023-01-01T00:00:00Z")
    w = world(holder, newcomer, copies=[live_copy(credential("a-holder", secret_name="pull"), NS)],
              accounts=[sa_body("default", NS, ["pull"], ours=["pull"])])
    plan = w.plan()
    assert plan.empty
    assert set(plan.conflicts) == {"b-new"}
    assert "a-holder" in plan.conflicts["b-new"]


def test_frozen_credential_entry_kept_while_another_active_credential_runs():
    frozen = credential("a-frozen", secret_name="frozen-pull", frozen="suspended")
    active = credential("b-active", secret_name="active-pull")
    w = world(frozen, active, copies=[live_copy(credential("a-frozen", secret_name="frozen-pull"), NS)],
              accounts=[sa_body("default", NS, ["frozen-pull"], ours=["frozen-pull"])])
    assert kinds(w.plan()) == [("create", "active-pull"), ("add", "default", "active-pull")]


# --- conflicts ------------------------------------------------------------------------------


def test_copy_held_by_another_credential_wins_over_an_older_newcomer():
    holder = credential("z-holder", secret_name="pull", created="2024-06-01T00:00:00Z")
    newcomer = credential("a-newcomer", secret_name="pull", created="2020-01-01T00:00:00Z")
    w = world(holder, newcomer, copies=[live_copy(holder, NS)],
              accounts=[sa_body("default", NS, ["pull"], ours=["pull"])])
    plan = w.plan()
    assert plan.empty
    assert plan.conflicts == {"a-newcomer": "secret pull is managed by RegistryCredential z-holder"}
    assert plan.matched == {"z-holder", "a-newcomer"}


@pytest.mark.parametrize(
    ("a_created", "b_created", "winner", "loser"),
    [
        ("2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", "cred-a", "cred-b"),
        ("2024-03-01T00:00:00Z", "2024-02-01T00:00:00Z", "cred-b", "cred-a"),
        ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z", "cred-a", "cred-b"),  # tie: name
    ],
)
@pytest.mark.parametrize("order", [1, -1])
def test_two_claimants_without_a_copy_the_older_wins(a_created, b_created, winner, loser, order):
    a = credential("cred-a", secret_name="pull", created=a_created)
    b = credential("cred-b", secret_name="pull", created=b_created)
    plan = world(*[a, b][::order]).plan()
    (create,) = plan.secret_actions
    assert isinstance(create, CreateCopy) and create.credential == winner
    assert create.manifest["metadata"]["labels"]["regcred.dev/credential"] == winner
    assert plan.conflicts == {loser: f"secret pull is managed by RegistryCredential {winner}"}
    assert plan.service_account_actions == (AddPullSecret(NS, "default", "pull", winner),)


def test_loser_gets_nothing_even_for_its_own_service_accounts():
    a = credential("cred-a", secret_name="pull", created="2024-01-01T00:00:00Z")
    b = credential("cred-b", secret_name="pull", created="2024-02-01T00:00:00Z",
                   service_accounts=("builder",))
    plan = world(a, b, accounts=[sa_body("default", NS), sa_body("builder", NS)]).plan()
    assert kinds(plan) == [("create", "pull"), ("add", "default", "pull")]


def test_three_claimants_one_winner():
    creds = [credential(f"c{i}", secret_name="pull", created=f"2024-0{i}-01T00:00:00Z") for i in (3, 1, 2)]
    plan = world(*creds).plan()
    assert [a.credential for a in plan.secret_actions] == ["c1"]
    assert set(plan.conflicts) == {"c2", "c3"}


def test_foreign_secret_is_a_conflict_and_never_created_over():
    cred = credential("harbor-prod")
    plan = world(cred, foreign={"harbor-prod"}).plan()
    assert plan.empty
    assert plan.conflicts == {"harbor-prod": "secret harbor-prod exists and is not managed by regcred"}


def test_foreign_secret_of_another_name_does_not_matter():
    plan = world(credential("harbor-prod"), foreign={"something-else"}).plan()
    assert kinds(plan) == [("create", "harbor-prod"), ("add", "default", "harbor-prod")]
    assert plan.conflicts == {}


def test_foreign_secret_blocks_every_claimant():
    a = credential("cred-a", secret_name="pull")
    b = credential("cred-b", secret_name="pull")
    plan = world(a, b, foreign={"pull"}).plan()
    assert plan.empty
    assert set(plan.conflicts) == {"cred-a", "cred-b"}


# --- ServiceAccount entries -----------------------------------------------------------------


def test_entry_added_to_matching_accounts_only():
    cred = credential("harbor-prod", service_accounts=("default", "build-*"))
    accounts = [sa_body(n, NS) for n in ("default", "build-x", "deployer", "build")]
    plan = world(cred, accounts=accounts).plan()
    assert [a.service_account for a in plan.service_account_actions] == ["build-x", "default"]


def test_no_entries_with_empty_service_accounts_but_the_copy_is_made():
    cred = credential("harbor-prod", service_accounts=())
    assert kinds(world(cred, accounts=[sa_body("default", NS)]).plan()) == [("create", "harbor-prod")]


def test_star_adds_to_every_account():
    cred = credential("harbor-prod", service_accounts=("*",))
    accounts = [sa_body(n, NS) for n in ("default", "builder", "zeta")]
    plan = world(cred, accounts=accounts).plan()
    assert [a.service_account for a in plan.service_account_actions] == ["builder", "default", "zeta"]


def test_entry_somebody_else_added_is_not_added_again_nor_claimed():
    cred = credential("harbor-prod")
    w = world(cred, copies=[live_copy(cred, NS)], accounts=[sa_body("default", NS, ["harbor-prod"])])
    assert w.plan().empty


def test_entry_not_in_our_annotation_is_never_removed():
    gone = credential("harbor-prod")
    w = world(copies=[live_copy(gone, NS)], accounts=[sa_body("default", NS, ["harbor-prod", "x"], ours=[])])
    assert kinds(w.plan()) == [("delete", "harbor-prod")]
    w2 = world(accounts=[sa_body("default", NS, ["harbor-prod"], ours=["other-one"])])
    assert kinds(w2.plan()) == [("remove", "default", "other-one")]


def test_our_entry_removed_when_the_account_stops_matching():
    before = credential("harbor-prod", service_accounts=("*",))
    after = credential("harbor-prod", service_accounts=("default",))
    accounts = [
        sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"]),
        sa_body("builder", NS, ["mine", "harbor-prod", "theirs"], ours=["harbor-prod"]),
    ]
    w = world(after, copies=[live_copy(before, NS)], accounts=accounts)
    assert kinds(w.plan()) == [("remove", "builder", "harbor-prod")]


def test_our_entry_removed_by_someone_is_repaired():
    cred = credential("harbor-prod")
    accounts = [sa_body("default", NS, ["x"], ours=["harbor-prod"])]
    w = world(cred, copies=[live_copy(cred, NS)], accounts=accounts)
    assert kinds(w.plan()) == [("add", "default", "harbor-prod")]


def test_new_default_account_gets_the_entry():
    cred = credential("harbor-prod")
    w = world(cred, copies=[live_copy(cred, NS)], accounts=[])
    assert w.plan().empty
    w.accounts["default"] = sa_body("default", NS)
    assert kinds(w.plan()) == [("add", "default", "harbor-prod")]


def test_annotation_only_leftover_is_cleaned():
    # our annotation names an entry that is no longer in the list and no longer wanted
    w = world(accounts=[sa_body("default", NS, ["x"], ours=["harbor-prod"])])
    assert kinds(w.plan()) == [("remove", "default", "harbor-prod")]


def test_plan_repr_shows_no_secret_material():
    old = credential("harbor-prod", password="old-" + PASSWORD)
    new = with_password(old, PASSWORD)
    plans = [world(new).plan(), world(new, copies=[live_copy(old, NS)]).plan()]
    assert new.config is not None and old.config is not None
    for plan in plans:
        text = repr(plan) + str(plan.secret_actions)
        assert new.config.encoded not in text and old.config.encoded not in text
        assert PASSWORD not in text


def test_plan_accepts_plain_observed_inputs():
    # the planner works from the dataclasses alone, as the reconciler's caches feed it
    cred = credential("harbor-prod")
    account = ObservedServiceAccount(NS, "default", ("harbor-prod",), frozenset({"harbor-prod"}), "7", True)
    plan = plan_namespace(ns(NS), iter([cred]), iter([observed(cred, NS)]), iter([account]))
    assert plan.empty


# --- idempotence: plan, apply, plan again -> nothing ----------------------------------------


def _fresh() -> PlannedNamespace:
    return world(credential("harbor-prod"))


def _rotation() -> PlannedNamespace:
    old = credential("harbor-prod", password="old")
    return world(with_password(old, "new"), copies=[live_copy(old, NS)],
                 accounts=[sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"])])


def _drift() -> PlannedNamespace:
    cred = credential("harbor-prod")
    body = live_copy(cred, NS)
    _extra_label(body)
    _owner_block(body)
    return world(cred, copies=[body], accounts=[sa_body("default", NS, ["x"], ours=["harbor-prod"])])


def _cr_deleted() -> PlannedNamespace:
    gone = credential("harbor-prod", service_accounts=("*",))
    return world(copies=[live_copy(gone, NS)], accounts=[
        sa_body("default", NS, ["a", "harbor-prod", "b"], ours=["harbor-prod"], annotations={"x": "y"}),
        sa_body("builder", NS, ["harbor-prod"], ours=["harbor-prod"]),
    ])


def _renamed() -> PlannedNamespace:
    before = credential("harbor-prod")
    return world(credential("harbor-prod", secret_name="harbor-pull"), copies=[live_copy(before, NS)],
                 accounts=[sa_body("default", NS, ["harbor-prod", "other"], ours=["harbor-prod"])])


def _stops_matching() -> PlannedNamespace:
    before = credential("harbor-prod")
    return world(credential("harbor-prod", namespaces=("ci",)), copies=[live_copy(before, NS)],
                 accounts=[sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"])])


def _accounts_narrowed() -> PlannedNamespace:
    before = credential("harbor-prod", service_accounts=("*",))
    after = credential("harbor-prod", service_accounts=("default",))
    return world(after, copies=[live_copy(before, NS)], accounts=[
        sa_body(n, NS, ["harbor-prod"], ours=["harbor-prod"]) for n in ("default", "builder", "deployer")
    ])


def _adopt_orphan() -> PlannedNamespace:
    gone = credential("old", secret_name="pull")
    return world(credential("new", secret_name="pull"), copies=[live_copy(gone, NS)],
                 accounts=[sa_body("default", NS, ["pull"], ours=["pull"])])


def _someone_elses_entry() -> PlannedNamespace:
    return world(credential("harbor-prod"), accounts=[sa_body("default", NS, ["harbor-prod"])])


def _conflicts() -> PlannedNamespace:
    holder = credential("z-holder", secret_name="pull", created="2024-06-01T00:00:00Z")
    return world(
        holder,
        credential("a-newcomer", secret_name="pull", created="2020-01-01T00:00:00Z"),
        credential("c-foreign", secret_name="taken"),
        copies=[live_copy(holder, NS)],
        foreign={"taken"},
        accounts=[sa_body("default", NS)],
    )


def _multi() -> PlannedNamespace:
    """Several CRs and ServiceAccounts in one namespace, with every kind of neighbour."""
    creds = [
        credential("harbor", service_accounts=("*",), labels={"team": "platform"}),
        credential("ghcr", secret_name="ghcr-pull", service_accounts=("default", "build-*")),
        credential("quay", secret_name="shared", created="2023-01-01T00:00:00Z"),
        credential("quay-2", secret_name="shared", created="2024-01-01T00:00:00Z"),  # loses to quay
        credential("frozen", frozen="suspended", service_accounts=("*",)),
        credential("broken", frozen="spec"),
        credential("elsewhere", namespaces=("ci",)),  # matched here before, not any more
        credential("blocked", secret_name="foreign-one"),
        credential("none", secret_name="no-sa-pull", service_accounts=()),
    ]
    old_harbor = credential("harbor", password="old")
    gone = credential("gone", service_accounts=("*",))
    copies = [
        live_copy(old_harbor, NS),  # rotated
        live_copy(credential("frozen", service_accounts=("*",), password="old"), NS),  # stale, frozen
        live_copy(credential("broken"), NS),
        live_copy(credential("elsewhere"), NS),
        live_copy(gone, NS),  # orphan
    ]
    accounts = [
        sa_body("default", NS, ["mine", "harbor", "frozen", "gone", "elsewhere"],
                ours=["harbor", "frozen", "gone", "elsewhere", "broken"]),
        sa_body("build-1", NS, ["gone", "theirs", "gone"], ours=["gone"], annotations={"keep": "me"}),
        sa_body("deployer", NS, ["ghcr-pull"]),  # somebody else's entry with our name
        sa_body("fresh", NS),
    ]
    return world(*creds, copies=copies, accounts=accounts, foreign={"foreign-one"})


SCENARIOS: dict[str, Callable[[], PlannedNamespace]] = {
    "fresh namespace": _fresh,
    "rotation": _rotation,
    "drifted copy and lost entry": _drift,
    "CR deleted": _cr_deleted,
    "secretName changed": _renamed,
    "namespace stops matching": _stops_matching,
    "serviceAccounts narrowed": _accounts_narrowed,
    "orphan adopted": _adopt_orphan,
    "entry somebody else added": _someone_elses_entry,
    "conflicts": _conflicts,
    "multi-CR multi-SA": _multi,
}


@pytest.mark.parametrize("make", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_one_plan_converges(make):
    w = make()
    first = w.plan()
    w.apply(first)
    second = w.plan()
    assert second.empty, kinds(second)
    assert second.conflicts == first.conflicts
    assert second.matched == first.matched
    # and stays converged
    w.apply(second)
    assert w.plan().empty


def test_multi_end_state():
    w = _multi()
    w.converge()
    assert set(w.copies) == {"harbor", "ghcr-pull", "shared", "frozen", "broken", "no-sa-pull"}
    assert w.copies["shared"]["metadata"]["labels"]["regcred.dev/credential"] == "quay"
    assert w.copies["harbor"]["metadata"]["labels"]["team"] == "platform"
    assert w.pull_secrets("default") == ["mine", "harbor", "frozen", "ghcr-pull", "shared"]
    assert w.ours("default") == {"harbor", "frozen", "broken", "ghcr-pull", "shared"}
    # one of two "gone" occurrences was ours; the other is somebody else's
    assert w.pull_secrets("build-1") == ["gone", "theirs", "ghcr-pull", "harbor"]
    assert w.accounts["build-1"]["metadata"]["annotations"]["keep"] == "me"
    assert w.pull_secrets("deployer") == ["ghcr-pull", "harbor"]
    assert w.ours("deployer") == {"harbor"}
    assert w.pull_secrets("fresh") == ["harbor"]
    plan = w.plan()
    assert set(plan.conflicts) == {"quay-2", "blocked"}
    assert plan.matched == {"harbor", "ghcr", "quay", "quay-2", "frozen", "blocked", "none"}


def test_multi_then_everything_deleted_leaves_only_what_is_not_ours():
    w = _multi()
    w.converge()
    w.credentials = []
    assert w.converge() == 1
    assert w.copies == {}
    assert w.pull_secrets("default") == ["mine"]
    assert w.pull_secrets("build-1") == ["gone", "theirs"]
    assert w.pull_secrets("deployer") == ["ghcr-pull"]
    assert w.pull_secrets("fresh") == []
    for name in ("default", "build-1", "deployer", "fresh"):
        assert w.ours(name) == frozenset()
        annotations = w.accounts[name]["metadata"].get("annotations") or {}
        assert "regcred.dev/image-pull-secrets" not in annotations


def test_unfreezing_catches_up_in_one_pass():
    w = _multi()
    w.converge()
    (frozen,) = (c for c in w.credentials if c.name == "frozen")
    assert frozen.spec is not None
    thawed = replace(frozen, spec=replace(frozen.spec, suspend=False))
    w.credentials = [thawed if c.name == "frozen" else c for c in w.credentials]
    w.credentials = [credential("broken") if c.name == "broken" else c for c in w.credentials]
    plan = w.plan()
    assert ("replace", "frozen", "rotation") in kinds(plan)
    w.apply(plan)
    assert w.plan().empty


def test_holder_that_stops_matching_hands_over_in_two_passes():
    holder = credential("a-holder", secret_name="pull")
    moved = credential("a-holder", secret_name="pull", namespaces=("ci",))
    claimant = credential("b-claimant", secret_name="pull")
    w = world(moved, claimant, copies=[live_copy(holder, NS)],
              accounts=[sa_body("default", NS, ["pull"], ours=["pull"])])
    first = w.plan()
    assert kinds(first) == [("delete", "pull"), ("remove", "default", "pull")]
    assert set(first.conflicts) == {"b-claimant"}
    assert w.converge() == 2
    assert w.copies["pull"]["metadata"]["labels"]["regcred.dev/credential"] == "b-claimant"
    assert w.pull_secrets() == ["pull"]


# --- after a refused write: what the Secret as it is now calls for (plan.next_copy_step) ---------


def _refused_create() -> CreateCopy:
    return CreateCopy("team-a", "harbor", desired_copy(credential("harbor"), "team-a"))


def test_after_a_refused_write_an_absent_secret_is_created():
    assert next_copy_step(_refused_create(), None) == _refused_create()


def test_after_a_refused_write_a_secret_not_ours_is_left_alone():
    foreign = observe_copy({"metadata": {"name": "harbor", "namespace": "team-a"}, "type": "Opaque"})
    step = next_copy_step(_refused_create(), foreign)
    assert step == NotOurs("secret harbor exists and is not managed by regcred")


def test_after_a_refused_write_our_secret_as_desired_needs_nothing():
    assert next_copy_step(_refused_create(), observed(credential("harbor"), "team-a")) == AlreadyRight()


def test_after_a_refused_write_our_outdated_secret_is_replaced_at_its_version():
    stale = observed(credential("harbor", password="old"), "team-a")
    manifest = _refused_create().manifest
    replace_step = next_copy_step(ReplaceCopy("team-a", "harbor", "1", True, manifest), stale)
    assert replace_step == ReplaceCopy("team-a", "harbor", stale.resource_version, True, manifest)
    create_step = next_copy_step(_refused_create(), stale)
    assert isinstance(create_step, ReplaceCopy) and not create_step.rotation


def test_a_secret_owned_by_the_credential_uid_is_ours_without_the_label():
    copy = observed(credential("harbor"), "team-a")
    assert is_ours(copy, "harbor", "uid-other")
    unlabelled = observe_copy(live_copy(credential("harbor"), "team-a", labels={}))
    assert is_ours(unlabelled, "other-name", "uid-harbor")
    assert not is_ours(unlabelled, "other-name", "uid-other")


def test_only_adding_keeps_creates_and_additions_and_drops_what_undoes():
    create = CreateCopy("team-a", "harbor", {"metadata": {"name": "harbor"}})
    delete = DeleteCopy("team-a", "old", "gone", "uid-1", "7")
    add = AddPullSecret("team-a", "default", "harbor", "harbor")
    remove = RemovePullSecret("team-a", "default", "old")
    plan = NamespacePlan("team-a", (create, delete), (add, remove))
    assert plan.undoes
    adding = plan.only_adding()
    assert (adding.secret_actions, adding.service_account_actions) == ((create,), (add,))
    assert not adding.undoes
    assert not NamespacePlan("team-a", (create,), (add,)).undoes


# --- spec.delivery ---------------------------------------------------------------------------


def test_credential_provider_delivery_wants_no_copy_and_no_entry():
    plan = world(credential("harbor-prod", delivery="CredentialProvider")).plan()
    assert kinds(plan) == []
    assert plan.matched == {"harbor-prod"}  # still served in this namespace, at pull time


def test_both_delivers_copies_like_secrets():
    plan = world(credential("harbor-prod", delivery="Both")).plan()
    assert kinds(plan) == [("create", "harbor-prod"), ("add", "default", "harbor-prod")]


def test_leaving_secrets_removes_the_copy_and_our_entry_only():
    before = credential("harbor-prod")
    after = credential("harbor-prod", delivery="CredentialProvider")
    accounts = [sa_body("default", NS, ["theirs", "harbor-prod"], ours=["harbor-prod"])]
    plan = world(after, copies=[live_copy(before, NS)], accounts=accounts).plan()
    assert kinds(plan) == [("delete", "harbor-prod"), ("remove", "default", "harbor-prod")]


def test_leaving_secrets_keeps_everything_until_the_new_generation_is_rendered():
    before = credential("harbor-prod")
    after = credential("harbor-prod", delivery="CredentialProvider", frozen="config")
    accounts = [sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"])]
    assert kinds(world(after, copies=[live_copy(before, NS)], accounts=accounts).plan()) == []
