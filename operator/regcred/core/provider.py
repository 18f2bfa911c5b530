"""Pull-time delivery: who is asking, and which credential a kubelet gets for a Pod's image.

The credential provider endpoint (regcred/provider/) asks two pure questions:
1. `token_claims` and `check_pod`: do a TokenReview's answer, and the Pod it names as read
   now, prove a live Pod running under that ServiceAccount (on the node named in the token,
   where the token names one)? The API server checked the signature, expiry and audience.
2. `resolve`: which credentials serve (namespace, ServiceAccount, image), with the same
   namespace and ServiceAccount matching as the copies (core/matching.py) and the `auths`
   keys matched to the image as the kubelet matches them (core/keyring.py).
Every "no" is a `Refusal` whose `reason` is one word of `REFUSALS`: the metric's label values.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from regcred.core.errors import InvalidInput
from regcred.core.images import parse_image
from regcred.core.keyring import AuthsEntry, lookup
from regcred.core.matching import NamespaceInfo, namespace_matches, service_account_matches
from regcred.core.plan import Credential
from regcred.core.pullsecret import kubelet_read
from regcred.core.source import RenderedConfig

# What the API server puts in a Pod-bound token's user info (pkg/serviceaccount/claims.go).
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

# Refusal reasons, one vocabulary for logs, the metric and the plugin's stderr.
BAD_REQUEST = "BadRequest"  # no token, no image, not JSON
TOKEN_REJECTED = "TokenRejected"  # invalid, expired, another audience, or its Pod is gone
NOT_BOUND_TO_POD = "NotBoundToPod"
POD_NOT_FOUND = "PodNotFound"  # the Pod it is bound to no longer exists (or was recreated)
SERVICE_ACCOUNT_MISMATCH = "ServiceAccountMismatch"
NODE_MISMATCH = "NodeMismatch"
INVALID_IMAGE = "InvalidImage"
NO_CREDENTIAL = "NoCredential"  # no served credential has an auths key for the image
NOT_MATCHED = "NotMatched"  # some do, but none matches the Pod's namespace and ServiceAccount
UNAVAILABLE = "Unavailable"  # the API server could not be asked; not the caller's fault
REFUSALS = (BAD_REQUEST, TOKEN_REJECTED, NOT_BOUND_TO_POD, POD_NOT_FOUND, SERVICE_ACCOUNT_MISMATCH,
            NODE_MISMATCH, INVALID_IMAGE, NO_CREDENTIAL, NOT_MATCHED, UNAVAILABLE)


@dataclass(frozen=True)
class Refusal:
    """Why nothing is handed out; `credentials` are the CRs whose registry it was (status)."""

    reason: str
    message: str
    credentials: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodIdentity:
    """Who a token proved to be: a Pod that exists now, under `service_account`."""

    namespace: str
    service_account: str
    pod: str


@dataclass(frozen=True)
class Login:
    username: str = field(repr=False)
    password: str = field(repr=False)


@dataclass(frozen=True)
class Answer:
    """The auths to hand out, keyed as in the credentials' `auths` (the kubelet matches them)."""

    auths: Mapping[str, Login] = field(repr=False)
    credentials: tuple[str, ...]


@dataclass(frozen=True)
class TokenClaims:
    """What an accepted Pod-bound token says: its ServiceAccount, its Pod, maybe its node."""

    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    node: str | None


def token_claims(review_status: Mapping[str, Any], audience: str) -> TokenClaims | Refusal:
    """The claims of a TokenReview's status, or why the token proves nothing usable."""
    if not review_status.get("authenticated") or audience not in (review_status.get("audiences") or ()):
        return Refusal(TOKEN_REJECTED, "the API server did not accept the token for regcred's "
                       "audience (invalid, expired, another audience, or its Pod is gone)")
    user = review_status.get("user") or {}
    username = str(user.get("username") or "")
    namespace, _, account = username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
    if not username.startswith(SERVICE_ACCOUNT_PREFIX) or not account:
        return Refusal(TOKEN_REJECTED, "the token is not a ServiceAccount's")
    extra = user.get("extra") or {}
    pod_name, pod_uid = _single(extra.get(POD_NAME_EXTRA)), _single(extra.get(POD_UID_EXTRA))
    if not pod_name or not pod_uid:
        return Refusal(NOT_BOUND_TO_POD, f"the token of {namespace}/{account} is not bound to a Pod; "
                       "only the kubelet's Pod-bound tokens are accepted")
    return TokenClaims(namespace, account, pod_name, pod_uid, _single(extra.get(NODE_NAME_EXTRA)))


