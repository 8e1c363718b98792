"""The seed's manifests load: our ported copies, and the originals except the mis-indented claim."""

from __future__ import annotations

from pathlib import Path

import pytest

from dra_operator.api.loader import load_dra_objects, load_yaml_documents
from dra_operator.api.pod import check_pod_claims
from dra_operator.api.resource import (
    API_VERSION,
    UPSTREAM_API_VERSION,
    DeviceClass,
    InvalidObject,
    ResourceClaim,
    ResourceClaimTemplate,
    load_object,
)

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed"
UPSTREAM = SEED / "upstream"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "examples"

DRA_FILES = ["deviceclass.yaml", "resourceclaim.yaml", "resourceclaimtemplate.yaml"]
SEED_SELECTOR = (
    'device.attributes["driver.example.com"].type == "gpu" &&\n'
    'device.capacity["driver.example.com"].memory == quantity("64Gi")'
)


def _load(path: Path) -> list[object]:
    models, _ = load_dra_objects(path.read_text(), source=str(path))
    return list(models)


@pytest.mark.parametrize("name", DRA_FILES)
def test_ported_copy_loads(name: str) -> None:
    [obj] = _load(SEED / name)
    assert obj.api_version == API_VERSION  # type: ignore[attr-defined]


def test_ported_objects_have_the_seed_content() -> None:
    [cls] = _load(SEED / "deviceclass.yaml")
    [claim] = _load(SEED / "resourceclaim.yaml")
    [template] = _load(SEED / "resourceclaimtemplate.yaml")
    assert isinstance(cls, DeviceClass) and isinstance(claim, ResourceClaim)
    assert isinstance(template, ResourceClaimTemplate)
    assert cls.spec.selectors[0].cel.expression == 'device.driver == "driver.example.com"'  # type: ignore[index]
    request = claim.spec.devices.requests[0]  # type: ignore[index]
    assert request.name == "single-gpu-claim"
    assert request.exactly is not None and request.exactly.allocation_mode == "All"
    assert request.exactly.count is None
    assert request.exactly.selectors[0].cel.expression == SEED_SELECTOR  # type: ignore[index]
    template_request = template.spec.spec.devices.requests[0]  # type: ignore[index]
    assert template_request.exactly is not None
    assert (template_request.exactly.allocation_mode, template_request.exactly.count) == ("ExactCount", 1)
    assert template_request.exactly.selectors[0].cel.expression == SEED_SELECTOR  # type: ignore[index]


@pytest.mark.parametrize("folder", [UPSTREAM, SHARED], ids=["fixture copy", "shared examples"])
@pytest.mark.parametrize("name", ["deviceclass.yaml", "resourceclaimtemplate.yaml"])
def test_originals_load_with_upstream_api_version(folder: Path, name: str) -> None:
    if folder is SHARED and not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the shared seed examples belong beside the repository")
    [obj] = _load(folder / name)
    assert obj.api_version == UPSTREAM_API_VERSION  # type: ignore[attr-defined]


@pytest.mark.parametrize("folder", [UPSTREAM, SHARED], ids=["fixture copy", "shared examples"])
def test_original_claim_is_rejected_with_the_hint(folder: Path) -> None:
    if folder is SHARED and not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the shared seed examples belong beside the repository")
    path = folder / "resourceclaim.yaml"
    with pytest.raises(InvalidObject) as info:
        _load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ResourceClaim example-resource-claim: ")
    assert "spec.devices.requests[0].exactly.selectors[0]" in message
    assert "`expression` must be nested under `cel`" in message


def test_original_and_copy_differ_only_as_documented() -> None:
    for name in DRA_FILES:
        original = (UPSTREAM / name).read_text().replace(UPSTREAM_API_VERSION, API_VERSION)
        copy = (SEED / name).read_text()
        if name == "resourceclaim.yaml":
            original = original.replace("\n          expression: |-", "\n            expression: |-")
        assert copy == original, name
    assert (SEED / "dra-example-job.yaml").read_text() == (UPSTREAM / "dra-example-job.yaml").read_text()


def test_both_api_versions_give_equal_models() -> None:
    ours = load_yaml_documents((SEED / "resourceclaimtemplate.yaml").read_text())[0]
    upstream = load_yaml_documents((UPSTREAM / "resourceclaimtemplate.yaml").read_text())[0]
    assert ours["apiVersion"] != upstream["apiVersion"]
    assert load_object(ours).spec == load_object(upstream).spec


def test_seed_job_claim_references_are_valid() -> None:
    [job] = load_yaml_documents((SEED / "dra-example-job.yaml").read_text())
    claims = check_pod_claims(job)
    assert [(c.name, c.from_template) for c in claims] == [
        ("separate-gpu-claim", True),
        ("shared-gpu-claim", False),
    ]
