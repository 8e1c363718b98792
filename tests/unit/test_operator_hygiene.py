"""Process hygiene of `dra-operator run` (issue 10): generated webhook keys never reach the disk, a lease too
short to renew safely is refused at start, Kopf's API retries never run out."""

from __future__ import annotations

import itertools
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cryptography import x509

from dra_operator.admission import tls
from dra_operator.operator.main import EndlessBackoffs


def test_generated_certificates_live_in_memory_only() -> None:
    before = set(Path(tempfile.gettempdir()).glob("dra-operator-tls-*"))
    files = tls.in_memory(["127.0.0.1"])
    assert set(Path(tempfile.gettempdir()).glob("dra-operator-tls-*")) == before
    for path in (files.cert, files.key, files.ca):
        assert str(path).startswith("/proc/self/fd/"), path
        assert path.resolve().name.startswith("memfd:dra-operator-"), path.resolve()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)  # what the admission server does with the paths
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(files.ca_bundle()))


def test_the_operator_makes_its_certificates_without_loading_cryptography() -> None:
    """A child process makes them (issue 14: `cryptography` would stay in the operator's memory, 8.5 MiB)."""
    program = (
        "import sys, dra_operator.operator.main; from dra_operator.admission import tls; "
        "files = tls.in_memory(['127.0.0.1']); "
        "print(files.key.read_bytes().startswith(b'-----BEGIN PRIVATE KEY'), 'cryptography' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert run.stdout.split() == ["True", "False"], run.stderr


def test_a_child_that_cannot_make_the_certificates_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    for executable in (sys.executable + "-missing", "/bin/false"):
        monkeypatch.setattr(sys, "executable", executable)
        with pytest.raises(RuntimeError, match="making the webhook's certificates failed"):
            tls.in_memory(["127.0.0.1"])


def test_a_lease_too_short_is_refused_at_start() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "dra_operator.cli", "run", "--kubeconfig=/nonexistent", "--lease-seconds=2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert "--lease-seconds 2: a lease of 2s is too short to renew safely" in run.stderr
    assert "Traceback" not in run.stderr


def test_kopf_backoffs_never_run_out_and_restart_per_request() -> None:
    backoffs = EndlessBackoffs()
    assert list(itertools.islice(backoffs, 7)) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert next(iter(backoffs)) == 0.5  # a fresh sequence for the next request
