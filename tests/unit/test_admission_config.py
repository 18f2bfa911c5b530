"""The webhook's configuration, certificates and flags (no cluster)."""

from __future__ import annotations

import ssl
from datetime import timedelta

import pytest
from cryptography import x509

from regcred.admission.tls import RENEW_BEFORE, SERVING_LIFETIME, WebhookTLS, issue, renewal, utc_now
from regcred.admission.webhook import (
    WEBHOOK_ID,
    client_config,
    configuration_differs,
    serving_hosts,
    webhooks,
)
from regcred.cli import build_parser, settings_from
from regcred.settings import AdmissionSettings


def sans(tls: WebhookTLS) -> list[str]:
    cert = x509.load_pem_x509_certificate(tls.cert)
    return [str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]


def test_the_certificate_serves_its_hosts_and_loads_into_tls(tmp_path):
    tls = issue(["regcred-webhook.regcred-system.svc", "127.0.0.1"], utc_now())
    assert sans(tls) == ["regcred-webhook.regcred-system.svc", "127.0.0.1"]
    for name, content in (("c", tls.cert), ("k", tls.key)):
        (tmp_path / name).write_bytes(content)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tmp_path / "c", tmp_path / "k")
    assert WebhookTLS.from_secret_data(tls.secret_data()) == tls


def test_renewal_keeps_the_ca_so_the_ca_bundle_stays():
    now = utc_now()
    tls = issue(["127.0.0.1"], now)
    assert renewal(tls, ["127.0.0.1"], now) is None
    later = now + SERVING_LIFETIME - RENEW_BEFORE + timedelta(days=1)
    renewed = renewal(tls, ["127.0.0.1"], later)
    assert renewed is not None and renewed.ca_cert == tls.ca_cert and renewed.cert != tls.cert
    moved = renewal(tls, ["localhost"], now)
    assert moved is not None and moved.ca_cert == tls.ca_cert and sans(moved) == ["localhost"]


@pytest.mark.parametrize("data", [
    {}, {"ca.crt": "eA==", "ca.key": "eA==", "tls.crt": "eA==", "tls.key": "eA=="}, {"ca.crt": "not base64!"},
])
def test_unreadable_material_is_replaced(data):
    assert WebhookTLS.from_secret_data(data) is None
    assert renewal(None, ["127.0.0.1"], utc_now()) is not None


def test_the_webhook_never_blocks_and_sees_only_service_account_creates():
    [hook] = webhooks(client_config(AdmissionSettings(), "regcred-system", "Q0E="), {"matchExpressions": []})
    assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] <= 5
    assert hook["sideEffects"] == "None"
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                              "resources": ["serviceaccounts"], "scope": "Namespaced"}]
    assert hook["clientConfig"]["service"] == {"namespace": "regcred-system", "name": "regcred-webhook",
                                               "port": 443, "path": f"/{WEBHOOK_ID}"}


def test_outside_a_cluster_the_api_server_calls_the_url():
    options = AdmissionSettings(url="https://127.0.0.1:9443")
    assert client_config(options, "x", "Q0E=")["url"] == f"https://127.0.0.1:9443/{WEBHOOK_ID}"
    assert serving_hosts(options, "x") == ["127.0.0.1"]
    assert serving_hosts(AdmissionSettings(), "ns") == ["regcred-webhook.ns.svc",
                                                         "regcred-webhook.ns.svc.cluster.local"]


def test_only_a_difference_in_what_we_set_counts():
    wanted = webhooks(client_config(AdmissionSettings(), "ns", "Q0E="), {"matchExpressions": []})
    stored = {"webhooks": [{**wanted[0], "objectSelector": {}}]}  # a default the server adds
    assert not configuration_differs(stored, wanted)
    assert configuration_differs({"webhooks": [{**wanted[0], "timeoutSeconds": 30}]}, wanted)
    assert configuration_differs({}, wanted)


def parse(*flags: str):
    return settings_from(build_parser().parse_args(["run", "--namespace", "regcred-system", *flags]))


def test_admission_is_off_unless_asked_for():
    assert parse().admission is None
    options = parse("--admission", "true", "--admission-listen", "127.0.0.1:8443",
                    "--admission-url", "https://127.0.0.1:8443").admission
    assert options == AdmissionSettings("127.0.0.1", 8443, "https://127.0.0.1:8443")


@pytest.mark.parametrize("flags", [
    ("--admission", "maybe"),
    ("--admission", "true", "--admission-listen", "9443"),
    ("--admission", "true", "--admission-url", "http://127.0.0.1:9443"),
])
def test_bad_admission_flags_say_what_is_wrong(flags):
    with pytest.raises(SystemExit, match="--admission"):
        parse(*flags)
