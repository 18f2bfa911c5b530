"""What kopf's handlers share, typed: one `Runtime` in the memo instead of ~30 untyped
attributes, so `mypy --strict` checks the wiring from `cli.run` to every handler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import kopf

from regcred.metrics import Metrics
from regcred.settings import Settings

if TYPE_CHECKING:
    from regcred.admission.webhook import Admission
    from regcred.provider.endpoint import Provider
    from regcred.sync.controller import SyncLoop


@dataclass
class Runtime:
    """Given at start (`cli.run`); each feature's start-up step adds what it built."""

    settings: Settings
    metrics: Metrics
    api_configuration: Any  # kubernetes.client.Configuration (the client has no type hints)
    sync: SyncLoop | None = None  # sync/handlers.py's start-up step builds it once
    admission: Admission | None = None  # admission/webhook.py's start-up step, with --admission
    provider: Provider | None = None  # provider/endpoint.py's, with --credential-provider


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
