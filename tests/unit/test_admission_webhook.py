"""The webhook's configuration, certificates and review function (with the ownership rule of built-in DRA)."""

from __future__ import annotations

import asyncio
import base64
import copy
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from dra_operator.admission import configuration, mirror, names, tls
from dra_operator.admission.mirror import NameMirror
from dra_operator.admission.mutation import TEMPLATE_PATHS
from dra_operator.admission.webhook import AdmissionContext, Refused, review

Json = dict[str, Any]


def test_configuration_sends_only_objects_with_claims_and_fails_closed() -> None:
    endpoint = configuration.Endpoint(url="https://127.0.0.1:9443")
    config = configuration.build(endpoint, b"CA", excluded_namespaces=["kube-system", "dra"])
    hooks = {h["name"]: h for h in config["webhooks"]}
    assert set(hooks) == {
        plural + ".resource.dra-operator.io" for _, _, plural, _ in configuration.KINDS.values()
    }
    for kind, (group, _version, plural, _operations) in configuration.KINDS.items():
        hook = hooks[plural + ".resource.dra-operator.io"]
        assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
        assert hook["timeoutSeconds"] <= 5
        assert hook["rules"][0]["resources"] == [plural] and hook["rules"][0]["apiGroups"] == [group]
        assert hook["clientConfig"]["url"] == f"https://127.0.0.1:9443/mutate-{plural}"
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == b"CA"
        assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["dra", "kube-system"]
        expression = hook["matchConditions"][0]["expression"]
        spec = ".".join(["object", *TEMPLATE_PATHS[kind], "spec"])
        assert f"size({spec}.resourceClaims) > 0" in expression
    assert hooks["pods.resource.dra-operator.io"]["rules"][0]["operations"] == ["CREATE"]


@pytest.mark.parametrize(
    ("watched", "sent", "not_sent"),
    [
        pytest.param((), {"default", "ml", "team-b"}, {"kube-system", "dra"}, id="all-namespaces"),
        pytest.param(("ml", "b"), {"ml", "b"}, {"default", "kube-system", "dra"}, id="watched-only"),
        pytest.param(("ml", "dra"), {"ml"}, {"dra", "default"}, id="excluded-wins"),
    ],
)
def test_pods_are_sent_only_from_namespaces_the_operator_watches(
    watched: tuple[str, ...], sent: set[str], not_sent: set[str]
) -> None:
    """A Pod the webhook gates in a namespace no replica watches would wait for ever: `--namespace` narrows
    the namespaceSelector of every mutating webhook to those namespaces."""
    endpoint = configuration.Endpoint(url="https://127.0.0.1:9443")
    excluded = ["kube-system", "dra"]
    config = configuration.build(endpoint, b"CA", excluded_namespaces=excluded, watched_namespaces=watched)
    for hook in config["webhooks"]:
        selector = hook["namespaceSelector"]
        assert {ns for ns in sent | not_sent if selects(selector, ns)} == sent, hook["name"]


def selects(selector: Json, namespace: str) -> bool:
    """A namespaceSelector's verdict on a namespace, by its kubernetes.io/metadata.name label alone."""
    labels = {configuration.NAMESPACE_NAME_LABEL: namespace}
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if (expression["operator"] == "In") != (value in expression["values"]):
            return False
    return True


def test_service_endpoint() -> None:
    endpoint = configuration.Endpoint(service_name="dra-operator", service_namespace="dra", service_port=443)
    config = endpoint.client_config("mutate-pods", b"x")
    assert config["service"] == {
        "name": "dra-operator",
        "namespace": "dra",
        "path": "/mutate-pods",
        "port": 443,
    }
    assert "url" not in config


def test_generated_certificate_serves_tls_for_its_hosts(tmp_path: Path) -> None:
    files = tls.generate(tmp_path, ["127.0.0.1", "dra-operator.dra.svc"])
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["dra-operator.dra.svc"]
    # The pair loads as a server context, and the CA verifies the certificate.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    cert.verify_directly_issued_by(ca)


class FakeKube:
    def __init__(self, builtin: set[str]) -> None:
        self.builtin = builtin
        self.gets: list[str] = []

    async def get(self, path: str) -> Json | None:
        self.gets.append(path)
        return {"metadata": {}} if path.rsplit("/", 1)[-1] in self.builtin else None


def context(
    ours: dict[str, set[str]], builtin: set[str], builtin_dra: bool = True, kube: FakeKube | None = None
) -> AdmissionContext:
    caches = NameMirror()
    for kind in (mirror.CLAIMS, mirror.TEMPLATES):
        caches.apply(mirror.present(kind, [("ns", name) for name in ours.get(kind, set())]))
    ctx = AdmissionContext(
        caches=caches, builtin_get=(kube or FakeKube(builtin)).get, builtin_dra=builtin_dra
    )
    ctx.ready.set()
    return ctx


