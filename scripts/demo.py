#!/usr/bin/env python3
"""`make demo`: regcred end to end on a local control plane, narrated.

Builds (or reuses) the control plane, installs the CRD, starts `regcred run`, then shows
the jobs users hire regcred for: declare once, onboard a late namespace, rotate, and
leave other people's things alone. Everything is torn down at the end (or on Ctrl-C);
`--keep` leaves it running and prints the KUBECONFIG to explore it.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from controlplane import ControlPlane, free_port, wait_until

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

    def copy_password(self, namespace: str) -> str:
        raw = self.jsonpath("secret", "harbor-prod", "-n", namespace,
                            "-o", "jsonpath={.data.\\.dockerconfigjson}")
        if not raw:
            return ""
        return json.loads(base64.b64decode(raw))["auths"]["harbor.example.com"]["password"]


def say(text: str) -> None:
    print(f"\n=== {text}")


def run(keep: bool) -> None:
    with ControlPlane() as control_plane:
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
        operator = subprocess.Popen(
            [sys.executable, "-m", "regcred.cli", "run", "--kubeconfig", str(control_plane.kubeconfig),
             "--namespace", "regcred-system", "--metrics-port", "0", "--health-port", "0",
             "--log-format", "console", "--admission", "true", "--admission-listen", webhook,
             "--admission-url", f"https://{webhook}"],
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
            if keep:
                demo.kubectl("apply", "-f", "-", stdin=CREDENTIAL)
                say(f"Still running. export KUBECONFIG={control_plane.kubeconfig}  (Ctrl-C to stop)")
                operator.wait()
        finally:
            operator.terminate()
            operator.wait(20)
            log.close()
    say("Done: control plane and regcred stopped, temp files removed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep everything running at the end")
    args = parser.parse_args()
    try:
        run(args.keep)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
