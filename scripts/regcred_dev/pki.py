"""The run's PKI: a throwaway CA and the certificates and kubeconfigs issued from it.

openssl does the work (no Python crypto dependency in the dev tools); every file lives in
the run's own dir and is valid for a week at most. Stdlib only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from regcred_dev.process import ControlPlaneError

# What the server and the client certificates share (an end-entity key for TLS).
_LEAF = """\
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
_OPENSSL_CONFIG = f"""\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[server]
{_LEAF}extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
[client]
{_LEAF}extendedKeyUsage = clientAuth
"""


class Certificates:
    """A throwaway CA, the serving cert, client certs and the service-account key pair."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = directory / "openssl.cnf"
        self.config.write_text(_OPENSSL_CONFIG)
        self.ca, self.ca_key = directory / "ca.crt", directory / "ca.key"
        self._openssl("req", "-x509", "-new", *self._ec_key(self.ca_key), "-subj", "/CN=regcred-test-ca",
                      "-days", "7", "-extensions", "ca", "-out", self.ca)
        self.server, self.server_key = self.issue("kube-apiserver", (), "server")
        self.sa_key, self.sa_pub = directory / "sa.key", directory / "sa.pub"
        self._openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", self.sa_key)
        self._openssl("pkey", "-in", self.sa_key, "-pubout", "-out", self.sa_pub)

    def _ec_key(self, key: Path) -> list[str | Path]:
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
                "-config", self.config]

    def _openssl(self, *args: str | Path) -> None:
        result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
        if result.returncode != 0:
            raise ControlPlaneError(f"openssl {args[0]} failed: {result.stderr.strip()}")

    def issue(self, common_name: str, organisations: tuple[str, ...] = (), kind: str = "client",
              ) -> tuple[Path, Path]:
        """A certificate signed by the CA; for clients CN is the user name and O the groups."""
        stem = re.sub(r"[^\w.-]", "_", common_name)
        cert, key, csr = (self.dir / f"{stem}.crt", self.dir / f"{stem}.key", self.dir / f"{stem}.csr")
        subject = "".join(f"/O={org}" for org in organisations) + f"/CN={common_name}"
        self._openssl("req", "-new", *self._ec_key(key), "-subj", subject, "-out", csr)
        self._openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                      "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "7",
                      "-extfile", self.config, "-extensions", kind, "-out", cert)
        csr.unlink()
        return cert, key


def kubeconfig(server: str, ca: Path, cert: Path, key: Path, user: str) -> dict[str, Any]:
    """A kubeconfig for `user` with file references to its client certificate and the CA."""
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "regcred-test",
        "clusters": [{"name": "regcred-test",
                      "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "regcred-test", "context": {"cluster": "regcred-test", "user": user}}],
    }


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    """`kubeconfig(...)` as a file (JSON is valid YAML, so no YAML library is needed)."""
    path.write_text(json.dumps(kubeconfig(server, ca, cert, key, user), indent=2) + "\n")
    return path
