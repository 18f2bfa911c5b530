"""The control plane's command lines and audit policy, rendered from the run's paths and
ports (pure: no I/O).

One function per component: etcd, kube-apiserver, kube-controller-manager. Unit tested in
tests/unit/test_dev_configs.py; `controlplane.ControlPlane` runs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

# deployment and replicaset: the onboarding burst test (tests/integration/test_admission.py)
# needs Pods created the way a ReplicaSet creates them, the instant a ServiceAccount exists.
CONTROLLERS = ("garbagecollector,namespace,serviceaccount,serviceaccount-token,root-ca-cert-publisher,"
               "deployment,replicaset")
# With a pod network, Services get endpoints (webhooks reached through the network's proxy).
POD_NETWORK_CONTROLLERS = ",endpoint,endpointslice,disruption"


class Pki(Protocol):
    """The files of the run's CA the components are given (`pki.Certificates` has them)."""

    @property
    def ca(self) -> Path: ...
    @property
    def server(self) -> Path: ...
    @property
    def server_key(self) -> Path: ...
    @property
    def sa_key(self) -> Path: ...
    @property
    def sa_pub(self) -> Path: ...


def audit_policy() -> dict[str, Any]:
    """Metadata-level events for every user but the API server itself."""
    return {
        "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
        "omitStages": ["RequestReceived", "ResponseStarted"],
        "rules": [{"level": "None", "users": ["system:apiserver"]}, {"level": "Metadata"}],
    }


def etcd_argv(binary: Path, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    """One member on loopback; no fsync (a test's data need not survive a power cut)."""
    client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [str(binary), "--name", "regcred-test", "--data-dir", str(data_dir),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"regcred-test={peer_url}",
            "--unsafe-no-fsync", "--quota-backend-bytes", str(4 << 30), "--log-level", "warn"]


def apiserver_argv(binary: Path, *, etcd_port: int, port: int, cert_dir: Path, pki: Pki,
                   kubelet_client: tuple[Path, Path], audit_policy_file: Path, audit_log: Path,
                   aggregator_routing: bool) -> list[str]:
    """kube-apiserver on loopback with the run's CA; `aggregator_routing` when a pod network
    carries its requests to Services' endpoints (webhooks)."""
    return [str(binary), "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(port), "--cert-dir", str(cert_dir),
            "--tls-cert-file", str(pki.server), "--tls-private-key-file", str(pki.server_key),
            "--client-ca-file", str(pki.ca),
            "--service-account-key-file", str(pki.sa_pub),
            "--service-account-signing-key-file", str(pki.sa_key),
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range", "10.0.0.0/24",
            "--authorization-mode", "Node,RBAC",
            # As kubeadm and managed clusters run it: a kubelet may only touch its
            # own Node and Pods, and request ServiceAccount tokens only for the
            # audiences RBAC grants it (the credential provider's, docs/credential-provider.md).
            "--enable-admission-plugins", "NodeRestriction",
            # How the API server authenticates to a node's kubelet (`kubectl logs`, node.py).
            "--kubelet-client-certificate", str(kubelet_client[0]),
            "--kubelet-client-key", str(kubelet_client[1]),
            "--kubelet-certificate-authority", str(pki.ca),
            # A node's name is `localhost`: reach it there, never on another address.
            "--kubelet-preferred-address-types", "Hostname",
            "--enable-priority-and-fairness=false", "--profiling=false",
            # Loopback can't be an Endpoints address; nothing runs in-cluster anyway.
            "--endpoint-reconciler-type", "none",
            # On SIGTERM, close idle connections after 2s instead of waiting 60s for watches.
            "--shutdown-send-retry-after=true",
            "--audit-policy-file", str(audit_policy_file), "--audit-log-path", str(audit_log),
            "--audit-log-maxsize", "0", "--audit-log-mode", "blocking",
            *(["--enable-aggregator-routing=true"] if aggregator_routing else [])]


def controller_manager_argv(binary: Path, kubeconfig: Path, pki: Pki, pod_network: bool) -> list[str]:
    """The controllers regcred's tests rely on (namespace deletion, garbage collection,
    `default` ServiceAccounts and their tokens), with client limits for benchmarks."""
    return [str(binary), "--kubeconfig", str(kubeconfig),
            "--controllers", CONTROLLERS + (POD_NETWORK_CONTROLLERS if pod_network else ""),
            "--service-account-private-key-file", str(pki.sa_key),
            "--root-ca-file", str(pki.ca), "--use-service-account-credentials=false",
            "--leader-elect=false", "--secure-port", "0",
            "--concurrent-gc-syncs", "5", "--concurrent-namespace-syncs", "5",
            # The defaults (20/30) make `default` ServiceAccounts for a
            # thousand namespaces take a minute; benchmarks need more.
            "--kube-api-qps", "200", "--kube-api-burst", "400"]


def apiserver_proxy_env(proxy: str) -> dict[str, str]:
    """The API server's environment with a pod network: Go never proxies loopback (etcd, the
    API server itself); the rest is the pod network, reached through `proxy`."""
    return {"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "NO_PROXY": "127.0.0.1,localhost"}
