"""What kopf's handlers share, typed: one `Runtime` in the memo instead of ~30 untyped
attributes, so `mypy --strict` checks the wiring from `cli.run` to every handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import kopf

from regcred.metrics import Metrics
from regcred.settings import Settings

Part = TypeVar("Part")


@dataclass
class Runtime:
    """Given at start (`cli.run`). Each feature's start-up step adds what it built, one part per
    type (`SyncLoop`, `Admission`, `Provider`): the runtime names no feature, so features
    depend on it and never the other way round."""

    settings: Settings
    metrics: Metrics
    api_configuration: Any  # kubernetes.client.Configuration (the client has no type hints)
    priority: int  # this replica's peering priority, drawn at start (regcred/sync/activity.py)
    _parts: dict[type, object] = field(default_factory=dict)

    def add(self, part: object) -> None:
        self._parts[type(part)] = part

    def get(self, kind: type[Part]) -> Part | None:
        """The part of that type, if its start-up step has built it."""
        part = self._parts.get(kind)
        assert part is None or isinstance(part, kind)
        return part

    def started(self, kind: type[Part]) -> Part:
        """The part of that type, for handlers kopf calls only once start-up succeeded."""
        part = self.get(kind)
        assert part is not None, f"{kind.__name__} is not started"
        return part


class SharedMemo(kopf.Memo):
    """The operator's one memo. kopf gives each watched object a shallow copy of it for state
    of its own (0.2 KB apiece, 5 MB at 25,000 objects); regcred keeps no per-object state
    there, so every object shares this one."""

    def __copy__(self) -> SharedMemo:
        return self


def runtime_of(memo: kopf.Memo) -> Runtime:
    """The memo's `Runtime`, typed."""
    found = memo["runtime"]
    assert isinstance(found, Runtime)
    return found
