"""Throw-away X.509 with `cryptography`: a self-signed CA issuing serving/client certificates, PEM files.

Shared by the webhook's own certificates (admission.tls) and the embedded control plane's
(controlplane.certs); each caller picks its names and validity. ECDSA P-256 keys: fast to generate,
accepted by Go and Python TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Back-dated so that a peer whose clock is slightly behind still accepts a certificate made just now.
CLOCK_SKEW = datetime.timedelta(minutes=5)


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_pem(path: Path, data: bytes, private: bool = False) -> Path:
    """Write `data` to `path` (mode 0600 when `private`) and return the path."""
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def subject_alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """IP literals become IP SANs, everything else DNS SANs (Go rejects certificates that only carry a CN)."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _validity(builder: x509.CertificateBuilder, validity: datetime.timedelta) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - CLOCK_SKEW).not_valid_after(now + validity)


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA that issues leaf certificates valid as long as itself (`validity` from issue time)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    validity: datetime.timedelta

    @classmethod
    def create(
        cls, common_name: str, validity: datetime.timedelta, *, path_length: int | None = None
    ) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
        )
        cert = (
            _validity(builder, validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert=cert, key=key, validity=validity)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path, validity: datetime.timedelta) -> CertificateAuthority:
        """Load a CA from PEM files (its key must be ECDSA, as `create` makes it)."""
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_file}: expected an ECDSA CA key")
        return cls(cert=cert, key=key, validity=validity)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        *,
        organizations: tuple[str, ...] = (),
        hosts: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
    ) -> tuple[bytes, bytes]:
        """Issue a leaf certificate; returns (cert PEM, key PEM). `hosts` become subjectAltNames."""
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
        )
        builder = (
            _validity(builder, self.validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(subject_alt_names(hosts)), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    def write_serving_cert(
        self, directory: Path, name: str, hosts: tuple[str, ...], *, common_name: str | None = None
    ) -> tuple[Path, Path]:
        """Issue a serving certificate for `hosts`; write `<name>.crt` / `<name>.key` into `directory`."""
        cert, key = self.issue(common_name or name, hosts=hosts, server=True)
        return (
            write_pem(directory / f"{name}.crt", cert),
            write_pem(directory / f"{name}.key", key, private=True),
        )
