"""Where the API configuration comes from: a kubeconfig file or the pod's service account.

Anything unusable is a `ConfigurationError` with one line that names the file or the missing
piece, so `regcred run` and `regcred doctor` can say it and exit instead of crash-looping.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from kubernetes import client, config

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class ConfigurationError(Exception):
    """No usable API configuration: a usage error, said in one line that names the file or
    the missing piece (`regcred run` exits with it at once)."""


def load_configuration(kubeconfig: str | None) -> client.Configuration:
    """The API configuration from a kubeconfig file, else from the pod's service account."""
    configuration = client.Configuration()
    try:
        if kubeconfig:
            _check_kubeconfig(kubeconfig)
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            _check_in_cluster()
            config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as error:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "the in-cluster configuration"
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise ConfigurationError(f"{where} cannot be used: {first_line}") from None
    return configuration


def _check_kubeconfig(path: str) -> None:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigurationError(f"kubeconfig {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigurationError(f"kubeconfig {path} cannot be read: {reason}") from None
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigurationError(f"kubeconfig {path} is not valid YAML") from None
    if not isinstance(parsed, dict) or not parsed.get("contexts"):
        raise ConfigurationError(f"kubeconfig {path} defines no context")
    if not parsed.get("current-context"):
        raise ConfigurationError(
            f"kubeconfig {path} has no current context; set one with kubectl config use-context")


def _check_in_cluster() -> None:
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise ConfigurationError(
            "no kubeconfig given (--kubeconfig, $REGCRED_KUBECONFIG or $KUBECONFIG) and not in a "
            "cluster ($KUBERNETES_SERVICE_HOST is not set)")
    if not SERVICE_ACCOUNT_TOKEN.exists():
        raise ConfigurationError(
            f"in-cluster start without a service-account token: {SERVICE_ACCOUNT_TOKEN} does not "
            "exist (is automountServiceAccountToken off?)")


def api_client(configuration: client.Configuration, threads: int) -> client.ApiClient:
    """An API client keeping a connection per thread.

    The client's default pool holds 5 x cores connections, fewer than the threads that
    call the API at once during a fan-out; a full pool discards connections, and each new
    one costs a TLS handshake on both ends (a third of regcred's CPU in a 1,000-namespace
    sync, see bench/results/profiles/).
    """
    configuration.connection_pool_maxsize = threads
    return client.ApiClient(configuration)


def connect(kubeconfig: str | None, threads: int) -> client.ApiClient:
    """An API client from a kubeconfig file (else in-cluster); raises `ConfigurationError`."""
    return api_client(load_configuration(kubeconfig), threads)


def connect_like_kubectl(kubeconfig: str | None, context: str | None) -> tuple[client.ApiClient, str]:
    """An API client and the default namespace, found the way kubectl finds them (for
    `regcred doctor`): the given kubeconfig, else $KUBECONFIG (a list of files), else
    ~/.kube/config, else in-cluster. Raises `ConfigurationError` saying what is wrong."""
    configuration = client.Configuration()
    try:
        if kubeconfig and not context:
            _check_kubeconfig(kubeconfig)
        config.load_kube_config(config_file=kubeconfig, context=context,
                                client_configuration=configuration)
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts if c["name"] == context), None) if context else active
        namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    except config.ConfigException as error:
        if kubeconfig or context or os.environ.get("KUBECONFIG") or not _in_cluster():
            first_line = (str(error).splitlines() or [type(error).__name__])[0]
            raise ConfigurationError(f"no usable kubeconfig: {first_line}") from None
        config.load_incluster_config(client_configuration=configuration)
        namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError as error:
        raise ConfigurationError(f"cannot read the kubeconfig: {error.strerror}") from None
    return client.ApiClient(configuration), namespace


SERVICE_ACCOUNT_NAMESPACE = SERVICE_ACCOUNT_TOKEN.with_name("namespace")


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and SERVICE_ACCOUNT_NAMESPACE.exists()

