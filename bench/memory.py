#!/usr/bin/env python3
"""What each watched object costs regcred's memory, without a cluster: seconds, not 20 minutes.

    python bench/memory.py --namespaces 20000 --credentials 3 [--fanouts 3]

Fills the real `Caches`, `Ledger` and `Reconciler` (the real `Executor`, the real core) the
way a cluster does: namespace and ServiceAccount bodies as the API server sends them, then
each CR's initial fan-out through an in-memory stand-in for `Kube` that answers like the API
server (uid, resourceVersion, the stored body). Reports tracemalloc's bytes per watched object
(namespaces x (2 + CRs)) after the fill, what `--fanouts` more full fan-outs (a resync, then a
rotation) allocate at their peak and leave behind, and RSS at each step. The real figure at
20,000 namespaces comes from `bench/profile.py memory` (docs/performance.md, "Memory per object").
"""

from __future__ import annotations

import argparse
import base64
import copy
import ctypes
import gc
import itertools
import logging
import sys
import tracemalloc
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from regcred.core.source import SourceSecret
from regcred.core.spec import PULL_SECRETS_ANNOTATION
from regcred.metrics import Metrics
from regcred.settings import Settings
from regcred.sync.caches import Caches
from regcred.sync.executor import Executor
from regcred.sync.ledger import Ledger, StatusPublisher
from regcred.sync.reconciler import Reconciler

