"""The dev environment's pure renderers (scripts/regcred_dev/): the files the node, the
control plane's clients and the Go builds are given, checked as data without starting
anything. The integration suites prove the programs accept them; these pin what they say."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from regcred_dev import build, cpconfig, image, nodeconfig, nodedeps, podnet
from regcred_dev.pki import kubeconfig
from regcred_dev.process import ControlPlaneError

RUN = Path("/tmp/regcred-node-abc123")
CA = Path("/tmp/regcred-cp-x/pki/ca.crt")


@dataclass(frozen=True)
class Pki:
    """The CA's files as `cpconfig` reads them (`pki.Certificates` makes them with openssl)."""

    ca: Path = CA
    server: Path = Path("/p/server.crt")
    server_key: Path = Path("/p/server.key")
    sa_key: Path = Path("/p/sa.key")
    sa_pub: Path = Path("/p/sa.pub")


def flags(argv: list[str]) -> dict[str, str]:
    """`--name value` and `--name=value` pairs of a command line (flags without a value: "")."""
    found: dict[str, str] = {}
    for index, arg in enumerate(argv):
        if arg.startswith("--"):
            name, equals, value = arg.partition("=")
            following = argv[index + 1] if index + 1 < len(argv) else "--"
            found[name] = value if equals else ("" if following.startswith("--") else following)
    return found


def test_containerd_config_keeps_every_path_in_the_run_dir() -> None:
    config = tomllib.loads(nodeconfig.containerd_config(RUN))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert config["version"] == 2
    assert config["grpc"]["address"] == f"{RUN}/containerd/containerd.sock"
    paths = [config["root"], config["state"], config["grpc"]["address"],
             config["plugins"]["io.containerd.internal.v1.opt"]["path"],
             cri["containerd"]["runtimes"]["runc"]["options"]["Root"],
             cri["cni"]["conf_dir"], cri["registry"]["config_path"]]
    assert all(path.startswith(f"{RUN}/") for path in paths), paths
    assert cri["cni"]["bin_dir"] == str(nodedeps.CNI_BIN_DIR)
    assert cri["registry"]["config_path"] == f"{RUN}/containerd/certs.d"


