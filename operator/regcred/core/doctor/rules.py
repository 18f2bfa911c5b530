"""`regcred doctor`: why a Pod cannot pull, decided from listed objects alone (no I/O here).

The CLI (regcred/doctor/command.py) lists each kind once and reduces every object
(`observation.py`); `diagnose` then walks every container image of every Pod: its registry,
its effective pull policy, the pull secret the kubelet would use (by the kubelet's own
matching rules, regcred/core/keyring.py), and each problem as a `Finding` with a code, the
evidence and the fix (`report.py` renders them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from regcred.core.conditions import (
    NAMESPACE_FAILURE_REASONS,
    PASSING,
    UNAUTHORIZED,
)
from regcred.core.doctor.observation import (
    DOCKERCFG_TYPE,
    PULL_REASONS,
    ContainerImage,
    ContainerState,
    CredentialInfo,
    PodInfo,
    PullEvent,
    PullSecretInfo,
    Snapshot,
)
from regcred.core.doctor.report import ERROR, WARNING, Finding, ImageReport, Report
from regcred.core.errors import InvalidInput
from regcred.core.images import IF_NOT_PRESENT, ImageRef, default_pull_policy, parse_image
from regcred.core.keyring import AuthsEntry, lookup, normalized_key
from regcred.core.matching import (
    SYSTEM_NAMESPACES,
    NamespaceInfo,
    namespace_matches,
    selector_matches,
    service_account_matches,
)
from regcred.core.source import DOCKERCONFIGJSON_TYPE, registry_key
from regcred.core.spec import (
    IGNORE_LABEL,
    CredentialSpec,
)

MAX_EVIDENCE_TEXT = 300

# Finding codes: (severity, one line on what it means). docs/doctor.md explains each.
CODES: dict[str, tuple[str, str]] = {
    "InvalidImageName": (ERROR, "the image reference cannot be parsed"),
    "PullSecretMissing": (ERROR, "the Pod names a pull secret that does not exist in its namespace"),
    "PullSecretWrongType": (ERROR, "a pull secret the Pod names is not a dockerconfigjson Secret"),
    "PullSecretInvalid": (ERROR, "a pull secret's content cannot be read by the kubelet"),
    "AuthsKeyMismatch": (ERROR, "a pull secret has an entry for this host, but not one that matches"),
    "RegistryNotCovered": (ERROR, "no pull secret and no RegistryCredential covers the registry"),
    "NamespaceNotMatched": (ERROR, "a RegistryCredential covers the registry but not this namespace"),
    "ServiceAccountNotMatched": (ERROR, "a RegistryCredential covers the registry but not this "
                                        "Pod's ServiceAccount"),
    "CredentialSuspended": (ERROR, "the RegistryCredential for the registry is suspended"),
    "CredentialNotReady": (ERROR, "the RegistryCredential for the registry is not Ready"),
    "CopyConflict": (ERROR, "a Secret not managed by regcred holds the copy's name"),
    "CopyMissing": (ERROR, "the RegistryCredential's copy is not in the namespace yet"),
    "ServiceAccountMissingEntry": (ERROR, "the ServiceAccount does not list the copy yet"),
    "PodAdmittedBeforeEntry": (ERROR, "the Pod was created before its ServiceAccount listed the copy"),
    "CredentialRejected": (ERROR, "the registry rejects the credential (regcred's verification)"),
    "PullUnauthorized": (ERROR, "pulls fail: the registry refused the credentials (401/403)"),
    "ImageNotFound": (ERROR, "pulls fail: the repository or tag does not exist (404)"),
    "RegistryUnreachable": (ERROR, "pulls fail: the registry cannot be reached (DNS or TCP)"),
    "RegistryTLSError": (ERROR, "pulls fail: the registry's TLS certificate is not trusted"),
    "ImageNeverPulled": (ERROR, "imagePullPolicy Never and the image is not on the node"),
    "PullFailed": (ERROR, "pulls fail for another reason (see the evidence)"),
    "IfNotPresentPrivateImage": (WARNING, "IfNotPresent on a private image: the node's copy may "
                                          "serve Pods without credentials"),
    "VerificationFailed": (WARNING, "regcred could not verify the credential at the registry"),
}

# kubelet/containerd pull error texts -> finding code; the first match wins (DNS before TCP:
# a lookup failure also says "dial tcp").
_PULL_CAUSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ImageNeverPulled", re.compile(r"ErrImageNeverPull|pull policy of Never", re.I)),
    ("RegistryTLSError", re.compile(r"x509:|tls:|certificate", re.I)),
    ("RegistryUnreachable", re.compile(
        r"no such host|server misbehaving|name resolution|connection refused|i/o timeout|"
        r"no route to host|network is unreachable|connection reset|dial tcp|RegistryUnavailable", re.I)),
    ("PullUnauthorized", re.compile(
        r"\b401\b|\b403\b|unauthorized|authorization failed|authentication required|"
        r"no basic auth credentials|pull access denied|forbidden|denied", re.I)),
    ("ImageNotFound", re.compile(r"\b404\b|not found|manifest unknown|name unknown", re.I)),
)

# Texts that only repeat the state (`Error: ErrImagePull`, `Back-off pulling image "x"`): a
# cause only when nothing else says more.
_VAGUE = re.compile(r"(?:Error: )?(?:ErrImagePull|ImagePullBackOff)\s*$|^\w+: Back-off pulling image "
                    r'"[^"]*"\s*$|^(?:ErrImagePull|ImagePullBackOff)\b')


def diagnose(snapshot: Snapshot) -> Report:
    """Every finding for every Pod of `snapshot`; a Pod's own pull-secret problems once per Pod
    (with container ""), the rest per container image."""
    images, findings = [], []
    events = _events_by_pod(snapshot.events)
    secret_namespaces: dict[str, list[str]] = {}
    for namespace, name in snapshot.secrets:
        secret_namespaces.setdefault(name, []).append(namespace)
    for pod in sorted(snapshot.pods, key=lambda p: (p.namespace, p.name)):
        pod_context = _Context(pod, None)
        entries = _pod_entries(snapshot, pod, secret_namespaces, pod_context)
        findings.extend(pod_context.findings)
        for container in pod.containers:
            image, found = _diagnose_image(snapshot, pod, container, entries,
                                           events.get((pod.namespace, pod.name), []))
            if image is not None:
                images.append(image)
            findings.extend(found)
    return Report(images=tuple(images), findings=tuple(findings), pods=len(snapshot.pods))


def _events_by_pod(events: Iterable[PullEvent]) -> dict[tuple[str, str], list[PullEvent]]:
    grouped: dict[tuple[str, str], list[PullEvent]] = {}
    for event in events:
        grouped.setdefault((event.namespace, event.pod), []).append(event)
    return grouped


class _Context:
    """One container image (or, with `container` None, the Pod itself) being diagnosed;
    collects findings with its coordinates."""

    def __init__(self, pod: PodInfo, container: ContainerImage | None) -> None:
        self.pod, self.container = pod, container
        self.findings: list[Finding] = []

    def add(self, code: str, message: str, evidence: Iterable[str] = (), fix: str = "",
            commands: Iterable[str] = ()) -> None:
        self.findings.append(Finding(
            code=code, severity=CODES[code][0], namespace=self.pod.namespace, pod=self.pod.name,
            container=self.container.name if self.container else "",
            image=self.container.image if self.container else "", message=message,
            evidence=tuple(evidence), fix=fix, commands=tuple(commands)))


def _diagnose_image(snapshot: Snapshot, pod: PodInfo, container: ContainerImage,
                    entries: Sequence[AuthsEntry], events: Sequence[PullEvent],
                    ) -> tuple[ImageReport | None, list[Finding]]:
    context = _Context(pod, container)
    state = pod.states.get(container.name, ContainerState())
    try:
        ref = parse_image(container.image)
    except InvalidInput as error:
        context.add("InvalidImageName", error.message,
                    fix="fix the image in the Pod's template: [registry[:port]/]repository[:tag][@digest]")
        return None, context.findings
    default_policy = default_pull_policy(ref)
    policy = container.pull_policy or default_policy
    candidates = lookup(entries, ref.repository)
    used = candidates[0] if candidates else None
    used_copy = snapshot.secrets.get((pod.namespace, used.secret)) if used else None
    covering = [c for c in snapshot.credentials if _covering_server(c, ref)]
    failures = [] if state.pulled else _pull_failures(state, events, container.name, container.image)
    if used is None:
        _explain_uncovered(snapshot, pod, ref, covering, entries, bool(failures), context)
    elif used_copy is not None and used_copy.credential:
        _check_verification(snapshot, used_copy.credential, ref, context)
    _report_failures(failures, ref, used, context)
    private = used is not None or bool(covering)
    if policy == IF_NOT_PRESENT and private:
        context.add(
            "IfNotPresentPrivateImage",
            f"{container.image} is private and pulled with IfNotPresent",
            evidence=[f"imagePullPolicy {policy}" + (" (the API server's default for a tag other "
                                                     "than latest)" if policy == default_policy else ""),
                      "a node that has the image runs it for any Pod, without checking credentials, "
                      "unless its kubelet enforces KubeletEnsureSecretPulledImages (default since "
                      "1.35, except for images preloaded on the node); a wrong credential then stays "
                      "hidden until the Pod lands on a node without the image"],
            fix="set imagePullPolicy: Always on this container (pulls of unchanged images only "
                "fetch the manifest), or pin by digest and accept the node cache",
        )
    report = ImageReport(
        namespace=pod.namespace, pod=pod.name, container=container.name,
        container_kind=container.kind, image=container.image, registry=ref.registry,
        repository=ref.repository, tag=ref.tag, digest=ref.digest, pull_policy=policy,
        default_pull_policy=default_policy, pull_secret=used,
        pull_secret_credential=used_copy.credential if used_copy else "",
        candidates=tuple(candidates), state=_state_word(state),
    )
    return report, context.findings


def _state_word(state: ContainerState) -> str:
    if state.waiting_reason:
        return state.waiting_reason
    return "Pulled" if state.pulled else "Pending"


def _pod_entries(snapshot: Snapshot, pod: PodInfo, secret_namespaces: Mapping[str, list[str]],
                 context: _Context) -> list[AuthsEntry]:
    """The Pod's pull secrets as the kubelet reads them, reporting those it cannot."""
    entries: list[AuthsEntry] = []
    for name in pod.pull_secrets:
        secret = snapshot.secrets.get((pod.namespace, name))
        if secret is None:
            elsewhere = sorted(secret_namespaces.get(name, ()))
            evidence = [f"spec.imagePullSecrets names {name!r}; no Secret of that name in "
                        f"namespace {pod.namespace}"]
            if elsewhere:
                evidence.append(f"a Secret {name!r} exists in {', '.join(elsewhere)}: pull secrets are "
                                "namespaced, a Pod only uses those in its own namespace")
            context.add("PullSecretMissing", f"pull secret {name!r} does not exist", evidence,
                        fix=f"create the Secret in {pod.namespace} (or let a RegistryCredential copy "
                            "it there), or remove it from imagePullSecrets")
        elif not secret.pull_secret:
            context.add("PullSecretWrongType", f"pull secret {name!r} has type {secret.type}",
                        [f"the kubelet only reads {DOCKERCONFIGJSON_TYPE} (or {DOCKERCFG_TYPE}) "
                         "Secrets and ignores this one"],
                        fix=f"recreate it with `kubectl create secret docker-registry {name} -n "
                            f"{pod.namespace} ...`, or let a RegistryCredential manage it")
        else:
            if secret.problem:
                context.add("PullSecretInvalid", f"pull secret {name!r} cannot be read: {secret.problem}",
                            ["the kubelet fails every pull of this Pod while one of its pull secrets "
                             "does not parse" if secret.refused else
                             "the kubelet reads it, but not as it is written (regcred refuses to copy "
                             "such a source for the same reason)"],
                            fix="recreate the Secret with `kubectl create secret docker-registry`")
            entries.extend(AuthsEntry(name, key) for key in secret.keys)
    return entries


