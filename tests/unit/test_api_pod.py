"""Pod-side claim references: reading them from Pods, templates and workloads; Kubernetes' rules."""

from __future__ import annotations

from typing import Any

import pytest

from dra_operator.api.pod import (
    AT_MOST_ONE_MESSAGE,
    ONE_OF_MESSAGE,
    InvalidObject,
    PodResourceClaim,
    check_pod_claims,
    claims_used_by_container,
    container_claims,
    flat_claim_reference,
    pod_claim_problems,
    pod_resource_claims,
    pod_spec_of,
)


def _spec(
    claims: list[dict[str, Any]], containers: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"resourceClaims": claims, "containers": containers or [], **extra}


def _container(name: str, *refs: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "resources": {"claims": list(refs)}}


GPU = {"name": "gpu", "resourceClaimTemplateName": "gpu-template"}
SHARED = {"name": "shared", "resourceClaimName": "shared-claim"}
SPEC = _spec(
    [GPU, SHARED], [_container("a", {"name": "gpu"}), _container("b", {"name": "shared", "request": "r1"})]
)


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": SPEC}, id="pod"),
        pytest.param(SPEC, id="pod spec"),
        pytest.param({"metadata": {"labels": {}}, "spec": SPEC}, id="pod template spec"),
        pytest.param({"kind": "Job", "spec": {"template": {"spec": SPEC}}}, id="job"),
        pytest.param({"kind": "Deployment", "spec": {"template": {"spec": SPEC}}}, id="deployment"),
        pytest.param(
            {"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": SPEC}}}}}, id="cronjob"
        ),
    ],
)
def test_reads_claims_wherever_the_pod_spec_is(obj: dict[str, Any]) -> None:
    assert pod_spec_of(obj) is SPEC
    claims = pod_resource_claims(obj)
    assert [(c.name, c.resource_claim_name, c.resource_claim_template_name) for c in claims] == [
        ("gpu", None, "gpu-template"),
        ("shared", "shared-claim", None),
    ]
    assert [c.from_template for c in claims] == [True, False]
    refs = container_claims(obj)
    assert [(r.container, r.name, r.request) for r in refs] == [("a", "gpu", None), ("b", "shared", "r1")]
    assert check_pod_claims(obj) == claims


def test_init_containers_come_first() -> None:
    spec = _spec(
        [GPU], [_container("main", {"name": "gpu"})], initContainers=[_container("init", {"name": "gpu"})]
    )
    refs = container_claims(spec)
    assert [(r.container_kind, r.container, r.path) for r in refs] == [
        ("initContainers", "init", "spec.initContainers[0].resources.claims[0]"),
        ("containers", "main", "spec.containers[0].resources.claims[0]"),
    ]
    assert [r.container for r in claims_used_by_container(spec, "init")] == ["init"]


