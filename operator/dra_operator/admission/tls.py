"""Serving certificates for the webhook: a self-signed CA and a server certificate (made by dra_operator.pki).

Used when no certificate files are given (--tls-cert-file/--tls-key-file/--tls-ca-file, e.g. from
cert-manager; the admission server re-reads those when they change). Not Kopf's self-signed path: that
needs oscrypto, which cannot parse OpenSSL 3 version strings.

`in_memory` keeps the generated key off the disk: each PEM lives in an anonymous memory file (memfd_create)
that the admission server opens by its /proc/self/fd path, and the kernel frees it with the process however
that ends (even SIGKILL), so no start leaves key material behind. Where memfd_create is missing, a private
temporary directory is used and removed at exit (Kopf turns SIGTERM into a normal exit, so that includes
SIGTERM).
"""

from __future__ import annotations

import atexit
import datetime
import os
import shutil
import tempfile
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


def inherited_fds(files: CertFiles) -> tuple[int, ...]:
    """The descriptors behind `in_memory` files, for a child process to inherit (`pass_fds` keeps their
    numbers, so the same /proc/self/fd paths open there); none for files on disk."""
    fds = []
    for path in (files.cert, files.key, files.ca):
        if path.parent == Path("/proc/self/fd"):
            fds.append(int(path.name))
    return tuple(fds)


def _issue(hosts: list[str], days: int) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate, server key), PEM; `hosts` are the SANs (IPs or DNS names)."""
    # path_length=0: this CA signs the webhook's certificate and nothing else, never another CA.
    ca = CertificateAuthority.create("dra-operator-webhook-ca", datetime.timedelta(days=days), path_length=0)
    cert, key = ca.issue(
        hosts[0] if hosts else "dra-operator-webhook", hosts=tuple(dict.fromkeys(hosts)), server=True
    )
    return ca.cert_pem, cert, key


def generate(directory: Path, hosts: list[str], days: int = 365) -> CertFiles:
    """Write ca.crt, tls.crt and tls.key into `directory`; `hosts` are the SANs (IPs or DNS names)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, cert, key = _issue(hosts, days)
    files = CertFiles(cert=directory / "tls.crt", key=directory / "tls.key", ca=directory / "ca.crt")
    write_pem(files.ca, ca)
    write_pem(files.cert, cert)
    write_pem(files.key, key, private=True)
    return files


def _memory_file(name: str, data: bytes) -> Path:
    # The descriptor stays open for the life of the process (it is the file); close-on-exec by default.
    fd = os.memfd_create(f"dra-operator-{name}")
    os.write(fd, data)
    return Path(f"/proc/self/fd/{fd}")


def in_memory(hosts: list[str], days: int = 365) -> CertFiles:
    """Generated certificates that never touch the disk (see the module docstring)."""
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        ca, cert, key = _issue(hosts, days)
        return CertFiles(
            cert=_memory_file("tls.crt", cert),
            key=_memory_file("tls.key", key),
            ca=_memory_file("ca.crt", ca),
        )
    directory = Path(tempfile.mkdtemp(prefix="dra-operator-tls-"))  # mode 0700
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return generate(directory, hosts, days)