def check_pod(claims: TokenClaims, pod: Mapping[str, Any] | None) -> PodIdentity | Refusal:
    """The Pod the token is bound to (as read now) must exist with that uid, run under the
    token's ServiceAccount, and be on the token's node where the token names one."""
    where = f"Pod {claims.namespace}/{claims.pod_name}"
    meta = (pod or {}).get("metadata") or {}
    if pod is None or meta.get("uid") != claims.pod_uid:
        return Refusal(POD_NOT_FOUND, f"{where}, which the token is bound to, does not exist any more")
    spec = pod.get("spec") or {}
    if (spec.get("serviceAccountName") or "default") != claims.service_account:
        return Refusal(SERVICE_ACCOUNT_MISMATCH,
                       f"{where} does not run under ServiceAccount {claims.service_account}, the token's")
    if claims.node is not None and spec.get("nodeName") != claims.node:
        return Refusal(NODE_MISMATCH, f"{where} is not on node {claims.node}, which the token names")
    return PodIdentity(claims.namespace, claims.service_account, claims.pod_name)


def resolve(credentials: Iterable[Credential], namespace: NamespaceInfo | None,
            service_account: str, image: str) -> Answer | Refusal:
    """The logins a Pod in `namespace` under `service_account` gets for `image`: from every
    active credential delivered by the provider that has a key the kubelet would use for
    the image and matches the namespace and ServiceAccount. Where two credentials have the
    same key the senior one (older, then by name) wins, as for a contested Secret name."""
    try:
        repository = parse_image(image).repository
    except InvalidInput as error:
        return Refusal(INVALID_IMAGE, error.message)
    serving = sorted((c for c in credentials if c.active and c.valid_spec.served_at_pull),
                     key=lambda c: c.seniority)
    logins = {c.name: logins_of(c.content) for c in serving}
    hits = lookup([AuthsEntry(c.name, key) for c in serving for key in logins[c.name]], repository)
    if not hits:
        return Refusal(NO_CREDENTIAL, f"no RegistryCredential delivered by the credential provider "
                       f"has a registry for {repository}")
    matching = {c.name for c in serving if namespace is not None
                and namespace_matches(c.valid_spec, namespace)
                and service_account_matches(c.valid_spec, service_account)}
    granted = [hit for hit in hits if hit.secret in matching]
    if not granted:
        names = tuple(dict.fromkeys(hit.secret for hit in hits))
        who = f"{namespace.name if namespace else '?'}/{service_account}"
        return Refusal(NOT_MATCHED, f"ServiceAccount {who} is not matched by "
                       f"{', '.join(names)}, which serve {repository}", names)
    auths: dict[str, Login] = {}
    used: dict[str, None] = {}
    for hit in granted:
        if hit.key not in auths:
            auths[hit.key] = logins[hit.secret][hit.key]
            used[hit.secret] = None
    return Answer(auths, tuple(used))


def logins_of(config: RenderedConfig) -> dict[str, Login]:
    """The username and password of each `auths` key of a rendered config, as the kubelet
    reads them (core/pullsecret.py); entries without a usable login are left out."""
    reading = kubelet_read(base64.b64decode(config.encoded))
    return {key: Login(entry.username.decode(), entry.password.decode())
            for key, entry in reading.entries.items() if entry.problem is None}


def _single(values: Any) -> str | None:
    """A user-info extra is a list of strings; the binding claims hold one."""
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str) and values[0]:
        return values[0]
    return None
