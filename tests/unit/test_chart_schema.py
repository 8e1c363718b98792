"""values.schema.json and the chart's own checks turn away bad values with a message that names the value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dra_operator.tools.helm import HelmError, ensure_helm, template


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_helm()


# (values document, words the error must contain): each row is one mistake a user could make.
REJECTED: list[tuple[dict[str, Any], list[str]]] = [
    ({"agent": {"backend": "cuda"}}, ["agent", "backend"]),
    ({"operator": {"replicas": -1}}, ["replicas"]),
    ({"operator": {"replicas": "two"}}, ["replicas"]),
    ({"image": {"pullPolicy": "Sometimes"}}, ["pullPolicy"]),
    ({"image": {"repository": ""}}, ["repository"]),
    ({"image": {"tag": "has spaces"}}, ["tag"]),
    ({"logLevel": "verbose"}, ["logLevel"]),
    ({"operater": {"replicas": 2}}, ["operater"]),  # a typo is an unknown key, not silently ignored
    ({"agent": {"backnd": "nvml"}}, ["backnd"]),
    ({"operator": {"webhook": {"port": 70000}}}, ["port"]),
    ({"webhook": {"selfSigned": {"validityDays": 0}}}, ["validityDays"]),
    ({"operator": {"health": {"port": 0}}}, ["port"]),
    ({"operator": {"metrics": {"port": "http"}}}, ["port"]),
    ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, ["watchNamespaces"]),
    ({"operator": {"nodeSelector": {"disk": 1}}}, ["nodeSelector"]),
    ({"operator": {"resources": {"limits": {"memory": "lots"}}}}, ["memory"]),
    ({"agent": {"simulated": {"inventory": "4 GPUs"}}}, ["inventory"]),
    ({"agent": {"tolerations": [{"key": "x", "operator": "Sometimes"}]}}, ["tolerations"]),
    ({"agent": {"driver": "Not A Driver"}}, ["driver"]),
    ({"agent": {"nvml": {"driverLibraryPath": "relative/lib"}}}, ["driverLibraryPath"]),
    ({"webhook": {"certManager": {"enabled": "yes"}}}, ["enabled"]),
    ({"webhook": {"certManager": {"issuerRef": {"name": "ca", "kind": "Vault"}}}}, ["kind"]),
    ({"webhook": {"certManager": {"duration": "one year"}}}, ["duration"]),
    ({"metrics": {"serviceMonitor": {"interval": 30}}}, ["interval"]),
    ({"imagePullSecrets": ["regcred"]}, ["imagePullSecrets"]),
    ({"operator": {"kubeApi": {"qps": -1}}}, ["qps"]),
    ({"operator": {"kubeApi": {"burst": 0}}}, ["burst"]),
    ({"operator": {"extraEnv": [{"value": "no name"}]}}, ["name"]),
    # The templates' own checks, for what a schema cannot say.
    ({"agent": {"backend": "simulated"}}, ["agent.simulated.inventory"]),
    ({"operator": {"replicas": 1}}, ["minAvailable", "replicas"]),
    (
        {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
        ["metrics.service.enabled"],
    ),
]


@pytest.mark.parametrize(("values", "words"), REJECTED, ids=[str(v) for v, _ in REJECTED])
def test_bad_values_are_rejected_by_name(helm: Path, values: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(HelmError) as raised:
        template(values=values, helm=helm)
    message = str(raised.value)
    for word in words:
        assert word in message, f"the error does not name {word!r}:\n{message}"


# The same keys with good values render: the rejections above are about the values, not the keys.
ACCEPTED: list[dict[str, Any]] = [
    {"agent": {"backend": "simulated", "simulated": {"inventory": {"gpus": {"count": 2, "memory": "64Gi"}}}}},
    {"operator": {"replicas": 1, "podDisruptionBudget": {"enabled": False}}},
    {"operator": {"replicas": 3, "podDisruptionBudget": {"minAvailable": "50%"}}},
    {"image": {"tag": "0.1.0@sha256:" + "ab" * 32}},
    {"operator": {"resources": {"limits": {"memory": "1Gi", "cpu": 2}}}},
    {"operator": {"kubeApi": {"qps": 0}}},
    {"webhook": {"certManager": {"enabled": True, "issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}},
    {"metrics": {"serviceMonitor": {"enabled": True, "interval": "1m30s"}}},
    {"agent": {"nvml": {"driverLibraryPath": "/usr/lib64"}, "driver": "gpu.example.com"}},
]


@pytest.mark.parametrize("values", ACCEPTED, ids=[str(v) for v in ACCEPTED])
def test_good_values_render(helm: Path, values: dict[str, Any]) -> None:
    kinds = {obj["kind"] for obj in template(values=values, helm=helm)}
    assert {"Deployment", "ClusterRole", "Service"} <= kinds
