"""`regcred doctor` (and `kubectl regcred doctor`): list, reduce, diagnose, print.

Read-only: one paged list per kind (pods, serviceaccounts, secrets, Warning events about
Pods, namespaces, registrycredentials), never a request per Pod. Secrets are reduced to
their type and `auths` keys as they stream in; no content is kept or printed. The
decisions are in regcred/core/doctor.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from regcred.core.doctor import (
    ERROR,
    WARNING,
    Finding,
    Report,
    Snapshot,
    diagnose,
    report_json,
    snapshot_from,
)

if TYPE_CHECKING:  # `regcred run` imports this module (for its parser) before it may import
    from regcred.kube.client import Kube  # `kubernetes`, which reads $KUBECONFIG at import time

EXIT_HEALTHY, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments: exit 2 with the message."""


def add_parser(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor", help="explain why Pods cannot pull their images (read-only)",
        description="For every container image of the selected Pods: the registry, the effective "
                    "pull policy, the pull secret the kubelet would use, and each problem with "
                    "its evidence and fix. Exit 0: healthy, 1: problems found, 2: usage or "
                    "access error.",
    )
    doctor.add_argument("target", nargs="?", help="pod/NAME (or NAME) to diagnose one Pod")
    doctor.add_argument("-n", "--namespace", help="namespace (default: the context's, like kubectl)")
    doctor.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    doctor.add_argument("-l", "--selector", help="label selector for the Pods")
    doctor.add_argument("-o", "--output", choices=("table", "json"), default="table")
    doctor.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, "
                                             "else in-cluster)")
    doctor.add_argument("--context", help="kubeconfig context to use")
    doctor.add_argument("--fail-on", choices=(ERROR, WARNING), default=WARNING,
                        help="lowest severity that makes the exit status 1 (default: warning)")
    doctor.add_argument("--request-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                        help="give up on an API call that gets no answer in this time (default: 30)")
    doctor.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour the table (auto: only on a terminal, and not with NO_COLOR)")


def run_doctor(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    quiet_logging(err)
    from regcred.kube.client import Kube
    from regcred.kube.config import ConfigurationError, connect_like_kubectl
    from regcred.kube.errors import DOCTOR_ROLE, KubeError

    try:
        pod_name = _pod_name(args.target)
        if pod_name and args.all_namespaces:
            raise UsageError("pod/NAME and -A cannot be combined")
        api_client, context_namespace = connect_like_kubectl(args.kubeconfig, args.context)
    except UsageError as error:
        err.write(f"regcred doctor: {error}\n")
        return EXIT_USAGE
    except ConfigurationError as error:
        err.write(f"regcred doctor: {error}\n")  # it names the file or what is missing
        return EXIT_USAGE
    namespace = None if args.all_namespaces else (args.namespace or context_namespace)
    try:
        with api_client:
            kube = Kube(api_client, role=DOCTOR_ROLE, timeout=(args.request_timeout, args.request_timeout))
            snapshot = read_snapshot(kube, namespace, pod_name, args.selector)
    except KubeError as error:
        err.write(f"regcred doctor: cannot read the cluster: {error}\n")
        return EXIT_USAGE
    if pod_name and not snapshot.pods:
        err.write(f"regcred doctor: pod {namespace}/{pod_name} not found\n")
        return EXIT_USAGE
    report = diagnose(snapshot)
    scope = {"namespace": namespace or "*", "pod": pod_name, "selector": args.selector}
    if args.output == "json":
        json.dump(report_json(report, scope), out, indent=2)
        out.write("\n")
    else:
        out.write(render_table(report, colour=_colour(args.color, out)))
    return EXIT_PROBLEMS if report.failed(args.fail_on) else EXIT_HEALTHY


def quiet_logging(stream: TextIO) -> None:
    """stdout is the report: the API layer's log lines go to `stream`, and only errors (a
    failed call ends the doctor with one line that says why); urllib3's retry warnings never."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
                        logger_factory=structlog.PrintLoggerFactory(stream))
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return seconds


def _pod_name(target: str | None) -> str | None:
    if not target:
        return None
    kind, slash, name = target.rpartition("/")
    if slash and kind not in ("pod", "pods", "po"):
        raise UsageError(f"only pods can be diagnosed, not {kind!r}: use pod/NAME")
    if not name:
        raise UsageError("pod/NAME needs a name")
    return name


def read_snapshot(kube: Kube, namespace: str | None, pod: str | None = None,
                  selector: str | None = None) -> Snapshot:
    """Everything the diagnosis needs, one list per kind (one get for a single Pod)."""
    if pod:
        body = kube.read_pod(namespace or "default", pod)
        pods: Iterable[Mapping[str, Any]] = [body] if body else []
    else:
        pods = kube.list_pods(namespace, selector)
    return snapshot_from(
        pods=pods,
        service_accounts=kube.list_service_accounts(namespace),
        secrets=kube.list_secrets(namespace),
        events=kube.list_pod_warnings(namespace, pod),
        credentials=_credentials(kube),
        namespaces=_namespaces(kube, namespace),
    )


def _credentials(kube: Kube) -> Iterator[Mapping[str, Any]]:
    """RegistryCredentials; none when the CRD is not installed (or not readable: the doctor
    still diagnoses hand-made pull secrets)."""
    from regcred.kube.errors import KubeError

    try:
        yield from kube.list_credentials()
    except KubeError as error:
        if error.status not in (403, 404):
            raise


def _namespaces(kube: Kube, namespace: str | None) -> Iterable[Mapping[str, Any]]:
    """Namespaces with their labels; a user who may not list them gets the name alone."""
    from regcred.kube.errors import KubeError

    try:
        listed = list(kube.list_namespaces())
    except KubeError as error:
        if error.status != 403:
            raise
        listed = []
    if namespace and not any((n.get("metadata") or {}).get("name") == namespace for n in listed):
        listed.append({"metadata": {"name": namespace}})
    return listed


# --- the table ------------------------------------------------------------------------------

_COLOURS = {ERROR: "\033[31m", WARNING: "\033[33m", "ok": "\033[32m"}
_RESET = "\033[0m"


def _colour(choice: str, out: TextIO) -> bool:
    if choice != "auto":
        return choice == "always"
    return out.isatty() and not os.environ.get("NO_COLOR")


def render_table(report: Report, *, colour: bool) -> str:
    """One row per container image, then each finding with its evidence and fix."""
    def paint(text: str, what: str) -> str:
        return f"{_COLOURS[what]}{text}{_RESET}" if colour else text

    by_container: dict[tuple[str, str, str], list[Finding]] = {}
    for finding in report.findings:
        by_container.setdefault((finding.namespace, finding.pod, finding.container), []).append(finding)
    header = ("NAMESPACE", "POD", "CONTAINER", "REGISTRY", "POLICY", "PULL SECRET", "STATE", "FINDINGS")
    rows, severities = [], []
    for image in report.images:
        secret = f"{image.pull_secret.secret} ({image.pull_secret.key})" if image.pull_secret else "-"
        found = (by_container.get((image.namespace, image.pod, ""), [])
                 + by_container.get((image.namespace, image.pod, image.container), []))
        rows.append((image.namespace, image.pod, image.container, image.registry,
                     image.pull_policy, secret,
                     image.state, ",".join(dict.fromkeys(f.code for f in found)) or "ok"))
        severities.append(_worst(found))
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip()]
    for row, severity in zip(rows, severities, strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        cells[-1] = paint(cells[-1], severity or "ok")
        lines.append("  ".join(cells).rstrip())
    if not rows:
        lines.append("(no pods)")
    for finding in report.findings:
        lines.append("")
        mark = paint(f"{finding.severity.upper()} {finding.code}", finding.severity)
        where = f"[{finding.container}] {finding.image}" if finding.container else "[pod]"
        lines.append(f"{mark}  {finding.namespace}/{finding.pod} {where}")
        lines.append(f"  {finding.message}")
        lines.extend(f"  - {line}" for line in finding.evidence if line)
        if finding.fix:
            lines.append(f"  fix: {finding.fix}")
        lines.extend(f"    $ {command}" if not command.startswith("#") else f"    {command}"
                     for command in finding.commands)
    errors, warnings = report.count(ERROR), report.count(WARNING)
    summary = f"{report.pods} pods, {len(report.images)} images: {errors} errors, {warnings} warnings"
    lines.extend(["", paint(summary, ERROR if errors else WARNING if warnings else "ok")])
    return "\n".join(lines) + "\n"


def _worst(findings: Iterable[Finding]) -> str | None:
    severities = {f.severity for f in findings}
    return ERROR if ERROR in severities else WARNING if WARNING in severities else None
