"""Credential verification: the auth flow against a loopback HTTPS registry (Basic, Bearer),
the pure decisions, and the scheduling with the reconciler's one hook."""

from __future__ import annotations

import random
import socket
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from regcred.core.conditions import CREDENTIALS_VERIFIED as CONDITION
from regcred.core.errors import InvalidInput
from regcred.core.source import render
from regcred.core.verification import (
    Challenge,
    Refused,
    Result,
    Target,
    VerifySettings,
    condition,
    next_check_delay,
    parse_challenge,
    parse_verify,
    registry_origin,
    targets,
    token_url,
)
from regcred.metrics import Metrics
from regcred.sync.ledger import Ledger, StatusPublisher
from regcred.verification.verifier import Verification, check
from regcred_dev.pki import Certificates
from support import fakes
from support.builders import PASSWORD, basic_source, cr_body, make_spec
from support.registry import fake_registry
from support.wait import wait_for

WRONG = "wrong-" + PASSWORD


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certificates:
    return Certificates(Path(tmp_path_factory.mktemp("verify-ca")))


@pytest.fixture(scope="module")
def trusted(certs) -> VerifySettings:
    return VerifySettings(enabled=True, timeout_seconds=5, ca_bundle=certs.ca.read_text())


def target(registry, password: str = PASSWORD) -> Target:
    return Target(registry.server_name, f"https://{registry.server_name}", "robot", password)


# --- the flow against a real (loopback) HTTPS server ------------------------------------------


@pytest.mark.parametrize("mode", ["basic", "bearer"])
def test_the_right_password_is_verified(certs, trusted, mode) -> None:
    with fake_registry(certs, mode, password=PASSWORD) as registry:
        result, message = check(target(registry), trusted)
    assert result == "Verified", message
    assert PASSWORD not in message and registry.token not in message


@pytest.mark.parametrize("mode", ["basic", "bearer"])
def test_a_wrong_password_is_unauthorized(certs, trusted, mode) -> None:
    with fake_registry(certs, mode, password=PASSWORD) as registry:
        result, message = check(target(registry, WRONG), trusted)
    assert result == "Unauthorized", message
    assert WRONG not in message and PASSWORD not in message


def test_bearer_flow_goes_through_the_realm(certs, trusted) -> None:
    with fake_registry(certs, "bearer", password=PASSWORD) as registry:
        check(target(registry), trusted)
    assert registry.seen_authorizations == [("/v2/", ""), ("/token", "Basic"), ("/v2/", "Bearer")]


def test_an_http_realm_never_gets_the_credential(certs, trusted) -> None:
    with fake_registry(certs, "bearer", password=PASSWORD, realm_scheme="http") as registry:
        result, message = check(target(registry), trusted)
    assert result == "UnexpectedResponse" and "not an https URL" in message
    assert registry.seen_authorizations == [("/v2/", "")]


def test_an_untrusted_certificate_is_a_tls_error(certs) -> None:
    with fake_registry(certs, "basic", password=PASSWORD) as registry:
        result, message = check(target(registry), VerifySettings(enabled=True))
    assert result == "TLSError" and "caBundle" in message


def test_redirects_are_not_followed(certs, trusted) -> None:
    with fake_registry(certs, "redirect", password=PASSWORD) as registry:
        result, message = check(target(registry), trusted)
    assert (result, message) == ("UnexpectedResponse", "GET /v2/ (Basic): 302")


@pytest.mark.parametrize(("mode", "expected"), [("anonymous", "Anonymous"), ("error", "UnexpectedResponse")])
def test_other_answers(certs, trusted, mode, expected) -> None:
    with fake_registry(certs, mode, password=PASSWORD) as registry:
        assert check(target(registry), trusted)[0] == expected


def test_a_closed_port_is_unreachable(trusted) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result, message = check(Target(f"127.0.0.1:{port}", f"https://127.0.0.1:{port}", "robot", PASSWORD),
                            trusted)
    assert result == "Unreachable" and "ConnectionRefusedError" in message


def test_a_silent_server_times_out(trusted) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result, message = check(Target("x", f"https://127.0.0.1:{port}", "robot", PASSWORD),
                                replace(trusted, timeout_seconds=1))
    assert (result, message) == ("Unreachable", "no answer within 1s")


def test_a_bad_ca_bundle(certs) -> None:
    settings = VerifySettings(enabled=True, ca_bundle="-----BEGIN CERTIFICATE-----\nnope\n")
    with fake_registry(certs, "basic", password=PASSWORD) as registry:
        assert check(target(registry), settings)[0] == "TLSError"


def test_a_target_never_shows_its_password() -> None:
    assert PASSWORD not in repr(Target("s", "https://s", "robot", PASSWORD))