POD = {
    "kind": "Pod",
    "metadata": {"name": "p", "namespace": "ns"},
    "spec": {
        "containers": [{"name": "c", "resources": {"claims": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}],
        "resourceClaims": [
            {"name": "a", "resourceClaimName": "ours-claim"},
            {"name": "b", "resourceClaimName": "builtin-claim"},
            {"name": "c", "resourceClaimTemplateName": "nowhere"},
        ],
    },
}


@pytest.mark.parametrize(
    ("builtin_dra", "kept"),
    [(False, []), (True, ["b"])],
)
def test_review_moves_only_our_references(builtin_dra: bool, kept: list[str]) -> None:
    fake = FakeKube({"builtin-claim"})
    ctx = context({"claims": {"ours-claim"}}, set(), builtin_dra, kube=fake)
    new = asyncio.run(review(ctx, "Pod", POD, "ns"))
    assert [r["name"] for r in new["spec"].get("resourceClaims", [])] == kept
    assert new["metadata"]["labels"][names.MANAGED_LABEL] == "true"
    # our claim is known from the cache: only the others are looked up in the built-in group
    assert all("ours-claim" not in path for path in fake.gets)
    assert len(fake.gets) == (2 if builtin_dra else 0)


def test_review_rejects_neither_name() -> None:
    ctx = context({}, set())
    bad = {
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [], "resourceClaims": [{"name": "x"}]},
    }
    with pytest.raises(Refused) as info:
        asyncio.run(review(ctx, "Pod", bad, "ns"))
    assert str(info.value) == (
        'Pod "p" is invalid: spec.resourceClaims[0]: must specify one of: `resourceClaimName`, '
        "`resourceClaimTemplateName`"
    )


def test_review_refuses_while_caches_are_cold(monkeypatch: pytest.MonkeyPatch) -> None:
    from dra_operator.admission import webhook

    monkeypatch.setattr(webhook, "READY_WAIT_SECONDS", 0.01)
    ctx = context({}, set())
    ctx.ready.clear()
    with pytest.raises(Refused) as info:
        asyncio.run(review(ctx, "Pod", POD, "ns"))
    assert info.value.code == 503


def test_objects_without_claims_pass_even_while_cold() -> None:
    ctx = context({}, set())
    ctx.ready.clear()
    plain = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}
    assert asyncio.run(review(ctx, "Pod", plain, "ns")) == plain


class ConfigServer:
    """Holds one object per configuration collection (mutating, validating), as the apiserver would."""

    def __init__(self, current: Json | None) -> None:
        self.current = {plural: copy.deepcopy(current) for plural in PLURALS}
        self.calls: list[tuple[str, str, Json]] = []

    @staticmethod
    def _plural(path: str) -> str:
        return next(p for p in PLURALS if f"/{p}" in path)

    async def get(self, path: str) -> Json | None:
        return self.current[self._plural(path)]

    async def create(self, path: str, body: Json) -> Json:
        self.calls.append(("create", self._plural(path), body))
        return body

    async def replace(self, path: str, body: Json) -> Json:
        self.calls.append(("replace", self._plural(path), body))
        return body


PLURALS = ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")


def test_apply_configuration_creates_then_only_replaces_the_webhooks() -> None:
    from dra_operator.admission.webhook import apply_configuration

    desired = configuration.build(
        configuration.Endpoint(url="https://127.0.0.1:1"), b"CA", excluded_namespaces=[]
    )
    validating = configuration.validating_from(desired)
    server = ConfigServer(None)
    asyncio.run(apply_configuration(server, desired))  # type: ignore[arg-type]
    assert server.calls == [("create", PLURALS[0], desired), ("create", PLURALS[1], validating)]

    helm_owned = {
        "metadata": {
            "name": "dra-operator",
            "resourceVersion": "7",
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
        },
        "webhooks": [],
    }
    server = ConfigServer(helm_owned)
    asyncio.run(apply_configuration(server, desired))  # type: ignore[arg-type]
    assert [(verb, plural) for verb, plural, _ in server.calls] == [("replace", p) for p in PLURALS]
    for (_, _, body), wanted in zip(server.calls, (desired, validating), strict=True):
        assert body["metadata"] == helm_owned["metadata"] and body["webhooks"] == wanted["webhooks"]

    server = ConfigServer(helm_owned)
    server.current = {
        PLURALS[0]: {**helm_owned, "webhooks": desired["webhooks"]},
        PLURALS[1]: {**helm_owned, "webhooks": validating["webhooks"]},
    }
    asyncio.run(apply_configuration(server, desired))  # type: ignore[arg-type]
    assert server.calls == []
