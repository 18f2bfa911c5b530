"""Prometheus metrics; names and labels never carry secret material, only CR names."""

from __future__ import annotations

import contextlib
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    """The operator's metrics, on a registry of their own so tests can make fresh ones."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "regcred_reconciles_total", "Reconciles by kind (credential, namespace) and result.",
            ["kind", "result"], registry=self.registry,
        )
        self.duration = Histogram(
            "regcred_reconcile_duration_seconds", "Reconcile duration by kind.", ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.copies = Gauge(
            "regcred_managed_copies", "Namespaces holding an up-to-date copy, per credential.",
            ["credential"], registry=self.registry,
        )
        self.last_sync = Gauge(
            "regcred_last_successful_sync_timestamp_seconds",
            "Unix time of the last full sync of a credential without errors.",
            ["credential"], registry=self.registry,
        )
        self.events = Counter(
            "regcred_watch_events_total", "Watch events received, by kind of object.", ["kind"],
            registry=self.registry,
        )
        self.api_errors = Counter(
            "regcred_api_errors_total", "Failed Kubernetes API calls by HTTP status code.",
            ["code"], registry=self.registry,
        )

        self.verification = Gauge(
            "regcred_registry_verification",
            "1 for the result of the last credential check at each registry (spec.verify).",
            ["credential", "registry", "result"], registry=self.registry,
        )

        self.provider_requests = Counter(
            "regcred_credential_provider_requests_total",
            "Pull-time requests of kubelets' credential providers: answered, or refused by reason.",
            ["result", "reason"], registry=self.registry,
        )
        self.provider_duration = Histogram(
            "regcred_credential_provider_duration_seconds",
            "Time to answer a pull-time request, TokenReview and Pod read included.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=self.registry,
        )
        self.token_reviews = Counter(
            "regcred_credential_provider_token_reviews_total",
            "TokenReviews the credential provider endpoint sent to the API server.",
            registry=self.registry,
        )

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)

    def observe_reconcile(self, kind: str, failed: bool, seconds: float) -> None:
        self.reconciles.labels(kind, "failure" if failed else "success").inc()
        self.duration.labels(kind).observe(seconds)

    def watch_event(self, kind: str) -> None:
        self.events.labels(kind).inc()

    def credential_synced(self, credential: str, ok: bool) -> None:
        if ok:
            self.last_sync.labels(credential).set(time.time())

    def set_copies(self, credential: str, count: int) -> None:
        self.copies.labels(credential).set(count)

    def provider_request(self, refusal_reason: str | None, seconds: float) -> None:
        """One pull-time request: answered (`refusal_reason` None) or refused for that reason."""
        if refusal_reason is None:
            self.provider_requests.labels("answered", "").inc()
        else:
            self.provider_requests.labels("refused", refusal_reason).inc()
        self.provider_duration.observe(seconds)

    def api_error(self, code: int) -> None:
        self.api_errors.labels(str(code)).inc()

    def registry_verification(self, credential: str, registry: str, result: str | None, *,
                              previous: str | None = None) -> None:
        """Show `result` for the registry (None: no result any more), dropping the previous one."""
        if previous is not None and previous != result:
            with contextlib.suppress(KeyError):
                self.verification.remove(credential, registry, previous)
        if result is not None:
            self.verification.labels(credential, registry, result).set(1)

    def forget(self, credential: str) -> None:
        for gauge in (self.copies, self.last_sync):
            with contextlib.suppress(KeyError):
                gauge.remove(credential)
        for family in self.verification.collect():
            for sample in family.samples:
                if sample.labels.get("credential") == credential:
                    with contextlib.suppress(KeyError):
                        self.verification.remove(credential, sample.labels["registry"],
                                                 sample.labels["result"])
