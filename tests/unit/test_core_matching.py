"""Namespace and ServiceAccount matching (SPEC "Namespace matching", docs/user-guide.md)."""

from __future__ import annotations

import pytest

from regcred.core.matching import namespace_matches, selector_matches, service_account_matches
from regcred.core.spec import parse_selector
from support.builders import make_spec, ns, req, selector

TEAM = {"team": "a", "tier": "prod"}


@pytest.mark.parametrize("name", ["default", "team-a", "ci", "x" * 63, "regcred-system"])
def test_no_selector_and_no_names_matches_every_namespace(name):
    assert namespace_matches(make_spec(), ns(name, TEAM))


@pytest.mark.parametrize(
    ("labels", "name", "expected"),
    [
        ({"team": "a"}, "anything", True),  # selector only
        ({}, "team-x", True),  # name glob only
        ({}, "ci", True),  # literal name only
        ({"team": "a"}, "team-x", True),  # both
        ({"team": "b"}, "other", False),  # neither
        ({}, "cia", False),  # a literal name is not a prefix
        ({}, "xteam-1", False),  # a glob is anchored
    ],
)
def test_selector_or_name_pattern(labels, name, expected):
    spec = make_spec(namespace_selector=selector({"team": "a"}), namespaces=("team-*", "ci"))
    assert namespace_matches(spec, ns(name, labels)) is expected


def test_names_only_means_only_those_names():
    spec = make_spec(namespaces=("team-?", "ci"))
    assert namespace_matches(spec, ns("team-a"))
    assert not namespace_matches(spec, ns("team-ab"))
    assert not namespace_matches(spec, ns("prod", TEAM))


def test_selector_only_means_only_matching_labels():
    spec = make_spec(namespace_selector=selector({"team": "a"}))
    assert namespace_matches(spec, ns("whatever", {"team": "a"}))
    assert not namespace_matches(spec, ns("whatever", {"team": "b"}))
    assert not namespace_matches(spec, ns("whatever"))


@pytest.mark.parametrize(
    ("match_labels", "labels", "expected"),
    [
        ({"team": "a"}, {"team": "a"}, True),
        ({"team": "a"}, {"team": "a", "extra": "x"}, True),
        ({"team": "a"}, {"team": "b"}, False),
        ({"team": "a"}, {}, False),
        ({"team": "a", "tier": "prod"}, TEAM, True),
        ({"team": "a", "tier": "dev"}, TEAM, False),  # every pair must hold
        ({"team": ""}, {"team": ""}, True),
        ({"team": ""}, {}, False),
    ],
)
def test_match_labels(match_labels, labels, expected):
    assert selector_matches(selector(match_labels), labels) is expected


@pytest.mark.parametrize(
    ("requirement", "labels", "expected"),
    [
        (req("team", "In", "a", "b"), {"team": "a"}, True),
        (req("team", "In", "a", "b"), {"team": "c"}, False),
        (req("team", "In", "a", "b"), {}, False),
        (req("team", "NotIn", "a", "b"), {"team": "c"}, True),
        (req("team", "NotIn", "a", "b"), {"team": "a"}, False),
        (req("team", "NotIn", "a", "b"), {}, True),  # key absent -> NotIn matches
        (req("team", "Exists"), {"team": ""}, True),
        (req("team", "Exists"), {"team": "a"}, True),
        (req("team", "Exists"), {"other": "a"}, False),
        (req("team", "DoesNotExist"), {"other": "a"}, True),
        (req("team", "DoesNotExist"), {}, True),
        (req("team", "DoesNotExist"), {"team": ""}, False),
    ],
)
def test_match_expressions_operators(requirement, labels, expected):
    assert selector_matches(selector(None, requirement), labels) is expected


def test_selector_terms_are_anded():
    sel = selector({"tier": "prod"}, req("team", "In", "a"), req("frozen", "DoesNotExist"))
    assert selector_matches(sel, TEAM)
    assert not selector_matches(sel, {**TEAM, "frozen": "yes"})
    assert not selector_matches(sel, {**TEAM, "team": "b"})
    assert not selector_matches(sel, {"team": "a"})


@pytest.mark.parametrize(
    "spec_overrides",
    [
        {},
        {"namespaces": ("team-a",)},
        {"namespaces": ("team-*",)},
        {"namespace_selector": selector({"team": "a"})},
        {"namespace_selector": selector({"team": "a"}), "namespaces": ("team-a",)},
    ],
)
@pytest.mark.parametrize("exclude", [("team-a",), ("team-*",), ("*",), ("other", "*-a")])
def test_exclude_namespaces_always_wins(spec_overrides, exclude):
    spec = make_spec(exclude_namespaces=exclude, **spec_overrides)
    assert not namespace_matches(spec, ns("team-a", TEAM))


