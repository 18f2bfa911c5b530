"""The plugin and the endpoint over real HTTPS on loopback, with the API calls faked.

The real TokenReview and Pod reads are tests/integration/test_credential_provider.py's; here the
refusals' wiring, the wire format the kubelet reads, and what the plugin does on failures.
"""

from __future__ import annotations

import http.client
import io
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from regcred.admission.tls import issue, utc_now
from regcred.cli import build_parser, settings_from
from regcred.core.matching import NamespaceInfo
from regcred.core.plan import Credential
from regcred.core.provider import resolve
from regcred.core.spec import parse_credential
from regcred.kube.errors import ApiUnavailable
from regcred.metrics import Metrics
from regcred.provider import plugin
from regcred.provider.endpoint import PATH, Endpoint, LiveServed, ProviderServer, PullTally, publish_counts
from regcred.settings import ProviderSettings
from support.builders import OPERATOR_NAMESPACE, PASSWORD, basic_source, cr_body, credential, ns

AUDIENCE = "regcred.dev/credential-provider"
IMAGE = "harbor.example.com/team/app:1"
GOOD, OTHER_AUDIENCE, UNBOUND, DOWN = "good-token", "other-audience-token", "unbound-token", "down"


class FakeApi:
    """TokenReview and Pod reads as the API server would answer them for four tokens."""

    def __init__(self) -> None:
        self.reviews = 0

    def review_token(self, token: str, audience: str) -> dict[str, Any]:
        self.reviews += 1
        if token == DOWN:
            raise ApiUnavailable("create", "tokenreview", 503, "ServiceUnavailable")
        extra = {"authentication.kubernetes.io/pod-name": ["app-1"],
                 "authentication.kubernetes.io/pod-uid": ["uid-1"]}
        return {"authenticated": token in (GOOD, UNBOUND),
                "audiences": [audience] if token in (GOOD, UNBOUND) else [],
                "user": {"username": "system:serviceaccount:team-a:default",
                         "extra": extra if token == GOOD else {}}}

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return {"metadata": {"uid": "uid-1"}, "spec": {"serviceAccountName": "default"}}


class FakeServed:
    def __init__(self, *credentials: Credential) -> None:
        self.list = list(credentials)

    def credentials(self) -> list[Credential]:
        return self.list

    def namespace(self, name: str) -> NamespaceInfo | None:
        return ns(name)


@pytest.fixture
def served() -> FakeServed:
    return FakeServed(credential("harbor-prod", delivery="CredentialProvider", password=PASSWORD))


@pytest.fixture
def endpoint(served, tmp_path: Path) -> Iterator[tuple[str, Path, Metrics, PullTally]]:
    tls = issue(["127.0.0.1"], utc_now())
    ca = tmp_path / "ca.crt"
    ca.write_bytes(tls.ca_cert)
    metrics, tally = Metrics(), PullTally(600)
    options = ProviderSettings(listen_host="127.0.0.1", listen_port=0, audience=AUDIENCE, cache_seconds=42)
    server = ProviderServer(("127.0.0.1", 0), Endpoint(FakeApi(), served, options, metrics, tally))
    server.use_certificate(tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}{PATH}", ca, metrics, tally
    server.shutdown()
    server.server_close()


def run_plugin(url: str, ca: Path, request: dict[str, Any] | str) -> tuple[dict[str, Any], str]:
    stdin = io.StringIO(request if isinstance(request, str) else json.dumps(request))
    stdout, stderr = io.StringIO(), io.StringIO()
    assert plugin.main(["--url", url, "--ca-file", str(ca)], stdin, stdout, stderr) == 0
    return json.loads(stdout.getvalue()), stderr.getvalue()


def kubelet_request(token: str | None = GOOD, image: str = IMAGE) -> dict[str, Any]:
    request = {"apiVersion": plugin.API_VERSION, "kind": "CredentialProviderRequest", "image": image}
    if token is not None:
        request["serviceAccountToken"] = token
    return request


def test_a_matched_pod_gets_the_credential_as_the_kubelet_reads_it(endpoint):
    url, ca, metrics, tally = endpoint
    response, stderr = run_plugin(url, ca, kubelet_request())
    assert response == {
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderResponse",
        "cacheKeyType": "Image", "cacheDuration": "42s",
        "auth": {"harbor.example.com": {"username": "robot", "password": PASSWORD}},
    }
    assert stderr == ""
    assert metrics.provider_requests.labels("answered", "")._value.get() == 1
    assert tally.counts("harbor-prod") == (1, 0)


