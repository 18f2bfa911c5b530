"""`regcred run`: start the operator; every flag has a `REGCRED_*` environment variable."""

from __future__ import annotations

import argparse
import os
import random
import sys
import urllib.parse
from collections.abc import Sequence

from regcred import __version__
from regcred.doctor.command import add_parser as add_doctor_parser
from regcred.doctor.command import run_doctor
from regcred.settings import AdmissionSettings, ProviderSettings, Settings, operator_namespace

_OPTIONS = [
    # flag, environment variable, default, help
    ("--namespace", "REGCRED_NAMESPACE", None,
     "the operator's own namespace: the default source namespace (default: the pod's namespace, "
     "else regcred-system)"),
    ("--source-namespaces", "REGCRED_SOURCE_NAMESPACES", None,
     "comma-separated namespaces source Secrets may live in (default: the operator's namespace)"),
    ("--resync-seconds", "REGCRED_RESYNC_SECONDS", "300", "periodic full resync of every CR"),
    ("--workers", "REGCRED_WORKERS", "16", "threads for a fan-out, and as many for event-driven syncs"),
    ("--metrics-port", "REGCRED_METRICS_PORT", "9090", "Prometheus /metrics port (0 = off)"),
    ("--health-port", "REGCRED_HEALTH_PORT", "8080", "liveness endpoint port, /healthz (0 = off)"),
    ("--log-format", "REGCRED_LOG_FORMAT", "json", "json or console"),
    ("--log-level", "REGCRED_LOG_LEVEL", "info", "debug, info, warning or error"),
    ("--kubeconfig", "REGCRED_KUBECONFIG", None,
     "kubeconfig file (default: $KUBECONFIG, else in-cluster config)"),
    ("--peering", "REGCRED_PEERING", None,
     "kopf peering name for running several replicas with one active (default: standalone)"),
    # The ServiceAccount admission webhook (docs/admission.md).
    ("--admission", "REGCRED_ADMISSION", "false",
     "true: serve the mutating webhook that gives new ServiceAccounts our entry at creation"),
    ("--admission-listen", "REGCRED_ADMISSION_LISTEN", "0.0.0.0:9443",
     "host:port the webhook listens on"),
    ("--admission-url", "REGCRED_ADMISSION_URL", None,
     "https URL the API server calls (outside a cluster, e.g. https://127.0.0.1:9443); "
     "default: the --admission-service Service in the operator's namespace"),
    ("--admission-service", "REGCRED_ADMISSION_SERVICE", "regcred-webhook",
     "the Service in front of the webhook port, used when --admission-url is not set"),
    ("--admission-tls-secret", "REGCRED_ADMISSION_TLS_SECRET", "regcred-webhook-tls",
     "Secret in the operator's namespace holding the webhook's CA and certificate (made if absent)"),
    # The credential provider endpoint (docs/credential-provider.md).
    ("--credential-provider", "REGCRED_CREDENTIAL_PROVIDER", "false",
     "true: serve kubelets' image credential provider plugins at pull time (spec.delivery)"),
    ("--credential-provider-listen", "REGCRED_CREDENTIAL_PROVIDER_LISTEN", "0.0.0.0:9444",
     "host:port the credential provider endpoint listens on (HTTPS)"),
    ("--credential-provider-audience", "REGCRED_CREDENTIAL_PROVIDER_AUDIENCE",
     "regcred.dev/credential-provider",
     "the token audience: the kubelets' tokenAttributes.serviceAccountTokenAudience"),
    ("--credential-provider-hosts", "REGCRED_CREDENTIAL_PROVIDER_HOSTS", None,
     "comma-separated DNS names or IPs the plugins reach the endpoint by (the certificate's names); "
     "default: the --credential-provider-service Service in the operator's namespace"),
    ("--credential-provider-service", "REGCRED_CREDENTIAL_PROVIDER_SERVICE", "regcred-provider",
     "the Service in front of the endpoint, used when --credential-provider-hosts is not set"),
    ("--credential-provider-tls-secret", "REGCRED_CREDENTIAL_PROVIDER_TLS_SECRET", "regcred-provider-tls",
     "Secret in the operator's namespace holding the endpoint's CA and certificate (made if absent)"),
    ("--credential-provider-cache-seconds", "REGCRED_CREDENTIAL_PROVIDER_CACHE_SECONDS", "300",
     "how long a kubelet may reuse an answer: the longest a rotation takes to reach pulls"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regcred",
        description="Keep registry pull secrets in every matching namespace and ServiceAccount.",
    )
    parser.add_argument("--version", action="version", version=f"regcred {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="start the operator",
        description="Start the operator. Every flag can also be set by the environment "
                    "variable named in its help; the flag wins.",
    )
    for flag, env, default, text in _OPTIONS:
        run.add_argument(flag, default=os.environ.get(env, default), help=f"{text} [{env}]")
    add_doctor_parser(commands)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """Validate the options into `Settings`; exits with a clear message on bad values."""
    namespace = args.namespace or operator_namespace()
    sources = args.source_namespaces or namespace
    try:
        resync, workers = float(args.resync_seconds), int(args.workers)
        metrics_port, health_port = int(args.metrics_port), int(args.health_port)
    except ValueError as error:
        raise SystemExit(f"regcred: invalid number: {error}") from None
    if resync <= 0 or workers <= 0:
        raise SystemExit("regcred: --resync-seconds and --workers must be positive")
    if args.log_format not in ("json", "console"):
        raise SystemExit("regcred: --log-format must be json or console")
    return Settings(
        operator_namespace=namespace,
        source_namespaces=frozenset(s.strip() for s in sources.split(",") if s.strip()),
        resync_seconds=resync,
        workers=workers,
        metrics_port=metrics_port,
        health_port=health_port,
        log_format=args.log_format,
        log_level=args.log_level,
        kubeconfig=args.kubeconfig or os.environ.get("KUBECONFIG") or None,
        peering=args.peering or None,
        admission=admission_settings_from(args),
        provider=provider_settings_from(args),
    )


def admission_settings_from(args: argparse.Namespace) -> AdmissionSettings | None:
    """The webhook's options, or None when `--admission` is off; exits on bad values."""
    if not _switch(args.admission, "--admission"):
        return None
    host, port = _listen(args.admission_listen, "--admission-listen")
    url = args.admission_url or None
    if url is not None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "https" or not parsed.hostname or parsed.query or parsed.fragment:
            raise SystemExit("regcred: --admission-url must be an https URL without query, "
                             "e.g. https://127.0.0.1:9443")
    return AdmissionSettings(listen_host=host, listen_port=port, url=url,
                             service=args.admission_service, tls_secret=args.admission_tls_secret)


def provider_settings_from(args: argparse.Namespace) -> ProviderSettings | None:
    """The credential provider endpoint's options, or None when it is off; exits on bad values."""
    if not _switch(args.credential_provider, "--credential-provider"):
        return None
    host, port = _listen(args.credential_provider_listen, "--credential-provider-listen")
    audience = str(args.credential_provider_audience).strip()
    if not audience:
        raise SystemExit("regcred: --credential-provider-audience must not be empty")
    try:
        cache_seconds = int(args.credential_provider_cache_seconds)
    except ValueError:
        cache_seconds = -1
    if cache_seconds < 0:
        raise SystemExit("regcred: --credential-provider-cache-seconds must be a whole number >= 0")
    hosts = tuple(h.strip() for h in str(args.credential_provider_hosts or "").split(",") if h.strip())
    return ProviderSettings(listen_host=host, listen_port=port, audience=audience, hosts=hosts,
                            service=args.credential_provider_service,
                            tls_secret=args.credential_provider_tls_secret, cache_seconds=cache_seconds)


def _switch(value: object, flag: str) -> bool:
    switch = str(value).strip().lower()
    if switch not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise SystemExit(f"regcred: {flag} must be true or false")
    return switch in ("true", "1", "yes", "on")


def _listen(value: object, flag: str) -> tuple[str, int]:
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"regcred: {flag} must be host:port, e.g. 127.0.0.1:9443")
    return host.strip("[]"), int(port)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: 2 on usage errors, 0 for --help
        return int(exit_.code or 0)
    if args.command == "doctor":
        return run_doctor(args)
    settings = settings_from(args)
    return run(settings)


