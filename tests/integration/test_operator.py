"""The core scenarios, with the real `regcred run` process against a real control plane.

Each test works in namespaces of its own, selected by a label unique to the test, so
tests cannot see each other's copies. The resync interval is long (10 min): every
repair seen here comes from watch events, not from the periodic safety net.
"""

from __future__ import annotations

from typing import Any

import pytest
from scenario import (
    PASSWORD_MARK,
    SERVER,
    create_synced,
    credential_spec,
    password,
    unique,
)

from support.leaks import assert_not_shown

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("remove_new_credentials")]


def test_copies_land_in_exactly_the_matching_namespaces(cluster, operator, tenant, wait_for):
    inside = tenant(2)
    outside = tenant(1, **{"regcred.dev/ignore": "true"})
    cluster.set_pull_secrets(inside[0], ["theirs-a", "theirs-b"])
    name = unique("cr")
    secret = cluster.put_source(name)
    cluster.create_credential(name, credential_spec(name, tenant.selector))

    for namespace in inside:
        wait_for(lambda ns=namespace: cluster.docker_password(ns, name, SERVER) == secret,
                 message=f"copy in {namespace}")
        wait_for(lambda ns=namespace: name in (cluster.pull_secrets(ns) or []),
                 message=f"default SA entry in {namespace}")
    assert cluster.pull_secrets(inside[0]) == ["theirs-a", "theirs-b", name]
    copy = cluster.secret(inside[0], name)
    assert copy["type"] == "kubernetes.io/dockerconfigjson"
    assert copy["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "regcred"
    assert copy["metadata"]["labels"]["regcred.dev/credential"] == name
    owner = copy["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["blockOwnerDeletion"]) == (
        "RegistryCredential", name, False)
    assert cluster.secret(outside[0], name) is None
    wait_for(lambda: cluster.ready(name).get("status") == "True", message="Ready=True")
    status = cluster.credential(name)["status"]
    assert (status["matchedNamespaces"], status["syncedNamespaces"]) == (2, 2)
    assert cluster.ready(name)["message"] == "2/2 namespaces"


def test_late_namespace_is_onboarded_with_its_default_service_account(
        cluster, operator, tenant, wait_for):
    name = unique("cr")
    cluster.put_source(name)
    cluster.create_credential(name, credential_spec(name, tenant.selector))
    wait_for(lambda: cluster.ready(name).get("status") == "True", message="Ready")
    [late] = tenant(1, with_service_account=False)
    wait_for(lambda: cluster.secret(late, name) is not None, message="copy in late namespace")
    wait_for(lambda: cluster.pull_secrets(late) == [name], message="entry on late default SA")


def test_relabelled_namespace_is_cleaned_up_and_nothing_else(cluster, operator, tenant, wait_for):
    [namespace] = tenant(1)
    name = create_synced(cluster, tenant.selector, [namespace])
    cluster.set_pull_secrets(namespace, ["before", name, "after"])
    cluster.label_namespace(namespace, {"tenant": None})
    wait_for(lambda: cluster.secret(namespace, name) is None, message="copy removed")
    wait_for(lambda: cluster.pull_secrets(namespace) == ["before", "after"], message="entry removed")


def test_rotation_updates_every_copy_and_leaves_service_accounts_alone(
        cluster, operator, tenant, wait_for):
    namespaces = tenant(3)
    name = create_synced(cluster, tenant.selector, namespaces)
    accounts = {ns: cluster.resource_version("serviceaccount", ns, "default") for ns in namespaces}

    rotated = password("rotated")
    cluster.rotate_source(name, rotated)
    for namespace in namespaces:
        wait_for(lambda ns=namespace: cluster.docker_password(ns, name, SERVER) == rotated,
                 message=f"rotated copy in {namespace}")
    wait_for(lambda: "lastRotationTime" in cluster.credential(name)["status"], message="rotation time")
    assert {ns: cluster.resource_version("serviceaccount", ns, "default") for ns in namespaces} == accounts
    assert any(e.reason == "Rotated" for e in cluster.events_for(name))


def test_drift_is_repaired_without_waiting_for_the_resync(cluster, operator, tenant, wait_for):
    [namespace] = tenant(1)
    name = unique("cr")
    secret = cluster.put_source(name)
    cluster.create_credential(name, credential_spec(name, tenant.selector))
    wait_for(lambda: cluster.pull_secrets(namespace) == [name], message="entry")

    cluster.core.delete_namespaced_secret(name, namespace)
    wait_for(lambda: cluster.docker_password(namespace, name, SERVER) == secret, message="recreated")

    cluster.core.patch_namespaced_secret(
        name, namespace, {"metadata": {"labels": {"extra": "edit"}}},
        _content_type="application/merge-patch+json")
    wait_for(lambda: "extra" not in cluster.secret(namespace, name)["metadata"]["labels"],
             message="hand edit reverted")

    cluster.set_pull_secrets(namespace, ["theirs"])
    wait_for(lambda: cluster.pull_secrets(namespace) == ["theirs", name], message="entry re-added")


def test_secret_we_do_not_own_is_left_alone_and_reported(cluster, operator, tenant, wait_for):
    [namespace] = tenant(1)
    name = unique("cr")
    cluster.core.create_namespaced_secret(namespace, {
        "metadata": {"name": name}, "type": "Opaque", "data": {"mine": "eA=="}})
    cluster.put_source(name)
    cluster.create_credential(name, credential_spec(name, tenant.selector))
    wait_for(lambda: cluster.ready(name).get("reason") == "Conflict", message="Conflict reported")
    failed = cluster.credential(name)["status"]["failedNamespaces"]
    assert failed == [{"namespace": namespace, "reason": "Conflict",
                       "message": f"secret {name} exists and is not managed by regcred"}]
    foreign = cluster.secret(namespace, name)
    assert foreign["type"] == "Opaque" and foreign["data"] == {"mine": "eA=="}
    assert name not in (cluster.pull_secrets(namespace) or [])


def test_two_credentials_claiming_one_name_the_first_keeps_it(cluster, operator, tenant, wait_for):
    [namespace] = tenant(1)
    first, second = unique("first"), unique("second")
    shared = unique("shared")
    cluster.put_source(first)
    cluster.put_source(second)
    cluster.create_credential(first, credential_spec(first, tenant.selector, target={"secretName": shared}))
    wait_for(lambda: cluster.secret(namespace, shared) is not None, message="first copy")
    cluster.create_credential(second, credential_spec(second, tenant.selector, target={"secretName": shared}))
    wait_for(lambda: cluster.ready(second).get("reason") == "Conflict", message="second in conflict")
    assert cluster.secret(namespace, shared)["metadata"]["labels"]["regcred.dev/credential"] == first
    assert cluster.ready(first).get("status") == "True"


def test_changed_credential_moves_copies_and_entries(cluster, operator, tenant, wait_for):
    keep, drop = tenant(1, tier="gold"), tenant(1, tier="silver")
    name = unique("cr")
    secret = cluster.put_source(name)
    cluster.create_credential(name, credential_spec(name, tenant.selector))
    for namespace in keep + drop:
        wait_for(lambda ns=namespace: cluster.pull_secrets(ns) == [name], message="entry")

    renamed = unique("renamed")
    cluster.patch_credential(name, {
        "target": {"secretName": renamed},
        "registries": [{"server": "other.example.com"}],
        "namespaceSelector": {"matchLabels": {"tenant": tenant.label, "tier": "gold"}},
    })
    wait_for(lambda: cluster.docker_password(keep[0], renamed, "other.example.com") == secret,
             message="renamed copy with new registry")
    wait_for(lambda: cluster.pull_secrets(keep[0]) == [renamed], message="entry renamed")
    wait_for(lambda: cluster.secret(keep[0], name) is None, message="old copy gone")
    wait_for(lambda: cluster.secret(drop[0], name) is None, message="unmatched copy gone")
    wait_for(lambda: cluster.pull_secrets(drop[0]) == [], message="unmatched entry gone")


def test_deleted_credential_removes_copies_and_entries(cluster, operator, tenant, wait_for):
    [namespace] = tenant(1)
    name = create_synced(cluster, tenant.selector, [namespace])
    cluster.set_pull_secrets(namespace, ["theirs", name])
    cluster.delete_credential(name)
    wait_for(lambda: cluster.credential(name) is None, message="CR gone (finalizer released)")
    wait_for(lambda: cluster.secret(namespace, name) is None, message="copy gone")
    wait_for(lambda: cluster.pull_secrets(namespace) == ["theirs"], message="only our entry gone")


def test_credential_deleted_while_operator_is_down(cluster, operator, tenant, wait_for):
    [namespace] = tenant(1)
    name = create_synced(cluster, tenant.selector, [namespace])
    operator.stop()
    cluster.delete_credential(name)
    # Our finalizer holds the CR while we are away: remove it as the README tells users to.
    cluster.custom.patch_cluster_custom_object(
        "regcred.dev", "v1alpha1", "registrycredentials", name,
        {"metadata": {"finalizers": None}}, _content_type="application/merge-patch+json")
    wait_for(lambda: cluster.secret(namespace, name) is None, timeout=60,
             message="copy removed by the garbage collector")
    assert cluster.pull_secrets(namespace) == [name]
    operator.start()
    wait_for(lambda: cluster.pull_secrets(namespace) == [], message="entry removed at next start")


@pytest.mark.parametrize(
    ("data", "type_", "reason"),
    [
        ({"username": "cm9ib3Q="}, "kubernetes.io/basic-auth", "MissingKey"),
        ({"username": "cm9ib3Q=", "password": "%%%"}, "Opaque", "InvalidBase64"),
        # The API server only admits valid JSON here; valid JSON without "auths" is ours to refuse.
        ({".dockerconfigjson": "eyJ4IjogMX0="}, "kubernetes.io/dockerconfigjson", "InvalidJSON"),
        ({"tls.crt": "eA==", "tls.key": "eA=="}, "kubernetes.io/tls", "UnsupportedSourceType"),
    ],
)
def test_malformed_source_is_reported_and_writes_nothing(
        cluster, operator, tenant, wait_for, data, type_, reason):
    [namespace] = tenant(1)
    name = unique("cr")
    if reason == "InvalidBase64":  # the API server itself refuses bad base64 in data
        data = {"username": "cm9ib3Q=", "password": ""}
        reason = "EmptyValue"
    cluster.put_source(name, type_=type_, data=data)
    cluster.create_credential(name, credential_spec(name, tenant.selector))
    wait_for(lambda: cluster.ready(name).get("reason") == reason, message=f"Ready=False {reason}")
    assert cluster.ready(name)["status"] == "False"
    assert cluster.secret(namespace, name) is None
    assert name not in (cluster.pull_secrets(namespace) or [])


def test_missing_and_disallowed_sources(cluster, operator, tenant, wait_for):
    name = unique("cr")
    cluster.create_credential(name, credential_spec(name, tenant.selector))
    wait_for(lambda: cluster.ready(name).get("reason") == "SourceNotFound", message="not found")
    other = unique("cr")
    cluster.create_credential(
        other, credential_spec(name, tenant.selector, sourceSecretRef={"name": "x", "namespace": "default"}))
    wait_for(lambda: cluster.ready(other).get("reason") == "SourceNotAllowed", message="refused")


def test_suspend_stops_writes_and_resume_converges(cluster, operator, tenant, wait_for):
    [namespace] = tenant(1)
    name = unique("cr")
    secret = cluster.put_source(name)
    cluster.create_credential(name, credential_spec(name, tenant.selector))
    wait_for(lambda: cluster.docker_password(namespace, name, SERVER) == secret, message="copy")
    cluster.patch_credential(name, {"suspend": True})
    wait_for(lambda: cluster.ready(name).get("reason") == "Suspended", message="Suspended")
    rotated = password("while-suspended")
    cluster.rotate_source(name, rotated)
    [late] = tenant(1)
    # The late namespace is observed (matched count grows) but gets nothing while suspended.
    wait_for(lambda: cluster.credential(name)["status"]["matchedNamespaces"] == 2, message="seen")
    assert cluster.secret(late, name) is None
    assert cluster.docker_password(namespace, name, SERVER) == secret
    cluster.patch_credential(name, {"suspend": False})
    wait_for(lambda: cluster.docker_password(namespace, name, SERVER) == rotated, message="rotated")
    wait_for(lambda: cluster.secret(late, name) is not None, message="late copy")


def test_restart_with_nothing_changed_writes_nothing(cluster, operator, tenant, wait_for):
    namespaces = tenant(2)
    name = create_synced(cluster, tenant.selector, namespaces)

    def versions() -> dict[str, Any]:
        seen = {"cr": cluster.credential(name)["metadata"]["resourceVersion"]}
        for ns in namespaces:
            seen[ns] = (cluster.resource_version("secret", ns, name),
                        cluster.resource_version("serviceaccount", ns, "default"))
        return seen

    before = versions()
    operator.stop()
    operator.start()
    total = len([c for c in cluster.credentials() if not c["metadata"].get("deletionTimestamp")])
    wait_for(lambda: operator.metric_sum("regcred_reconciles_total", kind="credential") >= total,
             message="the restarted operator has resumed every CR")
    assert versions() == before


def shown_by(cluster, operator) -> dict[str, str]:
    """What regcred shows: its log and metrics, the CRs' status, and every event."""
    log = operator.log()
    assert log, "the operator wrote no log"
    events = cluster.core.list_event_for_all_namespaces()
    return {"log": log, "metrics": operator.metrics(),
            "status": str([c.get("status") for c in cluster.credentials()]),
            "events": str([(e.reason, e.message) for e in events.items])}


@pytest.fixture(scope="module", autouse=True)
def no_secret_shown_by_this_module(cluster, operator):
    """After the module, whatever order its tests ran in: none of their passwords (each
    carries PASSWORD_MARK) shows in anything the operator wrote."""
    yield
    assert_not_shown(PASSWORD_MARK, **shown_by(cluster, operator))


def test_no_secret_material_in_logs_status_or_events(cluster, operator, tenant, wait_for):
    """A CR synced and rotated (both passwords carry PASSWORD_MARK): neither shows."""
    [namespace] = tenant(1)
    name = create_synced(cluster, tenant.selector, [namespace])
    rotated = password("leak-check")
    cluster.rotate_source(name, rotated)
    wait_for(lambda: cluster.docker_password(namespace, name, SERVER) == rotated,
             message="rotated copy")
    wait_for(lambda: any(e.reason == "Rotated" for e in cluster.events_for(name)),
             message="Rotated event")
    assert_not_shown(PASSWORD_MARK, **shown_by(cluster, operator))
