#!/usr/bin/env python3
"""The floor regcred's onboarding latencies are compared with: the least any controller built
on the same Python client can do against the same API server.

    python bench/floor.py KUBECONFIG PREFIX NAME

Watches Namespaces and ServiceAccounts (raw JSON lines, no model objects, no cache, no queue)
and, for each namespace whose name starts with PREFIX, handles the event on the watch thread
itself: a Namespace ADDED gets a Secret NAME labelled `regcred.dev/credential=NAME` (what
regcred's copy is), a ServiceAccount ADDED without an entry NAME gets one with a JSON Patch
(what regcred's entry is). It decides nothing else, so what it measures is the watch event's
trip plus one write. `bench/run.py` starts it as a process of its own, measures it exactly
as it measures regcred, and reports regcred's latencies as ratios to it. It stops when its
parent does (SIGTERM from run.py, or its standard input closing).
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from regcred.kube.config import connect

READY = "floor client watching"  # printed once both watches are open
OPEN = "OPEN"  # the type of the pseudo-event `events` yields once its watch is open


def events(call: Callable[..., Any]) -> Iterator[dict[str, Any]]:
    """ADDED/MODIFIED/DELETED events from now on, as parsed JSON, for ever; one {"type":
    OPEN} first, once the first watch is open."""
    announced = False
    while True:
        version = json.loads(call(limit=1, _preload_content=False).data)["metadata"]["resourceVersion"]
        while version:
            response = call(watch=True, resource_version=version, allow_watch_bookmarks=True,
                            timeout_seconds=300, _preload_content=False)
            if not announced:
                announced = True
                yield {"type": OPEN}
            for line in iter_resp_lines(response):
                event = json.loads(line)
                if event["type"] == "ERROR":  # expired: list again
                    version = ""
                    break
                version = event["object"]["metadata"].get("resourceVersion", version)
                if event["type"] != "BOOKMARK":
                    yield event


def guarded(handle: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """A failed write is reported and the watch goes on (the bench then times out on it)."""
    def run(event: dict[str, Any]) -> None:
        try:
            handle(event)
        except client.exceptions.ApiException as error:
            print(f"floor client: {error.status} {error.reason}", file=sys.stderr, flush=True)
    return run


def main() -> int:
    kubeconfig, prefix, name = sys.argv[1:4]
    core = client.CoreV1Api(connect(kubeconfig, threads=4))
    data = base64.b64encode(json.dumps({"auths": {"floor.example.com": {"auth": "eA=="}}})
                            .encode()).decode()
    ready = threading.Barrier(3)

    def copy(event: dict[str, Any]) -> None:
        namespace = event["object"]["metadata"]["name"]
        if event["type"] == "ADDED" and namespace.startswith(prefix):
            core.create_namespaced_secret(namespace, {
                "metadata": {"name": name, "labels": {"regcred.dev/credential": name}},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": data}}, _preload_content=False)

    def entry(event: dict[str, Any]) -> None:
        account = event["object"]
        meta = account["metadata"]
        entries = account.get("imagePullSecrets") or []
        if (event["type"] != "ADDED" or not meta["namespace"].startswith(prefix)
                or any(item.get("name") == name for item in entries)):
            return
        patch: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
            {"op": "add", "path": "/imagePullSecrets/-", "value": {"name": name}}
            if entries else {"op": "add", "path": "/imagePullSecrets", "value": [{"name": name}]}]
        core.patch_namespaced_service_account(meta["name"], meta["namespace"], patch,
                                              _content_type="application/json-patch+json",
                                              _preload_content=False)

    def follow(call: Callable[..., Any], handle: Callable[[dict[str, Any]], None]) -> None:
        for event in events(call):
            if event["type"] == OPEN:
                ready.wait()
            else:
                handle(event)

    for call, handle in ((core.list_namespace, guarded(copy)),
                         (core.list_service_account_for_all_namespaces, guarded(entry))):
        threading.Thread(target=follow, args=(call, handle), daemon=True).start()
    ready.wait()
    print(READY, flush=True)
    sys.stdin.read()  # until run.py stops us or goes away
    return 0


if __name__ == "__main__":
    sys.exit(main())
