#!/usr/bin/env python3
"""`make demo`: regcred end to end on a local control plane, narrated.

First, as users run it (scripts/incluster.py): regcred's image built (or reused) from the
Dockerfile, pushed to a private registry, `helm install`ed onto the control plane and a real
node (containerd + kubelet), its two Pods shown; then a RegistryCredential for the registry
and the seed tutorials' check against that release: SUCCESS in an onboarded namespace, the
registry's 401 in an unmatched one. Where the node cannot run, one line says why and this
part is left out.

Then the full tour with `regcred run` as a process beside a fresh control plane (process
mode, also the whole demo where no node can run):
Builds (or reuses) the control plane, installs the CRD, starts `regcred run`, then shows
the jobs users hire regcred for: declare once, onboard a late namespace, rotate, and
leave other people's things alone. It ends with the seed tutorials' check on a real node
(containerd + kubelet, scripts/node.py) and a private registry (scripts/regcred_dev/registry.py): a Pod
with the private image prints SUCCESS in an onboarded namespace and shows ErrImagePull with
the registry's 401 in an unmatched one; then a rotation and a fresh Pod; then pull-time
delivery (scripts/regcred_dev/demo_provider.py): the kubelet restarted with regcred's credential provider,
a Pod with no pull secret anywhere printing SUCCESS, and a Pod created before its
RegistryCredential recovering on the kubelet's retry. Where the node
cannot run (not root, packages missing) it says so in one line and shows the rest.
Everything is torn down at the end (or on Ctrl-C); `--keep` leaves it running (the node
too) and prints the KUBECONFIG to explore it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

from regcred_dev import image, images
from regcred_dev.controlplane import ControlPlane
from regcred_dev.demo_provider import endpoint_flags, pull_time_delivery
from regcred_dev.incluster import NAMESPACE, RELEASE, InCluster
from regcred_dev.node import NODE_NAME, Node
from regcred_dev.process import free_port, interruptible, wait_until
from regcred_dev.registry import Registry

REPO = Path(__file__).resolve().parents[1]
SOURCE_PASSWORD, ROTATED_PASSWORD = "demo-password-1", "demo-password-2"

CREDENTIAL = """
apiVersion: regcred.dev/v1alpha1
kind: RegistryCredential
metadata:
  name: harbor-prod
spec:
  registries:
    - server: harbor.example.com
  sourceSecretRef:
    name: harbor-robot
  namespaces: ["team-*"]
  excludeNamespaces: ["*-sandbox"]
"""


class Demo:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = str(kubeconfig)

    def kubectl(self, *args: str, show: bool = True, stdin: str | None = None) -> str:
        if show:
            print(f"\n$ kubectl {' '.join(args)}")
        result = subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args], input=stdin,
                                capture_output=True, text=True, check=True)
        if show:
            print(result.stdout.rstrip())
        return result.stdout

    def jsonpath(self, *args: str) -> str:
        try:
            return self.kubectl("get", *args, show=False)
        except subprocess.CalledProcessError:
            return ""

    def copy_password(self, namespace: str, secret: str = "harbor-prod",
                      server: str = "harbor.example.com") -> str:
        raw = self.jsonpath("secret", secret, "-n", namespace,
                            "-o", "jsonpath={.data.\\.dockerconfigjson}")
        if not raw:
            return ""
        password: str = json.loads(base64.b64decode(raw))["auths"].get(server, {}).get("password", "")
        return password

    def registry_password(self, namespace: str, server: str) -> str:
        return self.copy_password(namespace, "private-registry", server)


def say(text: str) -> None:
    print(f"\n=== {text}")


PULL_CREDENTIAL = """
apiVersion: regcred.dev/v1alpha1
kind: RegistryCredential
metadata:
  name: private-registry
spec:
  registries:
    - server: {server}
  sourceSecretRef:
    name: registry-robot
  namespaces: ["team-*"]
"""

PULL_POD = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {node}
  hostNetwork: true
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
    - name: app
      image: {image}
      imagePullPolicy: Always
"""


