"""The kopf readiness-gate fix (regcred/kopf_gate.py), on kopf's real ToggleSet.

Wake-ups are counted, not timed: kopf's own methods wake every waiter per toggle change
(2 x 500 here); the fix wakes them when the aggregate state changes (twice here).
"""

from __future__ import annotations

import asyncio

import pytest
from kopf._cogs.aiokits import aiotoggles

from regcred.kopf_gate import wake_on_changes_only

ORIGINAL = {name: getattr(aiotoggles.ToggleSet, name)
            for name in ("make_toggle", "drop_toggle", "drop_toggles")}


@pytest.fixture(params=["fixed", "kopf"])
def variant(request, monkeypatch):
    for name, method in ORIGINAL.items():
        monkeypatch.setattr(aiotoggles.ToggleSet, name, method)
    if request.param == "fixed":
        wake_on_changes_only()
    return request.param


class CountingCondition(asyncio.Condition):
    def __init__(self) -> None:
        super().__init__()
        self.notifications = 0

    def notify_all(self) -> None:
        self.notifications += 1
        super().notify_all()


async def _listing(objects: int, waiters: int) -> tuple[int, int]:
    """kopf's start-up: every listed object adds a toggle and drops it once indexed, while
    workers wait for the set to be all on. Returns (notifications, waiters released)."""
    gate = aiotoggles.ToggleSet(all)
    gate._condition = condition = CountingCondition()
    blocker = await gate.make_toggle(name="listing")
    released = 0

    async def worker() -> None:
        nonlocal released
        await gate.wait_for(True)
        released += 1

    tasks = [asyncio.create_task(worker()) for _ in range(waiters)]
    await asyncio.sleep(0)  # one yield: the workers start waiting (the asserts hold either way)
    for index in range(objects):
        toggle = await gate.make_toggle(name=f"object {index}")
        await gate.drop_toggle(toggle)
    assert released == 0, "a waiter was released while the listing blocker was still on"
    await gate.drop_toggle(blocker)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    return condition.notifications, released


def test_waiters_are_released_once_everything_is_indexed(variant):
    notifications, released = asyncio.run(_listing(objects=500, waiters=50))
    assert released == 50
    if variant == "fixed":
        assert notifications <= 2  # the blocker added, the blocker dropped
    else:
        assert notifications >= 1000  # what the fix removes: a wake-up per toggle change


def test_the_any_set_still_wakes_both_ways(variant):
    """kopf pauses on `ToggleSet(any)` and waits for it to turn on, then off again."""

    async def scenario() -> None:
        paused = aiotoggles.ToggleSet(any)
        conflict = await paused.make_toggle(name="peer")
        on = asyncio.create_task(paused.wait_for(True))
        await asyncio.sleep(0)
        await conflict.turn_to(True)
        await asyncio.wait_for(on, timeout=5)
        off = asyncio.create_task(paused.wait_for(False))
        await asyncio.sleep(0)
        await paused.drop_toggle(conflict)
        await asyncio.wait_for(off, timeout=5)

    asyncio.run(scenario())
