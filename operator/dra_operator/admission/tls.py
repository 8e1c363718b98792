"""Serving certificates for the webhook: a self-signed CA and a server certificate (made by dra_operator.pki).

Used when no certificate files are given (--tls-cert-file/--tls-key-file/--tls-ca-file, e.g. from
cert-manager; the admission server re-reads those when they change). Not Kopf's self-signed path: that
needs oscrypto, which cannot parse OpenSSL 3 version strings.

`in_memory` keeps the generated key off the disk: each PEM lives in an anonymous memory file (memfd_create)
that the admission server opens by its /proc/self/fd path, and the kernel frees it with the process however
that ends (even SIGKILL), so no start leaves key material behind. Where memfd_create is missing, a private
temporary directory is used and removed at exit (Kopf turns SIGTERM into a normal exit, so that includes
SIGTERM).

`in_memory` has its certificates made by a short-lived child process (`python -m dra_operator.admission.tls`,
answering on a pipe): the `cryptography` package then never loads into the operator, which needs it for
nothing else, and its 8.5 MiB stay out of the operator's memory for good (its Rust library alone maps 5.7;
issue 14).
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


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


#: How long the child that makes the certificates may take (an ECDSA CA and key: well under a second).
ISSUE_SECONDS = 60.0


def _issue(hosts: list[str], days: int) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate, server key), PEM; `hosts` are the SANs (IPs or DNS names)."""
    from dra_operator.pki import CertificateAuthority

    # path_length=0: this CA signs the webhook's certificate and nothing else, never another CA.
    ca = CertificateAuthority.create("dra-operator-webhook-ca", datetime.timedelta(days=days), path_length=0)
    cert, key = ca.issue(
        hosts[0] if hosts else "dra-operator-webhook", hosts=tuple(dict.fromkeys(hosts)), server=True
    )
    return ca.cert_pem, cert, key


def generate(directory: Path, hosts: list[str], days: int = 365) -> CertFiles:
    """Write ca.crt, tls.crt and tls.key into `directory`; `hosts` are the SANs (IPs or DNS names)."""
    from dra_operator.pki import write_pem

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
        ca, cert, key = _issued_apart(hosts, days)
        return CertFiles(
            cert=_memory_file("tls.crt", cert),
            key=_memory_file("tls.key", key),
            ca=_memory_file("ca.crt", ca),
        )
    directory = Path(tempfile.mkdtemp(prefix="dra-operator-tls-"))  # mode 0700
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return generate(directory, hosts, days)


def _issued_apart(hosts: list[str], days: int) -> tuple[bytes, bytes, bytes]:
    """`_issue` in a child process, its PEMs read from its standard output (a pipe, never a file)."""
    try:
        run = subprocess.run(
            [sys.executable, "-m", __name__, f"--days={days}", "--", *hosts],
            capture_output=True,
            timeout=ISSUE_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"making the webhook's certificates failed: {exc}") from exc
    if run.returncode != 0:
        raise RuntimeError(f"making the webhook's certificates failed: {run.stderr.decode(errors='replace')}")
    issued = json.loads(run.stdout)
    return issued["ca"].encode(), issued["cert"].encode(), issued["key"].encode()


def main(argv: Sequence[str] | None = None) -> int:
    """Print a new CA and a serving certificate and key for the hosts, as one JSON object of PEM strings."""
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description=main.__doc__)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("hosts", nargs="*")
    args = parser.parse_args(argv)
    ca, cert, key = _issue(args.hosts, args.days)
    json.dump({"ca": ca.decode(), "cert": cert.decode(), "key": key.decode()}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
