"""A failed API call, typed by what it means: callers catch by meaning and never look at a
status code or a reason word; whether trying again soon is worth it belongs to the type.

Its message says, for a person, which server, what went wrong and the fix: the cause is
classified here, once, from the status or from the connection error's type (and a TLS
failure's verification code), never from message text. docs/operations.md has the table.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import urllib3


class KubeError(Exception):
    """A failed API call: `status` is the HTTP code (0: no answer, e.g. the API server is
    unreachable), `reason` the API's reason word (or the connection error's type).

    `api_error` makes the subclass that says what the failure means, so callers catch by
    meaning (`ApiConflict`, `ApiNotFound`...) and never look at the reason word.
    """

    # Worth trying again soon (the work queue's backoff): no answer, a conflict, throttling
    # or a server error. Each subclass says; nothing else keeps a list of statuses for it.
    transient: ClassVar[bool] = False

    def __init__(self, verb: str, what: str, status: int, reason: str, *, server: str = "",
                 cause: Cause | None = None) -> None:
        where = f" at {server}" if server else ""
        said = f"{cause.words}; {cause.fix}" if cause else f"{status} {reason}"
        super().__init__(f"{verb} {what}{where}: {said}")
        self.status = status
        self.reason = reason
        self.server = server
        self.cause = cause


class ApiUnavailable(KubeError):
    """No answer, a timeout, throttling or a server error: try again later."""

    transient = True


class ApiConflict(KubeError):
    """409: the object changed since it was read, or exists already."""

    transient = True


class ApiNotFound(KubeError):
    """404 where the object was expected to exist."""


class ApiInvalid(KubeError):
    """422: the API refused the request body; for a guarded JSON Patch, a `test` op failed."""


class ApiRefused(KubeError):
    """Any other refusal (400, 401, 403...): trying again will not help."""


def api_error(verb: str, what: str, status: int, reason: str, *, server: str = "",
              cause: Cause | None = None) -> KubeError:
    """The `KubeError` subclass for an HTTP status: the one place a status is read."""
    kind: type[KubeError]
    if status == 409:
        kind = ApiConflict
    elif status == 404:
        kind = ApiNotFound
    elif status == 422:
        kind = ApiInvalid
    elif status in (0, 408, 429) or status >= 500:
        kind = ApiUnavailable
    else:
        kind = ApiRefused
    return kind(verb, what, status, reason, server=server, cause=cause)


# --- why a call failed, for the person reading the message -------------------------------------


@dataclass(frozen=True)
class Cause:
    """Why an API call failed, in words, and what to do about it (never a token or password)."""

    code: str  # stable, for logs, tests and docs: ConnectionRefused, TLSUnknownAuthority...
    words: str
    fix: str


REFUSED = Cause("ConnectionRefused", "connection refused",
                "check that the API server is running and that the kubeconfig's server address and "
                "port are right")
DNS = Cause("NameNotResolved", "the server's name does not resolve",
            "check the host name in the kubeconfig's server address, and this machine's DNS")
UNREACHABLE = Cause("NetworkUnreachable", "no route to the server",
                    "check the network (and any VPN) between here and the API server")
TIMEOUT = Cause("Timeout", "no answer in time",
                "check that the address is the API server's and that no firewall drops the traffic")
DROPPED = Cause("ConnectionDropped", "the connection closed before an answer",
                "check the API server's logs and any proxy or load balancer in between")
TLS_UNKNOWN_CA = Cause("TLSUnknownAuthority",
                       "its TLS certificate is not signed by a CA the kubeconfig trusts",
                       "set the cluster's certificate-authority-data in the kubeconfig to the CA that "
                       "signed the API server's certificate")
TLS_NAME = Cause("TLSNameMismatch", "its TLS certificate is for another name",
                 "put a name or address the certificate is for in the kubeconfig's server address "
                 "(or set tls-server-name)")
TLS_EXPIRED = Cause("TLSCertificateExpired", "its TLS certificate has expired or is not valid yet",
                    "renew the API server's certificate, and check this machine's clock")
TLS_OTHER = Cause("TLSHandshakeFailed", "the TLS handshake failed",
                  "check that the address is the API server's HTTPS port and the kubeconfig's CA")
UNAUTHORIZED = Cause("Unauthorized", "401 Unauthorized: the credentials were rejected or have expired",
                     "renew the token or client certificate of the kubeconfig's user (in a Pod: its "
                     "ServiceAccount token)")
CRD_MISSING = Cause("CRDNotInstalled", "404: the RegistryCredential CRD is not installed",
                    "install regcred (helm install regcred charts/regcred), or the CRD alone: "
                    "kubectl apply --server-side -f crds/")
OVERLOADED = Cause("Overloaded", "the API server is overloaded or failing (429 or 5xx)",
                   "regcred retries with a backoff; if it lasts, check the API server's load, logs "
                   "and API priority and fairness")
NO_ANSWER = Cause("NoAnswer", "no answer", "check that the API server is running and reachable")


# The ClusterRoles that grant what regcred needs: the chart's (named after the Helm release),
# and the one docs/doctor.md gives the doctor's users.
OPERATOR_ROLE = "regcred (the Helm chart's, named after the release)"
DOCTOR_ROLE = "regcred-doctor (docs/doctor.md)"


def forbidden(role: str) -> Cause:
    """403: RBAC does not allow the call (the message names its verb, resource and namespace)."""
    return Cause("Forbidden", "403 Forbidden: RBAC does not allow it for this user",
                 f"bind the user (or ServiceAccount) to the ClusterRole {role}" if role else
                 "ask the cluster admin for a role that allows it")


# OpenSSL's X509_V_ERR_* codes of a failed certificate verification.
_EXPIRED_CODES = frozenset({9, 10})  # not yet valid, has expired
_NAME_CODES = frozenset({62, 64})  # hostname mismatch, IP address mismatch
# Issuer unknown, self-signed, untrusted chain; and a signature that fails: a trusted CA of the
# same name signed it (two clusters' CAs both named "kubernetes", as kubeadm names them).
_UNKNOWN_CA_CODES = frozenset({2, 7, 18, 19, 20, 21})


def status_cause(status: int, *, role: str = "", crd_collection: bool = False) -> Cause | None:
    """The cause of an HTTP refusal a person can act on; None for those regcred handles itself
    (409, 422) or that name no cause beyond their status (400...)."""
    if status == 401:
        return UNAUTHORIZED
    if status == 403:
        return forbidden(role)
    if status == 404 and crd_collection:
        return CRD_MISSING
    if status == 429 or status >= 500:
        return OVERLOADED
    return None


def connection_cause(error: BaseException) -> Cause:
    """Why no answer came, from the error's type (and a TLS failure's verification code)."""
    for link in _chain(error):
        if isinstance(link, ssl.SSLCertVerificationError):
            code = link.verify_code
            return (TLS_EXPIRED if code in _EXPIRED_CODES else TLS_NAME if code in _NAME_CODES
                    else TLS_UNKNOWN_CA if code in _UNKNOWN_CA_CODES else TLS_OTHER)
        if isinstance(link, urllib3.exceptions.NameResolutionError | socket.gaierror):
            return DNS
        if isinstance(link, ConnectionRefusedError):
            return REFUSED
        if isinstance(link, OSError) and link.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return UNREACHABLE
        if isinstance(link, urllib3.exceptions.NewConnectionError):
            continue  # wraps the OSError that says why
        if isinstance(link, urllib3.exceptions.TimeoutError | TimeoutError):
            return TIMEOUT
        if isinstance(link, ssl.SSLEOFError | ssl.SSLZeroReturnError):  # hung up mid-handshake
            return DROPPED
        if isinstance(link, ssl.SSLError):
            return TLS_OTHER
        if isinstance(link, urllib3.exceptions.ProtocolError | ConnectionError):
            return DROPPED
    return NO_ANSWER


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and what it wraps: a MaxRetryError's reason, arguments, causes and contexts."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        link = pending.pop(0)
        if id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        wrapped = [getattr(link, "reason", None), link.__cause__, link.__context__,
                   *[arg for arg in link.args if isinstance(arg, BaseException)]]
        pending.extend(w for w in wrapped if isinstance(w, BaseException))
