"""regcred's own list+watch of namespaces, ServiceAccounts and copies (regcred/sync/watches.py):
what reaches the caches, and what is queued, listed first, watched, re-listed and paused."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from regcred.kube.client import Listing
from regcred.sync.caches import Caches
from regcred.sync.watches import Watches
from support.builders import credential, live_copy, sa_body

HARBOR = credential("harbor")


def namespace_body(name: str, version: str = "1") -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": version, "labels": {}}}


def listed(items: list[dict[str, Any]], version: str) -> Listing:
    """A listing of one page, as `Kube.listing` returns it."""
    return Listing(lambda **_: {"items": items, "metadata": {"resourceVersion": version}})


class FakeKube:
    def __init__(self, listings: dict[str, list[dict[str, Any]]]) -> None:
        self.listings = listings
        self.followed: dict[str, tuple[Any, ...]] = {}

    def listing(self, kind: str, name: str | None = None) -> Listing:
        return listed(self.listings.get(kind, []), f"{kind}-v1")

    def follow(self, kind: str, resource_version: str, on_event: Callable[[str, dict[str, Any]], None],
               on_listed: Callable[[Listing], None], stop: threading.Event, name: str | None = None) -> None:
        self.followed[kind] = (resource_version, on_event, on_listed)


class Recorder:
    def __init__(self) -> None:
        self.queued: list[str] = []
        self.relists = 0

    def namespace_changed(self, namespace: str) -> None:
        self.queued.append(namespace)

    def relisted(self) -> None:
        self.relists += 1


@pytest.fixture
def world() -> dict[str, Any]:
    account = sa_body("default", "team-a")
    kube = FakeKube({"namespaces": [namespace_body("team-a")], "serviceaccounts": [account],
                     "copies": [live_copy(HARBOR, "team-a")]})
    caches, controller = Caches({}), Recorder()
    counted: list[str] = []
    active = {"now": True}
    watches = Watches(kube, caches, controller, counted.append, lambda: active["now"])
    versions = watches.fill()
    watches.start(versions, threading.Event())
    for thread in threading.enumerate():  # FakeKube.follow returns at once
        if thread.name.startswith("watch-"):
            thread.join(5)
    return {"kube": kube, "caches": caches, "controller": controller, "counted": counted,
            "active": active, "versions": versions, "account": account}


def event(world: dict[str, Any], kind: str, type: str, body: dict[str, Any]) -> None:
    world["kube"].followed[kind][1](type, body)


def test_fill_lists_every_kind_into_the_caches_and_queues_nothing(world):
    assert world["caches"].namespace("team-a") is not None
    assert [sa.name for sa in world["caches"].service_accounts("team-a")] == ["default"]
    assert len(world["caches"].copies("team-a")) == 1
    assert world["controller"].queued == []
    assert world["counted"] == ["Namespace", "ServiceAccount", "Secret"]


def test_each_kind_is_watched_from_its_own_listing(world):
    assert {kind: args[0] for kind, args in world["kube"].followed.items()} == {
        "namespaces": "namespaces-v1", "serviceaccounts": "serviceaccounts-v1", "copies": "copies-v1"}


def test_an_event_that_changes_the_caches_queues_its_namespace(world):
    event(world, "serviceaccounts", "ADDED", sa_body("builder", "team-a"))
    event(world, "namespaces", "ADDED", namespace_body("team-b"))
    assert world["controller"].queued == ["team-a", "team-b"]


def test_an_event_that_changes_nothing_queues_nothing(world):
    event(world, "serviceaccounts", "MODIFIED", world["account"])  # the version cached: an echo
    assert world["controller"].queued == []


def test_a_deleted_copy_queues_its_namespace(world):
    event(world, "copies", "DELETED", live_copy(HARBOR, "team-a"))
    assert world["caches"].copies("team-a") == []
    assert world["controller"].queued == ["team-a"]


def test_paused_the_caches_follow_but_nothing_is_queued(world):
    world["active"]["now"] = False
    event(world, "namespaces", "ADDED", namespace_body("team-b"))
    world["kube"].followed["namespaces"][2](listed([namespace_body("team-c")], "v9"))
    assert world["caches"].namespace("team-b") is not None
    assert world["caches"].namespace("team-c") is not None
    assert world["controller"].queued == []
    assert world["controller"].relists == 0


def test_a_relisting_queues_what_changed_and_has_the_caches_checked(world):
    relisting = listed([namespace_body("team-a"), namespace_body("team-b")], "v9")
    world["kube"].followed["namespaces"][2](relisting)
    assert world["controller"].queued == ["team-b"]
    assert world["controller"].relists == 1
