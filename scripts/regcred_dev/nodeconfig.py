"""The node's configuration files, rendered from the run's paths and ports (pure: no I/O).

containerd's config.toml, the CNI network, the KubeletConfiguration, the kubelet's
CredentialProviderConfig and a registry's `hosts.toml`: functions of their inputs, unit
tested in tests/unit/test_dev_configs.py; `node.Node` writes them into the run dir.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regcred_dev.nodedeps import CNI_BIN_DIR

PAUSE_IMAGE = "localhost/regcred-pause:1"  # imported, never pulled


def containerd_config(run_dir: Path) -> str:
    """containerd 1.6 (config v2) with every path in the run dir and the CRI plugin set up
    for this VM: no CAP_SYS_RESOURCE (restrict_oom_score_adj), cgroupfs, registry hosts
    from `certs.d/<host>/hosts.toml` (see `Node.trust_registry`)."""
    c = run_dir / "containerd"
    return f"""version = 2
root = "{c}/root"
state = "{c}/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{c}/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{c}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{c}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{run_dir}/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{c}/certs.d"
"""


def cni_config(run_dir: Path) -> dict[str, Any]:
    """A loopback-only network: containerd reports NetworkReady, and hostNetwork pods never
    use it. Named after the run, so CNI's cache entries (if any) say whose they are."""
    return {"cniVersion": "0.4.0", "name": run_dir.name, "plugins": [{"type": "loopback"}]}


def kubelet_config(run_dir: Path, ca: Path, serving: tuple[Path, Path], port: int, healthz_port: int,
                   ) -> dict[str, Any]:
    """KubeletConfiguration for a loopback node on this VM (cgroup v1, no CAP_SYS_RESOURCE)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": "127.0.0.1", "port": port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "tlsCertFile": str(serving[0]), "tlsPrivateKeyFile": str(serving[1]),
        # The API server (`kubectl logs`) authenticates with its kubelet client certificate
        # from the run's CA; the kubelet asks the API server whether that user may.
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{run_dir}/containerd/containerd.sock",
        "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{run_dir.name}",
        "failCgroupV1": False,  # kubelet 1.35+ refuses cgroup v1 hosts unless told
        "failSwapOn": False,
        "oomScoreAdj": 0,  # lowering it needs CAP_SYS_RESOURCE, which this VM lacks
        "podLogsDir": str(run_dir / "pod-logs"), "volumePluginDir": str(run_dir / "volume-plugins"),
        "registerNode": True, "serializeImagePulls": False,
        "staticPodPath": "", "resolvConf": "/etc/resolv.conf",
    }


# --- regcred's image credential provider (docs/credential-provider.md) ---------------------------

PROVIDER_NAME = "regcred-credential-provider"  # the plugin's file name in the bin dir


@dataclass(frozen=True)
class CredentialProvider:
    """What the kubelet needs to run regcred's plugin: the executable, the endpoint it asks
    (URL and CA), the images it is asked for, and the token audience."""

    plugin: Path
    url: str
    ca: Path
    match_images: tuple[str, ...]
    audience: str = "regcred.dev/credential-provider"
    default_cache_duration: str = "5m"


def credential_provider_config(provider: CredentialProvider) -> dict[str, Any]:
    """The kubelet's CredentialProviderConfig (kubelet.config.k8s.io/v1): the Pod's
    ServiceAccount token for `audience`, answers cached per ServiceAccount, never called for
    a Pod without one."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig",
        "providers": [{
            "name": PROVIDER_NAME,
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "matchImages": list(provider.match_images),
            "defaultCacheDuration": provider.default_cache_duration,
            "args": ["--url", provider.url, "--ca-file", str(provider.ca)],
            "tokenAttributes": {
                "serviceAccountTokenAudience": provider.audience,
                "cacheType": "ServiceAccount",
                "requireServiceAccount": True,
            },
        }],
    }


# --- the node -----------------------------------------------------------------------------------



def registry_hosts(host: str, ca: Path) -> str:
    """containerd's `certs.d/<host>/hosts.toml`: pull from `host` (HOST:PORT) over TLS,
    trusting `ca`. The CA also goes on the server: after the [host] answers 404 (a missing
    tag) containerd falls back to the server, which without the CA reported x509 instead of
    "not found"."""
    return (f'server = "https://{host}"\nca = "{ca}"\n\n[host."https://{host}"]\n'
            f'  capabilities = ["pull", "resolve"]\n  ca = "{ca}"\n')
