"""The work queue's contract (regcred/workqueue.py), on a clock the tests move by hand."""

from __future__ import annotations

import threading

import pytest

from regcred.sync.controller import CacheCheckKey, CredentialKey, NamespaceKey
from regcred.workqueue import RETRY_DELAYS, WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(clock: Clock) -> WorkQueue[object]:
    return WorkQueue(clock=clock)


def drain(queue: WorkQueue[object]) -> list[object]:
    """Every key ready now, each marked done at once."""
    keys = []
    while (key := queue.get(block=False)) is not None:
        keys.append(key)
        queue.done(key)
    return keys


def test_keys_come_out_in_order_and_once_however_often_added(queue):
    for key in (NamespaceKey("a"), NamespaceKey("b"), NamespaceKey("a"), CredentialKey("a")):
        queue.add(key)
    assert len(queue) == 3
    assert drain(queue) == [NamespaceKey("a"), NamespaceKey("b"), CredentialKey("a")]
    assert queue.get(block=False) is None


def test_key_types_keep_equal_names_apart(queue):
    queue.add(NamespaceKey("x"))
    queue.add(CredentialKey("x"))
    queue.add(CacheCheckKey())
    queue.add(CacheCheckKey(periodic=True))
    assert len(queue) == 4


def test_a_key_being_processed_is_not_handed_out_again(queue):
    queue.add(NamespaceKey("a"))
    assert queue.get(block=False) == NamespaceKey("a")
    queue.add(NamespaceKey("a"))
    assert queue.get(block=False) is None  # still being processed


def test_a_change_during_processing_queues_the_key_once_more(queue):
    queue.add(NamespaceKey("a"))
    key = queue.get(block=False)
    queue.add(NamespaceKey("a"))
    queue.add(NamespaceKey("a"))
    queue.done(key)
    assert drain(queue) == [NamespaceKey("a")]
    assert drain(queue) == []


def test_done_without_a_change_meanwhile_queues_nothing(queue):
    queue.add(NamespaceKey("a"))
    queue.done(queue.get(block=False))
    assert len(queue) == 0


def test_a_delayed_add_waits_for_its_time(queue, clock):
    queue.add_after(NamespaceKey("a"), 5)
    assert queue.get(block=False) is None
    clock.advance(4.9)
    assert queue.get(block=False) is None
    clock.advance(0.1)
    assert drain(queue) == [NamespaceKey("a")]


def test_of_two_delayed_adds_of_one_key_the_earlier_wins_and_runs_once(queue, clock):
    queue.add_after(NamespaceKey("a"), 10)
    queue.add_after(NamespaceKey("a"), 2)
    queue.add_after(NamespaceKey("a"), 7)
    clock.advance(2)
    assert drain(queue) == [NamespaceKey("a")]
    clock.advance(20)
    assert drain(queue) == []


def test_a_delayed_add_of_a_queued_key_adds_nothing(queue, clock):
    queue.add(NamespaceKey("a"))
    queue.add_after(NamespaceKey("a"), 1)
    clock.advance(1)
    assert drain(queue) == [NamespaceKey("a")]


def test_backoff_grows_per_key_up_to_its_cap_and_is_reset_after_a_success(queue, clock):
    key, other = CredentialKey("a"), CredentialKey("b")
    delays = [queue.retry_later(key) for _ in range(len(RETRY_DELAYS) + 2)]
    assert delays == [*RETRY_DELAYS, RETRY_DELAYS[-1], RETRY_DELAYS[-1]]
    assert queue.retry_later(other) == RETRY_DELAYS[0]  # per key
    queue.reset_backoff(key)
    assert queue.failures(key) == 0
    assert queue.retry_later(key) == RETRY_DELAYS[0]


def test_a_retry_comes_back_after_its_delay(queue, clock):
    key = NamespaceKey("a")
    queue.add(key)
    queue.done(queue.get(block=False))
    queue.retry_later(key)
    assert queue.get(block=False) is None
    clock.advance(RETRY_DELAYS[0])
    assert drain(queue) == [key]


def test_shutdown_wakes_a_waiting_worker_and_ignores_adds(queue):
    got: list[object] = []
    worker = threading.Thread(target=lambda: got.append(queue.get()))
    worker.start()
    queue.shutdown()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert got == [None]
    queue.add(NamespaceKey("a"))
    queue.add_after(NamespaceKey("b"), 1)
    assert queue.get(block=False) is None
    assert queue.shutting_down


def test_shutdown_drops_waiting_and_delayed_keys(queue, clock):
    queue.add(NamespaceKey("a"))
    queue.add_after(NamespaceKey("b"), 1)
    key = queue.get(block=False)
    queue.add(key)  # dirty while processing
    queue.shutdown()
    queue.done(key)
    clock.advance(5)
    assert queue.get(block=False) is None


def test_a_blocked_worker_gets_a_key_added_from_another_thread(queue):
    got: list[object] = []
    worker = threading.Thread(target=lambda: got.append(queue.get(timeout=30)))
    worker.start()
    queue.add(NamespaceKey("a"))
    worker.join(timeout=30)
    assert got == [NamespaceKey("a")]


def test_get_with_a_timeout_returns_none_when_nothing_comes(queue):
    assert queue.get(timeout=0) is None


def test_a_queue_needs_a_delay():
    with pytest.raises(ValueError, match="retry delay"):
        WorkQueue(delays=())