def run(settings: Settings) -> int:
    """Start the operator; a configuration regcred cannot use is a usage error (exit 2, one
    line), an API server that is down or refusing is not (kopf keeps retrying and says so)."""
    # kopf's own login reads $KUBECONFIG, like our client does; set it before anything
    # imports `kubernetes`, whose default kubeconfig location is read at import time.
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig
    from regcred.kube.config import ConfigurationError, load_configuration

    try:
        api_configuration = load_configuration(settings.kubeconfig)
    except ConfigurationError as error:
        print(f"regcred: {error}", file=sys.stderr)
        return 2

    import kopf

    from regcred.logs import configure
    from regcred.metrics import Metrics
    from regcred.runtime import Runtime, SharedMemo
    from regcred.sync.handlers import register

    configure(settings.log_format, settings.log_level)
    metrics = Metrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    if settings.admission:
        from regcred.admission import webhook

        webhook.register(registry)
    if settings.provider:
        from regcred.provider import endpoint

        endpoint.register(registry)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    # kopf pauses every replica that sees a peer of the same or higher priority, so each
    # replica draws its own: the highest acts, the others wait for its entry to expire.
    # regcred's own watches follow the same rule with it (regcred/sync/activity.py).
    priority = random.randint(1, 2**31 - 1)
    kopf.run(
        registry=registry,
        clusterwide=True,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        priority=priority if settings.peering else None,
        liveness_endpoint=liveness,
        memo=SharedMemo(runtime=Runtime(settings, metrics, api_configuration, priority)),
    )
    return 0


def kubectl_plugin() -> int:
    """`kubectl-regcred`: kubectl runs it for `kubectl regcred ...` with the words after it."""
    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
