"""The Helm chart, rendered with `helm template` (no cluster): values reach the objects, guards
hold, bad values are refused by name, and manifests/ is exactly the rendered chart."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from regcred.cli import build_parser, settings_from
from regcred_dev.render_manifests import CHART, differences, render
from support.helm import Helm

SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"


@pytest.fixture(scope="module")
def template(helm):
    """`template(*helm_args)`: the rendered documents of release `regcred` in regcred-system."""
    def render_chart(*args: str) -> list[dict[str, Any]]:
        out = helm("template", "regcred", str(CHART), "--namespace", "regcred-system", *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]
    return render_chart


def only(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [doc for doc in documents if doc["kind"] == kind]
    return found


def container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    [regcred] = only(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(regcred, dict)
    return regcred


def refusal(helm: Helm, *args: str) -> str:
    result = helm("template", "regcred", str(CHART), *args, check=False)
    assert result.returncode != 0, f"helm accepted {args}"
    return result.stderr


def test_manifests_are_the_rendered_chart(helm):
    assert differences(render(helm.binary)) == [], "run `make manifests`"


def test_default_values_are_the_bundle(template):
    documents = template()
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                            "Deployment", "NetworkPolicy", "PodDisruptionBudget", "ClusterKopfPeering",
                            "Service"])  # the admission webhook's
    assert only(documents, "Deployment")["spec"]["replicas"] == 2
    assert "--peering=regcred" in container(documents)["args"]


def test_the_deployment_args_are_regcred_flags_carrying_the_values(template):
    documents = template("--set", "sourceNamespaces={regcred-system,team-secrets}",
                         "--set", "resyncSeconds=60", "--set", "workers=4", "--set", "logFormat=console",
                         "--set", "logLevel=debug", "--set", "metrics.port=9191", "--set", "health.port=8181")
    regcred = container(documents)
    settings = settings_from(build_parser().parse_args(["run", *regcred["args"]]))
    assert settings.source_namespaces == {"regcred-system", "team-secrets"}
    assert (settings.resync_seconds, settings.workers) == (60, 4)
    assert (settings.log_format, settings.log_level) == ("console", "debug")
    assert (settings.metrics_port, settings.health_port) == (9191, 8181)
    assert settings.peering == "regcred"
    ports = {port["name"]: port["containerPort"] for port in regcred["ports"]}
    assert ports == {"metrics": 9191, "health": 8181, "webhook": 9443}


def test_source_namespaces_default_to_the_release_namespace(helm):
    out = helm("template", "regcred", str(CHART), "--namespace", "platform").stdout
    args = container([doc for doc in yaml.safe_load_all(out) if doc])["args"]
    assert "--source-namespaces=platform" in args


def test_metrics_off_turns_the_port_off(template):
    regcred = container(template("--set", "metrics.enabled=false"))
    assert "--metrics-port=0" in regcred["args"]
    assert "metrics" not in [port["name"] for port in regcred["ports"]]


def test_scheduling_security_and_metadata_values_reach_the_pods(template):
    documents = template(
        "--set", "nodeSelector.pool=system", "--set", "tolerations[0].key=dedicated",
        "--set", "tolerations[0].operator=Exists", "--set", "priorityClassName=system-cluster-critical",
        "--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                 ".nodeSelectorTerms[0].matchExpressions[0].key=arch",
        "--set", "commonLabels.team=platform", "--set", "commonAnnotations.owner=ops",
        "--set", "podLabels.tier=control", "--set", "podAnnotations.note=x",
        "--set", "resources.limits.memory=1Gi", "--set", "podSecurityContext.runAsUser=1234")
    pod = only(documents, "Deployment")["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"pool": "system"}
    assert pod["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert "nodeAffinity" in pod["spec"]["affinity"]
    [spread] = pod["spec"]["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == only(documents, "Deployment")["spec"]["selector"][
        "matchLabels"]
    assert pod["metadata"]["labels"]["tier"] == "control"
    assert pod["metadata"]["annotations"]["note"] == "x"
    assert pod["spec"]["securityContext"]["runAsUser"] == 1234
    assert container(documents)["resources"]["limits"]["memory"] == "1Gi"
    for doc in documents:
        assert doc["metadata"]["labels"]["team"] == "platform", doc["kind"]
        assert doc["metadata"]["annotations"]["owner"] == "ops", doc["kind"]
    # The checkov justifications survive extra annotations.
    assert "checkov.io/skip1" in only(documents, "Deployment")["metadata"]["annotations"]


def test_image_digest_wins_over_the_tag(template):
    digest = "sha256:" + "a" * 64
    assert container(template("--set", "image.tag=9.9.9"))["image"] == "regcred:9.9.9"
    assert container(template("--set", f"image.digest={digest}"))["image"] == f"regcred@{digest}"


def test_a_single_replica_gets_no_disruption_budget(template):
    kinds = {doc["kind"] for doc in template("--set", "replicas=1")}
    assert "PodDisruptionBudget" not in kinds
    assert only(template(), "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_service_monitor_needs_its_crd(helm, template):
    message = refusal(helm, "--set", "metrics.serviceMonitor.enabled=true")
    assert "metrics.serviceMonitor.enabled" in message and "ServiceMonitor" in message
    documents = template("--set", "metrics.serviceMonitor.enabled=true",
                         "--api-versions", SERVICE_MONITOR_API)
    monitor = only(documents, "ServiceMonitor")
    [service] = [doc for doc in documents if doc["kind"] == "Service" and doc["metadata"]["name"].endswith(
        "-metrics")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 9090
    message = refusal(helm, "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.enabled=false",
                      "--api-versions", SERVICE_MONITOR_API)
    assert "metrics.enabled" in message


def test_admission_switches_the_webhook_and_everything_it_needs(template):
    on, off = template(), template("--set", "admission.enabled=false", "--set", "admission.port=9555")
    service = only(on, "Service")
    assert service["metadata"]["name"] == "regcred-webhook"
    assert service["spec"]["selector"] == only(on, "Deployment")["spec"]["selector"]["matchLabels"]
    settings = settings_from(build_parser().parse_args(["run", *container(on)["args"]]))
    assert settings.admission is not None
    assert (settings.admission.listen_port, settings.admission.service) == (9443, "regcred-webhook")
    assert settings.admission.tls_secret == "regcred-webhook-tls"
    assert "admissionregistration.k8s.io" in str(only(on, "ClusterRole")["rules"])

    assert "Service" not in {doc["kind"] for doc in off}
    assert settings_from(build_parser().parse_args(["run", *container(off)["args"]])).admission is None
    assert "webhook" not in {port["name"] for port in container(off)["ports"]}
    assert "admissionregistration.k8s.io" not in str(only(off, "ClusterRole")["rules"])
    ingress = only(off, "NetworkPolicy")["spec"]["ingress"]
    assert {port["port"] for rule in ingress for port in rule["ports"]} == {9090, 8080}


def test_credential_provider_switches_the_endpoint_and_everything_it_needs(template):
    on = template("--set", "credentialProvider.enabled=true", "--set", "credentialProvider.cacheSeconds=60",
                  "--set", "credentialProvider.extraHosts={10.9.8.7}")
    settings = settings_from(build_parser().parse_args(["run", *container(on)["args"]]))
    assert settings.provider is not None
    assert (settings.provider.listen_port, settings.provider.cache_seconds) == (9444, 60)
    assert settings.provider.tls_secret == "regcred-provider-tls"
    assert settings.provider.hosts == ("regcred-provider.regcred-system.svc",
                                       "regcred-provider.regcred-system.svc.cluster.local", "10.9.8.7")
    [service] = [doc for doc in on
                 if doc["kind"] == "Service" and doc["metadata"]["name"] == "regcred-provider"]
    assert service["spec"]["ports"] == [{"name": "provider", "port": 443, "targetPort": "provider"}]
    operator_rules = str(next(doc for doc in on if doc["kind"] == "ClusterRole"
                              and doc["metadata"]["name"] == "regcred")["rules"])
    assert "tokenreviews" in operator_rules and "'pods'" in operator_rules
    [node_role] = [doc for doc in on if doc["metadata"]["name"] == "regcred-provider-audience"
                   and doc["kind"] == "ClusterRole"]
    assert node_role["rules"] == [{"apiGroups": [""], "resources": ["regcred.dev/credential-provider"],
                                   "verbs": ["request-serviceaccounts-token-audience"]}]
    ingress = only(on, "NetworkPolicy")["spec"]["ingress"]
    assert 9444 in {port["port"] for rule in ingress for port in rule["ports"]}

    off = template()
    assert settings_from(build_parser().parse_args(["run", *container(off)["args"]])).provider is None
    assert "tokenreviews" not in str(only(off, "ClusterRole")["rules"])
    assert not [doc for doc in off if "provider" in doc["metadata"]["name"]]


def test_the_namespace_object_only_when_asked(template):
    assert "Namespace" not in {doc["kind"] for doc in template()}
    namespace = only(template("--set", "namespace.create=true"), "Namespace")
    assert namespace["metadata"]["labels"]["regcred.dev/ignore"] == "true"


@pytest.mark.parametrize(("value", "named"), [
    ("replicas=two", "replicas"),
    ("replica=3", "replica"),  # a misspelt key
    ("logFormat=xml", "logFormat"),
    ("workers=0", "workers"),
    ("resyncSeconds=-5", "resyncSeconds"),
    ("sourceNamespaces={Team_A}", "sourceNamespaces"),
    ("metrics.port=70000", "port"),
    ("image.pullPolicy=Sometimes", "pullPolicy"),
    ("podDisruptionBudget.minAvailable=half", "minAvailable"),
])
def test_a_bad_value_is_refused_naming_it(helm, value, named):
    message = refusal(helm, "--set", value)
    assert "values don't meet the specifications of the schema" in message
    assert named in message, message
