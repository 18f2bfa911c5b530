"""The watch caches (regcred/sync/caches.py): what an event changes, and the compare-and-set that
takes in regcred's own writes without ever going back to an older version."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from regcred.core.plan import observe_service_account
from regcred.sync.caches import Caches
from support.builders import credential, live_copy, observed, sa_body

NAMESPACE = "team-a"
HARBOR = credential("harbor")


@pytest.fixture
def caches() -> Caches:
    return Caches({})


def namespace_body(name: str = NAMESPACE, uid: str = "ns-uid", version: str = "1",
                   **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid, "resourceVersion": version, "labels": labels}}


def test_an_event_changes_the_cache_only_when_the_version_moves(caches):
    body = live_copy(HARBOR, NAMESPACE)
    assert caches.copy_seen(body)
    assert not caches.copy_seen(body)  # the same version again: a re-list, or our echo
    assert caches.copy_seen({**body, "metadata": {**body["metadata"], "resourceVersion": "9999"}})
    assert caches.copy_seen(body, deleted=True)
    assert not caches.copy_seen(body, deleted=True)
    assert caches.copies(NAMESPACE) == []


def test_a_deleted_event_of_an_older_namespace_of_that_name_is_ignored(caches):
    assert caches.namespace_seen(namespace_body(uid="new"))
    assert not caches.namespace_seen(namespace_body(uid="old"), deleted=True)
    assert caches.namespace(NAMESPACE) is not None


def test_our_write_is_taken_in_when_the_cache_shows_what_it_was_planned_from(caches):
    before = observed(HARBOR, NAMESPACE)
    caches.copy_seen(live_copy(HARBOR, NAMESPACE, resourceVersion=before.resource_version))
    written = replace(before, resource_version="2000")
    caches.take_in(written, planned_from=before.resource_version)
    assert caches.copies(NAMESPACE) == [written]


def test_a_create_is_taken_in_only_while_the_cache_shows_nothing(caches):
    written = observed(HARBOR, NAMESPACE)
    caches.take_in(written, planned_from=None)
    assert caches.copies(NAMESPACE) == [written]


def test_our_write_never_replaces_a_newer_version_a_watch_event_brought(caches):
    planned = observed(HARBOR, NAMESPACE, resourceVersion="10")
    caches.copy_seen(live_copy(HARBOR, NAMESPACE, resourceVersion="12"))  # moved on already
    caches.take_in(replace(planned, resource_version="11"), planned_from="10")
    assert [c.resource_version for c in caches.copies(NAMESPACE)] == ["12"]


def test_a_create_does_not_overwrite_a_copy_the_watch_showed_meanwhile(caches):
    caches.copy_seen(live_copy(HARBOR, NAMESPACE, resourceVersion="12"))
    caches.take_in(observed(HARBOR, NAMESPACE, resourceVersion="11"), planned_from=None)
    assert [c.resource_version for c in caches.copies(NAMESPACE)] == ["12"]


def test_service_account_writes_go_by_the_same_rule(caches):
    body = sa_body(namespace=NAMESPACE)
    caches.service_account_seen(body)
    version = body["metadata"]["resourceVersion"]
    written = replace(observe_service_account(body), resource_version="9", pull_secrets=("harbor",))
    caches.take_in(written, planned_from="not-" + version)
    assert caches.service_accounts(NAMESPACE)[0].pull_secrets == ()
    caches.take_in(written, planned_from=version)
    assert caches.service_accounts(NAMESPACE) == [written]


def test_the_echo_of_a_write_taken_in_changes_nothing(caches):
    body = live_copy(HARBOR, NAMESPACE)
    caches.take_in(observed(HARBOR, NAMESPACE, resourceVersion=body["metadata"]["resourceVersion"]),
                 planned_from=None)
    assert not caches.copy_seen(body)


def test_forget_drops_namespaces_and_copies_by_uid(caches):
    caches.namespace_seen(namespace_body())
    copy = live_copy(HARBOR, NAMESPACE)
    caches.copy_seen(copy)
    assert caches.cached_uids() == {"ns-uid": NAMESPACE, copy["metadata"]["uid"]: NAMESPACE}
    caches.drop_uids({copy["metadata"]["uid"]})
    assert caches.copies(NAMESPACE) == []
    caches.drop_uids({"ns-uid"})
    assert caches.namespace_names() == []


def test_credentials_come_from_the_kopf_index(caches):
    body = {"metadata": {"name": "harbor"}}
    indexed = Caches({"harbor": [body]})
    assert indexed.credential_bodies() == [body]
    assert indexed.credential_body("harbor") == body
    assert indexed.credential_body("other") is None
