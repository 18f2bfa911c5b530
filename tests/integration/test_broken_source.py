"""A dockerconfigjson source the kubelet cannot use, or would misread, never reaches a namespace.

Each class of broken source the API server admits (it only checks that the JSON parses) is put
in place of a good one: the CR goes Ready=False with the reason and the entry, an Event says so,
the copies in three synced namespaces keep their content byte for byte (no write at all), and
fixing the source heals them. On the node, a Pod keeps pulling with the copy throughout.
What the kubelet does with each of these: tests/unit/data/kubelet_configs.json.
"""

from __future__ import annotations

import base64
import json

import pytest
from node_fixtures import REGISTRY_USER
from scenario import SERVER, Cluster, password, unique

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("remove_new_credentials")]


def good(server: str, user: str, secret: str) -> bytes:
    """What `kubectl create secret docker-registry` writes."""
    auth = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return json.dumps({"auths": {server: {"username": user, "password": secret, "auth": auth}}}).encode()


def broken_sources(server: str, user: str, secret: str) -> list[tuple[str, bytes, str, str]]:
    """(class, content, Ready reason, words of the message) for every class of broken source."""
    def entry(value: object) -> bytes:
        return json.dumps({"auths": {server: value}}).encode()

    b64 = base64.b64encode
    return [
        ("auth not base64", entry({"auth": secret + "!"}), "InvalidAuthsEntry", "'auth' is not base64"),
        ("auth without a colon", entry({"auth": b64(secret.encode()).decode()}), "InvalidAuthsEntry",
         "does not decode to username:password"),
        ("auth disagrees with the password",
         entry({"username": user, "password": secret, "auth": b64(f"{user}:old".encode()).decode()}),
         "InvalidAuthsEntry", "name different credentials (the kubelet uses 'auth')"),
        ("a field that is not a string", entry({"username": user, "password": 1234}), "InvalidAuthsEntry",
         "'password' is a number, not a string"),
        ("a null entry", entry(None), "InvalidAuthsEntry", "it has no credentials"),
        ("an entry that is a string", entry(f"{user}:{secret}"), "InvalidAuthsEntry",
         "the entry is a string, not an object"),
        ("identitytoken only", entry({"identitytoken": secret}), "InvalidAuthsEntry",
         "only an identitytoken or registrytoken"),
        ("email only", entry({"email": "ops@example.com"}), "InvalidAuthsEntry", "it has no credentials"),
        ("no password", entry({"username": user}), "InvalidAuthsEntry", "it has no password"),
        ("a username with a colon", entry({"username": f"{user}:x", "password": secret}),
         "InvalidAuthsEntry", "the username contains ':'"),
        ("a field given twice",
         f'{{"auths":{{"{server}":{{"username":"{user}","Username":"other","password":"{secret}"}}}}}}'.encode(),
         "InvalidAuthsEntry", "is given more than once"),
        ("bytes that are not UTF-8", entry({"username": user, "password": "PLACEHOLDER"}).replace(
            b"PLACEHOLDER", secret.encode() + b"\xff"), "InvalidJSON", "not UTF-8 text"),
        ("auths that is not an object", json.dumps({"auths": [server]}).encode(), "InvalidJSON",
         "'auths' is an array, not an object"),
        ("two entries for the registry that disagree",
         json.dumps({"auths": {server: {"username": user, "password": secret},
                               f"https://{server}": {"username": user, "password": "old"}}}).encode(),
         "DuplicateRegistry", "name the same registry with different credentials"),
        ("no entry for the registry", json.dumps({"auths": {}}).encode(), "MissingRegistry",
         f"no auths entry for {server}"),
    ]


def put(cluster: Cluster, name: str, content: bytes) -> None:
    cluster.put_source(name, type_="kubernetes.io/dockerconfigjson",
                       data={".dockerconfigjson": base64.b64encode(content).decode()})


