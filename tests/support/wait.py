"""Small helpers for integration tests: polling with a deadline instead of bare sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def wait_for(predicate: Callable[[*Ts], T | None], *args: *Ts, timeout: float = 30.0,
             interval: float = 0.1, message: str = "") -> T:
    """Call `predicate(*args)` until it returns something truthy, and return that.

    `args` bind a loop's variables, as in `wait_for(lambda ns: ..., namespace)`: mypy cannot
    infer a lambda that binds them as defaults (`lambda ns=namespace: ...`). A predicate that
    returns None or a value types the result as that value.

    On the deadline raise AssertionError with `message` and the last value seen, so a failing
    test says what it waited for and what it got instead. Exceptions from `predicate` propagate.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = predicate(*args)
        if last:
            return last
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)
