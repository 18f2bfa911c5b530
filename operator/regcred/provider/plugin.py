#!/usr/bin/env python3
"""`regcred-credential-provider`: the kubelet's image credential provider plugin.

The kubelet runs it for each pull its CredentialProviderConfig matches, with a
`CredentialProviderRequest` (credentialprovider.kubelet.k8s.io/v1) on stdin holding the image
and a ServiceAccount token bound to the Pod. It asks regcred's endpoint over HTTPS, the token
as a Bearer token, and prints the `CredentialProviderResponse` on stdout. On any failure it
prints a response with no auth that the kubelet does not cache (the pull goes anonymous and
fails visibly; the next retry asks again) and the reason on stderr, which the kubelet logs.

It imports the standard library only: the kubelet starts it once per pull it cannot answer
from its cache, so a cheap start matters (bench/provider.py measures it). The token and the
credential appear nowhere but in the request to the endpoint and the response on stdout.

    regcred-credential-provider --url https://regcred-provider.regcred-system.svc:443/v1/credentials \\
        --ca-file /etc/regcred/provider-ca.crt
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import sys
import urllib.parse
from typing import Any, TextIO

API_VERSION = "credentialprovider.kubelet.k8s.io/v1"
PROG = "regcred-credential-provider"
# What a refusal or failure answers: nothing to use, nothing to cache.
EMPTY = {"apiVersion": API_VERSION, "kind": "CredentialProviderResponse", "cacheKeyType": "Image",
         "cacheDuration": "0s", "auth": {}}


class Failed(Exception):
    """Why no credential came back; the message is safe to log (no token, no credential)."""


def main(argv: list[str] | None = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
         stderr: TextIO = sys.stderr) -> int:
    """Always exit 0 with a valid response: a failed exec makes the kubelet log less usefully."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("REGCRED_PROVIDER_URL"),
                        help="regcred's endpoint, https://HOST:PORT/v1/credentials [REGCRED_PROVIDER_URL]")
    parser.add_argument("--ca-file", default=os.environ.get("REGCRED_PROVIDER_CA_FILE"),
                        help="CA that signed the endpoint's certificate [REGCRED_PROVIDER_CA_FILE]")
    parser.add_argument("--timeout", type=float,
                        default=float(os.environ.get("REGCRED_PROVIDER_TIMEOUT", "10")),
                        help="seconds to wait for the endpoint [REGCRED_PROVIDER_TIMEOUT]")
    args = parser.parse_args(argv)
    try:
        response = provide(args.url, args.ca_file, args.timeout, stdin.read())
    except Failed as error:
        print(f"{PROG}: no credential: {error}", file=stderr)
        response = EMPTY
    json.dump(response, stdout)
    stdout.write("\n")
    return 0


def provide(url: str | None, ca_file: str | None, timeout: float, request_text: str) -> dict[str, Any]:
    """The response for one `CredentialProviderRequest`, or `Failed` saying why not."""
    if not url or not ca_file:
        raise Failed("set --url and --ca-file (or REGCRED_PROVIDER_URL and REGCRED_PROVIDER_CA_FILE) "
                     "in the kubelet's CredentialProviderConfig")
    try:
        request = json.loads(request_text)
    except ValueError:
        raise Failed("stdin is not a JSON CredentialProviderRequest") from None
    if not isinstance(request, dict) or request.get("apiVersion") != API_VERSION:
        raise Failed(f"stdin is not a {API_VERSION} CredentialProviderRequest")
    image, token = request.get("image"), request.get("serviceAccountToken")
    if not isinstance(image, str) or not image:
        raise Failed("the request names no image")
    if not isinstance(token, str) or not token:
        raise Failed("the request carries no ServiceAccount token: set tokenAttributes "
                     "(serviceAccountTokenAudience, requireServiceAccount: true) in the kubelet's config")
    status, body = _post(url, ca_file, timeout, token, {"image": image})
    if status != 200:
        reason = body.get("reason", f"HTTP {status}") if isinstance(body, dict) else f"HTTP {status}"
        message = body.get("message", "") if isinstance(body, dict) else ""
        raise Failed(f"{image}: refused ({reason}) {message}".rstrip())
    if not isinstance(body, dict) or not isinstance(body.get("auth"), dict):
        raise Failed("the endpoint's answer is not a CredentialProviderResponse")
    return {"apiVersion": API_VERSION, "kind": "CredentialProviderResponse",
            "cacheKeyType": body.get("cacheKeyType", "Image"),
            "cacheDuration": body.get("cacheDuration", "0s"), "auth": body["auth"]}


def _post(url: str, ca_file: str, timeout: float, token: str, payload: dict[str, str]) -> tuple[int, Any]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "https" or not parsed.hostname:
        raise Failed(f"--url must be an https URL, not {url!r}")
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as error:
        raise Failed(f"cannot load the CA file {ca_file}: {error}") from None
    connection = http.client.HTTPSConnection(parsed.hostname, parsed.port or 443, timeout=timeout,
                                             context=context)
    try:
        connection.request("POST", parsed.path or "/", body=json.dumps(payload),
                           headers={"Authorization": f"Bearer {token}",
                                    "Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as error:
        raise Failed(f"cannot reach {parsed.hostname}:{parsed.port or 443}: "
                     f"{type(error).__name__}: {error}") from None
    finally:
        connection.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, None


if __name__ == "__main__":
    sys.exit(main())
