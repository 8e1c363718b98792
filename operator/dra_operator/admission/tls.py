"""Serving certificates for the webhook: a self-signed CA and a server certificate (made by dra_operator.pki).

Used when no certificate files are given (--tls-cert-file/--tls-key-file/--tls-ca-file, e.g. from
cert-manager; Kopf's WebhookServer re-reads those when they change). Not Kopf's own self-signed path: that
needs oscrypto, which cannot parse OpenSSL 3 version strings.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from dra_operator.pki import CertificateAuthority, write_pem


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path
    ca: Path

    def ca_bundle(self) -> bytes:
        return self.ca.read_bytes()


def generate(directory: Path, hosts: list[str], days: int = 365) -> CertFiles:
    """Write ca.crt, tls.crt and tls.key into `directory`; `hosts` are the SANs (IPs or DNS names)."""
    directory.mkdir(parents=True, exist_ok=True)
    # path_length=0: this CA signs the webhook's certificate and nothing else, never another CA.
    ca = CertificateAuthority.create("dra-operator-webhook-ca", datetime.timedelta(days=days), path_length=0)
    cert, key = ca.issue(
        hosts[0] if hosts else "dra-operator-webhook", hosts=tuple(dict.fromkeys(hosts)), server=True
    )
    files = CertFiles(cert=directory / "tls.crt", key=directory / "tls.key", ca=directory / "ca.crt")
    write_pem(files.ca, ca.cert_pem)
    write_pem(files.cert, cert)
    write_pem(files.key, key, private=True)
    return files