def copies(cluster: Cluster, namespaces: list[str], name: str) -> dict[str, tuple[str, str]]:
    """Each namespace's copy: (resourceVersion, data), to compare byte for byte."""
    found = {}
    for namespace in namespaces:
        body = cluster.secret(namespace, name) or {}
        found[namespace] = ((body.get("metadata") or {}).get("resourceVersion", ""),
                            (body.get("data") or {}).get(".dockerconfigjson", ""))
    return found


def refused(cluster: Cluster, name: str, reason: str, words: str, wait_for) -> None:
    """Ready=False with `reason` and `words`, and an Event saying the same."""
    wait_for(lambda: cluster.ready(name).get("reason") == reason and words in cluster.ready(name)["message"],
             timeout=60, message=f"Ready=False {reason} ({words}); now {cluster.ready(name)}")
    assert cluster.ready(name)["status"] == "False"
    wait_for(lambda: any(e.reason == reason and words in e.message for e in cluster.events_for(name)),
             timeout=30, message=f"an Event {reason}")


def test_a_broken_source_leaves_three_namespaces_as_they_were_until_it_is_fixed(
        cluster, operator, fresh_namespaces, wait_for):
    label = unique("broken")
    namespaces = fresh_namespaces(3, labels={"broken-source": label})
    name, secret = unique("cr"), password("good")
    put(cluster, name, good(SERVER, "robot", secret))
    cluster.create_credential(name, {"registries": [{"server": SERVER}], "sourceSecretRef": {"name": name},
                                     "namespaceSelector": {"matchLabels": {"broken-source": label}}})
    for namespace in namespaces:
        wait_for(lambda ns=namespace: cluster.docker_password(ns, name, SERVER) == secret, timeout=60,
                 message=f"the copy in {namespace}")
    for kind, content, reason, words in broken_sources(SERVER, "robot", secret):
        before = copies(cluster, namespaces, name)
        put(cluster, name, content)
        refused(cluster, name, reason, words, wait_for)
        assert copies(cluster, namespaces, name) == before, f"{kind}: a copy was written"
        for text in (json.dumps(cluster.credential(name)), *(e.message for e in cluster.events_for(name))):
            assert secret not in text, f"{kind}: the password is shown"
        # fixed: the copies follow a good source again
        secret = password("fixed")
        put(cluster, name, good(SERVER, "robot", secret))
        for namespace in namespaces:
            wait_for(lambda ns=namespace, s=secret: cluster.docker_password(ns, name, SERVER) == s,
                     timeout=60, message=f"{kind}: healed in {namespace}")
        wait_for(lambda: cluster.ready(name).get("status") == "True", timeout=60, message=f"{kind}: Ready")
    assert secret not in operator.log()


@pytest.mark.node
def test_a_pod_keeps_pulling_while_the_source_is_broken(
        cluster, operator, registry, private_image, pods, fresh_namespaces, wait_for):
    user, secret = registry.login(REGISTRY_USER)
    label = unique("pulling")
    [namespace] = fresh_namespaces(1, labels={"broken-source": label})
    name = unique("cr")
    put(cluster, name, good(registry.host, user, secret))
    cluster.create_credential(name, {"registries": [{"server": registry.host}],
                                     "sourceSecretRef": {"name": name},
                                     "namespaceSelector": {"matchLabels": {"broken-source": label}}})
    wait_for(lambda: name in (cluster.pull_secrets(namespace) or []), timeout=60, message="our entry")
    for kind, content, reason, words in broken_sources(registry.host, user, secret):
        put(cluster, name, content)
        refused(cluster, name, reason, words, wait_for)
        pulled = pods.run(namespace, private_image)
        pods.wait_succeeded(namespace, pulled)
        assert pods.logs(namespace, pulled).strip() == "SUCCESS", kind
    put(cluster, name, good(registry.host, user, secret))
    wait_for(lambda: cluster.ready(name).get("status") == "True", timeout=60, message="Ready again")
    pulled = pods.run(namespace, private_image)
    pods.wait_succeeded(namespace, pulled)
