"""`regcred doctor` (and `kubectl regcred doctor`): list, reduce, diagnose, print.

Read-only: one paged list per kind (pods, serviceaccounts, secrets, Warning events about
Pods, namespaces, registrycredentials), never a request per Pod. Secrets are reduced to
their type and `auths` keys as they stream in; no content is kept or printed. The
decisions are in regcred/core/doctor/ (observation, rules, report).
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

from regcred.core.doctor.observation import Snapshot, snapshot_from
from regcred.core.doctor.report import ERROR, WARNING, render_table, report_json
from regcred.core.doctor.rules import diagnose

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

def _colour(choice: str, out: TextIO) -> bool:
    if choice != "auto":
        return choice == "always"
    return out.isatty() and not os.environ.get("NO_COLOR")