def _covering_server(credential: CredentialInfo, ref: ImageRef) -> str:
    """The credential's server whose auths key would match `ref`, or ""."""
    if credential.spec is None:
        return ""
    entries = [AuthsEntry(server, registry_key(server)) for server in credential.spec.servers]
    found = lookup(entries, ref.repository)
    return found[0].secret if found else ""


def _explain_uncovered(snapshot: Snapshot, pod: PodInfo, ref: ImageRef,
                       covering: Sequence[CredentialInfo], entries: Sequence[AuthsEntry],
                       pull_failed: bool, context: _Context) -> None:
    """No pull secret of the Pod matches: say why, per RegistryCredential that should cover it.
    CRs that select the namespace explain it; the others only when none does."""
    namespace = snapshot.namespaces.get(pod.namespace, NamespaceInfo(pod.namespace))
    selecting = [c for c in covering if c.spec is not None and namespace_matches(c.spec, namespace)]
    for credential in selecting or covering:
        _explain_credential(snapshot, pod, ref, credential, context)
    if covering:
        return
    near = [e for e in entries if _same_host(e.key, ref.registry)]
    if near:
        context.add(
            "AuthsKeyMismatch",
            f"no auths entry matches {ref.repository}",
            [f"secret {e.secret!r} has key {e.key!r}, which the kubelet files under "
             f"{normalized_key(e.key)!r}" for e in near]
            + [f"the kubelet needs a key for host {ref.registry} with the same port (or none), and "
               "a path that is a prefix of the repository's"],
            fix=f"use the key {ref.registry!r} in the Secret's auths (or spec.registries "
                f"server {ref.registry!r} in the RegistryCredential)")
    elif pull_failed:
        context.add(
            "RegistryNotCovered",
            f"no pull secret of the Pod covers {ref.registry}, and no RegistryCredential lists it",
            [f"pull secrets of the Pod: {', '.join(pod.pull_secrets) or 'none'}",
             f"auths keys: {', '.join(sorted({e.key for e in entries})) or 'none'}"],
            fix=f"add {ref.registry!r} to spec.registries of a RegistryCredential (or create one) "
                "matching this namespace")


