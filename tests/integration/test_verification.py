"""spec.verify with the real operator: CredentialsVerified follows what the registry says.

The registry here is the loopback HTTPS front of tests/unit/registry_server.py (Basic and
the Bearer token flow, the CA passed as spec.verify.caBundle); the node suite repeats this
against a real distribution registry. A rotation to a password the registry refuses flips
the condition, posts a Warning event and moves the metric, and the doctor reports it;
an unreachable registry never stops the copies.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from scenario import PASSWORD_MARK, Cluster, password, unique

from regcred_dev.pki import Certificates
from support.leaks import assert_not_shown
from support.registry import fake_registry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("remove_new_credentials")]


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certificates:
    return Certificates(Path(tmp_path_factory.mktemp("registry-ca")))


def verified(cluster: Cluster, name: str) -> dict[str, Any]:
    body = cluster.credential(name) or {}
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "CredentialsVerified"), {})


def spec(name: str, server: str, namespace: str, certs: Certificates, **verify) -> dict[str, Any]:
    return {"registries": [{"server": server}], "sourceSecretRef": {"name": name},
            "namespaces": [namespace],
            "verify": {"enabled": True, "caBundle": certs.ca.read_text(), "timeoutSeconds": 2, **verify}}


@pytest.mark.parametrize("mode", ["basic", "bearer"])
def test_rotation_to_a_refused_password_flips_the_condition(cluster, operator, kubeconfig, certs,
                                                          fresh_namespaces, wait_for, mode):
    (namespace,) = fresh_namespaces(1)
    good = password("good")
    with fake_registry(certs, mode, username="robot", password=good) as registry:
        name = unique("cr")
        cluster.put_source(name, secret=good)
        cluster.create_credential(name, spec(name, registry.server_name, namespace, certs))
        wait_for(lambda: verified(cluster, name).get("status") == "True", timeout=60,
                 message="CredentialsVerified=True")
        registries = cluster.credential(name)["status"]["registries"]
        assert [(r["server"], r["result"]) for r in registries] == [(registry.server_name, "Verified")]
        assert operator.metric_sum("regcred_registry_verification", credential=name,
                                   result="Verified") == 1
        wait_for(lambda: cluster.pull_secrets(namespace) == [name], message="entry")
        cluster.core.create_namespaced_pod(namespace, {
            "metadata": {"name": "app"},
            "spec": {"containers": [{"name": "app", "image": f"{registry.server_name}/app:v1",
                                     "imagePullPolicy": "Always"}]}})

        cluster.rotate_source(name, password("refused"))
        condition = wait_for(lambda: (c := verified(cluster, name)).get("status") == "False" and c,
                             timeout=60, message="CredentialsVerified=False")
    assert condition["reason"] == "Unauthorized"
    assert cluster.ready(name)["status"] == "True"  # syncing went on: the copies have the new password
    reasons = [e.reason for e in cluster.events_for(name)]
    assert "VerificationUnauthorized" in reasons
    assert operator.metric_sum("regcred_registry_verification", credential=name, result="Unauthorized") == 1
    assert operator.metric_sum("regcred_registry_verification", credential=name, result="Verified") == 0

    result = subprocess.run([sys.executable, "-m", "regcred.cli", "doctor", "--kubeconfig", kubeconfig,
                             "-n", namespace, "-o", "json"], capture_output=True, text=True, timeout=60)
    report = json.loads(result.stdout)
    assert (result.returncode, [f["code"] for f in report["findings"]]) == (1, ["CredentialRejected"])
    shown = {"status": json.dumps(cluster.credential(name)), "metrics": operator.metrics(),
             "doctor": result.stdout,
             "events": " ".join(e.message or "" for e in cluster.events_for(name))}
    assert_not_shown(PASSWORD_MARK, **shown)
    assert_not_shown(registry.token, **shown)
    assert_not_shown(PASSWORD_MARK, log=operator.log_path.read_text())


def test_an_unreachable_registry_never_blocks_the_copies(cluster, operator, certs, fresh_namespaces,
                                                         wait_for):
    (namespace,) = fresh_namespaces(1)
    name = unique("cr")
    cluster.put_source(name)
    server = "127.0.0.1:9"  # discard port: nothing listens
    cluster.create_credential(name, spec(name, server, namespace, certs))
    wait_for(lambda: cluster.pull_secrets(namespace) == [name], message="entry")
    condition = wait_for(lambda: (c := verified(cluster, name)).get("status") == "False" and c,
                         timeout=60, message="CredentialsVerified=False")
    assert condition["reason"] == "Unreachable"
    assert cluster.ready(name)["status"] == "True"
