"""`make demo`'s pull-time delivery step (scripts/demo.py calls `pull_time_delivery`).

On the demo's node and registry: the kubelet restarted with regcred's credential provider
(docs/credential-provider.md), a RegistryCredential with `delivery: CredentialProvider`, a Pod
with no pull secret anywhere printing SUCCESS, and a Pod created before the CR recovering on
the kubelet's next retry, the case copies can never fix.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from regcred_dev import REPO
from regcred_dev.node import Node
from regcred_dev.nodeconfig import CredentialProvider, credential_provider_config
from regcred_dev.process import free_port, wait_until

NODE_RBAC = REPO / "manifests" / "examples" / "credential-provider-node-rbac.yaml"
AUDIENCE = "regcred.dev/credential-provider"

PROVIDER_CREDENTIAL = """
apiVersion: regcred.dev/v1alpha1
kind: RegistryCredential
metadata:
  name: pull-time
spec:
  delivery: CredentialProvider
  registries:
    - server: {server}
  sourceSecretRef:
    name: registry-robot
  namespaces: ["shop-*"]
"""


def endpoint_flags() -> tuple[str, list[str]]:
    """The endpoint's listen address on loopback and the `regcred run` flags that serve it."""
    listen = f"127.0.0.1:{free_port()}"
    return listen, ["--credential-provider", "true", "--credential-provider-listen", listen,
                    "--credential-provider-hosts", "127.0.0.1",
                    "--credential-provider-cache-seconds", "30"]


def pull_time_delivery(demo: Any, node: Node, registry_host: str, image: str, listen: str,
                       run_pod: Callable[[Any, str, str, str], str], say: Callable[[str], None]) -> None:
    say("Pull-time delivery: the kubelet asks regcred for the credential, no Secret in the namespace")
    demo.kubectl("apply", "-f", str(NODE_RBAC))
    assert node.dir is not None, "start the node first"
    ca = node.dir / "regcred-provider-ca.crt"
    encoded = wait_until(lambda: demo.jsonpath("secret", "regcred-provider-tls", "-n", "regcred-system",
                                               "-o", "jsonpath={.data.ca\\.crt}"), 60, "the endpoint's CA")
    ca.write_bytes(base64.b64decode(encoded))
    provider = CredentialProvider(plugin=Path(sys.executable).parent / "regcred-credential-provider",
                                  url=f"https://{listen}/v1/credentials", ca=ca,
                                  match_images=(registry_host,), audience=AUDIENCE)
    node.use_credential_provider(provider)
    print("the kubelet now runs with --image-credential-provider-config:")
    print(json.dumps(credential_provider_config(provider), indent=2))

    say("A Pod in shop-early, created before any RegistryCredential serves it: ErrImagePull")
    demo.kubectl("create", "namespace", "shop-early")
    wait_until(lambda: demo.jsonpath("serviceaccount", "default", "-n", "shop-early"), 60,
               "the default ServiceAccount in shop-early")
    print(f"pod early: {run_pod(demo, 'shop-early', 'early', image)}")

    say("A RegistryCredential delivered by the credential provider, for shop-*")
    demo.kubectl("create", "namespace", "shop-a")
    demo.kubectl("apply", "-f", "-", stdin=PROVIDER_CREDENTIAL.format(server=registry_host))
    wait_until(lambda: demo.jsonpath("regcred", "pull-time", "-o",
                                     "jsonpath={.status.conditions[0].status}") == "True",
               60, "pull-time Ready")
    wait_until(lambda: demo.jsonpath("serviceaccount", "default", "-n", "shop-a"), 60,
               "the default ServiceAccount in shop-a")
    say("shop-a has no Secret and its ServiceAccount no imagePullSecrets; its Pod prints SUCCESS")
    demo.kubectl("get", "secrets,serviceaccounts", "-n", "shop-a", "-o",
                 "custom-columns=KIND:.kind,NAME:.metadata.name,PULL-SECRETS:.imagePullSecrets[*].name")
    print(f"pod pull-check: {run_pod(demo, 'shop-a', 'pull-check', image)}")
    demo.kubectl("logs", "pull-check", "-n", "shop-a")

    say("The early Pod recovers by itself on the kubelet's next retry (nobody deletes it)")
    wait_until(lambda: demo.jsonpath("pod", "early", "-n", "shop-early", "-o",
                                     "jsonpath={.status.phase}") == "Succeeded", 300, "the early Pod")
    demo.kubectl("logs", "early", "-n", "shop-early")
    say("Its status counts the answers (published within 10 s; never a credential)")
    wait_until(lambda: demo.jsonpath("regcred", "pull-time", "-o",
                                     "jsonpath={.status.pullTime.answered}") == "2",
               30, "two answers counted")
    demo.kubectl("get", "regcred", "pull-time", "-o", "jsonpath={.status.pullTime}{\"\\n\"}")
