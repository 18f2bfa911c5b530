"""Logging: structlog JSON (or console) for our lines and kopf's, one format for both."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from structlog.typing import Processor

_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _kopf_object(logger: object, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """kopf attaches the object it logs about as `k8s_ref`; lift it into our fields."""
    record = event.get("_record")
    ref = getattr(record, "k8s_ref", None) if record else None
    if isinstance(ref, dict):
        if ref.get("kind") == "RegistryCredential" or ref.get("plural") == "registrycredentials":
            event.setdefault("credential", ref.get("name"))
        elif ref.get("kind") == "Namespace":
            event.setdefault("namespace", ref.get("name"))
        else:
            event.setdefault("namespace", ref.get("namespace"))
            event.setdefault("object", f"{ref.get('kind', '')}/{ref.get('name', '')}")
    return event


def configure(log_format: str = "json", level: str = "info") -> None:
    renderer = (
        structlog.dev.ConsoleRenderer() if log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED, _kopf_object],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet = logging.WARNING if root.level > logging.DEBUG else logging.DEBUG
    # kopf logs every successful event handler at INFO: thousands of lines at start-up.
    for noisy in ("urllib3", "kubernetes", "aiohttp.access", "kopf.objects"):
        logging.getLogger(noisy).setLevel(quiet)
    # urllib3 warns on each retry of a connection ("Retrying (Retry(total=2, ...))"); regcred
    # says it once, with the server, the cause and the fix, rate-limited (kube/client.py Outage).
    logging.getLogger("urllib3.connectionpool").setLevel(max(quiet, logging.ERROR))
    structlog.configure(
        # filter_by_level first: a debug line (one per API call) is dropped before a
        # timestamp and the rest are made for nothing.
        processors=[structlog.stdlib.filter_by_level, *_SHARED,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
