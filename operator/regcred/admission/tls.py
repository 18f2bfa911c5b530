"""The webhook's certificates: a CA of regcred's own and the serving certificate it signs.

The API server only calls webhooks over TLS, trusting the `caBundle` of the webhook
configuration. Every replica must serve a certificate that bundle trusts, so the material
lives in one Secret (regcred-webhook-tls) that the first replica creates and the others
read. Renewal issues a new serving certificate from the same CA, so the `caBundle` stays
and replicas that have not reloaded yet keep working. Key material is never logged.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_LIFETIME = timedelta(days=3650)
SERVING_LIFETIME = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)  # a serving certificate this close to expiry is re-issued
KEYS = ("ca.crt", "ca.key", "tls.crt", "tls.key")


@dataclass(frozen=True)
class WebhookTLS:
    """PEM-encoded CA and serving certificate with their keys."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes

    def secret_data(self) -> dict[str, str]:
        values = (self.ca_cert, self.ca_key, self.cert, self.key)
        return {key: base64.b64encode(value).decode() for key, value in zip(KEYS, values, strict=True)}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> WebhookTLS | None:
        """None when the Secret lacks a key or holds something that is not PEM we can load."""
        try:
            values = [base64.b64decode(data[key], validate=True) for key in KEYS]
            tls = cls(*values)
            x509.load_pem_x509_certificate(tls.ca_cert)
            x509.load_pem_x509_certificate(tls.cert)
            serialization.load_pem_private_key(tls.ca_key, None)
            serialization.load_pem_private_key(tls.key, None)
        except (KeyError, ValueError, TypeError):
            return None
        return tls


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue(hosts: Sequence[str], now: datetime, ca: WebhookTLS | None = None) -> WebhookTLS:
    """A serving certificate for `hosts` (DNS names or IPs), signed by `ca`'s CA when given
    (a renewal keeps the CA), else by a new one."""
    if ca is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder().subject_name(_name("regcred-webhook-ca"))
            .issuer_name(_name("regcred-webhook-ca")).public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        ca_pem, ca_key_pem = ca_cert.public_bytes(serialization.Encoding.PEM), _key_pem(ca_key)
    else:
        ca_pem, ca_key_pem = ca.ca_cert, ca.ca_key
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
        ca_key = serialization.load_pem_private_key(ca_key_pem, None)  # type: ignore[assignment]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(now + SERVING_LIFETIME, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return WebhookTLS(ca_pem, ca_key_pem, cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def renewal(tls: WebhookTLS | None, hosts: Sequence[str], now: datetime) -> WebhookTLS | None:
    """What to store instead of `tls`, or None if it serves `hosts` well past `now`: new
    material when there is none (or it is unreadable), a new serving certificate from the
    same CA when the current one nears expiry or names other hosts; a CA near expiry starts over."""
    if tls is None:
        return issue(hosts, now)
    ca_cert = x509.load_pem_x509_certificate(tls.ca_cert)
    if ca_cert.not_valid_after_utc - now < RENEW_BEFORE + SERVING_LIFETIME / 12:
        return issue(hosts, now)
    cert = x509.load_pem_x509_certificate(tls.cert)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return issue(hosts, now, ca=tls)
    if set(names) != set(_alt_names(hosts)) or cert.not_valid_after_utc - now < RENEW_BEFORE:
        return issue(hosts, now, ca=tls)
    return None


def utc_now() -> datetime:
    return datetime.now(UTC)
