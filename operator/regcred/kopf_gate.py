"""One fix to kopf 1.45: its index-readiness gate must not cost O(objects²).

Before any handler runs, kopf waits until every watched object of an indexed resource is
indexed. Each object adds a toggle to a `ToggleSet` when its first event arrives and drops
it once indexed, and every worker waits on the set's condition until all toggles are gone.
kopf wakes *every* waiter on *every* toggle added or dropped, although only the set's
aggregate state matters to them: with N objects listed at start-up that is N² wake-ups.
Measured: regcred restarted on 5,000 namespaces x 3 CRs (25,000 watched objects) spent
over 5 minutes at 100% CPU in `ToggleSet.wait_for` without running a handler, RSS past
336 MB (bench/results/profiles/). The same wake-ups recur whenever a burst of new objects
meets a watcher that has not yet seen the operator fully indexed (a first large fan-out).

The fix: wake the waiters only when the aggregate state changes. Waiters on a `ToggleSet`
only ever wait for that state (`ToggleSet.wait_for`), so none misses anything; toggles
turned one by one (`Toggle.turn_to`) still wake everyone, as before.
"""

from __future__ import annotations

from collections.abc import Iterable

from kopf._cogs.aiokits.aiotoggles import Toggle, ToggleSet


async def _make_toggle(self: ToggleSet, __val: bool = False, *, name: str | None = None) -> Toggle:
    toggle = Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggles(self: ToggleSet, toggles: Iterable[Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


async def _drop_toggle(self: ToggleSet, toggle: Toggle) -> None:
    await _drop_toggles(self, (toggle,))


def wake_on_changes_only() -> None:
    """Install the fix (idempotent); `regcred run` calls it before starting kopf."""
    # Replacing kopf's methods is the point of this module (typed alike, checked by the test).
    ToggleSet.make_toggle = _make_toggle  # type: ignore[method-assign]
    ToggleSet.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    ToggleSet.drop_toggles = _drop_toggles  # type: ignore[method-assign]