def test_containerd_config_fits_this_vm() -> None:
    """The pause image is the imported one; no CAP_SYS_RESOURCE; cgroupfs like the kubelet;
    pod netns mounts under the run dir, so the run's unmount removes them."""
    cri = tomllib.loads(nodeconfig.containerd_config(RUN))["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == nodeconfig.PAUSE_IMAGE
    assert cri["restrict_oom_score_adj"] is True
    assert cri["netns_mounts_under_state_dir"] is True
    assert cri["stream_server_address"] == "127.0.0.1"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False


def test_kubelet_config_talks_to_the_runs_containerd_on_loopback() -> None:
    serving = (RUN / "kubelet.crt", RUN / "kubelet.key")
    config = nodeconfig.kubelet_config(RUN, CA, serving, 10250, 10248)
    containerd = tomllib.loads(nodeconfig.containerd_config(RUN))
    assert config["containerRuntimeEndpoint"] == f"unix://{containerd['grpc']['address']}"
    assert (config["address"], config["healthzBindAddress"]) == ("127.0.0.1", "127.0.0.1")
    assert (config["port"], config["healthzPort"], config["readOnlyPort"]) == (10250, 10248, 0)
    assert (config["tlsCertFile"], config["tlsPrivateKeyFile"]) == tuple(map(str, serving))
    assert config["cgroupRoot"] == f"/{RUN.name}"  # the run's own cgroup, as teardown expects
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["podLogsDir"].startswith(f"{RUN}/")
    assert config["volumePluginDir"].startswith(f"{RUN}/")


def test_kubelet_config_authenticates_only_the_runs_ca() -> None:
    config = nodeconfig.kubelet_config(RUN, CA, (RUN / "c", RUN / "k"), 1, 2)
    assert config["authentication"] == {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                                        "x509": {"clientCAFile": str(CA)}}
    assert config["authorization"] == {"mode": "Webhook"}


def test_cni_config_is_loopback_only_and_named_after_the_run() -> None:
    assert nodeconfig.cni_config(RUN) == {"cniVersion": "0.4.0", "name": RUN.name,
                                          "plugins": [{"type": "loopback"}]}


def test_pod_network_cni_config_keeps_its_leases_in_the_run_and_routes_only_the_pod_subnet() -> None:
    config = podnet.cni_config(RUN.name, RUN / "cni-ipam")
    plugins = config["plugins"]
    assert isinstance(plugins, list)
    (plugin,) = plugins
    assert plugin["type"] == "ptp" and plugin["ipMasq"] is False
    assert plugin["ipam"]["dataDir"] == f"{RUN}/cni-ipam"
    (subnet,), = plugin["ipam"]["ranges"]
    assert ipaddress.ip_network(subnet["subnet"]) == ipaddress.ip_network(podnet.POD_SUBNET)


def test_credential_provider_config_asks_for_the_pods_service_account_token() -> None:
    provider = nodeconfig.CredentialProvider(plugin=Path("/bin/true"), url="https://127.0.0.1:8443", ca=CA,
                                  match_images=("127.0.0.1:*", "*.example.com"))
    config = nodeconfig.credential_provider_config(provider)
    (entry,) = config["providers"]
    assert config["kind"] == "CredentialProviderConfig"
    assert entry["name"] == nodeconfig.PROVIDER_NAME
    assert entry["matchImages"] == ["127.0.0.1:*", "*.example.com"]
    assert entry["args"] == ["--url", "https://127.0.0.1:8443", "--ca-file", str(CA)]
    assert entry["tokenAttributes"] == {"serviceAccountTokenAudience": "regcred.dev/credential-provider",
                                        "cacheType": "ServiceAccount", "requireServiceAccount": True}


def test_registry_hosts_trusts_the_ca_on_the_host_and_on_the_server() -> None:
    hosts = tomllib.loads(nodeconfig.registry_hosts("127.0.0.1:5001", CA))
    assert hosts["server"] == "https://127.0.0.1:5001"
    assert hosts["ca"] == str(CA)
    assert hosts["host"] == {"https://127.0.0.1:5001": {"capabilities": ["pull", "resolve"], "ca": str(CA)}}


def test_kubeconfig_names_one_consistent_context() -> None:
    config = kubeconfig("https://127.0.0.1:6443", CA, Path("/p/u.crt"), Path("/p/u.key"), "alice")
    assert json.loads(json.dumps(config)) == config  # written as JSON, read as YAML
    (context,) = config["contexts"]
    assert config["current-context"] == context["name"]
    assert context["context"] == {"cluster": config["clusters"][0]["name"], "user": "alice"}
    assert config["clusters"][0]["cluster"] == {"server": "https://127.0.0.1:6443",
                                                "certificate-authority": str(CA)}
    assert config["users"] == [{"name": "alice", "user": {"client-certificate": "/p/u.crt",
                                                          "client-key": "/p/u.key"}}]


GO_MOD = """module k8s.io/kubernetes

go 1.24.0

godebug default=go1.24

require (
\tk8s.io/api v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""


def test_kubernetes_module_replaces_staging_paths_with_the_published_tags() -> None:
    mod, tools = build.kubernetes_module(GO_MOD)
    staging = "v0." + build.KUBERNETES_VERSION.split(".", 1)[1]
    assert f"require k8s.io/kubernetes {build.KUBERNETES_VERSION}\n" in mod
    assert f"\tk8s.io/api => k8s.io/api {staging}\n" in mod
    assert f"\tk8s.io/client-go => k8s.io/client-go {staging}\n" in mod
    assert "./staging" not in mod
    assert "\ngo 1.24.0\n" in mod and "godebug default=go1.24" in mod
    for name in (build.APISERVER, build.CONTROLLER_MANAGER, *build.TOOLS):
        assert f'_ "k8s.io/kubernetes/cmd/{name}"' in tools
    assert build.ETCD not in tools


def test_etcd_module_requires_the_given_release() -> None:
    mod, main = build.etcd_module("v3.6.5")
    assert mod.endswith("require go.etcd.io/etcd/server/v3 v3.6.5\n")
    assert "etcdmain.Main(os.Args)" in main


def test_regcred_version_is_read_from_the_package_source() -> None:
    assert image.regcred_version('"""doc"""\n\n__version__ = "1.2.3"\n') == "1.2.3"
    assert image.regcred_version()  # the repository's own
    with pytest.raises(ControlPlaneError, match="__version__"):
        image.regcred_version("VERSION = 1\n")


def test_etcd_listens_on_loopback_only() -> None:
    argv = cpconfig.etcd_argv(Path("/bin/etcd"), Path("/run/etcd"), 2379, 2380)
    given = flags(argv)
    assert argv[0] == "/bin/etcd"
    assert given["--data-dir"] == "/run/etcd"
    urls = [given[name] for name in ("--listen-client-urls", "--advertise-client-urls", "--listen-peer-urls",
                                     "--initial-advertise-peer-urls")]
    assert urls == ["http://127.0.0.1:2379", "http://127.0.0.1:2379", "http://127.0.0.1:2380",
                    "http://127.0.0.1:2380"]
    assert given["--initial-cluster"] == "regcred-test=http://127.0.0.1:2380"


def apiserver(aggregator_routing: bool) -> dict[str, str]:
    return flags(cpconfig.apiserver_argv(
        Path("/bin/kube-apiserver"), etcd_port=2379, port=6443, cert_dir=Path("/run/pki"), pki=Pki(),
        kubelet_client=(Path("/p/kc.crt"), Path("/p/kc.key")), audit_policy_file=Path("/run/audit.json"),
        audit_log=Path("/run/logs/audit.jsonl"), aggregator_routing=aggregator_routing))


def test_apiserver_serves_loopback_with_the_runs_ca_as_clusters_run_it() -> None:
    given = apiserver(aggregator_routing=False)
    assert given["--etcd-servers"] == "http://127.0.0.1:2379"
    assert (given["--bind-address"], given["--advertise-address"], given["--secure-port"]) == (
        "127.0.0.1", "127.0.0.1", "6443")
    assert (given["--tls-cert-file"], given["--client-ca-file"]) == ("/p/server.crt", str(CA))
    assert (given["--service-account-key-file"], given["--service-account-signing-key-file"]) == (
        "/p/sa.pub", "/p/sa.key")
    assert given["--authorization-mode"] == "Node,RBAC"
    assert given["--enable-admission-plugins"] == "NodeRestriction"
    assert (given["--kubelet-client-certificate"], given["--kubelet-certificate-authority"]) == (
        "/p/kc.crt", str(CA))
    assert given["--kubelet-preferred-address-types"] == "Hostname"
    assert (given["--audit-policy-file"], given["--audit-log-path"]) == (
        "/run/audit.json", "/run/logs/audit.jsonl")
    assert "--enable-aggregator-routing" not in given
    assert apiserver(aggregator_routing=True)["--enable-aggregator-routing"] == "true"


def test_controller_manager_runs_the_controllers_the_tests_rely_on() -> None:
    argv = cpconfig.controller_manager_argv(Path("/bin/kcm"), Path("/run/kcm.kubeconfig"), Pki(),
                                            pod_network=False)
    given = flags(argv)
    controllers = given["--controllers"].split(",")
    assert {"namespace", "garbagecollector", "serviceaccount", "serviceaccount-token",
            "deployment", "replicaset"} <= set(controllers)
    assert "endpointslice" not in controllers
    assert (given["--kubeconfig"], given["--root-ca-file"]) == ("/run/kcm.kubeconfig", str(CA))
    assert given["--service-account-private-key-file"] == "/p/sa.key"
    with_network = flags(cpconfig.controller_manager_argv(Path("/bin/kcm"), Path("/k"), Pki(),
                                                          pod_network=True))
    assert {"endpoint", "endpointslice"} <= set(with_network["--controllers"].split(","))


def test_apiserver_proxy_never_takes_loopback() -> None:
    env = cpconfig.apiserver_proxy_env("http://127.0.0.1:3128")
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == "http://127.0.0.1:3128"
    assert set(env["NO_PROXY"].split(",")) == {"127.0.0.1", "localhost"}


def test_audit_policy_records_metadata_of_everyone_but_the_apiserver() -> None:
    policy = cpconfig.audit_policy()
    assert policy["kind"] == "Policy"
    assert policy["rules"] == [{"level": "None", "users": ["system:apiserver"]}, {"level": "Metadata"}]