def _same_host(key: str, registry: str) -> bool:
    bare = key.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[2]
    return bare.split(":", 1)[0].lower() == registry.split(":", 1)[0].lower()


@dataclass(frozen=True)
class _Case:
    """One RegistryCredential that should cover one image of one Pod: what each check reads."""

    snapshot: Snapshot
    pod: PodInfo
    ref: ImageRef
    credential: CredentialInfo
    spec: CredentialSpec
    namespace: NamespaceInfo
    copy: PullSecretInfo | None  # the Secret of the copy's name in the Pod's namespace
    context: _Context

    @property
    def name(self) -> str:
        return self.credential.name


def _explain_credential(snapshot: Snapshot, pod: PodInfo, ref: ImageRef, credential: CredentialInfo,
                        context: _Context) -> None:
    """Why `credential` does not give the Pod its pull secret: the first of `CREDENTIAL_CHECKS`
    that finds a cause reports it (later ones assume the earlier ones passed)."""
    spec = credential.spec
    assert spec is not None  # only parsed credentials cover anything
    case = _Case(snapshot, pod, ref, credential, spec,
                 snapshot.namespaces.get(pod.namespace, NamespaceInfo(pod.namespace)),
                 snapshot.secrets.get((pod.namespace, spec.secret_name)), context)
    for check in CREDENTIAL_CHECKS:
        if check(case):
            return