# --- pure parts ---------------------------------------------------------------------------------


def test_challenges() -> None:
    challenge = parse_challenge('Bearer realm="https://auth.example.com/token",service="registry.docker.io",'
                                'scope="repository:library/busybox:pull"')
    assert challenge.scheme == "bearer"
    assert challenge.params == {"realm": "https://auth.example.com/token", "service": "registry.docker.io",
                                "scope": "repository:library/busybox:pull"}
    assert parse_challenge('Basic realm="Registry Realm"') == Challenge("basic", {"realm": "Registry Realm"})
    assert parse_challenge(None).scheme == ""


def test_token_url() -> None:
    challenge = Challenge("bearer", {"realm": "https://auth.example.com/token?x=1", "service": "reg"})
    assert token_url(challenge, "robot$ci") == "https://auth.example.com/token?x=1&account=robot%24ci&service=reg"
    with pytest.raises(Refused):
        token_url(Challenge("bearer", {"realm": "http://auth.example.com/token"}), "robot")


def test_targets_take_the_credential_of_each_registry() -> None:
    spec = make_spec(servers=("harbor.example.com", "docker.io"))
    found, skipped = targets(spec.servers, render(spec, basic_source()))
    assert [(t.server, t.base, t.username, t.password) for t in found] == [
        ("harbor.example.com", "https://harbor.example.com", "robot", PASSWORD),
        ("docker.io", "https://registry-1.docker.io", "robot", PASSWORD)]
    assert skipped == {}


def test_registry_origin_drops_the_path() -> None:
    assert registry_origin("harbor.example.com:8443/team") == "https://harbor.example.com:8443"


def test_condition_is_the_worst_result() -> None:
    ok, bad = Result("a", "Verified", "200", "t"), Result("b", "Unauthorized", "401", "t")
    assert condition([])["status"] == "Unknown"
    assert condition([ok])["reason"] == "Verified"
    failed = condition([ok, Result("c", "Unreachable", "x", "t"), bad])
    assert (failed["status"], failed["reason"]) == ("False", "Unauthorized")
    assert failed["message"] == "c: Unreachable: x; b: Unauthorized: 401"


def test_jitter_stays_within_ten_percent() -> None:
    rng = random.Random(7)
    delays = [next_check_delay(VerifySettings(interval_seconds=3600), rng) for _ in range(1000)]
    assert 3240 <= min(delays) < 3400 and 3800 < max(delays) <= 3960


@pytest.mark.parametrize("raw", [{"intervalSeconds": 5}, {"timeoutSeconds": 0}, {"caBundle": "nope"}, "yes"])
def test_bad_settings(raw) -> None:
    with pytest.raises(InvalidInput):
        parse_verify({"verify": raw})


def test_settings_defaults() -> None:
    assert parse_verify({}) == VerifySettings()
    assert parse_verify({"verify": {"enabled": True}}) == VerifySettings(enabled=True)


# --- scheduling, and the one hook into status publishing (the real StatusPublisher) ----------


class Harness:
    """A Verification plugged into a real StatusPublisher over the unit fakes; the registry
    answers `self.answer`; checks and republishes are counted."""

    def __init__(self, stale_after: float | None = None) -> None:
        self.api, self.world, self.metrics = fakes.Api(), fakes.World(), Metrics()
        self.world.bodies = {"harbor-prod": verify_body()}
        self.publisher = StatusPublisher(self.api, self.world, Ledger(), self.metrics, clock=lambda: "T")
        self.config = render(make_spec(), basic_source())
        self.answer = ("Verified", "GET /v2/ (Basic): 200")
        self.checks = 0
        self.republished = threading.Event()
        self.verification = Verification(
            self.api, self.metrics, rendered=lambda name: self.config,
            exists=lambda name: name in self.world.bodies, republish=self._republish,
            check_registry=self._check, clock=lambda: "T", stale_after=stale_after)
        self.publisher.extend(self.verification)

    def _check(self, target, settings):
        self.checks += 1
        return self.answer

    def _republish(self, name: str) -> None:
        self.publisher.publish(name, wrote=False)
        self.republished.set()

    def publish(self) -> dict[str, Any]:
        self.publisher.publish("harbor-prod", wrote=False)
        return self.api.statuses[-1]

    def checked(self) -> dict[str, Any]:
        """Publish, and wait for the check it schedules to end and publish again."""
        self.republished.clear()
        self.publisher.publish("harbor-prod", wrote=False)
        assert self.republished.wait(10), "no check ran"
        return self.api.statuses[-1]

    def verify(self, **settings) -> None:
        self.world.bodies["harbor-prod"]["spec"]["verify"].update(settings)

    def metric(self) -> str:
        return generate_latest(self.metrics.registry).decode()