@pytest.mark.parametrize("token, image, reason", [
    (OTHER_AUDIENCE, IMAGE, "TokenRejected"),
    (UNBOUND, IMAGE, "NotBoundToPod"),
    (GOOD, "quay.io/x/y:1", "NoCredential"),
    (DOWN, IMAGE, "Unavailable"),
])
def test_refusals_answer_an_empty_uncached_auth_and_say_why_on_stderr(endpoint, token, image, reason):
    url, ca, metrics, _ = endpoint
    response, stderr = run_plugin(url, ca, kubelet_request(token, image))
    assert response == plugin.EMPTY
    assert f"refused ({reason})" in stderr
    assert metrics.provider_requests.labels("refused", reason)._value.get() == 1
    assert token not in stderr and PASSWORD not in stderr


def test_an_unmatched_service_account_is_counted_against_the_credential(endpoint, served):
    url, ca, _, tally = endpoint
    served.list = [credential("harbor-prod", delivery="CredentialProvider", service_accounts=("builder",))]
    response, stderr = run_plugin(url, ca, kubelet_request())
    assert response["auth"] == {} and "refused (NotMatched)" in stderr
    assert tally.counts("harbor-prod") == (0, 1)


@pytest.mark.parametrize("request_text, words", [
    ("not json", "not a JSON"),
    (json.dumps({"apiVersion": "v1"}), "is not a credentialprovider"),
    (json.dumps(kubelet_request(token=None)), "no ServiceAccount token"),
    (json.dumps(kubelet_request(image="")), "no image"),
])
def test_bad_requests_from_the_kubelet(endpoint, request_text, words):
    url, ca, _, _ = endpoint
    response, stderr = run_plugin(url, ca, request_text)
    assert response == plugin.EMPTY and words in stderr


def test_an_endpoint_it_cannot_trust_or_reach(endpoint, tmp_path):
    url, _, _, _ = endpoint
    other_ca = tmp_path / "other.crt"
    other_ca.write_bytes(issue(["127.0.0.1"], utc_now()).ca_cert)
    response, stderr = run_plugin(url, other_ca, kubelet_request())
    assert response == plugin.EMPTY and "cannot reach" in stderr and "SSL" in stderr
    response, stderr = run_plugin("https://127.0.0.1:1/v1/credentials", other_ca, kubelet_request())
    assert response == plugin.EMPTY and "cannot reach 127.0.0.1:1" in stderr


@pytest.mark.parametrize("headers, body, status", [
    ({"Content-Length": "x"}, b"", 400),
    ({"Content-Length": "0"}, b"", 400),
    ({}, b"[1]", 403),  # no image, no token
])
def test_malformed_requests_get_an_answer_not_a_traceback(endpoint, headers, body, status):
    url, ca, _, _ = endpoint
    port = int(url.split(":")[2].split("/")[0])
    context = ssl.create_default_context(cafile=ca)
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
    connection.putrequest("POST", PATH)
    for key, value in {"Content-Length": str(len(body)), **headers}.items():
        connection.putheader(key, value)
    connection.endheaders(body)
    response = connection.getresponse()
    assert response.status == status
    assert json.loads(response.read())["reason"] == "BadRequest"
    connection.close()


def test_unconfigured_plugin_says_what_to_set():
    stdout, stderr = io.StringIO(), io.StringIO()
    assert plugin.main([], io.StringIO(json.dumps(kubelet_request())), stdout, stderr) == 0
    assert json.loads(stdout.getvalue()) == plugin.EMPTY and "--url and --ca-file" in stderr.getvalue()


