"""RBAC, proven from the audit log: shared by the kustomize bundle's test and the chart's.

The API server's audit log records every request by user, so after a run of the core
scenarios we know exactly which (group, resource, verb) the operator used: every granted
permission must have been used (or be listed in EXERCISED_ELSEWHERE with the test that
exercises it), and no request may have been refused.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from operator_process import OperatorProcess
from scenario import SERVER, Cluster, credential_spec, password, unique

from regcred_dev.process import free_port

# regcred registers its MutatingWebhookConfiguration itself, under this name (regcred/admission/webhook.py).
WEBHOOK_CONFIGURATION = "regcred"

# Needed, but only on paths the quiet scenario below does not take.
EXERCISED_ELSEWHERE = {
    # A guarded JSON patch refused (409/422) because the cached ServiceAccount was stale:
    # re-read, then retry. The concurrent-writer test in test_robustness.py takes this path.
    ("", "serviceaccounts", "get"),
}

Permission = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin,
                          capture_output=True, text=True, check=True).stdout


def service_account_user(namespace: str, name: str) -> str:
    """The user name the API server (and its audit log) gives a ServiceAccount's token."""
    return f"system:serviceaccount:{namespace}:{name}"


def token_kubeconfig(admin_kubeconfig: str, control_plane: Any, namespace: str, account: str,
                     path: Path) -> str:
    """A kubeconfig that authenticates with a TokenRequest token of `namespace/account`,
    exactly what the Deployment's pods would get mounted."""
    token = kubectl(admin_kubeconfig, "create", "token", account, "-n", namespace,
                    "--duration=2h").strip()
    ca = base64.b64encode(Path(control_plane.ca).read_bytes()).decode()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "regcred",
        "clusters": [{"name": "local", "cluster": {"server": control_plane.server,
                                                   "certificate-authority-data": ca}}],
        "users": [{"name": "regcred", "user": {"token": token}}],
        "contexts": [{"name": "regcred", "context": {"cluster": "local", "user": "regcred"}}],
    }))
    return str(path)


def loopback_admission_args() -> list[str]:
    """`regcred run` flags for the webhook of an operator running on this host, as the
    deployed one runs it: it listens on loopback and registers that URL for the API server."""
    port = free_port()
    return ["--admission=true", f"--admission-listen=127.0.0.1:{port}",
            f"--admission-url=https://127.0.0.1:{port}"]


def remove_webhook_configuration(admin_kubeconfig: str) -> None:
    """Delete regcred's webhook configuration: the next operator creates it anew (the
    `create` verb), and none is left pointing at a stopped test operator."""
    kubectl(admin_kubeconfig, "delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION,
            "--ignore-not-found")


def granted(roles: Iterable[dict[str, Any]]) -> set[Permission]:
    """Every permission that the ClusterRoles and Roles among `roles` grant."""
    rules = [rule for doc in roles if doc["kind"] in ("ClusterRole", "Role") for rule in doc["rules"]]
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def used(control_plane: Any, user: str) -> tuple[set[Permission], list[dict[str, Any]]]:
    """What `user` asked the API server for so far, and which of those requests were refused."""
    requests, refused = set(), []
    for event in control_plane.audit_events():
        if event.get("user", {}).get("username") != user or "objectRef" not in event:
            continue
        ref = event["objectRef"]
        resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        requests.add((ref.get("apiGroup", ""), resource, event["verb"]))
        if event.get("responseStatus", {}).get("code") == 403:
            refused.append({"verb": event["verb"], **ref})
    return requests, refused


def deprecated_requests(control_plane: Any, who: Callable[[dict[str, Any]], bool]) -> list[str]:
    """Requests (by the audit events `who` selects) to an API the server marked deprecated:
    the API server annotates those events with k8s.io/deprecated=true."""
    return sorted({f"{event['verb']} {event['requestURI'].split('?')[0]}"
                   for event in control_plane.audit_events()
                   if who(event) and event.get("annotations", {}).get("k8s.io/deprecated") == "true"})


def exercise_every_permission(cluster: Cluster, fresh_namespaces: Callable[..., list[str]],
                              wait_for: Callable[..., Any], source_namespace: str,
                              admin_kubeconfig: str) -> None:
    """The core scenarios, quietly: sync, rotate, stop matching, a conflict, a webhook update,
    delete. Between them they need every verb the operator is granted (EXERCISED_ELSEWHERE
    aside). The operator must already run, with `source_namespace` as its own namespace and
    the admission webhook on."""
    label = unique("rbac")
    keep, drop = fresh_namespaces(2, labels={"tenant": label})
    name = unique("cr")
    cluster.put_source(name, namespace=source_namespace)
    cluster.core.create_namespaced_secret(drop, {"metadata": {"name": "unrelated"},
                                                 "data": {"x": "eA=="}})
    cluster.create_credential(name, credential_spec(name, {"tenant": label}))
    for namespace in (keep, drop):
        wait_for(lambda ns=namespace: cluster.pull_secrets(ns) == [name], timeout=60,
                 message=f"synced {namespace}")
    rotated = password("rbac")
    cluster.rotate_source(name, rotated, namespace=source_namespace)
    wait_for(lambda: cluster.docker_password(keep, name, SERVER) == rotated, message="rotated")
    cluster.label_namespace(drop, {"tenant": None})
    wait_for(lambda: cluster.secret(drop, name) is None, message="copy deleted")
    # A Secret with the target name we don't own: the create is refused, we read it.
    conflicted = unique("conflict")
    [other] = fresh_namespaces(1, labels={"tenant": conflicted})
    cluster.core.create_namespaced_secret(other, {"metadata": {"name": conflicted},
                                                  "data": {"x": "eA=="}})
    cluster.put_source(conflicted, namespace=source_namespace)
    # It also names kube-public: the webhook's namespaceSelector lets that through now.
    cluster.create_credential(conflicted, credential_spec(conflicted, {"tenant": conflicted},
                                                          namespaces=["kube-public"]))
    wait_for(lambda: cluster.ready(conflicted).get("reason") == "Conflict", message="conflict")
    wait_for(lambda: "kube-public" not in kubectl(
        admin_kubeconfig, "get", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "-o", "json"),
        message="webhook namespaceSelector updated")
    cluster.delete_credential(name)
    cluster.delete_credential(conflicted)
    wait_for(lambda: cluster.credential(name) is None, message="CR deleted")
    wait_for(lambda: cluster.pull_secrets(keep) == [], message="entry removed")


def assert_exactly_granted(control_plane: Any, user: str, roles: Iterable[dict[str, Any]],
                           process: OperatorProcess) -> None:
    """Nothing `user` asked for was refused, nothing granted went unused, and no API it used
    is deprecated in this Kubernetes release."""
    requests, refused = used(control_plane, user)
    assert refused == [], "the operator was refused a request"
    unused = granted(roles) - requests - EXERCISED_ELSEWHERE
    assert unused == set(), "granted but never needed"
    assert "Forbidden" not in process.log()
    assert deprecated_requests(control_plane, lambda event: event["user"]["username"] == user) == []
