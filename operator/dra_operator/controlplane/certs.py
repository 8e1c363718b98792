"""Certificates and keys for the embedded control plane: a throw-away CA, serving and client certificates."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dra_operator.pki import CertificateAuthority, key_pem, write_pem

# Short-lived on purpose: a run directory never outlives a test session or a demo by much.
_VALIDITY = datetime.timedelta(days=7)
_CA_NAME = "dra-operator-controlplane-ca"
_FRONT_PROXY_CA_NAME = "dra-operator-front-proxy-ca"


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
    front_proxy_ca_file: Path
    front_proxy_cert_file: Path
    front_proxy_key_file: Path
    kubelet_client_cert_file: Path
    kubelet_client_key_file: Path


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
    ca = ca or CertificateAuthority.create(_CA_NAME, _VALIDITY)
    serving_cert, serving_key = ca.issue("kube-apiserver", hosts=APISERVER_HOSTS, server=True)
    # system:masters is bound to cluster-admin by RBAC bootstrap, and short-circuits authorization.
    admin_cert, admin_key = ca.issue("admin", organizations=("system:masters",), client=True)
    # The aggregation layer's client identity, from a CA of its own (the requestheader CA), as kubeadm does.
    # With the cluster CA in that role, the apiserver's front-proxy authenticator verified every client
    # certificate's chain before finding the name not allowed, and the client-certificate one verified it
    # again: 5-10 % of its CPU under the benchmarks' load (bench/README.md).
    front_proxy_ca = CertificateAuthority.create(_FRONT_PROXY_CA_NAME, _VALIDITY)
    proxy_cert, proxy_key = front_proxy_ca.issue(FRONT_PROXY_CLIENT, client=True)
    # The apiserver's identity towards kubelets (logs, exec, port-forward); kubelets authorize it through a
    # SubjectAccessReview, which system:masters passes.
    kubelet_cert, kubelet_key = ca.issue(
        "kube-apiserver-kubelet-client", organizations=("system:masters",), client=True
    )
    # RSA because every Kubernetes release and client library accepts RS256 service-account tokens.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_pub = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ControlPlanePKI(
        ca_file=write_pem(directory / "ca.crt", ca.cert_pem),
        ca_key_file=write_pem(directory / "ca.key", key_pem(ca.key), private=True),
        apiserver_cert_file=write_pem(directory / "apiserver.crt", serving_cert),
        apiserver_key_file=write_pem(directory / "apiserver.key", serving_key, private=True),
        admin_cert_file=write_pem(directory / "admin.crt", admin_cert),
        admin_key_file=write_pem(directory / "admin.key", admin_key, private=True),
        service_account_key_file=write_pem(directory / "sa.key", key_pem(sa_key), private=True),
        service_account_pub_file=write_pem(directory / "sa.pub", sa_pub),
        front_proxy_ca_file=write_pem(directory / "front-proxy-ca.crt", front_proxy_ca.cert_pem),
        front_proxy_cert_file=write_pem(directory / "front-proxy-client.crt", proxy_cert),
        front_proxy_key_file=write_pem(directory / "front-proxy-client.key", proxy_key, private=True),
        kubelet_client_cert_file=write_pem(directory / "kubelet-client.crt", kubelet_cert),
        kubelet_client_key_file=write_pem(directory / "kubelet-client.key", kubelet_key, private=True),
    )


def load_ca(cert_file: Path, key_file: Path) -> CertificateAuthority:
    """Load a CA written by `generate_pki`, e.g. to issue a webhook serving certificate later."""
    return CertificateAuthority.load(cert_file, key_file, _VALIDITY)