def _namespace_not_matched(case: _Case) -> bool:
    if namespace_matches(case.spec, case.namespace):
        return False
    case.context.add("NamespaceNotMatched",
                     f"RegistryCredential {case.name} covers {case.ref.registry} but not namespace "
                     f"{case.pod.namespace}",
                     [_why_namespace_unmatched(case.spec, case.namespace)],
                     fix=_namespace_fix(case.spec, case.namespace))
    return True


def _service_account_not_matched(case: _Case) -> bool:
    pod, spec = case.pod, case.spec
    if service_account_matches(spec, pod.service_account):
        return False
    case.context.add("ServiceAccountNotMatched",
                     f"RegistryCredential {case.name} does not add its copy to ServiceAccount "
                     f"{pod.service_account}",
                     [f"spec.serviceAccounts is {list(spec.service_accounts)}; the Pod runs as "
                      f"{pod.service_account}"],
                     fix=f"add {pod.service_account!r} to spec.serviceAccounts of {case.name}, or list "
                         f"{spec.secret_name!r} in the Pod's imagePullSecrets")
    return True


def _credential_suspended(case: _Case) -> bool:
    if not case.spec.suspend:
        return False
    case.context.add("CredentialSuspended", f"RegistryCredential {case.name} is suspended",
                     ["spec.suspend is true: regcred writes no new copies or entries"],
                     fix=f"kubectl patch registrycredential {case.name} --type merge -p "
                         "'{\"spec\":{\"suspend\":false}}'")
    return True


def _copy_conflict(case: _Case) -> bool:
    copy, name = case.copy, case.name
    if copy is None or copy.credential == name or case.credential.uid in copy.owner_uids:
        return False
    case.context.add("CopyConflict",
                     f"Secret {case.pod.namespace}/{case.spec.secret_name} exists and is not managed "
                     "by regcred",
                     [f"RegistryCredential {name} refuses to overwrite it"],
                     fix=f"delete or rename that Secret, or set spec.target.secretName of {name}")
    return True


def _served_at_pull(case: _Case) -> bool:
    """No pull secret is expected: the kubelet's credential provider asks regcred at pull time
    (docs/credential-provider.md); a failing pull is reported from its events."""
    if not case.spec.served_at_pull:
        return False
    _report_not_ready(case.credential, "the credential provider has nothing to hand out", case.context)
    return True


