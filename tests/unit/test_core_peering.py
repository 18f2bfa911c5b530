"""Whether a replica is paused under kopf peering (regcred/core/peering.py): kopf's rule,
from the peering object's status alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from regcred.core.peering import pausing_deadlines

NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


def entry(priority: int, seen_ago: float, lifetime: int = 15) -> dict[str, object]:
    return {"priority": priority, "lifetime": lifetime,
            "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat()}


def test_a_live_peer_of_higher_priority_pauses_until_its_entry_expires():
    status = {"a@host": entry(10, seen_ago=5), "b@host": entry(5, seen_ago=0)}
    assert pausing_deadlines(status, priority=5, now=NOW) == [NOW + timedelta(seconds=10)]


def test_the_highest_priority_acts():
    status = {"a@host": entry(10, seen_ago=0), "b@host": entry(5, seen_ago=0)}
    assert pausing_deadlines(status, priority=10, now=NOW) == []


def test_an_expired_peer_pauses_nobody():
    status = {"dead@host": entry(10, seen_ago=16), "b@host": entry(5, seen_ago=0)}
    assert pausing_deadlines(status, priority=5, now=NOW) == []


def test_deadlines_come_soonest_first():
    status = {"a": entry(9, seen_ago=1), "b": entry(8, seen_ago=10), "c": entry(7, seen_ago=5)}
    assert pausing_deadlines(status, priority=1, now=NOW) == [
        NOW + timedelta(seconds=5), NOW + timedelta(seconds=10), NOW + timedelta(seconds=14)]


def test_unreadable_entries_pause_nobody():
    status = {"a": "junk", "b": {"priority": "high", "lastseen": NOW.isoformat()},
              "c": {"priority": 9}, "d": {"priority": 9, "lastseen": "yesterday"}}
    assert pausing_deadlines(status, priority=1, now=NOW) == []


def test_a_naive_timestamp_is_read_as_utc():
    status = {"a": {"priority": 9, "lifetime": 15, "lastseen": "2026-12-03T11:59:55"}}
    assert pausing_deadlines(status, priority=1, now=NOW) == [NOW + timedelta(seconds=10)]