def test_exclude_glob_leaves_others_alone():
    spec = make_spec(exclude_namespaces=("*-sandbox",))
    assert not namespace_matches(spec, ns("team-sandbox"))
    assert namespace_matches(spec, ns("team-sandbox-2"))


@pytest.mark.parametrize(
    "spec_overrides",
    [{}, {"namespaces": ("team-a",)}, {"namespace_selector": selector({"team": "a"})}],
)
def test_ignore_label_excludes(spec_overrides):
    spec = make_spec(**spec_overrides)
    assert not namespace_matches(spec, ns("team-a", {**TEAM, "regcred.dev/ignore": "true"}))


@pytest.mark.parametrize("value", ["false", "", "yes", "True"])
def test_ignore_label_other_values_do_not_exclude(value):
    assert namespace_matches(make_spec(), ns("team-a", {"regcred.dev/ignore": value}))


@pytest.mark.parametrize(
    "spec_overrides",
    [{}, {"namespaces": ("team-a",)}, {"namespace_selector": selector({"team": "a"})}],
)
def test_terminating_namespace_excluded(spec_overrides):
    spec = make_spec(**spec_overrides)
    assert not namespace_matches(spec, ns("team-a", TEAM, terminating=True))


SYSTEM = ["kube-system", "kube-public", "kube-node-lease"]


@pytest.mark.parametrize("name", SYSTEM)
@pytest.mark.parametrize(
    "spec_overrides",
    [
        {},  # match-all
        {"namespaces": ("kube-*",)},
        {"namespaces": ("*",)},
        {"namespaces": ("kube-s?stem", "kube-pub*", "kube-node-*")},
        {"namespace_selector": selector({"kubernetes.io/metadata.name": "kube-system"})},
        {"namespace_selector": selector(None, req("kubernetes.io/metadata.name", "Exists"))},
    ],
)
def test_system_namespaces_need_a_literal_name(name, spec_overrides):
    labels = {"kubernetes.io/metadata.name": name}
    assert not namespace_matches(make_spec(**spec_overrides), ns(name, labels))


@pytest.mark.parametrize("name", SYSTEM)
def test_system_namespace_named_literally_matches(name):
    assert namespace_matches(make_spec(namespaces=(name,)), ns(name))
    assert namespace_matches(make_spec(namespaces=("team-*", name)), ns(name))


@pytest.mark.parametrize("name", SYSTEM)
def test_system_namespace_named_literally_but_excluded(name):
    spec = make_spec(namespaces=(name,), exclude_namespaces=("kube-*",))
    assert not namespace_matches(spec, ns(name))
    assert not namespace_matches(make_spec(namespaces=(name,)), ns(name, {"regcred.dev/ignore": "true"}))


def test_kube_prefix_that_is_not_a_system_namespace_is_ordinary():
    assert namespace_matches(make_spec(), ns("kube-flannel"))
    assert namespace_matches(make_spec(namespaces=("kube-*",)), ns("kube-flannel"))


@pytest.mark.parametrize("raw", [None, {}, {"matchLabels": {}}, {"matchExpressions": []},
                                 {"matchLabels": None, "matchExpressions": None}])
def test_empty_selector_counts_as_no_selector(raw):
    assert parse_selector(raw) is None
    # with names: only the names match (an empty selector does not match everything)
    spec = make_spec(namespace_selector=parse_selector(raw), namespaces=("ci",))
    assert namespace_matches(spec, ns("ci"))
    assert not namespace_matches(spec, ns("team-a", TEAM))
    # without names: everything matches
    assert namespace_matches(make_spec(namespace_selector=parse_selector(raw)), ns("team-a"))


@pytest.mark.parametrize(
    ("patterns", "account", "expected"),
    [
        (("default",), "default", True),
        (("default",), "builder", False),
        (("default",), "default-2", False),
        ((), "default", False),  # [] = none
        ((), "builder", False),
        (("*",), "default", True),  # ["*"] = all
        (("*",), "builder", True),
        (("build-*", "default"), "build-x", True),
        (("build-*", "default"), "deployer", False),
        (("?uilder",), "builder", True),
        (("[bd]*",), "deployer", True),
        (("[!bd]*",), "deployer", False),
        (("Default",), "default", False),  # case-sensitive, like Kubernetes names
    ],
)
def test_service_account_globs(patterns, account, expected):
    assert service_account_matches(make_spec(service_accounts=patterns), account) is expected


def test_service_accounts_default_is_default_only():
    spec = make_spec()
    assert spec.service_accounts == ("default",)
    assert service_account_matches(spec, "default")
    assert not service_account_matches(spec, "builder")


def test_namespace_globs_are_case_sensitive():
    assert not namespace_matches(make_spec(namespaces=("Team-*",)), ns("team-a"))
