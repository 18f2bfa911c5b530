"""Operator configuration: `regcred run` flags, each with a `REGCRED_*` environment variable."""

from __future__ import annotations

import os
from dataclasses import dataclass


def operator_namespace() -> str:
    """The namespace we run in: the downward API env var, the in-cluster file, or a default."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as handle:
            return handle.read().strip()
    except OSError:
        return "regcred-system"


@dataclass(frozen=True)
class AdmissionSettings:
    """The ServiceAccount webhook (`--admission`; regcred/admission/webhook.py)."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 9443
    # What the API server calls: this URL (outside a cluster), else the Service in our namespace.
    url: str | None = None
    service: str = "regcred-webhook"
    tls_secret: str = "regcred-webhook-tls"


@dataclass(frozen=True)
class ProviderSettings:
    """The credential provider endpoint (`--credential-provider`; regcred/provider/endpoint.py)."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 9444
    # The audience the kubelet requests tokens for (its tokenAttributes.serviceAccountTokenAudience).
    audience: str = "regcred.dev/credential-provider"
    # Names the serving certificate is for: what the plugin's --url uses (default: the Service).
    hosts: tuple[str, ...] = ()
    service: str = "regcred-provider"
    tls_secret: str = "regcred-provider-tls"
    cache_seconds: int = 300  # how long a kubelet may reuse an answer (cacheDuration)
    window_seconds: int = 600  # status.pullTime counts requests this recent


@dataclass(frozen=True)
class Settings:
    operator_namespace: str
    source_namespaces: frozenset[str]
    resync_seconds: float = 300.0
    workers: int = 16
    metrics_port: int = 9090
    health_port: int = 8080
    log_format: str = "json"
    log_level: str = "info"
    kubeconfig: str | None = None
    peering: str | None = None  # kopf peering object name; None = standalone (single replica)
    admission: AdmissionSettings | None = None  # None = no webhook
    provider: ProviderSettings | None = None  # None = no credential provider endpoint
