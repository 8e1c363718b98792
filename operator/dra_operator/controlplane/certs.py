"""Certificates and keys for the embedded control plane: a throw-away CA, serving and client certificates."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Short-lived on purpose: a run directory never outlives a test session or a demo by much.
_VALIDITY = datetime.timedelta(days=7)
_CLOCK_SKEW = datetime.timedelta(minutes=5)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA that can issue serving and client certificates (ECDSA P-256: fast to generate)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, common_name: str = "dra-operator-controlplane-ca") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert=cert, key=key)

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
        """Issue a leaf certificate; returns (cert PEM, key PEM).

        `hosts` become subjectAltNames (IPs as IP SANs: Go rejects certificates that only carry a CN).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def write_serving_cert(self, directory: Path, name: str, hosts: tuple[str, ...]) -> tuple[Path, Path]:
        """Issue a serving certificate for `hosts` and write `<name>.crt` / `<name>.key` into `directory`."""
        cert, key = self.issue(name, hosts=hosts, server=True)
        return _write(directory / f"{name}.crt", cert), _write(directory / f"{name}.key", key, private=True)


def _san(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


@dataclass(frozen=True)
class ControlPlanePKI:
    """Paths of every certificate and key the control plane uses, all under one directory."""

    ca_file: Path
    ca_key_file: Path
    apiserver_cert_file: Path
    apiserver_key_file: Path
    admin_cert_file: Path
    admin_key_file: Path
    service_account_key_file: Path
    service_account_pub_file: Path
    front_proxy_cert_file: Path
    front_proxy_key_file: Path


# The apiserver is reached as 127.0.0.1/localhost by us, and as the `kubernetes` Service (first IP of the
# service range) by in-cluster clients; list them all so either route verifies.
APISERVER_HOSTS = (
    "127.0.0.1",
    "localhost",
    "10.0.0.1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


FRONT_PROXY_CLIENT = "front-proxy-client"


def generate_pki(directory: Path, ca: CertificateAuthority | None = None) -> ControlPlanePKI:
    """Write the CA, apiserver serving cert, admin client cert and service-account key pair to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = ca or CertificateAuthority.create()
    serving_cert, serving_key = ca.issue("kube-apiserver", hosts=APISERVER_HOSTS, server=True)
    # system:masters is bound to cluster-admin by RBAC bootstrap, and short-circuits authorization.
    admin_cert, admin_key = ca.issue("admin", organizations=("system:masters",), client=True)
    # The aggregation layer's client identity; components verify it against the requestheader CA (ours).
    proxy_cert, proxy_key = ca.issue(FRONT_PROXY_CLIENT, client=True)
    # RSA because every Kubernetes release and client library accepts RS256 service-account tokens.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_pub = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ControlPlanePKI(
        ca_file=_write(directory / "ca.crt", ca.cert_pem),
        ca_key_file=_write(directory / "ca.key", _key_pem(ca.key), private=True),
        apiserver_cert_file=_write(directory / "apiserver.crt", serving_cert),
        apiserver_key_file=_write(directory / "apiserver.key", serving_key, private=True),
        admin_cert_file=_write(directory / "admin.crt", admin_cert),
        admin_key_file=_write(directory / "admin.key", admin_key, private=True),
        service_account_key_file=_write(directory / "sa.key", _key_pem(sa_key), private=True),
        service_account_pub_file=_write(directory / "sa.pub", sa_pub),
        front_proxy_cert_file=_write(directory / "front-proxy-client.crt", proxy_cert),
        front_proxy_key_file=_write(directory / "front-proxy-client.key", proxy_key, private=True),
    )


def load_ca(cert_file: Path, key_file: Path) -> CertificateAuthority:
    """Load a CA written by `generate_pki`, e.g. to issue a webhook serving certificate later."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_file}: expected an ECDSA CA key")
    return CertificateAuthority(cert=cert, key=key)
