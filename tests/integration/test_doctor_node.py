"""The doctor and verification on a real node and a real registry.

Every failure here is real: the kubelet pulls (containerd), the registry (distribution, TLS,
htpasswd or `auth: token` with tests' own token issuer) refuses, and the doctor reads the
kubelet's own events and container states. `regcred doctor -A` must name the right cause
for each seeded failure and exit 1, and exit 0 on a healthy namespace; a password changed at
the registry flips CredentialsVerified within the test's interval, and the doctor reports it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from node_fixtures import REGISTRY_USER, start_registry
from scenario import PASSWORD_MARK, Cluster, password, unique

from regcred_dev import images
from regcred_dev.token_issuer import TokenIssuer
from support.leaks import assert_not_shown

pytestmark = [pytest.mark.integration, pytest.mark.node, pytest.mark.usefixtures("remove_new_credentials")]

INTERVAL = 10  # spec.verify.intervalSeconds for these tests (the minimum)


def doctor(kubeconfig: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run([sys.executable, "-m", "regcred.cli", "doctor", "--kubeconfig", kubeconfig,
                             "-o", "json", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1), result.stderr
    assert_not_shown(PASSWORD_MARK, stdout=result.stdout, stderr=result.stderr)
    return result.returncode, json.loads(result.stdout)


def codes_by_namespace(report: dict[str, Any]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for finding in report["findings"]:
        found.setdefault(finding["namespace"], set()).add(finding["code"])
    return found


def credential(cluster: Cluster, servers: list[str], user: str, secret: str, **spec) -> str:
    name = unique("cr")
    cluster.put_source(name, username=user, secret=secret)
    cluster.create_credential(name, {"registries": [{"server": s} for s in servers],
                                     "sourceSecretRef": {"name": name}, **spec})
    return name


def verified(cluster: Cluster, name: str) -> dict[str, Any]:
    conditions = ((cluster.credential(name) or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "CredentialsVerified"), {})


def verified_credential(cluster: Cluster, wait_for, server: str, user: str, secret: str,
                        namespace: str, ca: str) -> str:
    """A CR with `spec.verify` on for `server`, once the registry accepted it and `namespace`'s
    default ServiceAccount carries its entry."""
    name = credential(cluster, [server], user, secret, namespaces=[namespace],
                      verify={"enabled": True, "intervalSeconds": INTERVAL, "caBundle": ca})
    wait_for(lambda: verified(cluster, name).get("reason") == "Verified", timeout=60,
             message=f"CredentialsVerified=True for {server}")
    wait_for(lambda: cluster.pull_secrets(namespace) == [name], timeout=60, message="entry")
    return name


def refused(cluster: Cluster, wait_for, name: str) -> dict[str, Any]:
    """The CredentialsVerified condition once a check after the registry-side change said False."""
    return wait_for(lambda: (c := verified(cluster, name)).get("status") == "False" and c,
                    timeout=INTERVAL * 1.1 + 30, message="CredentialsVerified=False")


def test_doctor_names_the_cause_of_each_real_failure(cluster, operator, kubeconfig, registry,
                                                      private_image, pods, fresh_namespaces, wait_for):
    other_path = registry.push(images.success_image(), "other/success", "1", REGISTRY_USER)
    label = unique("doctor")
    healthy, early, missing_tag, never, cached = fresh_namespaces(5, labels={"doctor": label})
    (uncovered,) = fresh_namespaces(1)  # no RegistryCredential selects it
    wrong_label = unique("doctor-wrong")
    (wrong,) = fresh_namespaces(1, labels={"doctor": wrong_label})

    early_pod = pods.run(early, private_image)  # before any CR: admitted without the entry
    pods.wait_refused(early, early_pod)
    team = f"{registry.host}/team"
    name = credential(cluster, [team], *registry.login(REGISTRY_USER),
                      namespaceSelector={"matchLabels": {"doctor": label}})
    credential(cluster, [team], REGISTRY_USER, password("wrong"),
               namespaceSelector={"matchLabels": {"doctor": wrong_label}})
    for namespace in (healthy, early, missing_tag, never, cached, wrong):
        wait_for(lambda ns=namespace: len(cluster.pull_secrets(ns) or []) == 1, timeout=60,
                 message=f"our entry in {namespace}")

    pulled = pods.run(healthy, private_image)
    pods.wait_succeeded(healthy, pulled)
    pods.wait_refused(missing_tag, pods.run(missing_tag, f"{registry.host}/team/success:no-such-tag"))
    pods.wait_refused(wrong, pods.run(wrong, private_image))
    pods.wait_refused(uncovered, pods.run(uncovered, other_path))
    never_pod = pods.run(never, f"{registry.host}/team/never-pulled:1", pull_policy="Never")
    wait_for(lambda: pods.state(never, never_pod) == "ErrImageNeverPull", timeout=90,
             message="ErrImageNeverPull")
    pods.wait_succeeded(cached, pods.run(cached, private_image, pull_policy="IfNotPresent"))

    code, report = doctor(kubeconfig, "-A")
    assert code == 1
    found = codes_by_namespace(report)
    details = {ns: [(f["code"], f["evidence"]) for f in report["findings"] if f["namespace"] == ns]
               for ns in found}
    assert healthy not in found, details.get(healthy)
    expected = {early: {"PodAdmittedBeforeEntry", "PullUnauthorized"}, missing_tag: {"ImageNotFound"},
                wrong: {"PullUnauthorized"}, uncovered: {"RegistryNotCovered", "PullUnauthorized"},
                never: {"ImageNeverPulled"}, cached: {"IfNotPresentPrivateImage"}}
    for namespace, codes in expected.items():
        assert found.get(namespace) == codes, details.get(namespace)
    refused = next(f for f in report["findings"] if f["namespace"] == wrong)
    assert "401" in refused["evidence"][0] and name not in refused["fix"]

    code, report = doctor(kubeconfig, "-n", healthy)
    assert (code, report["summary"]["healthy"]) == (0, True)
    assert report["images"][0]["pullSecret"]["credential"] == name


def test_a_password_changed_at_the_registry_flips_verification(cluster, operator, kubeconfig, registry,
                                                               private_image, pods, fresh_namespaces,
                                                               wait_for):
    user, old = unique("verify"), password("old")
    registry.set_password(user, old)
    (namespace,) = fresh_namespaces(1)
    name = verified_credential(cluster, wait_for, registry.host, user, old, namespace,
                               registry.ca.read_text())
    pods.wait_succeeded(namespace, pods.run(namespace, private_image))

    registry.set_password(user, password("new"))  # rotated at the registry, not in the cluster
    condition = refused(cluster, wait_for, name)
    assert condition["reason"] == "Unauthorized"
    assert "VerificationUnauthorized" in [e.reason for e in cluster.events_for(name)]
    code, report = doctor(kubeconfig, "-n", namespace)
    assert code == 1 and "CredentialRejected" in codes_by_namespace(report)[namespace]


def test_verification_and_pulls_with_the_token_flow(control_plane, node, cluster, operator, kubeconfig,
                                                    registry, private_image, pods, fresh_namespaces,
                                                    wait_for):
    """The same registry storage served with `auth: token`: distribution checks the JWTs our
    issuer signs with a key certified by the run's CA."""
    user, secret = unique("token"), password("token")
    with TokenIssuer(control_plane.pki, {user: secret}) as issuer:
        token_registry = start_registry(control_plane, {}, node=node, name="registry-token",
                                        config_overrides={
            "auth": {"htpasswd": None, "token": issuer.registry_auth()},
            "storage": {"filesystem": {"rootdirectory": str(registry.dir / "data")}},
        })
        try:
            (namespace,) = fresh_namespaces(1)
            name = verified_credential(cluster, wait_for, token_registry.host, user, secret, namespace,
                                       registry.ca.read_text())
            image = private_image.replace(registry.host, token_registry.host)
            pulled = pods.run(namespace, image)
            pods.wait_succeeded(namespace, pulled)
            assert pods.logs(namespace, pulled).strip() == "SUCCESS"

            issuer.set_password(user, password("rotated"))
            condition = refused(cluster, wait_for, name)
            assert condition["reason"] == "Unauthorized" and "token request" in condition["message"]
            assert issuer.issued >= 2
        finally:
            token_registry.stop()
