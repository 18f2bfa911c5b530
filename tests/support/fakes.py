"""Fakes at the `Kube` boundary for unit tests of error paths (happy paths run against the
real control plane in tests/integration): an in-memory world of one namespace and one CR,
and an API whose writes fail as a test says."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from regcred.core.matching import NamespaceInfo
from regcred.core.plan import Action, CreateCopy, ObservedCopy, ObservedServiceAccount
from regcred.core.source import SourceSecret
from regcred.metrics import Metrics
from regcred.settings import Settings
from regcred.sync.executor import Applied
from regcred.sync.ledger import Ledger, StatusPublisher
from regcred.sync.reconciler import Reconciler
from support.builders import cr_body

PASSWORD = "s3cr3t-Pa55-XYZ"
NAMESPACE = "team-a"
CREDENTIAL = "harbor"
NOW = "2024-01-02T00:00:00Z"
SETTINGS = Settings(operator_namespace="regcred-system",
                    source_namespaces=frozenset({"regcred-system"}), workers=2)


class World:
    """An in-memory cache: one namespace, its default ServiceAccount, the CRs in `bodies`."""

    def __init__(self) -> None:
        self.bodies: dict[str, dict[str, Any]] = {CREDENTIAL: cr_body(CREDENTIAL, generation=1)}
        self.written: list[tuple[ObservedCopy | ObservedServiceAccount, str | None]] = []

    def namespace_names(self) -> list[str]:
        return [NAMESPACE]

    def namespace(self, name: str) -> NamespaceInfo | None:
        return NamespaceInfo(name) if name == NAMESPACE else None

    def copies(self, namespace: str) -> list[ObservedCopy]:
        return []

    def service_accounts(self, namespace: str) -> list[ObservedServiceAccount]:
        return [ObservedServiceAccount(namespace, "default", resource_version="1")]

    def credential_bodies(self) -> list[Mapping[str, Any]]:
        return list(self.bodies.values())

    def credential_body(self, name: str) -> Mapping[str, Any] | None:
        return self.bodies.get(name)

    def take_in(self, written: ObservedCopy | ObservedServiceAccount, planned_from: str | None) -> None:
        """Recorded, not taken in: every sync here plans from the same observed state."""
        self.written.append((written, planned_from))


class Api:
    """Serves the source Secret (or fails reading it with `source_error`); a copy write
    raises `error` or returns `applied`; everything else succeeds."""

    def __init__(self, error: Exception | None = None, applied: Applied | None = None) -> None:
        self.error = error
        self.applied = applied
        self.source_error: Exception | None = None
        self.actions: list[Action] = []
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.live_credentials: list[str] = []  # what a live list of CRs returns

    def read_source(self, namespace: str, name: str) -> SourceSecret:
        if self.source_error is not None:
            raise self.source_error
        data = {"username": base64.b64encode(b"robot").decode(),
                "password": base64.b64encode(PASSWORD.encode()).decode()}
        return SourceSecret(namespace, name, "kubernetes.io/basic-auth", "7", data)

    def apply(self, action: Action) -> Applied:
        self.actions.append(action)
        if isinstance(action, CreateCopy):
            if self.error is not None:
                raise self.error
            if self.applied is not None:
                return self.applied
        return Applied(wrote=True)

    def list_credentials(self, *, from_watch_cache: bool = False) -> list[dict[str, Any]]:
        return [cr_body(name, generation=1) for name in self.live_credentials]

    def patch_status(self, name: str, status: Mapping[str, Any]) -> None:
        self.statuses.append(dict(status))

    def post_event(self, credential: str, uid: str, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))


class Wired:
    """A reconciler over the fakes, with what it asked for recorded."""

    def __init__(self, api: Api, world: World | None = None) -> None:
        self.api = api
        self.world = world or World()
        self.ledger = Ledger()
        self.publisher = StatusPublisher(api, self.world, self.ledger, Metrics(), clock=lambda: NOW)
        self.requested: list[str] = []
        self.reconciler = Reconciler(api, api, self.world, SETTINGS, Metrics(), self.ledger,
                                     self.publisher, request_credential_sync=self.requested.append)

    def close(self) -> None:
        self.reconciler.shutdown()


def _conforms() -> None:
    """Never called: `make typecheck` checks that the fakes are what the reconciler expects."""
    from regcred.sync.ledger import CredentialBodies, StatusWriter
    from regcred.sync.reconciler import Api as ReconcilerApi
    from regcred.sync.reconciler import World as ReconcilerWorld

    world: ReconcilerWorld = World()
    credentials: CredentialBodies = World()
    api: ReconcilerApi = Api()
    writer: StatusWriter = Api()
    del world, credentials, api, writer