def test_no_claims_anywhere() -> None:
    assert pod_resource_claims({"kind": "Pod", "spec": {"containers": [{"name": "a"}]}}) == []
    assert container_claims({"kind": "Pod"}) == []


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (_spec([{"name": "gpu"}]), [("spec.resourceClaims[0]", ONE_OF_MESSAGE)]),
        (
            _spec([{"name": "gpu", "resourceClaimName": "a", "resourceClaimTemplateName": "b"}]),
            [("spec.resourceClaims[0]", AT_MOST_ONE_MESSAGE)],
        ),
        (_spec([GPU, GPU]), [("spec.resourceClaims[1].name", 'Duplicate value: "gpu"')]),
        (
            _spec([{**GPU, "name": "GPU"}]),
            [("spec.resourceClaims[0].name", 'Invalid value: "GPU": a lowercase RFC 1123 label must')],
        ),
        (
            _spec([GPU], [_container("a", {"name": "other"})]),
            [
                (
                    "spec.containers[0].resources.claims[0]",
                    'Not found: "other": must be one of the names in pod.spec.resourceClaims: gpu',
                )
            ],
        ),
        (
            _spec([], [_container("a", {"name": "gpu"})]),
            [("spec.containers[0].resources.claims[0]", "pod.spec.resourceClaims which is empty")],
        ),
        (
            _spec([GPU], [_container("a", {"name": ""})]),
            [("spec.containers[0].resources.claims[0]", "Required")],
        ),
        (
            _spec([GPU], [_container("a", {"name": "gpu", "request": "Bad_Req"})]),
            [("spec.containers[0].resources.claims[0].request", "RFC 1123 label")],
        ),
        (
            _spec([GPU], [_container("a", {"name": "gpu"}, {"name": "gpu"})]),
            [("spec.containers[0].resources.claims[1]", 'Duplicate value: "gpu"')],
        ),
        (
            _spec([GPU], [_container("a", {"name": "gpu", "request": "r"}, {"name": "gpu", "request": "r"})]),
            [("spec.containers[0].resources.claims[1]", 'Duplicate value: "gpu/r"')],
        ),
        (
            _spec([GPU], [_container("a", {"name": "gpu"}, {"name": "gpu", "request": "r"})]),
            [("spec.containers[0].resources.claims[1]", 'Duplicate value: "gpu" (the whole claim')],
        ),
        (
            _spec([GPU], [_container("a", {"name": "gpu", "request": "r"}, {"name": "gpu"})]),
            [
                (
                    "spec.containers[0].resources.claims[1]",
                    'Duplicate value: "gpu" (already used through',
                )
            ],
        ),
        (
            _spec(
                [GPU],
                [_container("a", {"name": "gpu", "request": "r"})],
                initContainers=[_container("i", {"name": "nope"})],
            ),
            [("spec.initContainers[0].resources.claims[0]", 'Not found: "nope"')],
        ),
    ],
)
def test_rules(spec: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    problems = pod_claim_problems(spec)
    assert len(problems) == len(expected), problems
    for (path, message), (want_path, want_part) in zip(problems, expected, strict=True):
        assert path == want_path
        assert want_part in message
    with pytest.raises(InvalidObject) as info:
        check_pod_claims(
            {"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}, "spec": spec}, source="f.yaml"
        )
    assert str(info.value).startswith("f.yaml: Pod ns/p")


@pytest.mark.parametrize(
    ("containers", "valid"),
    [
        (
            [_container("a", {"name": "gpu"}), _container("b", {"name": "gpu"})],
            True,
        ),  # two containers, one claim
        ([_container("a", {"name": "gpu", "request": "r1"}, {"name": "gpu", "request": "r2"})], True),
        ([_container("a", {"name": "gpu", "request": "r1"}), _container("b", {"name": "gpu"})], True),
    ],
)
def test_sharing_that_is_allowed(containers: list[dict[str, Any]], valid: bool) -> None:
    assert (pod_claim_problems(_spec([GPU], containers)) == []) is valid


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "a"}, ONE_OF_MESSAGE),
        ({"name": "a", "resourceClaimName": "x", "resourceClaimTemplateName": "y"}, AT_MOST_ONE_MESSAGE),
        ({"name": "a", "resourceClaimName": "x", "source": {}}, "Extra inputs"),
    ],
)
def test_pod_resource_claim_model(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PodResourceClaim.model_validate(raw)


def test_pod_resource_claim_snake_case_construction() -> None:
    claim = PodResourceClaim(name="a", resource_claim_name="x")
    assert claim.model_dump(by_alias=True, exclude_none=True) == {"name": "a", "resourceClaimName": "x"}


# ---------------------------------------------------------------------- the Kubernetes 1.30 `source:` form

V130_GPU = {"name": "gpu", "source": {"resourceClaimTemplateName": "gpu-template"}}
V130_SHARED = {"name": "shared", "source": {"resourceClaimName": "shared-claim"}}


@pytest.mark.parametrize(
    ("raw", "flat"),
    [
        (V130_GPU, GPU),
        (V130_SHARED, SHARED),
        (GPU, GPU),  # already flat: unchanged
        ({"name": "gpu", "source": {}}, {"name": "gpu"}),  # neither name: the one-of rule reports it
        ({"name": "gpu", "source": "x"}, {"name": "gpu"}),
    ],
)
def test_flat_claim_reference_lifts_the_1_30_source(raw: dict[str, Any], flat: dict[str, Any]) -> None:
    assert flat_claim_reference(raw) == flat


def test_the_1_30_form_reads_as_the_flat_one() -> None:
    spec = _spec(
        [V130_GPU, V130_SHARED], [_container("a", {"name": "gpu"}), _container("b", {"name": "shared"})]
    )
    assert pod_claim_problems(spec) == []
    assert pod_resource_claims({"spec": spec}) == pod_resource_claims({"spec": _spec([GPU, SHARED])})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"name": "gpu", "source": {}}, [("spec.resourceClaims[0]", ONE_OF_MESSAGE)]),
        (
            {"name": "gpu", "source": {"resourceClaimName": "a", "resourceClaimTemplateName": "b"}},
            [("spec.resourceClaims[0]", AT_MOST_ONE_MESSAGE)],
        ),
        (
            {"name": "gpu", "source": "gpu-template"},
            [
                ("spec.resourceClaims[0].source", "must be an object"),
                ("spec.resourceClaims[0]", ONE_OF_MESSAGE),
            ],
        ),
        (
            {"name": "gpu", "source": {"resourceClaimTemplateName": "t", "claimName": "x"}},
            [("spec.resourceClaims[0].source.claimName", "unknown field")],
        ),
        (
            {"name": "gpu", "source": {"resourceClaimName": "a"}, "resourceClaimTemplateName": "t"},
            [("spec.resourceClaims[0].source", "may not be used together with `resourceClaimTemplateName`")],
        ),
        (
            {"name": "gpu", "source": {"resourceClaimName": "Not_A_Name"}},
            [("spec.resourceClaims[0].resourceClaimName", 'Invalid value: "Not_A_Name"')],
        ),
    ],
)
def test_1_30_form_rules(raw: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    problems = pod_claim_problems(_spec([raw]))
    assert len(problems) == len(expected), problems
    for (path, message), (want_path, want_part) in zip(problems, expected, strict=True):
        assert path == want_path
        assert want_part in message