def test_the_plugin_imports_only_the_standard_library():
    code = ("import sys; before = set(sys.modules); import regcred.provider.plugin; "
            "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] not in "
            "sys.stdlib_module_names and m.split('.')[0] != 'regcred'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tally_counts_age_out():
    now = [0.0]
    tally = PullTally(60, clock=lambda: now[0])
    answer = credential("a", delivery="CredentialProvider")
    tally.record(resolve([answer], ns("team-a"), "default", IMAGE))
    assert tally.changed() == {"a"} and tally.counts("a") == (1, 0)
    assert tally.changed() == set()
    now[0] = 61.0
    assert tally.changed() == {"a"} and tally.counts("a") == (0, 0)
    body = {"spec": {"delivery": "CredentialProvider"}}
    assert tally.status_for("a", body, {}) == ((), {"pullTime": {"answered": 0, "refused": 0,
                                                                 "windowSeconds": 60}})
    assert tally.status_for("a", {"spec": {}}, {}) == ((), {"pullTime": None})


def parse(*flags: str) -> ProviderSettings | None:
    return settings_from(build_parser().parse_args(["run", "--namespace", "regcred-system", *flags])).provider


def test_the_endpoint_is_off_unless_asked_for():
    assert parse() is None
    assert parse("--credential-provider", "true", "--credential-provider-listen", "127.0.0.1:8444",
                 "--credential-provider-hosts", "127.0.0.1, provider.example.com",
                 "--credential-provider-cache-seconds", "10") == ProviderSettings(
        "127.0.0.1", 8444, hosts=("127.0.0.1", "provider.example.com"), cache_seconds=10)


@pytest.mark.parametrize("flags", [
    ("--credential-provider", "maybe"),
    ("--credential-provider", "true", "--credential-provider-listen", "9444"),
    ("--credential-provider", "true", "--credential-provider-audience", " "),
    ("--credential-provider", "true", "--credential-provider-cache-seconds", "-1"),
    ("--credential-provider", "true", "--credential-provider-cache-seconds", "5m"),
])
def test_bad_endpoint_flags_say_what_is_wrong(flags):
    with pytest.raises(SystemExit, match="--credential-provider"):
        parse(*flags)


# --- a replica that does not sync (the paused standby) ----------------------------------------

class FakeLiveApi:
    """The CRs, a namespace and the source Secret as live reads return them."""

    def __init__(self, *bodies: dict[str, Any], source=None) -> None:
        self.bodies, self.source = list(bodies), source
        self.source_reads = 0

    def list_credentials(self, *, from_watch_cache: bool = False):
        assert from_watch_cache
        return self.bodies

    def read_namespace(self, name: str) -> dict[str, Any] | None:
        return {"metadata": {"name": name, "labels": {"team": "a"}}}

    def read_source(self, namespace: str, name: str):
        self.source_reads += 1
        return self.source


def parse_cr(body):
    return parse_credential(body, default_source_namespace=OPERATOR_NAMESPACE,
                            allowed_source_namespaces=frozenset({OPERATOR_NAMESPACE}))


def live_served(api: FakeLiveApi, clock=lambda: 0.0) -> LiveServed:
    return LiveServed(api, parse_cr, clock)


def test_a_standby_answers_from_live_reads():
    api = FakeLiveApi(cr_body("a", delivery="CredentialProvider"), source=basic_source(password=PASSWORD))
    options = ProviderSettings(audience=AUDIENCE)
    standby = Endpoint(FakeApi(), FakeServed(), options, Metrics(), PullTally(600), live_served(api))
    status, body = standby.answer(GOOD, IMAGE)
    assert status == 200 and body["auth"]["harbor.example.com"]["password"] == PASSWORD
    assert Endpoint(FakeApi(), FakeServed(), options, Metrics(), PullTally(600)).answer(GOOD, IMAGE)[0] == 403


def test_the_active_replicas_answer_needs_no_live_read(served):
    api = FakeLiveApi()
    options = ProviderSettings(audience=AUDIENCE)
    endpoint = Endpoint(FakeApi(), served, options, Metrics(), PullTally(600), live_served(api))
    assert endpoint.answer(GOOD, IMAGE)[0] == 200
    assert api.source_reads == 0


def test_live_renders_are_reused_for_a_while_and_follow_the_generation():
    now = [0.0]
    body = cr_body("a", delivery="CredentialProvider")
    api = FakeLiveApi(body, source=basic_source())
    live = live_served(api, clock=lambda: now[0])
    assert live.credentials()[0].active and live.credentials()[0].active
    assert api.source_reads == 1
    now[0] = 11.0
    live.credentials()
    assert api.source_reads == 2
    body["metadata"]["generation"] += 1
    live.credentials()
    assert api.source_reads == 3


@pytest.mark.parametrize("body, source", [
    (cr_body("a", delivery="CredentialProvider"), None),  # no source Secret
    (cr_body("a", delivery="CredentialProvider"), basic_source(username="a:b")),  # misread by the kubelet
    (cr_body("a", delivery="CredentialProvider", suspend=True), basic_source()),
    (cr_body("a"), basic_source()),  # delivered by copies only
    (cr_body("a", delivery="CredentialProvider", registries=[]), basic_source()),  # invalid
])
def test_live_reads_serve_nothing_a_syncing_replica_would_not(body, source):
    assert not any(c.active for c in live_served(FakeLiveApi(body, source=source)).credentials())


def test_counts_are_published_only_where_the_replica_syncs_the_credential():
    tally, published = PullTally(600), []
    for name in ("synced-here", "not-here"):
        served_one = credential(name, delivery="CredentialProvider")
        tally.record(resolve([served_one], ns("team-a"), "default", IMAGE))
    publish_counts(tally, lambda name: name == "synced-here", lambda name, wrote: published.append(name))
    assert published == ["synced-here"]