def _credential_not_ready(case: _Case) -> bool:
    if case.copy is not None:
        return False
    return _report_not_ready(case.credential, f"there is no copy in {case.pod.namespace}", case.context)


def _copy_missing(case: _Case) -> bool:
    if case.copy is not None:
        return False
    namespace = case.pod.namespace
    failed = case.credential.failed_namespaces.get(namespace)
    evidence = [f"no Secret {case.spec.secret_name} in {namespace}"]
    if failed:
        evidence.append(f"status.failedNamespaces: {failed[0]}: {failed[1]}")
    else:
        evidence.append("the operator has not written it: is regcred running? "
                        "(kubectl -n regcred-system get pods)")
    case.context.add("CopyMissing", f"RegistryCredential {case.name} has no copy in {namespace}",
                     evidence, fix="check the operator's logs and the CR's status")
    return True


def _service_account_missing_entry(case: _Case) -> bool:
    pod, secret_name = case.pod, case.spec.secret_name
    account = case.snapshot.service_accounts.get((pod.namespace, pod.service_account))
    if account is not None and secret_name in account.pull_secrets:
        return False
    listed = ", ".join(account.pull_secrets) if account else "(no such ServiceAccount)"
    case.context.add("ServiceAccountMissingEntry",
                     f"ServiceAccount {pod.namespace}/{pod.service_account} does not list "
                     f"{secret_name}",
                     [f"its imagePullSecrets: {listed or 'none'}"],
                     fix="regcred adds it within seconds while it runs; check the operator, or add "
                         f"{secret_name!r} to the Pod's imagePullSecrets")
    return True


def _pod_admitted_before_entry(case: _Case) -> bool:
    pod, secret_name = case.pod, case.spec.secret_name
    if secret_name in pod.pull_secrets:
        return False
    restart = [f"kubectl delete pod -n {pod.namespace} {pod.name}"]
    if pod.owner.startswith("ReplicaSet/"):
        restart.append(f"# or restart its workload: kubectl rollout restart -n {pod.namespace} "
                       f"deployment/{pod.owner.split('/', 1)[1].rsplit('-', 1)[0]}")
    case.context.add("PodAdmittedBeforeEntry",
                     f"the Pod was created before ServiceAccount {pod.service_account} listed "
                     f"{secret_name}",
                     [f"ServiceAccount {pod.service_account} lists {secret_name} now; the Pod "
                      f"(created {pod.created}) carries imagePullSecrets "
                      f"[{', '.join(pod.pull_secrets)}], copied at admission and never updated"],
                     fix="delete the Pod so that it is created again with the entry"
                         + (f" (its owner {pod.owner} recreates it)" if pod.owner else
                            " and create it again"),
                     commands=restart)
    return True


# Why a covering RegistryCredential gives the Pod no pull secret, in the order a copy gets to
# a Pod: each check reports its finding and returns True, or returns False to pass the case
# on. A new finding code about a credential is one more function here.
CREDENTIAL_CHECKS: tuple[Callable[[_Case], bool], ...] = (
    _namespace_not_matched,
    _service_account_not_matched,
    _credential_suspended,
    _served_at_pull,
    _copy_conflict,
    _credential_not_ready,
    _copy_missing,
    _service_account_missing_entry,
    _pod_admitted_before_entry,
)


def _report_not_ready(credential: CredentialInfo, consequence: str, context: _Context) -> bool:
    """A CR whose source or spec is broken (not one failing in some namespaces): report it."""
    if credential.ready != "False" or credential.ready_reason in NAMESPACE_FAILURE_REASONS:
        return False
    context.add("CredentialNotReady",
                f"RegistryCredential {credential.name} is not Ready ({credential.ready_reason}), so "
                f"{consequence}",
                [credential.ready_message or credential.problem or "no message"],
                fix=f"fix what the message says; kubectl describe registrycredential {credential.name}")
    return True