SOURCE_NAMESPACE = "regcred-system"
SETTINGS = Settings(operator_namespace=SOURCE_NAMESPACE, source_namespaces=frozenset({SOURCE_NAMESPACE}),
                    workers=8)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class InMemoryKube:
    """Answers the calls `Executor` and `Reconciler` make the way the API server does, keeping
    no bodies itself (its memory is not regcred's): a ServiceAccount's entries as names only."""

    def __init__(self) -> None:
        self._versions = itertools.count(1000)
        self.entries: dict[tuple[str, str], list[str]] = {}
        self.password = "first"

    def stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["resourceVersion"] = str(next(self._versions))
        meta.setdefault("creationTimestamp", "2026-12-03T12:00:00Z")
        return body

    def read_source(self, namespace: str, name: str) -> SourceSecret:
        data = {
            "username": base64.b64encode(b"robot").decode(),
            "password": base64.b64encode(self.password.encode()).decode(),
        }
        return SourceSecret(namespace, name, "kubernetes.io/basic-auth", self.password, data)

    def list_credentials(self, *, from_watch_cache: bool = False) -> list[Mapping[str, Any]]:
        return []

    def store_secret(self, body: Mapping[str, Any], resource_version: str | None) -> dict[str, Any]:
        return self.stamp(copy.deepcopy(dict(body)))

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def delete_secret(self, namespace: str, name: str, uid: str, resource_version: str) -> bool:
        return True

    def account(self, namespace: str, name: str = "default") -> dict[str, Any]:
        """The ServiceAccount as the API server would send it, from the entries it holds."""
        entries = self.entries.setdefault((namespace, name), [])
        body: dict[str, Any] = {"metadata": {"name": name, "namespace": namespace}}
        if entries:
            body["imagePullSecrets"] = [{"name": entry} for entry in entries]
            body["metadata"]["annotations"] = {PULL_SECRETS_ANNOTATION: ",".join(sorted(entries))}
        return self.stamp(body)

    def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.account(namespace, name)

    def patch_service_account(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        entries = self.entries.setdefault((namespace, name), [])
        for op in ops:
            if op["op"] == "add" and op["path"].startswith("/imagePullSecrets"):
                value = op["value"]
                entries.extend(item["name"] for item in (value if isinstance(value, list) else [value]))
        return self.account(namespace, name)

    def patch_status(self, name: str, status: Mapping[str, Any]) -> None:
        pass

    def post_event(self, credential: str, uid: str, kind: str, reason: str, message: str) -> None:
        pass


def credential_body(index: int) -> dict[str, Any]:
    name = f"mem-{index}"
    return {"apiVersion": "regcred.io/v1alpha1", "kind": "RegistryCredential",
            "metadata": {"name": name, "uid": str(uuid.uuid4()), "generation": 1, "resourceVersion": "1",
                         "creationTimestamp": "2026-12-03T12:00:00Z"},
            "spec": {"registries": [{"server": f"registry-{index}.example.com"}],
                     "sourceSecretRef": {"name": "robot"}, "secretName": f"regcred-{name}"}}


def namespace_body(kube: InMemoryKube, name: str) -> dict[str, Any]:
    return kube.stamp({"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name,
                                                            "bench": "yes"}},
                       "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})


def traced_mb() -> float:
    gc.collect()
    if not tracemalloc.is_tracing():
        return 0.0
    return tracemalloc.get_traced_memory()[0] / 2**20


def released(when: str) -> None:
    """RSS once the garbage collector has run, and once glibc has returned its free pages:
    how much of the growth is the heap's fragmentation rather than live objects."""
    gc.collect()
    collected = rss_mb()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(f"  {when}: RSS {collected:.1f} MB after gc.collect(), {rss_mb():.1f} MB after malloc_trim(0)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespaces", type=int, default=20000)
    parser.add_argument("--credentials", type=int, default=3)
    parser.add_argument("--fanouts", type=int, default=3, help="full fan-outs after the fill")
    parser.add_argument("--top", type=int, default=0, help="print the N largest allocation sites")
    parser.add_argument("--rss-only", action="store_true",
                        help="no tracemalloc (it doubles RSS): RSS at each step as in production")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    objects = args.namespaces * (2 + args.credentials)
    kube = InMemoryKube()
    bodies = {f"mem-{i}": [credential_body(i)] for i in range(args.credentials)}
    if not args.rss_only:
        tracemalloc.start(1 if not args.top else 8)
    base_rss, base = rss_mb(), traced_mb()
    caches = Caches(bodies)
    ledger = Ledger()
    publisher = StatusPublisher(kube, caches, ledger, Metrics(), clock=lambda: "2026-12-03T12:00:00Z")
    reconciler = Reconciler(kube, Executor(kube), caches, SETTINGS, Metrics(), ledger, publisher,  # type: ignore[arg-type]
                            request_credential_sync=lambda name: None)
    names = [f"bench-{i:06d}" for i in range(args.namespaces)]
    for name in names:
        caches.namespace_seen(namespace_body(kube, name))
        caches.service_account_seen(kube.account(name))
    listed = traced_mb()
    for credential in bodies:
        reconciler.sync_credential(credential)
    filled = traced_mb()
    print(f"{args.namespaces} namespaces x {args.credentials} CRs = {objects} watched objects")
    print(f"  namespaces + ServiceAccounts listed: {listed - base:.1f} MiB traced")
    print(f"  after the initial fan-outs: {filled - base:.1f} MiB traced = "
          f"{(filled - base) * 2**20 / objects:.0f} bytes per object; RSS {rss_mb():.1f} MB "
          f"(+{rss_mb() - base_rss:.1f})")
    released(f"{objects} objects held")
    for round_ in range(args.fanouts):
        rotate = round_ == args.fanouts - 1
        if rotate:
            kube.password = "rotated"
        if tracemalloc.is_tracing():
            tracemalloc.reset_peak()
        for credential in bodies:
            reconciler.sync_credential(credential)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        print(f"  fan-out {round_ + 1} ({'rotation' if rotate else 'resync'} of {args.credentials} CRs): "
              f"peak {peak - base:.1f} MiB traced, after {traced_mb() - base:.1f} MiB; RSS {rss_mb():.1f} MB")
    released("after the fan-outs")
    if args.top:
        for stat in tracemalloc.take_snapshot().statistics("traceback")[:args.top]:
            print(f"{stat.size / 2**20:8.2f} MiB {stat.count:8d} blocks")
            for line in stat.traceback.format()[-6:]:
                print("        " + line)
    reconciler.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
