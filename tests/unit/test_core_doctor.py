"""The doctor's diagnosis over builder-made API objects: every finding code, and no secrets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from regcred.core.doctor.observation import Snapshot, snapshot_from
from regcred.core.doctor.report import render_table, report_json
from regcred.core.doctor.rules import CODES, diagnose
from regcred.doctor.command import UsageError, _pod_name
from support.builders import PASSWORD, b64, cr_body, live_copy, sa_body
from support.builders import credential as make_credential

NS = "team-a"
HARBOR = "harbor.example.com"


def pod_body(name: str = "web", *, image: str = f"{HARBOR}/team/app:v1", policy: str | None = "Always",
             pull_secrets: tuple[str, ...] = ("harbor-prod",), account: str = "default",
             namespace: str = NS, waiting: tuple[str, str] | None = None, running: bool = False,
             owner: str | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": image}
    if policy:
        container["imagePullPolicy"] = policy
    status: dict[str, Any] = {}
    if waiting:
        status["containerStatuses"] = [{"name": "app", "image": image, "imageID": "",
                                        "state": {"waiting": {"reason": waiting[0], "message": waiting[1]}}}]
    if running:
        status["containerStatuses"] = [{"name": "app", "image": image, "imageID": "sha256:abc",
                                        "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}]
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "creationTimestamp": "2024-01-01T00:00:00Z"}
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": owner, "controller": True, "uid": "u"}]
    return {"metadata": meta,
            "spec": {"serviceAccountName": account, "containers": [container],
                     "imagePullSecrets": [{"name": n} for n in pull_secrets]},
            "status": status}


def dockerconfig_secret(name: str, keys: tuple[str, ...], namespace: str = NS,
                        secret_type: str = "kubernetes.io/dockerconfigjson") -> dict[str, Any]:
    auths = {key: {"username": "robot", "password": PASSWORD, "auth": b64(f"robot:{PASSWORD}")}
             for key in keys}
    return {"metadata": {"name": name, "namespace": namespace}, "type": secret_type,
            "data": {".dockerconfigjson": b64(json.dumps({"auths": auths}))}}


def copy_body(credential: str = "harbor-prod", namespace: str = NS) -> dict[str, Any]:
    return live_copy(make_credential(credential), namespace)


def credential_body(name: str = "harbor-prod", *, ready: str = "True", reason: str = "Synced",
                    message: str = "1/1 namespaces", registries: list[dict[str, str]] | None = None,
                    **spec: Any) -> dict[str, Any]:
    body = cr_body(name, **spec)
    body["status"] = {"conditions": [{"type": "Ready", "status": ready, "reason": reason,
                                      "message": message}]}
    if registries is not None:
        body["status"]["registries"] = registries
    return body


def event(pod: str, message: str, reason: str = "Failed", count: int = 3,
          namespace: str = NS) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace}, "type": "Warning", "reason": reason,
            "message": message, "count": count, "lastTimestamp": "2024-01-01T00:05:00Z",
            "involvedObject": {"kind": "Pod", "name": pod, "namespace": namespace,
                               "fieldPath": "spec.containers{app}"}}


def snapshot(pods=(), secrets=None, accounts=None, events=(), credentials=None,
             namespaces=None) -> Snapshot:
    """A cluster with, by default, one healthy regcred-managed namespace."""
    secrets = [copy_body()] if secrets is None else secrets
    accounts = [sa_body("default", NS, ["harbor-prod"], ours=["harbor-prod"])] if accounts is None \
        else accounts
    credentials = [credential_body()] if credentials is None else credentials
    namespaces = [{"metadata": {"name": NS}}] if namespaces is None else namespaces
    return snapshot_from(pods=pods, service_accounts=accounts, secrets=secrets, events=events,
                         credentials=credentials, namespaces=namespaces)


def codes(snap: Snapshot) -> list[str]:
    return [f.code for f in diagnose(snap).findings]


def only(snap: Snapshot, code: str):
    report = diagnose(snap)
    assert [f.code for f in report.findings] == [code], [(f.code, f.message) for f in report.findings]
    return report.findings[0]


# --- healthy ----------------------------------------------------------------------------------


def test_a_healthy_pod_has_no_findings_and_names_the_secret_the_kubelet_uses() -> None:
    report = diagnose(snapshot([pod_body(running=True)]))
    assert report.findings == () and not report.failed()
    (image,) = report.images
    assert (image.registry, image.repository, image.tag) == (HARBOR, f"{HARBOR}/team/app", "v1")
    assert image.pull_secret is not None
    assert image.pull_secret.secret == "harbor-prod" and image.pull_secret_credential == "harbor-prod"
    assert image.pull_policy == "Always" and image.state == "Pulled"


def test_a_public_image_without_secrets_is_healthy() -> None:
    report = diagnose(snapshot([pod_body(image="busybox:1.36", pull_secrets=(), policy=None)]))
    assert report.findings == ()
    (image,) = report.images
    assert image.repository == "docker.io/library/busybox"
    assert (image.pull_policy, image.default_pull_policy) == ("IfNotPresent", "IfNotPresent")


# --- why no RegistryCredential covers the Pod ----------------------------------------------------


def test_pod_admitted_before_the_entry_gets_the_delete_command() -> None:
    found = only(snapshot([pod_body(pull_secrets=(), owner="web-5d8f7")]), "PodAdmittedBeforeEntry")
    assert f"kubectl delete pod -n {NS} web" in found.commands
    assert any("rollout restart" in c and "deployment/web" in c for c in found.commands)


@pytest.mark.parametrize(("spec", "labels", "why"), [
    ({"excludeNamespaces": ["team-*"]}, {}, "excludeNamespaces pattern 'team-*'"),
    ({}, {"regcred.dev/ignore": "true"}, "labelled regcred.dev/ignore=true"),
    ({"namespaces": ["ci"]}, {}, "no spec.namespaces pattern matches it (ci)"),
    ({"namespaceSelector": {"matchLabels": {"tier": "x"}}}, {}, "namespaceSelector does not match"),
])
def test_namespace_not_matched_says_which_rule(spec, labels, why) -> None:
    snap = snapshot([pod_body(pull_secrets=())], secrets=[], accounts=[sa_body("default", NS)],
                    credentials=[credential_body(**spec)],
                    namespaces=[{"metadata": {"name": NS, "labels": labels}}])
    found = only(snap, "NamespaceNotMatched")
    assert why in found.evidence[0]


def test_only_credentials_selecting_the_namespace_explain_it() -> None:
    elsewhere = credential_body("other-cr", namespaces=["ci"])
    snap = snapshot([pod_body(pull_secrets=())], credentials=[credential_body(), elsewhere])
    assert codes(snap) == ["PodAdmittedBeforeEntry"]
    snap = snapshot([pod_body(pull_secrets=())], secrets=[], credentials=[elsewhere])
    assert codes(snap) == ["NamespaceNotMatched"]


def test_system_namespace_must_be_named() -> None:
    snap = snapshot([pod_body(pull_secrets=(), namespace="kube-system")], secrets=[], accounts=[],
                    namespaces=[{"metadata": {"name": "kube-system"}}])
    assert "system namespace" in only(snap, "NamespaceNotMatched").evidence[0]


def test_service_account_not_matched() -> None:
    snap = snapshot([pod_body(pull_secrets=(), account="builder")],
                    accounts=[sa_body("builder", NS)])
    assert "builder" in only(snap, "ServiceAccountNotMatched").evidence[0]


def test_suspended_credential() -> None:
    snap = snapshot([pod_body(pull_secrets=())], secrets=[], accounts=[sa_body("default", NS)],
                    credentials=[credential_body(suspend=True, ready="False", reason="Suspended")])
    only(snap, "CredentialSuspended")


@pytest.mark.parametrize("delivery", ["CredentialProvider", "Both"])
def test_no_pull_secret_where_the_credential_provider_serves_is_not_a_finding(delivery) -> None:
    snap = snapshot([pod_body(pull_secrets=())], secrets=[], accounts=[sa_body("default", NS)],
                    credentials=[credential_body(delivery=delivery)])
    assert codes(snap) == []


def test_provider_delivery_of_a_credential_that_is_not_ready() -> None:
    snap = snapshot([pod_body(pull_secrets=())], secrets=[], accounts=[sa_body("default", NS)],
                    credentials=[credential_body(delivery="CredentialProvider", ready="False",
                                                 reason="SourceNotFound", message="not found")])
    assert "credential provider" in only(snap, "CredentialNotReady").message


def test_provider_delivery_still_reports_a_refused_pull() -> None:
    failed = pod_body(pull_secrets=(), waiting=("ErrImagePull", "401 Unauthorized"))
    snap = snapshot([failed], secrets=[], accounts=[sa_body("default", NS)],
                    credentials=[credential_body(delivery="CredentialProvider")])
    assert codes(snap) == ["PullUnauthorized"]


def test_copy_conflict_with_a_foreign_secret() -> None:
    foreign = dockerconfig_secret("harbor-prod", ("other.example.com",))
    snap = snapshot([pod_body(pull_secrets=("harbor-prod",))], secrets=[foreign],
                    accounts=[sa_body("default", NS, ["harbor-prod"])])
    assert codes(snap) == ["CopyConflict"]


def test_credential_not_ready_means_no_copy() -> None:
    snap = snapshot([pod_body(pull_secrets=())], secrets=[], accounts=[sa_body("default", NS)],
                    credentials=[credential_body(ready="False", reason="SourceNotFound",
                                                 message="source secret regcred-system/x not found")])
    assert "not found" in only(snap, "CredentialNotReady").evidence[0]


def test_copy_missing_while_ready_points_at_the_operator() -> None:
    snap = snapshot([pod_body(pull_secrets=())], secrets=[], accounts=[sa_body("default", NS)])
    assert "regcred running" in only(snap, "CopyMissing").evidence[1]


def test_service_account_without_the_entry() -> None:
    snap = snapshot([pod_body(pull_secrets=())], accounts=[sa_body("default", NS, ["other"])])
    only(snap, "ServiceAccountMissingEntry")


# --- the Pod's own pull secrets -------------------------------------------------------------------


def test_missing_pull_secret_mentions_other_namespaces() -> None:
    elsewhere = dockerconfig_secret("hand-made", (HARBOR,), namespace="ci")
    snap = snapshot([pod_body(pull_secrets=("hand-made",))], secrets=[elsewhere], credentials=[],
                    accounts=[])
    found = only(snap, "PullSecretMissing")
    assert any("exists in ci" in line for line in found.evidence)


def test_wrong_type_and_unreadable_pull_secrets() -> None:
    opaque = {"metadata": {"name": "opaque", "namespace": NS}, "type": "Opaque",
              "data": {"password": b64(PASSWORD)}}
    broken = {"metadata": {"name": "broken", "namespace": NS}, "type": "kubernetes.io/dockerconfigjson",
              "data": {".dockerconfigjson": b64("{not json")}}
    snap = snapshot([pod_body(pull_secrets=("opaque", "broken"))], secrets=[opaque, broken],
                    credentials=[], accounts=[])
    assert codes(snap) == ["PullSecretWrongType", "PullSecretInvalid"]


def test_auths_key_with_the_wrong_port() -> None:
    secret = dockerconfig_secret("hand-made", (f"{HARBOR}:5000",))
    snap = snapshot([pod_body(pull_secrets=("hand-made",))], secrets=[secret], credentials=[],
                    accounts=[])
    found = only(snap, "AuthsKeyMismatch")
    assert f"'{HARBOR}:5000'" in found.evidence[0]


def test_uncovered_registry_with_a_401() -> None:
    snap = snapshot([pod_body(image="other.example.com/app:v1", pull_secrets=(),
                              waiting=("ErrImagePull", "failed to resolve reference: 401 Unauthorized"))],
                    accounts=[])
    assert codes(snap) == ["RegistryNotCovered", "PullUnauthorized"]


def test_uncovered_registry_without_failures_is_not_a_problem() -> None:
    snap = snapshot([pod_body(image="quay.io/app:v1", pull_secrets=())], accounts=[])
    assert codes(snap) == []


# --- pull failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(("message", "code"), [
    ('Failed to pull image "x": unexpected status from HEAD request: 401 Unauthorized',
     "PullUnauthorized"),
    ('Failed to pull image "x": pull access denied, repository does not exist or may require '
     "authorization", "PullUnauthorized"),
    ('Failed to pull image "x": failed to resolve reference "x": harbor.example.com/team/app:v9: not found',
     "ImageNotFound"),
    ('Failed to pull image "x": dial tcp: lookup harbor.example.com: no such host', "RegistryUnreachable"),
    ('Failed to pull image "x": dial tcp 10.0.0.1:443: connect: connection refused',
     "RegistryUnreachable"),
    ('Failed to pull image "x": tls: failed to verify certificate: x509: certificate signed by unknown '
     "authority", "RegistryTLSError"),
    ('Failed to pull image "x": rpc error: something odd', "PullFailed"),
])
def test_pull_failure_events_are_summarised_by_cause(message: str, code: str) -> None:
    snap = snapshot([pod_body(waiting=("ImagePullBackOff", 'Back-off pulling image "x"'))],
                    events=[event("web", message)])
    found = only(snap, code)
    assert found.evidence[0].startswith("3x ")


def test_events_that_only_repeat_the_state_are_not_a_cause() -> None:
    snap = snapshot([pod_body(waiting=("ErrImagePull", ""))],
                    events=[event("web", "Error: ErrImagePull"),
                            event("web", 'Failed to pull image "x": 401 Unauthorized')])
    assert codes(snap) == ["PullUnauthorized"]
    snap = snapshot([pod_body(waiting=("ImagePullBackOff", 'Back-off pulling image "x"'))],
                    events=[event("web", "Error: ImagePullBackOff")])
    assert codes(snap) == ["PullFailed"]


def test_never_with_the_image_absent() -> None:
    snap = snapshot([pod_body(policy="Never", waiting=("ErrImageNeverPull", "Container image "
                              '"x" is not present with pull policy of Never'))])
    only(snap, "ImageNeverPulled")


def test_old_failures_of_a_running_container_are_history() -> None:
    snap = snapshot([pod_body(running=True)], events=[event("web", "Failed to pull: 401 Unauthorized")])
    assert codes(snap) == []


def test_a_crash_loop_after_a_pull_is_not_a_pull_problem() -> None:
    body = pod_body(running=True)
    body["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
    snap = snapshot([body], events=[event("web", "Failed to pull: 401 Unauthorized")])
    assert codes(snap) == []


def test_events_of_other_pods_do_not_count() -> None:
    snap = snapshot([pod_body()], events=[event("other", "Failed to pull: 401 Unauthorized")])
    assert codes(snap) == []


# --- policy, verification, image names ------------------------------------------------------------


def test_if_not_present_on_a_private_image_is_a_warning() -> None:
    report = diagnose(snapshot([pod_body(policy=None)]))
    (found,) = report.findings
    assert (found.code, found.severity) == ("IfNotPresentPrivateImage", "warning")
    assert "default for a tag" in found.evidence[0]
    assert report.failed() and not report.failed("error")


def test_rejected_credential_from_the_operators_verification() -> None:
    registries = [{"server": HARBOR, "result": "Unauthorized", "message": "GET /v2/: 401"}]
    snap = snapshot([pod_body()], credentials=[credential_body(registries=registries)])
    only(snap, "CredentialRejected")


def test_anonymous_registries_pass_verification() -> None:
    registries = [{"server": HARBOR, "result": "Anonymous", "message": "200 without credentials"}]
    assert codes(snapshot([pod_body()], credentials=[credential_body(registries=registries)])) == []


def test_unreachable_verification_is_a_warning() -> None:
    registries = [{"server": HARBOR, "result": "Unreachable", "message": "timed out"}]
    snap = snapshot([pod_body()], credentials=[credential_body(registries=registries)])
    assert only(snap, "VerificationFailed").severity == "warning"


def test_invalid_image_name() -> None:
    report = diagnose(snapshot([pod_body(image="Harbor/UPPER:bad tag")]))
    assert [f.code for f in report.findings] == ["InvalidImageName"] and report.images == ()


def test_every_code_has_a_severity_and_meaning() -> None:
    assert all(severity in ("error", "warning") and meaning for severity, meaning in CODES.values())


# --- no secret material, output -------------------------------------------------------------------


def test_no_secret_material_survives_into_the_report() -> None:
    snap = snapshot([pod_body(pull_secrets=("harbor-prod", "opaque"), policy=None),
                     pod_body("b", pull_secrets=("missing",))],
                    secrets=[copy_body(), {"metadata": {"name": "opaque", "namespace": NS},
                                           "type": "Opaque", "data": {"password": b64(PASSWORD)}}])
    report = diagnose(snap)
    text = json.dumps(report_json(report, {})) + render_table(report, colour=True) + repr(snap)
    for secret in (PASSWORD, b64(PASSWORD), b64(f"robot:{PASSWORD}"), "pw-harbor-prod",
                   b64("robot:pw-harbor-prod")):
        assert secret not in text


def test_json_report_shape() -> None:
    document = report_json(diagnose(snapshot([pod_body(pull_secrets=())])), {"namespace": NS})
    assert document["apiVersion"] == "regcred.dev/doctor/v1"
    assert document["summary"] == {"pods": 1, "images": 1, "errors": 1, "warnings": 0, "healthy": False}
    (finding,) = document["findings"]
    assert set(finding) == {"code", "severity", "namespace", "pod", "container", "image", "message",
                            "evidence", "fix", "commands"}
    assert document["images"][0]["pullSecret"] is None


def test_table_has_colour_only_when_asked() -> None:
    report = diagnose(snapshot([pod_body(pull_secrets=())]))
    assert "\033[" not in render_table(report, colour=False)
    assert "\033[31m" in render_table(report, colour=True)
    assert "PodAdmittedBeforeEntry" in render_table(report, colour=False)


@pytest.mark.parametrize(("target", "name"), [("pod/web", "web"), ("web", "web"), ("pods/web", "web"),
                                               (None, None)])
def test_pod_targets(target, name) -> None:
    assert _pod_name(target) == name


@pytest.mark.parametrize("target", ["deployment/web", "pod/"])
def test_bad_targets(target) -> None:
    with pytest.raises(UsageError):
        _pod_name(target)
