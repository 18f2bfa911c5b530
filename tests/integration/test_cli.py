"""`regcred run --kubeconfig PATH` alone is enough: no $KUBECONFIG, no ~/.kube/config.

`make demo` starts the operator that way; kopf's own login reads $KUBECONFIG through the
`kubernetes` package, which reads its default location once, at import time.
"""

from __future__ import annotations

import pytest
from operator_process import OperatorProcess
from scenario import Cluster, unique

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("remove_new_credentials")]


def test_the_kubeconfig_flag_alone_is_enough(kubeconfig, crd_installed, cluster: Cluster, fresh_namespaces,
                                            tmp_path, wait_for):
    process = OperatorProcess(kubeconfig, tmp_path / "regcred.log", kubeconfig_in_env=False).start()
    try:
        label = unique("flag")
        [namespace] = fresh_namespaces(1, labels={"flag-test": label})
        name = unique("cr")
        cluster.put_source(name)
        cluster.create_credential(name, {"registries": [{"server": "registry.example.com"}],
                                         "sourceSecretRef": {"name": name},
                                         "namespaceSelector": {"matchLabels": {"flag-test": label}}})
        wait_for(lambda: cluster.secret(namespace, name) is not None, timeout=60,
                 message=f"the copy in {namespace}, synced by an operator told only --kubeconfig")
    finally:
        process.stop()