def source_secret(password: str) -> str:
    """The source Secret as a manifest on stdin, so the password is never on a command line."""
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
                       "metadata": {"name": "registry-robot", "namespace": "regcred-system"},
                       "stringData": {"username": "robot", "password": password}})


def credential_for(demo: Demo, password: str, server: str) -> None:
    """The registry's login as the source Secret, a RegistryCredential for team-*, and
    team-a onboarded."""
    demo.kubectl("apply", "-f", "-", stdin=source_secret(password))
    demo.kubectl("apply", "-f", "-", stdin=PULL_CREDENTIAL.format(server=server))
    wait_until(lambda: "private-registry" in demo.jsonpath(
        "serviceaccount", "default", "-n", "team-a", "-o", "jsonpath={.imagePullSecrets}"),
        60, "team-a onboarded for the registry")


def run_pod(demo: Demo, namespace: str, name: str, image: str) -> str:
    """Create the seeds' Pod and wait until it ran or its pull was refused; returns which."""
    manifest = PULL_POD.format(name=name, node=NODE_NAME, image=image)
    if name == "pull-check" and namespace == "team-a":
        print(manifest.rstrip())  # the seeds' Pod, shown once
    demo.kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest)

    def outcome() -> str:
        phase = demo.jsonpath("pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}")
        waiting = demo.jsonpath("pod", name, "-n", namespace, "-o",
                                "jsonpath={.status.containerStatuses[0].state.waiting.reason}")
        return phase if phase in ("Succeeded", "Failed") else (
            waiting if waiting in ("ErrImagePull", "ImagePullBackOff") else "")

    return wait_until(outcome, 90, f"pod {namespace}/{name} to run or be refused")


def pulls_on_a_real_node(demo: Demo, control_plane: ControlPlane, stack: contextlib.ExitStack,
                         provider_listen: str) -> None:
    """The seed tutorials' check: SUCCESS from a private image, and the 401 next to it."""
    reason = Node.unavailable_reason()
    if reason:
        say(f"Pulls on a real node: skipped, {reason}")
        return
    say("Pulls on a real node: containerd + kubelet, and a private registry (TLS, htpasswd)")
    node = stack.enter_context(Node(control_plane))
    password = secrets.token_urlsafe(18)
    registry = stack.enter_context(Registry(control_plane.pki, {"robot": password}))
    node.trust_registry(registry.host, registry.ca)
    image = registry.push(images.success_image(), "team/success", "1", "robot")
    demo.kubectl("get", "nodes", "-o", "wide")
    print(f"private image {image}; anonymous GET /v2/ -> {registry.status('/v2/', None)}")

    say("The registry's credentials as a source Secret, and a RegistryCredential for team-*")
    credential_for(demo, password, registry.host)

    say("The seeds' check in team-a (onboarded): the Pod prints SUCCESS")
    print(f"pod pull-check: {run_pod(demo, 'team-a', 'pull-check', image)}")
    demo.kubectl("logs", "pull-check", "-n", "team-a")

    say("The same Pod in `other` (not matched): ErrImagePull, the registry said 401")
    print(f"pod pull-check: {run_pod(demo, 'other', 'pull-check', image)}")
    demo.kubectl("get", "events", "-n", "other", "--field-selector",
                 "involvedObject.name=pull-check,reason=Failed", "-o", "custom-columns=REASON:.reason,"
                 "MESSAGE:.message")

    say("Rotation for real: the registry's password changes, then the source Secret follows")
    rotated = secrets.token_urlsafe(18)
    registry.set_password("robot", rotated)
    print(f"old password at the registry: GET /v2/ -> {registry.status('/v2/', ('robot', password))}")
    demo.kubectl("apply", "-f", "-", stdin=source_secret(rotated))
    wait_until(lambda: demo.registry_password("team-a", registry.host) == rotated, 60, "rotation")
    print(f"a fresh pod, pull-after-rotation: {run_pod(demo, 'team-a', 'pull-after-rotation', image)}")
    demo.kubectl("logs", "pull-after-rotation", "-n", "team-a")
    pull_time_delivery(demo, node, registry.host, image, provider_listen, run_pod, say)


