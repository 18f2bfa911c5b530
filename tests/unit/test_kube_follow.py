"""`Kube.listing` and `Kube.follow`, regcred's own list+watch (regcred/kube/client.py), against a
fake of the client's list call: pages, watch lines, bookmarks, an expired version, a broken
connection. The happy path runs against the real control plane (tests/integration)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from regcred.kube import client as kube_client
from regcred.kube.client import Kube


def namespace(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": version}}


class Page:
    def __init__(self, body: Any) -> None:
        self.data = json.dumps(body).encode()


class Stream:
    """A watch response: one JSON line per event, as the API server sends them."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self._events = events
        self.released = False

    def stream(self, amt: Any = None, decode_content: Any = None) -> Any:
        for event in self._events:
            yield (json.dumps(event) + "\n").encode()

    def release_conn(self) -> None:
        self.released = True


class FakeList:
    """`list_namespace`: pages for a listing, then one scripted outcome per watch call."""

    def __init__(self, pages: list[list[dict[str, Any]]], watches: list[Any]) -> None:
        self.pages = pages
        self.watches = watches
        self.calls: list[dict[str, Any]] = []
        self.listings = 0

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if kwargs.get("watch"):
            outcome = self.watches.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        index = int(kwargs.get("_continue") or 0)
        if index == 0:
            self.listings += 1
        last = index == len(self.pages) - 1
        return Page({"metadata": {"resourceVersion": f"list-{self.listings}",
                                  **({} if last else {"continue": str(index + 1)})},
                     "items": self.pages[index]})


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Kube:
    monkeypatch.setattr(kube_client, "RETRY_SECONDS", 0)
    return Kube(client.ApiClient())


def follow(kube: Kube, fake: FakeList, version: str, stop_after: int) -> tuple[list[Any], list[Any]]:
    kube._core.list_namespace = fake
    events: list[tuple[str, str]] = []
    listed: list[list[str]] = []
    stop = threading.Event()

    def on_event(type: str, body: dict[str, Any]) -> None:
        events.append((type, body["metadata"]["name"]))
        if len(events) == stop_after:
            stop.set()

    def on_listed(listing: Any) -> None:
        listed.append([item["metadata"]["name"] for item in listing])

    kube.follow("namespaces", version, on_event, on_listed, stop)
    return events, listed


def test_a_listing_comes_a_page_at_a_time_and_knows_its_version_at_the_end(kube):
    fake = FakeList([[namespace("a", "1"), namespace("b", "2")], [namespace("c", "3")]], [])
    kube._core.list_namespace = fake
    listing = kube.listing("namespaces")
    assert [item["metadata"]["name"] for item in listing] == ["a", "b", "c"]
    assert listing.resource_version == "list-1"
    assert [call.get("_continue") for call in fake.calls] == [None, "1"]
    assert all(call["limit"] == kube_client.LIST_PAGE for call in fake.calls)


def test_events_go_on_from_the_version_given_and_bookmarks_only_move_it(kube):
    first = Stream([{"type": "ADDED", "object": namespace("a", "11")},
                    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}])
    second = Stream([{"type": "MODIFIED", "object": namespace("a", "16")},
                     {"type": "DELETED", "object": namespace("a", "17")}])
    fake = FakeList([], [first, second])
    events, listed = follow(kube, fake, "10", stop_after=3)
    assert events == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert [call["resource_version"] for call in fake.calls] == ["10", "15"]
    assert listed == [] and first.released and second.released


def test_an_expired_version_lists_again_and_watches_on_from_that_listing(kube):
    gone = Stream([{"type": "ERROR", "object": {"kind": "Status", "code": 410}}])
    after = Stream([{"type": "ADDED", "object": namespace("c", "30")}])
    fake = FakeList([[namespace("a", "20"), namespace("b", "21")]],
                    [gone, ApiException(status=410, reason="Gone"), after])
    events, listed = follow(kube, fake, "10", stop_after=1)
    assert listed == [["a", "b"], ["a", "b"]]  # the ERROR event, then a 410 answer
    assert events == [("ADDED", "c")]
    assert fake.calls[-1]["resource_version"] == "list-2"


def test_a_broken_connection_watches_again_from_the_last_version_seen(kube):
    broken = Stream([{"type": "ADDED", "object": namespace("a", "11")}])
    fake = FakeList([], [broken, urllib3.exceptions.ProtocolError("connection reset"),
                         Stream([{"type": "ADDED", "object": namespace("b", "12")}])])
    events, listed = follow(kube, fake, "10", stop_after=2)
    assert events == [("ADDED", "a"), ("ADDED", "b")]
    assert [call["resource_version"] for call in fake.calls] == ["10", "11", "11"]
    assert listed == []