def verify_body() -> dict[str, Any]:
    body = cr_body("harbor-prod", generation=1)
    body["spec"]["verify"] = {"enabled": True}
    return body


def by_type(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


@pytest.fixture
def harness():
    made = Harness()
    yield made
    made.verification.shutdown(wait=True)


def test_first_check_and_its_status(harness) -> None:
    pending = harness.publish()
    assert by_type(pending)[CONDITION]["status"] == "Unknown"
    status = harness.checked()
    assert [c["type"] for c in status["conditions"]] == ["Ready", CONDITION]
    assert {k: by_type(status)[CONDITION][k] for k in ("status", "reason", "observedGeneration")} == {
        "status": "True", "reason": "Verified", "observedGeneration": 1}
    assert status["registries"] == [{"server": "harbor.example.com", "result": "Verified",
                                     "message": "GET /v2/ (Basic): 200", "lastCheckTime": "T",
                                     "sourceResourceVersion": "100"}]
    assert ('regcred_registry_verification{credential="harbor-prod",registry="harbor.example.com",'
            'result="Verified"} 1.0') in harness.metric()
    assert harness.api.events == []  # nothing changed for the worse


def test_resyncs_do_not_recheck_but_a_rotation_does(harness) -> None:
    harness.checked()
    for _ in range(5):
        harness.publish()
    assert harness.checks == 1
    harness.answer = ("Unauthorized", "GET /v2/ (Basic): 401: the registry refuses the credential")
    harness.config = render(make_spec(), basic_source(password="rotated-" + PASSWORD, resource_version="200"))
    status = harness.checked()
    assert harness.checks == 2
    condition = by_type(status)[CONDITION]
    assert (condition["status"], condition["reason"]) == ("False", "Unauthorized")
    assert ("Warning", "VerificationUnauthorized", "harbor.example.com: Unauthorized: GET /v2/ (Basic): "
            "401: the registry refuses the credential") in harness.api.events
    metric = harness.metric()
    assert 'result="Unauthorized"} 1.0' in metric and 'result="Verified"' not in metric


def test_periodic_checks_follow_the_interval(harness, monkeypatch) -> None:
    harness.checked()
    monkeypatch.setattr("regcred.verification.verifier.next_check_delay", lambda settings: 0.0)
    harness.verify(intervalSeconds=11)
    harness.checked()  # a settings change checks at once
    harness.republished.clear()
    assert harness.republished.wait(10), "the periodic check (interval made 0) did not run"


def test_recovery_posts_a_normal_event(harness) -> None:
    harness.answer = ("Unreachable", "no answer within 5s")
    harness.checked()
    harness.answer = ("Verified", "GET /v2/ (Basic): 200")
    harness.config = render(make_spec(), basic_source(resource_version="300", password="other-" + PASSWORD))
    harness.checked()
    assert [e[:2] for e in harness.api.events] == [("Warning", "VerificationUnreachable"),
                                                   ("Normal", "Verified")]


def test_disabling_removes_the_condition_status_and_metric(harness) -> None:
    harness.checked()
    harness.verify(enabled=False)
    status = harness.publish()
    assert [c["type"] for c in status["conditions"]] == ["Ready"]
    assert status["registries"] is None  # removed by the merge patch
    assert "regcred_registry_verification{" not in harness.metric()


def test_a_deleted_credential_is_no_longer_checked(harness, monkeypatch) -> None:
    monkeypatch.setattr("regcred.verification.verifier.next_check_delay", lambda settings: 0.0)
    harness.checked()  # from now on it checks again at once, over and over
    del harness.world.bodies["harbor-prod"]
    wait_for(lambda: "regcred_registry_verification{" not in harness.metric(), timeout=10,
             message="the deleted CR's checks to stop and its metric to go")



def test_a_replica_whose_resyncs_stopped_stops_checking(monkeypatch) -> None:
    """Its own republishes do not count as activity: only publishes from syncs do."""
    monkeypatch.setattr("regcred.verification.verifier.next_check_delay", lambda settings: 0.0)
    harness = Harness(stale_after=1.0)
    try:
        harness.checked()  # checks again at once, over and over, republishing each time
        wait_for(lambda: "regcred_registry_verification{" not in harness.metric(), timeout=10,
                 message="checks to stop once no sync published for stale_after")
        harness.checked()  # a sync publishes again: checking resumes
        assert 'result="Verified"} 1.0' in harness.metric()
    finally:
        harness.verification.shutdown(wait=True)


def test_without_verify_the_status_is_untouched(harness) -> None:
    del harness.world.bodies["harbor-prod"]["spec"]["verify"]
    status = harness.publish()
    assert "registries" not in status and [c["type"] for c in status["conditions"]] == ["Ready"]
    assert harness.checks == 0
