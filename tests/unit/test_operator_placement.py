"""Table tests of the operator's pure helpers: claim names, node affinity, device annotations, the Pod
patch."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from dra_operator.admission import names
from dra_operator.admission.mutation import mutate
from dra_operator.operator.placement import (
    claim_state,
    extended_claim_spec,
    generate_name,
    generated_claim,
    is_generated_for,
    pinned_affinity,
    pod_fits_node,
    pod_patch,
)

Json = dict[str, Any]
PIN = {"key": "metadata.name", "operator": "In", "values": ["n1"]}


@pytest.mark.parametrize(
    ("pod", "claim", "expected"),
    [
        ("p", "gpu", "p-gpu-"),
        ("a" * 30, "b" * 25, "a" * 30 + "-" + "b" * 25 + "-"),  # 57 characters: untouched
        # 82 > 57: each part keeps len * 57 // 82 characters, joined by one `-` (no trailing one)
        ("a" * 40, "b" * 40, "a" * 27 + "-" + "b" * 27),
        ("a" * 60, "b" * 3, "a" * 52 + "-" + "b" * 2),
    ],
)
def test_generate_name_truncates_both_parts_in_proportion(pod: str, claim: str, expected: str) -> None:
    name = generate_name(pod, claim)
    assert name == expected
    assert len(name) <= 57


def test_generated_claim_is_owned_by_the_pod_and_copies_the_template() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}}
    template = {
        "spec": {
            "metadata": {"labels": {"a": "b"}, "annotations": {"x": "y"}},
            "spec": {"devices": {"requests": [{"name": "r"}]}},
        }
    }
    claim = generated_claim(pod, "gpu", template)
    meta = claim["metadata"]
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "p",
            "uid": "u1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["annotations"] == {"x": "y", names.POD_CLAIM_NAME_ANNOTATION: "gpu"}
    assert meta["labels"] == {"a": "b"} and meta["generateName"] == "p-gpu-"
    assert claim["spec"] == template["spec"]["spec"] and claim["spec"] is not template["spec"]["spec"]
    assert is_generated_for(claim, "u1", "gpu") and not is_generated_for(claim, "u1", "other")
    assert not is_generated_for(claim, "u2", "gpu")


@pytest.mark.parametrize(
    ("affinity", "expected_terms"),
    [
        (None, [{"matchFields": [PIN]}]),
        ({"podAffinity": {"x": 1}}, [{"matchFields": [PIN]}]),
        (
            {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                        ]
                    }
                }
            },
            [
                {
                    "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}],
                    "matchFields": [PIN],
                },
                {
                    "matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}],
                    "matchFields": [PIN],
                },
            ],
        ),
    ],
)
def test_pinned_affinity_narrows_every_required_term(
    affinity: Json | None, expected_terms: list[Json]
) -> None:
    spec = {"affinity": affinity} if affinity else {}
    before = copy.deepcopy(spec)
    result = pinned_affinity(spec, "n1")
    assert spec == before
    assert result["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == (
        expected_terms
    )
    if affinity and "podAffinity" in affinity:
        assert result["podAffinity"] == {"x": 1}
    again = pinned_affinity({"affinity": result}, "n1")
    assert again == result, "pinning twice changes nothing"


def node(name: str, labels: Json | None = None, unschedulable: bool = False) -> Json:
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"unschedulable": unschedulable}}


@pytest.mark.parametrize(
    ("spec", "node_obj", "fits"),
    [
        ({}, node("n1"), True),
        ({}, node("n1", unschedulable=True), False),
        ({"nodeSelector": {"zone": "a"}}, node("n1", {"zone": "a"}), True),
        ({"nodeSelector": {"zone": "a"}}, node("n1", {"zone": "b"}), False),
        ({"nodeName": "n2"}, node("n1"), False),
        ({"affinity": pinned_affinity({}, "n1")}, node("n1"), True),
        ({"affinity": pinned_affinity({}, "n1")}, node("n2"), False),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}
                            ]
                        }
                    }
                }
            },
            node("n1", {"gpu": "yes"}),
            True,
        ),
    ],
)
def test_pod_fits_node(spec: Json, node_obj: Json, fits: bool) -> None:
    assert pod_fits_node({"spec": spec}, node_obj) is fits


def gated_pod() -> Json:
    raw = {
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {
            "schedulingGates": [{"name": "other"}],
            "containers": [
                {"name": "a", "resources": {"claims": [{"name": "gpus"}]}},
                {"name": "b", "resources": {"claims": [{"name": "net", "request": "nic"}, {"name": "gpus"}]}},
            ],
            "resourceClaims": [
                {"name": "gpus", "resourceClaimName": "c1"},
                {"name": "net", "resourceClaimName": "c2"},
            ],
        },
    }
    return mutate(raw, "Pod").obj


ALLOCATIONS = {
    "gpus": {
        "devices": {
            "results": [
                {"request": "r", "driver": "gpu.nvidia.com", "pool": "n1", "device": "gpu-0"},
                {"request": "r", "driver": "gpu.nvidia.com", "pool": "n1", "device": "gpu-1"},
            ]
        }
    },
    "net": {
        "devices": {
            "results": [
                {"request": "nic/fast", "driver": "net.example.com", "pool": "n1", "device": "eth0"},
                {"request": "other", "driver": "net.example.com", "pool": "n1", "device": "eth1"},
            ]
        }
    },
}
UUIDS = {("gpu.nvidia.com", "n1", "gpu-0"): "GPU-aaa", ("gpu.nvidia.com", "n1", "gpu-1"): "GPU-bbb"}


def test_pod_patch_ungates_pins_and_annotates_each_container_with_its_devices() -> None:
    from dra_operator.operator.placement import device_annotations

    pod = gated_pod()
    values = device_annotations(pod, ALLOCATIONS, UUIDS)
    assert values == {
        names.devices_annotation("gpus", None): "gpu.nvidia.com/n1/gpu-0,gpu.nvidia.com/n1/gpu-1",
        # container b asked for request `nic` of claim net: the chosen subrequest nic/fast only
        names.devices_annotation("net", ["nic"]): "net.example.com/n1/eth0",
        names.nvidia_annotation("a"): "GPU-aaa,GPU-bbb",
        names.nvidia_annotation("b"): "GPU-aaa,GPU-bbb",
    }
    patched = jsonpatch.apply_patch(pod, pod_patch(pod, "n1", values))
    assert patched["spec"]["schedulingGates"] == [{"name": "other"}]
    terms = patched["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {"nodeSelectorTerms": [{"matchFields": [PIN]}]}
    for key, value in values.items():
        assert patched["metadata"]["annotations"][key] == value


def test_pod_patch_fails_when_the_gate_changed_meanwhile() -> None:
    pod = gated_pod()
    ops = pod_patch(pod, "n1", {})
    moved = copy.deepcopy(pod)
    moved["spec"]["schedulingGates"] = [{"name": "other"}]
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(moved, ops)


def test_nvidia_annotation_is_void_without_gpus() -> None:
    from dra_operator.operator.placement import device_annotations

    values = device_annotations(gated_pod(), {"gpus": ALLOCATIONS["net"]}, {})
    assert values[names.nvidia_annotation("a")] == names.NVIDIA_NONE


@pytest.mark.parametrize(
    ("claim", "state"),
    [
        ({}, "pending"),
        ({"status": {"allocation": {"x": 1}}}, "allocated"),
        ({"status": {"allocation": {"x": 1}, "reservedFor": [{"uid": "u"}]}}, "allocated,reserved"),
        ({"metadata": {"deletionTimestamp": "t"}}, "deleted"),
        (
            {"metadata": {"deletionTimestamp": "t"}, "status": {"allocation": {"x": 1}, "reservedFor": [{}]}},
            "deleted,allocated,reserved",
        ),
    ],
)
def test_claim_state_matches_kubectl(claim: Json, state: str) -> None:
    claim.setdefault("metadata", {})
    assert claim_state(claim) == state


@pytest.mark.parametrize(
    ("ref", "spec"),
    [
        (
            {"claimSpec": {"devices": {"requests": [
                {"name": "container-0-request-0", "exactly": {"deviceClassName": "gpu", "count": 2}}
            ]}}},
            {"devices": {"requests": [
                {"name": "container-0-request-0", "exactly": {"deviceClassName": "gpu", "count": 2}}
            ]}},
        ),
        (  # a hand-written annotation cannot smuggle anything else into a claim the operator creates
            {"claimSpec": {"devices": {"requests": [
                {"name": "r", "exactly": {"deviceClassName": "gpu", "count": 1, "adminAccess": True,
                                          "selectors": [{"cel": {"expression": "true"}}]}}
            ], "constraints": [{"matchAttribute": "x"}]}}},
            {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": "gpu", "count": 1}}]}},
        ),
        (  # no count: not an extended-resource request
            {"claimSpec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": "gpu"}}]}}},
            None,
        ),
        ({"claimSpec": "x"}, None),
        ({"resourceClaimTemplateName": "t"}, None),
    ],
)  # fmt: skip
def test_extended_claim_spec_takes_only_class_and_count(
    ref: dict[str, Any], spec: dict[str, Any] | None
) -> None:
    assert extended_claim_spec(ref) == spec
