"""Smoke tests of the control plane itself: it must behave like a real cluster where the
operator depends on it (controller-manager loops, JSON Patch semantics, metrics, restarts)."""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from regcred_dev.build import KUBERNETES_VERSION
from regcred_dev.controlplane import ControlPlane
from support.wait import wait_for

JSON_PATCH = "application/json-patch+json"


def read_or_none(read, *args):
    try:
        return read(*args)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def test_version_and_default_service_account_in_a_new_namespace(kube, fresh_namespaces):
    assert client.VersionApi(kube).get_code().git_version == KUBERNETES_VERSION
    core = client.CoreV1Api(kube)
    [namespace] = fresh_namespaces()
    account = wait_for(lambda: read_or_none(core.read_namespaced_service_account, "default", namespace),
                       timeout=30, message=f"default ServiceAccount in {namespace}")
    assert account.metadata.name == "default"


def test_namespaced_dependent_of_a_deleted_cluster_scoped_owner_is_collected(kube, fresh_namespaces):
    """The shape regcred relies on: a Secret owned by a cluster-scoped object."""
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    [namespace] = fresh_namespaces()
    owner = rbac.create_cluster_role({"metadata": {"name": f"owner-{uuid.uuid4().hex[:6]}"}})
    reference = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                 "name": owner.metadata.name, "uid": owner.metadata.uid, "blockOwnerDeletion": False}
    core.create_namespaced_secret(namespace, {"metadata": {"name": "owned", "ownerReferences": [reference]},
                                              "stringData": {"k": "v"}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "bystander"}, "stringData": {"k": "v"}})
    rbac.delete_cluster_role(owner.metadata.name)
    wait_for(lambda: read_or_none(core.read_namespaced_secret, "owned", namespace) is None,
             timeout=60, message="garbage collection of the owned Secret")
    assert read_or_none(core.read_namespaced_secret, "bystander", namespace) is not None


def test_namespace_deletion_completes(kube, fresh_namespaces):
    core = client.CoreV1Api(kube)
    [namespace] = fresh_namespaces()
    core.create_namespaced_secret(namespace, {"metadata": {"name": "content"}, "stringData": {"k": "v"}})
    core.delete_namespace(namespace)
    wait_for(lambda: read_or_none(core.read_namespace, namespace) is None,
             timeout=60, message=f"namespace {namespace} gone")


def test_json_patch_with_a_failing_test_op_is_rejected_with_422(kube, fresh_namespaces):
    core = client.CoreV1Api(kube)
    [namespace] = fresh_namespaces()
    account = wait_for(lambda: read_or_none(core.read_namespaced_service_account, "default", namespace),
                       message="default ServiceAccount")
    stale = str(int(account.metadata.resource_version) - 1)
    patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": stale},
             {"op": "add", "path": "/imagePullSecrets", "value": [{"name": "x"}]}]
    with pytest.raises(ApiException) as raised:
        core.patch_namespaced_service_account("default", namespace, patch, _content_type=JSON_PATCH)
    assert raised.value.status == 422
    version = account.metadata.resource_version
    current = [{"op": "test", "path": "/metadata/resourceVersion", "value": version},
               {"op": "add", "path": "/imagePullSecrets", "value": [{"name": "x"}]}]
    patched = core.patch_namespaced_service_account("default", namespace, current, _content_type=JSON_PATCH)
    assert [ref.name for ref in patched.image_pull_secrets] == ["x"]


def test_metrics_and_audit_log_count_requests_by_verb_and_user(control_plane: ControlPlane, kube,
                                                               fresh_namespaces):
    [namespace] = fresh_namespaces()
    assert 'apiserver_request_total{' in control_plane.metrics()
    assert any('verb="POST"' in line and 'resource="namespaces"' in line
               for line in control_plane.metrics().splitlines()
               if line.startswith("apiserver_request_total{"))
    creates = [event for event in control_plane.audit_events()
               if event["verb"] == "create" and event.get("objectRef", {}).get("resource") == "namespaces"
               and event["objectRef"].get("name") == namespace]
    assert [event["user"]["username"] for event in creates] == ["admin"]


def test_other_identities_are_subject_to_rbac(control_plane: ControlPlane):
    from kubernetes import config
    nobody = config.new_client_from_config(config_file=str(control_plane.user_kubeconfig("nobody")))
    with nobody, pytest.raises(ApiException) as raised:
        client.CoreV1Api(nobody).list_namespace()
    assert raised.value.status == 403


def test_etcd_and_apiserver_restart_in_place_and_keep_data(control_plane: ControlPlane, kube,
                                                            fresh_namespaces):
    core = client.CoreV1Api(kube)
    [before] = fresh_namespaces()
    server = control_plane.server
    control_plane.restart_etcd(graceful=False)  # a crash; graceful works too but takes ~7s more
    control_plane.restart_apiserver()
    assert control_plane.server == server
    assert read_or_none(core.read_namespace, before) is not None  # same client, same port, same data
    assert json.loads(control_plane.get("/version")[1])["gitVersion"] == KUBERNETES_VERSION
    [after] = fresh_namespaces()  # the controller-manager reconnected and still works
    wait_for(lambda: read_or_none(core.read_namespaced_service_account, "default", after),
             timeout=30, message=f"default ServiceAccount in {after} after the restarts")