def as_users_run_it() -> None:
    """regcred's image, pushed privately, installed by its chart; then SUCCESS and the 401."""
    reason = Node.unavailable_reason() or image.unavailable_reason() or Registry.unavailable_reason()
    if reason:
        say(f"regcred installed by its chart: left out ({reason}); process mode below")
        return
    say("regcred as users run it: the image built from the Dockerfile, pushed to a private "
        "registry, `helm install` with imagePullSecrets, two Pods on a real node")
    with InCluster() as cluster:
        demo = Demo(cluster.plane.kubeconfig)
        print(f"image {cluster.image_reference}, {cluster.image_archive.stat().st_size / 1e6:.0f} MB "
              f"(anonymous GET /v2/ -> {cluster.registry.status('/v2/', None)}); seconds: {cluster.timings}")
        flags = " ".join(cluster.set_flags())
        print(f"$ helm install {RELEASE} charts/regcred --namespace {NAMESPACE} {flags}")
        demo.kubectl("get", "pods", "-n", NAMESPACE, "-o", "custom-columns=NAME:.metadata.name,"
                     "STATUS:.status.phase,READY:.status.containerStatuses[0].ready,IP:.status.podIP,"
                     "IMAGE:.spec.containers[0].image,PULL-SECRETS:.spec.imagePullSecrets[*].name")
        demo.kubectl("get", "service,mutatingwebhookconfiguration", "-n", NAMESPACE)
        for namespace in ("team-a", "other"):
            demo.kubectl("create", "namespace", namespace)
        password = secrets.token_urlsafe(18)
        cluster.registry.set_password("robot", password)
        private = cluster.registry.push(images.success_image(), "team/success", "1", "robot")
        credential_for(demo, password, cluster.registry.host)
        say("The seeds' check against the installed release: SUCCESS in team-a, 401 in other")
        print(f"pod pull-check in team-a: {run_pod(demo, 'team-a', 'pull-check', private)}")
        demo.kubectl("logs", "pull-check", "-n", "team-a")
        print(f"pod pull-check in other: {run_pod(demo, 'other', 'pull-check', private)}")
        demo.kubectl("get", "events", "-n", "other", "--field-selector",
                     "involvedObject.name=pull-check,reason=Failed", "-o", "custom-columns=REASON:.reason,"
                     "MESSAGE:.message")
    say("The release, its node, registry and control plane stopped; now the full tour in process mode")


