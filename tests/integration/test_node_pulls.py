"""Pulls, not just objects: a kubelet pulls a private image with the copy regcred put in place.

The seed tutorials' own check, on a real node (containerd + kubelet) from a real registry
that refuses anonymous and wrong credentials: a Pod with the private image and
`imagePullPolicy: Always` prints SUCCESS where regcred onboarded the namespace, and shows
`ErrImagePull` with the registry's 401 where it did not.
"""

from __future__ import annotations

import base64
import json

import pytest
from node_fixtures import REGISTRY_USER, start_registry
from scenario import Cluster, password, unique

from regcred_dev import images

pytestmark = [pytest.mark.integration, pytest.mark.node, pytest.mark.usefixtures("remove_new_credentials")]


def onboard(cluster: Cluster, fresh_namespaces, wait_for, servers: list[str], source: str, *,
            service_accounts: tuple[str, ...] = ("default",)) -> tuple[str, str]:
    """A CR for `servers` and the `source` Secret, selecting one fresh namespace by a label of
    its own (its `service_accounts` created if need be); waits until our entry is on each
    account. Returns (CR name, onboarded namespace)."""
    label = unique("pull")
    onboarded = fresh_namespaces(1, labels={"pull-test": label})[0]
    for account in set(service_accounts) - {"default"}:
        cluster.core.create_namespaced_service_account(onboarded, {"metadata": {"name": account}})
    name = unique("cr")
    cluster.create_credential(name, {
        "registries": [{"server": server} for server in servers], "sourceSecretRef": {"name": source},
        "namespaceSelector": {"matchLabels": {"pull-test": label}},
        "serviceAccounts": list(service_accounts)})
    for account in service_accounts:
        wait_for(lambda a=account: name in (cluster.pull_secrets(onboarded, a) or []), timeout=60,
                 message=f"our entry on {onboarded}/{account}")
    return name, onboarded


def basic_source(cluster: Cluster, user: str, secret: str) -> str:
    name = unique("src")
    cluster.put_source(name, username=user, secret=secret)
    return name


def test_onboarded_namespace_pulls_and_unmatched_one_is_refused(
        cluster, operator, registry, private_image, pods, fresh_namespaces, wait_for):
    source = basic_source(cluster, *registry.login(REGISTRY_USER))
    _, onboarded = onboard(cluster, fresh_namespaces, wait_for, [registry.host], source)
    [unmatched] = fresh_namespaces(1)

    pulled = pods.run(onboarded, private_image)
    pods.wait_succeeded(onboarded, pulled)
    assert pods.logs(onboarded, pulled).strip() == "SUCCESS"
    reasons = [reason for reason, message in pods.events(onboarded, pulled) if private_image in message]
    assert "Pulling" in reasons and "Pulled" in reasons, pods.event_messages(onboarded, pulled)

    refused = pods.run(unmatched, private_image)
    message = pods.wait_refused(unmatched, refused)
    assert "401 Unauthorized" in message, message


def test_rotation_pulls_with_the_new_password_and_the_old_one_is_refused(
        cluster, operator, registry, private_image, pods, fresh_namespaces, wait_for):
    user, old = unique("rotated"), password("old")
    registry.set_password(user, old)
    source = basic_source(cluster, user, old)
    name, onboarded = onboard(cluster, fresh_namespaces, wait_for, [registry.host], source)
    before = pods.run(onboarded, private_image)
    pods.wait_succeeded(onboarded, before)

    new = password("new")
    registry.set_password(user, new)  # the registry refuses the old password from now on
    assert registry.status("/v2/", (user, old)) == 401
    stale = pods.run(onboarded, private_image)
    assert "401 Unauthorized" in pods.wait_refused(onboarded, stale)

    cluster.rotate_source(source, new)
    wait_for(lambda: cluster.docker_password(onboarded, name, registry.host) == new, timeout=60,
             message="the copy follows the source Secret")
    after = pods.run(onboarded, private_image)
    pods.wait_succeeded(onboarded, after)
    assert pods.logs(onboarded, after).strip() == "SUCCESS"


def test_each_registry_entry_is_used_for_its_own_images(
        control_plane, node, cluster, operator, registry, private_image, pods, fresh_namespaces, wait_for):
    """`HOST:PORT/team` and a second registry in one CR, each with its own credentials: the
    kubelet picks the entry by its own matching rules; an image outside `/team` gets none."""
    second = start_registry(control_plane, {"second": password("second")}, node=node, name="registry-2")
    try:
        other_path = registry.push(images.success_image(), "other/success", "1", REGISTRY_USER)
        on_second = second.push(images.success_image(), "success", "1", "second")
        team_server = f"{registry.host}/team"
        auths = {team_server: _auth(*registry.login(REGISTRY_USER)),
                 second.host: _auth(*second.login("second"))}
        source = unique("src")
        cluster.put_source(source, type_="kubernetes.io/dockerconfigjson",
                           data={".dockerconfigjson": _b64(json.dumps({"auths": auths}))})
        _, onboarded = onboard(cluster, fresh_namespaces, wait_for, [team_server, second.host], source)

        for image in (private_image, on_second):
            pulled = pods.run(onboarded, image)
            pods.wait_succeeded(onboarded, pulled)
            assert pods.logs(onboarded, pulled).strip() == "SUCCESS"
        outside = pods.run(onboarded, other_path)
        assert "401 Unauthorized" in pods.wait_refused(onboarded, outside)
    finally:
        second.stop()


def test_a_matched_service_account_other_than_default_pulls(
        cluster, operator, registry, private_image, pods, fresh_namespaces, wait_for):
    name, namespace = onboard(cluster, fresh_namespaces, wait_for, [registry.host],
                                 basic_source(cluster, *registry.login(REGISTRY_USER)),
                                 service_accounts=("builder",))
    pulled = pods.run(namespace, private_image, service_account="builder")
    pods.wait_succeeded(namespace, pulled)
    assert pods.logs(namespace, pulled).strip() == "SUCCESS"
    assert name not in (cluster.pull_secrets(namespace) or []), "default is not in serviceAccounts"
    refused = pods.run(namespace, private_image)  # the default ServiceAccount carries nothing
    assert "401 Unauthorized" in pods.wait_refused(namespace, refused)


def _auth(user: str, secret: str) -> dict[str, str]:
    return {"username": user, "password": secret, "auth": _b64(f"{user}:{secret}")}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
