"""Our `.dockerconfigjson` is byte for byte what `kubectl create secret docker-registry` writes.

kubectl runs offline here (`--dry-run=client`). It takes one --docker-server per call,
so multi-server renderings are checked as the sorted concatenation of kubectl's entries.
A missing kubectl is a failure, not a skip: this is the contract docs/guarantees.md promises.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from regcred.core.source import DOCKER_HUB_KEY, render
from support.builders import PASSWORD, basic_source, make_spec

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


@functools.cache
def kubectl_dockerconfigjson(server: str, username: str, password: str, email: str | None) -> str:
    """`data[".dockerconfigjson"]` (base64) of kubectl's docker-registry secret."""
    assert os.access(KUBECTL, os.X_OK), f"kubectl not found at {KUBECTL}; it is required for this test"
    args = [
        KUBECTL, "create", "secret", "docker-registry", "probe",
        f"--docker-server={server}", f"--docker-username={username}", f"--docker-password={password}",
    ]
    if email is not None:
        args.append(f"--docker-email={email}")
    args += ["--dry-run=client", "-o", "json"]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "KUBECONFIG": os.devnull}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    secret = json.loads(result.stdout)
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    encoded = secret["data"][".dockerconfigjson"]
    assert isinstance(encoded, str)
    return encoded


def ours(servers: tuple[str, ...], username: str, password: str, email: str | None) -> str:
    return render(make_spec(servers=servers, email=email), basic_source(username, password)).encoded


CASES = {
    "plain": ("harbor.example.com", "robot", PASSWORD, None),
    "email": ("harbor.example.com", "robot", PASSWORD, "ops@example.com"),
    "html and quote characters": ("harbor.example.com", "robot", 'p<a>&b"c\\d', None),
    "html characters in email and username": ("h.io", "r<o>b&t", PASSWORD, "ops+<x>&y@example.com"),
    "unicode": ("harbor.example.com", "rôbot-机器人", "pässwörd-密码-🔑", "öps@exämple.com"),
    "line and paragraph separators": ("harbor.example.com", "robot", "a\u2028b\u2029c", None),
    "control characters": ("harbor.example.com", "robot", "tab\there\x7fdel\x01\x1b\b\f", None),
    "port and path": ("registry.local:5000/team/sub", "robot", PASSWORD, None),
    "ip and port": ("10.1.2.3:5000", "robot", PASSWORD, "a@b.c"),
    "long password": ("ghcr.io", "robot", "x" * 4000 + PASSWORD, None),
    "spaces and symbols": ("ghcr.io", "robot bot", " !#$%'()*+,-./;=?@[]^_`{|}~ ", None),
}


MULTI = {
    "two servers": (("harbor.example.com", "ghcr.io"), "robot", PASSWORD, None),
    "three servers with email": (
        ("zot.local:5000/a", "harbor.example.com", "ghcr.io"), "robot", 'p<>&"\\é', "ops@example.com"),
    "docker hub and others": (("quay.io", "docker.io", "ghcr.io/org"), "robot", "pässwörd", None),
}


def _hub(server: str) -> str:
    return DOCKER_HUB_KEY if server == "docker.io" else server


@pytest.fixture(scope="module", autouse=True)
def _kubectl_in_parallel():
    """Run every kubectl call of this module at once: each is a process start, mostly waiting."""
    calls = set(CASES.values()) | {(DOCKER_HUB_KEY, "robot", PASSWORD, None)}
    calls |= {(_hub(s), u, p, e) for servers, u, p, e in MULTI.values() for s in servers}
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda call: kubectl_dockerconfigjson(*call), calls))


@pytest.mark.parametrize(("server", "username", "password", "email"), CASES.values(), ids=CASES.keys())
def test_single_server_equals_kubectl(server, username, password, email):
    assert ours((server,), username, password, email) == kubectl_dockerconfigjson(
        server, username, password, email
    )


@pytest.mark.parametrize("server", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_docker_hub_equals_kubectl_default_server(server):
    # kubectl's default --docker-server is the key `docker login` writes for Docker Hub.
    expected = kubectl_dockerconfigjson(DOCKER_HUB_KEY, "robot", PASSWORD, None)
    assert ours((server,), "robot", PASSWORD, None) == expected


def _kubectl_entry(server: str, username: str, password: str, email: str | None) -> str:
    """The raw `"server":{...}` member of kubectl's JSON, as bytes on the wire."""
    text = base64.b64decode(kubectl_dockerconfigjson(server, username, password, email)).decode()
    prefix, suffix = '{"auths":{', "}}"
    assert text.startswith(prefix) and text.endswith(suffix), text
    return text[len(prefix):-len(suffix)]


@pytest.mark.parametrize(("servers", "username", "password", "email"), MULTI.values(), ids=MULTI.keys())
def test_several_servers_are_kubectls_entries_sorted(servers, username, password, email):
    keys = sorted(_hub(s) for s in servers)
    members = [_kubectl_entry(key, username, password, email) for key in keys]
    expected = ('{"auths":{' + ",".join(members) + "}}").encode()
    got = base64.b64decode(ours(servers, username, password, email))
    assert got == expected
    assert list(json.loads(got)["auths"]) == keys