def run(keep: bool) -> None:
    as_users_run_it()
    with ControlPlane() as control_plane, contextlib.ExitStack() as node_and_registry:
        control_plane.put_kubectl_first_on_path()
        demo = Demo(control_plane.kubeconfig)
        say("Install the CRD and the operator's namespace")
        demo.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        demo.kubectl("wait", "--for=condition=Established",
                     "crd/registrycredentials.regcred.dev", "--timeout=60s")
        demo.kubectl("create", "namespace", "regcred-system")

        say("Start regcred with its ServiceAccount webhook on loopback (log: regcred-demo.log)")
        log = open(REPO / "regcred-demo.log", "w")  # noqa: SIM115 (lives as long as the process)
        webhook = f"127.0.0.1:{free_port()}"  # the API server calls it there (docs/admission.md)
        provider_listen, provider_flags = endpoint_flags()  # kubelets' plugin asks it there
        operator = subprocess.Popen(
            [sys.executable, "-m", "regcred.cli", "run", "--kubeconfig", str(control_plane.kubeconfig),
             "--namespace", "regcred-system", "--metrics-port", "0", "--health-port", "0",
             "--log-format", "console", "--admission", "true", "--admission-listen", webhook,
             "--admission-url", f"https://{webhook}", *provider_flags],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            say("Tenant namespaces, one with somebody else's pull secret on its ServiceAccount")
            for namespace in ("team-a", "team-b", "team-a-sandbox", "other"):
                demo.kubectl("create", "namespace", namespace)
            wait_until(lambda: demo.jsonpath("serviceaccount", "default", "-n", "team-a"), 60,
                       "the default ServiceAccount in team-a")
            demo.kubectl("patch", "serviceaccount", "default", "-n", "team-a", "--type=json", "-p",
                         '[{"op":"add","path":"/imagePullSecrets","value":[{"name":"their-own"}]}]')

            say("The source Secret and one RegistryCredential")
            demo.kubectl("create", "secret", "generic", "harbor-robot", "-n", "regcred-system",
                         "--type=kubernetes.io/basic-auth", "--from-literal=username=robot",
                         f"--from-literal=password={SOURCE_PASSWORD}")
            demo.kubectl("apply", "-f", "-", stdin=CREDENTIAL)
            wait_until(lambda: demo.jsonpath("regcred", "harbor-prod", "-o",
                                              "jsonpath={.status.syncedNamespaces}") == "2",
                       60, "harbor-prod synced to team-a and team-b")

            say("Copies in team-a and team-b only (team-a-sandbox is excluded, other does not match)")
            demo.kubectl("get", "secrets", "-A", "-l", "app.kubernetes.io/managed-by=regcred")
            say("The default ServiceAccounts carry our entry; their-own stays first")
            demo.kubectl("get", "serviceaccounts", "-A", "-o",
                         "custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,"
                         "PULL-SECRETS:.imagePullSecrets[*].name")
            demo.kubectl("get", "regcred")

            say("Onboarding: a namespace created now gets its copy and ServiceAccount entry at once")
            started = time.monotonic()
            demo.kubectl("create", "namespace", "team-c")
            wait_until(lambda: "harbor-prod" in demo.jsonpath(
                "serviceaccount", "default", "-n", "team-c", "-o", "jsonpath={.imagePullSecrets}"),
                60, "team-c onboarded")
            print(f"team-c onboarded in {time.monotonic() - started:.2f}s (the copy, and the entry the "
                  "webhook gave the default ServiceAccount at its creation)")
            demo.kubectl("get", "mutatingwebhookconfiguration", "regcred")

            say("Rotation: change the password in the source Secret only")
            demo.kubectl("patch", "secret", "harbor-robot", "-n", "regcred-system", "--type=merge",
                         "-p", json.dumps({"stringData": {"password": ROTATED_PASSWORD}}))
            started = time.monotonic()
            wait_until(lambda: all(demo.copy_password(ns) == ROTATED_PASSWORD
                                   for ns in ("team-a", "team-b", "team-c")), 60, "rotation")
            print(f"every copy holds the new password after {time.monotonic() - started:.2f}s")
            demo.kubectl("get", "regcred", "harbor-prod", "-o",
                         "jsonpath={.status}{\"\\n\"}")
            demo.kubectl("get", "events", "-n", "default",
                         "--field-selector", "involvedObject.kind=RegistryCredential")

            say("Deleting the CR removes our copies and entries, and nothing else")
            demo.kubectl("delete", "regcred", "harbor-prod")
            wait_until(lambda: not demo.jsonpath("secrets", "-A", "-l",
                                                  "app.kubernetes.io/managed-by=regcred", "-o", "name"),
                       60, "copies removed")
            demo.kubectl("get", "serviceaccounts", "-A", "-o",
                         "custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,"
                         "PULL-SECRETS:.imagePullSecrets[*].name")
            pulls_on_a_real_node(demo, control_plane, node_and_registry, provider_listen)
            if keep:
                demo.kubectl("apply", "-f", "-", stdin=CREDENTIAL)
                say(f"Still running. export KUBECONFIG={control_plane.kubeconfig}  (Ctrl-C to stop)")
                operator.wait()
        finally:
            operator.terminate()
            operator.wait(20)
            log.close()
    say("Done: node, registry, control plane and regcred stopped, temp files removed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep everything running at the end")
    args = parser.parse_args()
    try:
        with interruptible():  # Ctrl-C, SIGTERM and SIGHUP all tear everything down
            run(args.keep)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
