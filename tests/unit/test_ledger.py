"""The ledger and the status publisher (regcred/sync/ledger.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from regcred.core.errors import InvalidInput, SourceUnreadable
from regcred.core.status import Failure
from regcred.metrics import Metrics
from regcred.sync.ledger import Ledger, StatusPublisher
from support.builders import cr_body
from support.fakes import CREDENTIAL, NOW, Api, World

CONFLICT = Failure("b", "Conflict", "secret harbor exists and is not managed by regcred")


def test_record_says_whose_entry_changed():
    ledger = Ledger()
    assert ledger.record("a", frozenset({"x", "y"}), {}) == {"x", "y"}
    assert ledger.record("a", frozenset({"x", "y"}), {}) == set()
    assert ledger.record("b", frozenset({"x"}), {"x": CONFLICT}) == {"x"}
    assert ledger.entries("x") == {"a": None, "b": CONFLICT}


def test_a_namespace_that_stops_matching_leaves_the_ledger():
    ledger = Ledger()
    ledger.record("a", frozenset({"x"}), {})
    assert ledger.record("a", frozenset(), {}) == {"x"}
    assert ledger.entries("x") == {}


def test_a_failure_that_is_fixed_changes_the_entry():
    ledger = Ledger()
    ledger.record("b", frozenset({"x"}), {"x": CONFLICT})
    assert ledger.record("b", frozenset({"x"}), {}) == {"x"}
    assert ledger.entries("x") == {"b": None}


def test_rendered_keeps_the_problem_and_the_version_apart():
    ledger = Ledger()
    ledger.rendered("x", None, "7")
    assert (ledger.problem("x"), ledger.source_version("x")) == (None, "7")
    unreadable = SourceUnreadable("cannot read the source secret: get: 0 MaxRetryError")
    ledger.rendered("x", unreadable, "7")
    assert (ledger.problem("x"), ledger.source_version("x")) == (unreadable, "7")
    ledger.rendered("x", InvalidInput("MissingKey", "no key"), None)
    assert ledger.source_version("x") is None


def test_forget_drops_everything_about_a_credential():
    ledger = Ledger()
    ledger.record("a", frozenset({"x", "y"}), {})
    ledger.rendered("x", None, "7")
    ledger.mark_complete("x")
    ledger.forget("x")
    assert (ledger.entries("x"), ledger.source_version("x"), ledger.complete()) == ({}, None, frozenset())
    assert ledger.entries("y") == {"a": None}


@pytest.fixture
def published():
    """A publisher over a fake API; returns (publisher, ledger, api, world)."""
    api, world, ledger = Api(), World(), Ledger()
    return StatusPublisher(api, world, ledger, Metrics(), clock=lambda: NOW), ledger, api, world


def test_a_status_is_written_once_and_not_again_while_nothing_changes(published):
    publisher, ledger, api, _ = published
    ledger.record("a", frozenset({CREDENTIAL}), {})
    publisher.publish(CREDENTIAL, wrote=True)
    publisher.publish(CREDENTIAL, wrote=False)
    assert len(api.statuses) == 1
    assert api.statuses[0]["conditions"][0]["message"] == "1/1 namespaces"
    assert api.events == []


def test_a_new_reason_for_not_being_ready_is_news_once(published):
    publisher, ledger, api, _ = published
    ledger.record("b", frozenset({CREDENTIAL}), {CREDENTIAL: CONFLICT})
    publisher.publish(CREDENTIAL, wrote=False)
    publisher.publish(CREDENTIAL, wrote=False)
    assert [event[:2] for event in api.events] == [("Warning", "Conflict")]


def test_a_rotation_is_news(published):
    publisher, ledger, api, _ = published
    ledger.rendered(CREDENTIAL, None, "8")
    ledger.record("a", frozenset({CREDENTIAL}), {})
    publisher.publish(CREDENTIAL, wrote=True, rotated=3)
    assert api.events == [("Normal", "Rotated", "rotated 3 copies to source resourceVersion 8")]


def test_a_credential_gone_or_being_deleted_gets_no_status(published):
    publisher, _, api, world = published
    publisher.publish("other", wrote=True)
    world.bodies[CREDENTIAL] = {**cr_body(CREDENTIAL, generation=1), "metadata": {
        **cr_body(CREDENTIAL, generation=1)["metadata"], "deletionTimestamp": NOW}}
    publisher.publish(CREDENTIAL, wrote=True)
    assert api.statuses == []


class Verified:
    """A status extension with one condition of its own."""

    def status_for(self, name: str, body: Mapping[str, Any], previous: Mapping[str, Any],
                   ) -> tuple[tuple[Mapping[str, Any], ...], Mapping[str, Any]]:
        return ({"type": "CredentialsVerified", "status": "True", "reason": "Verified",
                 "message": "registry accepted them"},), {}


def test_extra_conditions_are_published_after_ready(published):
    publisher, _, api, _ = published
    publisher.extend(Verified())
    publisher.publish(CREDENTIAL, wrote=False)
    types = [c["type"] for c in api.statuses[-1]["conditions"]]
    assert types == ["Ready", "CredentialsVerified"]
    assert api.statuses[-1]["conditions"][1]["lastTransitionTime"] == NOW


def test_a_failed_status_write_is_tried_again_at_the_next_publish(published):
    from regcred.kube.errors import ApiUnavailable

    publisher, _, api, _ = published
    calls = []

    def refuse_once(name, status):
        calls.append(status)
        if len(calls) == 1:
            raise ApiUnavailable("patch", "registrycredential harbor status", 503, "Unavailable")
        api.statuses.append(status)

    api.patch_status = refuse_once
    publisher.publish(CREDENTIAL, wrote=False)
    publisher.publish(CREDENTIAL, wrote=False)
    assert len(calls) == 2 and len(api.statuses) == 1