def _why_namespace_unmatched(spec: CredentialSpec, namespace: NamespaceInfo) -> str:
    name = namespace.name
    if namespace.terminating:
        return f"namespace {name} is being deleted"
    if namespace.labels.get(IGNORE_LABEL) == "true":
        return f"namespace {name} is labelled {IGNORE_LABEL}=true"
    excluded = [p for p in spec.exclude_namespaces if fnmatchcase(name, p)]
    if excluded:
        return f"spec.excludeNamespaces pattern {excluded[0]!r} matches {name}"
    if name in SYSTEM_NAMESPACES:
        return f"{name} is a system namespace: it matches only when named in spec.namespaces"
    parts = []
    if spec.namespace_selector is not None and not selector_matches(spec.namespace_selector,
                                                                    namespace.labels):
        parts.append("spec.namespaceSelector does not match its labels")
    if spec.namespaces:
        parts.append(f"no spec.namespaces pattern matches it ({', '.join(spec.namespaces)})")
    return f"namespace {name}: " + " and ".join(parts)


def _namespace_fix(spec: CredentialSpec, namespace: NamespaceInfo) -> str:
    if namespace.labels.get(IGNORE_LABEL) == "true":
        return f"kubectl label namespace {namespace.name} {IGNORE_LABEL}-"
    if any(fnmatchcase(namespace.name, p) for p in spec.exclude_namespaces):
        return f"remove the pattern from spec.excludeNamespaces of {spec.name}"
    return f"add {namespace.name!r} to spec.namespaces of {spec.name}, or label the namespace to " \
           "match spec.namespaceSelector"


def _check_verification(snapshot: Snapshot, credential_name: str, ref: ImageRef,
                        context: _Context) -> None:
    credential = next((c for c in snapshot.credentials if c.name == credential_name), None)
    if credential is None:
        return
    server = _covering_server(credential, ref)
    result = next((v for v in credential.verification if v.server == server), None)
    if result is None or result.result in PASSING:
        return
    if result.result == UNAUTHORIZED:
        context.add("CredentialRejected",
                    f"{server} rejects the credential of RegistryCredential {credential_name}",
                    [f"status.registries[{server}]: {result.result}: {result.message}"],
                    fix=f"update the source Secret of {credential_name} (the robot account may have "
                        "expired or been rotated at the registry)")
    else:
        context.add("VerificationFailed",
                    f"regcred could not verify the credential for {server}: {result.result}",
                    [result.message], fix="check the operator's network access to the registry")


def _pull_failures(state: ContainerState, events: Sequence[PullEvent], container: str,
                   image: str) -> list[tuple[str, str, int]]:
    """(code, evidence text, count) of this container's current pull failures."""
    texts: list[tuple[str, int]] = []
    if state.waiting_reason in PULL_REASONS:
        texts.append((f"{state.waiting_reason}: {state.waiting_message}".strip(": "), 1))
    for event in events:
        if event.container == container or (not event.container and f'"{image}"' in event.message):
            texts.append((f"{event.reason}: {event.message}", event.count))
    causes: dict[str, tuple[str, int]] = {}
    vague: list[tuple[str, int]] = []
    for text, count in texts:
        if text.startswith("InvalidImageName"):
            continue  # reported from the parse
        code = next((code for code, pattern in _PULL_CAUSES if pattern.search(text)), None)
        if code is None:
            if _VAGUE.search(text):
                vague.append((text, count))
                continue
            code = "PullFailed"
        seen, total = causes.get(code, (text, 0))
        causes[code] = (seen, total + count)
    if vague and not causes:
        causes["PullFailed"] = (vague[0][0], sum(count for _, count in vague))
    return [(code, text, count) for code, (text, count) in causes.items()]


def _report_failures(failures: Sequence[tuple[str, str, int]], ref: ImageRef,
                     used: AuthsEntry | None, context: _Context) -> None:
    fixes = {
        "PullUnauthorized": (f"the registry refused the credential from secret {used.secret!r} "
                             f"(key {used.key!r}): update the password or token at its source"
                             if used else
                             f"no pull secret covers {ref.registry}: give the Pod one (see the other "
                             "findings)"),
        "ImageNotFound": f"check that {ref.repository}:{ref.tag or ref.digest} exists "
                         "(a typo in the tag, or a repository the credential cannot see)",
        "RegistryUnreachable": f"check DNS and the network path from the node to {ref.registry}",
        "RegistryTLSError": f"give the node's container runtime the CA of {ref.registry} "
                            "(e.g. containerd's hosts.toml)",
        "ImageNeverPulled": "imagePullPolicy is Never: pre-load the image on the node, or use "
                            "IfNotPresent/Always",
        "PullFailed": "see the evidence",
    }
    for code, text, count in failures:
        context.add(code, f"pulling {ref.image} fails: {CODES[code][1].split(': ', 1)[-1]}",
                    [f"{count}x {text[:MAX_EVIDENCE_TEXT]}"], fix=fixes[code])
