"""manifests/ RBAC, proven: regcred runs with only its ServiceAccount's token.

After the core scenarios, the audit log shows the operator was never refused and used every
permission the bundle grants (rbac_checks.py; test_helm.py proves the same for the chart).
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml
from operator_fixtures import REPO
from operator_process import OperatorProcess
from rbac_checks import (
    assert_exactly_granted,
    exercise_every_permission,
    kubectl,
    loopback_admission_args,
    remove_webhook_configuration,
    service_account_user,
    token_kubeconfig,
)
from scenario import OPERATOR_NAMESPACE, Cluster

pytestmark = pytest.mark.integration

ACCOUNT = "regcred"


@pytest.fixture(scope="module")
def bundle() -> list[dict[str, Any]]:
    rendered = subprocess.run(["kubectl", "kustomize", str(REPO / "manifests")],
                              capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


@pytest.fixture(scope="module")
def operator_kubeconfig(kubeconfig: str, crd_installed: None, control_plane, bundle,
                        tmp_path_factory) -> str:
    """`kubectl apply -k manifests/`, as the install docs say; a kubeconfig with the SA token.
    (The CRDs are established already, so one apply suffices; nothing runs the Deployment's
    pods here, the test runs the operator itself.)"""
    kubectl(kubeconfig, "apply", "-k", str(REPO / "manifests"))
    kubectl(kubeconfig, "get", "-n", OPERATOR_NAMESPACE, "deployment/regcred", "poddisruptionbudget/regcred",
            "networkpolicy/regcred", "serviceaccount/regcred")
    return token_kubeconfig(kubeconfig, control_plane, OPERATOR_NAMESPACE, ACCOUNT,
                            tmp_path_factory.mktemp("rbac") / "regcred.kubeconfig")


def test_the_operator_works_with_exactly_its_granted_permissions(
        cluster: Cluster, kubeconfig, operator_kubeconfig, control_plane, bundle, fresh_namespaces,
        tmp_path, wait_for):
    # With the admission webhook, as manifests/ runs it, calling back over loopback.
    remove_webhook_configuration(kubeconfig)
    process = OperatorProcess(operator_kubeconfig, tmp_path / "regcred.log",
                              extra_env={"REGCRED_PEERING": "regcred"},
                              extra_args=loopback_admission_args()).start()
    try:
        exercise_every_permission(cluster, fresh_namespaces, wait_for, OPERATOR_NAMESPACE, kubeconfig)
    finally:
        process.stop()
        remove_webhook_configuration(kubeconfig)
    assert_exactly_granted(control_plane, service_account_user(OPERATOR_NAMESPACE, ACCOUNT),
                           bundle, process)
