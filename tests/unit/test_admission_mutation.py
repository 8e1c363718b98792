"""Table tests of the pure admission mutation (dra_operator.admission.mutation) and the ownership rule."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dra_operator.admission import names
from dra_operator.admission.mutation import (
    TEMPLATE_PATHS,
    AdmissionRejected,
    mutate,
    read_manifest,
    template_of,
)
from dra_operator.admission.ownership import Lookup, belongs_to_us
from dra_operator.api.pod import AT_MOST_ONE_MESSAGE, ONE_OF_MESSAGE

SEED_JOB = Path(__file__).parent.parent / "fixtures" / "seed" / "dra-example-job.yaml"


def pod_spec() -> dict[str, Any]:
    return {
        "containers": [
            {"name": "a", "image": "x", "resources": {"claims": [{"name": "gpu"}]}},
            {"name": "b", "image": "x", "resources": {"claims": [{"name": "shared"}, {"name": "gpu"}]}},
            {"name": "plain", "image": "x", "env": [{"name": "KEEP", "value": "1"}]},
        ],
        "initContainers": [{"name": "init", "image": "x", "resources": {"claims": [{"name": "shared"}]}}],
        "resourceClaims": [
            {"name": "gpu", "resourceClaimTemplateName": "tmpl"},
            {"name": "shared", "resourceClaimName": "claim"},
        ],
    }


def wrap(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """An object of `kind` whose Pod (template) has `spec`."""
    pod: dict[str, Any] = {"metadata": {"labels": {"app": "x"}}, "spec": spec}
    obj: dict[str, Any] = {"kind": kind, "metadata": {"name": "w", "namespace": "ns"}}
    path = TEMPLATE_PATHS[kind]
    if not path:
        return {**obj, **pod, "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x"}}}
    node = obj
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = pod
    return obj


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """name -> annotation key (or literal value) of a container's env."""
    out = {}
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        out[item["name"]] = ref if ref else item.get("value")
    return out


def annotation_ref(key: str) -> str:
    return f"metadata.annotations['{key}']"


@pytest.mark.parametrize("kind", sorted(TEMPLATE_PATHS))
def test_every_kind_moves_references_gates_labels_and_sets_env(kind: str) -> None:
    original = wrap(kind, pod_spec())
    snapshot = copy.deepcopy(original)
    result = mutate(original, kind)
    assert original == snapshot, "the input must not be modified"
    assert result.changed and sorted(result.moved) == ["gpu", "shared"]
    template = template_of(result.obj, kind)
    assert template is not None
    spec, meta = template["spec"], template["metadata"]
    assert "resourceClaims" not in spec
    for container in spec["containers"] + spec["initContainers"]:
        assert "claims" not in container.get("resources", {})
    assert spec["schedulingGates"] == [{"name": names.SCHEDULING_GATE}]
    assert meta["labels"] == {"app": "x", names.MANAGED_LABEL: "true"}
    manifest = read_manifest(meta["annotations"])
    assert manifest["resourceClaims"] == pod_spec()["resourceClaims"]
    assert manifest["containers"] == {"a": [{"name": "gpu"}], "b": [{"name": "shared"}, {"name": "gpu"}]}
    assert manifest["initContainers"] == {"init": [{"name": "shared"}]}

    a, b, plain = spec["containers"]
    gpu_key, shared_key = names.devices_annotation("gpu", None), names.devices_annotation("shared", None)
    assert env_of(a) == {
        "DRA_GPU_DEVICES": annotation_ref(gpu_key),
        "NVIDIA_VISIBLE_DEVICES": annotation_ref(names.nvidia_annotation("a")),
    }
    assert env_of(b) == {
        "DRA_SHARED_DEVICES": annotation_ref(shared_key),
        "DRA_GPU_DEVICES": annotation_ref(gpu_key),
        "NVIDIA_VISIBLE_DEVICES": annotation_ref(names.nvidia_annotation("b")),
    }
    assert env_of(plain) == {"KEEP": "1"}, "a container that uses no claim gets nothing"
    assert manifest["devices"][names.nvidia_annotation("a")] == {
        "format": "nvidia",
        "claims": [{"name": "gpu", "requests": None}],
    }
    assert manifest["devices"][names.nvidia_annotation("b")]["claims"] == [
        {"name": "shared", "requests": None},
        {"name": "gpu", "requests": None},
    ]
    assert manifest["devices"][gpu_key] == {
        "format": "devices",
        "claims": [{"name": "gpu", "requests": None}],
    }


@pytest.mark.parametrize("kind", sorted(TEMPLATE_PATHS))
def test_mutation_is_idempotent(kind: str) -> None:
    once = mutate(wrap(kind, pod_spec()), kind).obj
    again = mutate(once, kind)
    assert not again.changed and again.obj == once


@pytest.mark.parametrize(
    ("ref", "rejected"),
    [
        ({"name": "c"}, ONE_OF_MESSAGE),
        ({"name": "c", "resourceClaimName": "x", "resourceClaimTemplateName": "y"}, AT_MOST_ONE_MESSAGE),
        ({"name": "c", "resourceClaimName": ""}, ONE_OF_MESSAGE),
        ({"name": "c", "resourceClaimName": "x"}, None),
        ({"name": "c", "resourceClaimTemplateName": "y"}, None),
    ],
)
@pytest.mark.parametrize("kind", ["Pod", "Job", "CronJob"])
def test_exactly_one_name_is_required(kind: str, ref: dict[str, Any], rejected: str | None) -> None:
    obj = wrap(kind, {"containers": [{"name": "a"}], "resourceClaims": [ref]})
    if rejected:
        with pytest.raises(AdmissionRejected) as info:
            mutate(obj, kind)
        prefix = "".join(key + "." for key in TEMPLATE_PATHS[kind])
        assert str(info.value).endswith(f"{prefix}spec.resourceClaims[0]: {rejected}")
        # The apiserver's words, backquotes included (kube-apiserver 1.36).
        assert ONE_OF_MESSAGE == "must specify one of: `resourceClaimName`, `resourceClaimTemplateName`"
    else:
        assert mutate(obj, kind).changed


@pytest.mark.parametrize(
    ("spec", "expect_changed"),
    [
        ({"containers": [{"name": "a"}]}, False),
        ({"containers": [{"name": "a"}], "resourceClaims": []}, False),
        ({"containers": [{"name": "a"}], "resourceClaims": [{"name": "c", "resourceClaimName": "x"}]}, True),
    ],
)
def test_objects_without_claims_are_left_alone(spec: dict[str, Any], expect_changed: bool) -> None:
    obj = wrap("Pod", spec)
    result = mutate(obj, "Pod")
    assert result.changed is expect_changed
    if not expect_changed:
        assert result.obj == obj


def test_only_references_that_are_ours_move() -> None:
    obj = wrap("Pod", pod_spec())
    result = mutate(obj, "Pod", ours=lambda ref: ref["name"] == "gpu")
    spec = result.obj["spec"]
    assert result.moved == ("gpu",) and result.kept == ("shared",)
    assert spec["resourceClaims"] == [{"name": "shared", "resourceClaimName": "claim"}]
    a, b, _ = spec["containers"]
    assert "claims" not in a["resources"]
    assert b["resources"]["claims"] == [{"name": "shared"}]
    assert set(env_of(b)) == {"DRA_GPU_DEVICES", "NVIDIA_VISIBLE_DEVICES"}
    assert spec["initContainers"][0]["resources"]["claims"] == [{"name": "shared"}]
    assert "env" not in spec["initContainers"][0]


def test_no_reference_ours_changes_nothing() -> None:
    obj = wrap("Pod", pod_spec())
    result = mutate(obj, "Pod", ours=lambda ref: False)
    assert not result.changed and result.obj == obj and result.kept == ("gpu", "shared")


def test_requests_get_their_own_annotation_and_user_env_is_replaced() -> None:
    spec = {
        "containers": [
            {
                "name": "a",
                "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}, {"name": "X", "value": "y"}],
                "resources": {"claims": [{"name": "c", "request": "r2"}, {"name": "c", "request": "r1"}]},
            }
        ],
        "resourceClaims": [{"name": "c", "resourceClaimName": "claim"}],
    }
    result = mutate(wrap("Pod", spec), "Pod")
    container = result.obj["spec"]["containers"][0]
    key = names.devices_annotation("c", ["r1", "r2"])
    assert key == names.PREFIX + "devices.c.r1.r2"
    assert env_of(container) == {
        "X": "y",
        "DRA_C_DEVICES": annotation_ref(key),
        "NVIDIA_VISIBLE_DEVICES": annotation_ref(names.nvidia_annotation("a")),
    }
    manifest = read_manifest(result.obj["metadata"]["annotations"])
    assert manifest["devices"][key]["claims"] == [{"name": "c", "requests": ["r2", "r1"]}]


def test_pod_with_node_name_gets_no_gate() -> None:
    spec = {**pod_spec(), "nodeName": "n1"}
    result = mutate(wrap("Pod", spec), "Pod")
    assert result.changed and "schedulingGates" not in result.obj["spec"]


def test_existing_gates_are_kept() -> None:
    spec = {**pod_spec(), "schedulingGates": [{"name": "other"}]}
    result = mutate(wrap("Pod", spec), "Pod")
    assert result.obj["spec"]["schedulingGates"] == [{"name": "other"}, {"name": names.SCHEDULING_GATE}]


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        ("gpu", "DRA_GPU_DEVICES"),
        ("shared-gpu-claim", "DRA_SHARED_GPU_CLAIM_DEVICES"),
        ("a.b", "DRA_A_B_DEVICES"),
    ],
)
def test_env_names(claim: str, expected: str) -> None:
    assert names.env_name(claim) == expected


@pytest.mark.parametrize("length", [1, 40, 55, 63])
def test_annotation_keys_stay_valid_for_long_names(length: int) -> None:
    claim = "c" * length
    for key in (names.devices_annotation(claim, None), names.nvidia_annotation(claim)):
        prefix, local = key.split("/", 1)
        assert prefix == "resource.dra-operator.io" and len(local) <= 63
        assert local[0].isalnum() and local[-1].isalnum()
    assert names.devices_annotation("c" * 63, None) != names.devices_annotation("c" * 62 + "d", None)


def seed_job() -> dict[str, Any]:
    job: dict[str, Any] = yaml.safe_load(SEED_JOB.read_text())
    return job


def test_seed_job_template_is_mutated() -> None:
    job = seed_job()
    result = mutate(job, "Job")
    template = template_of(result.obj, "Job")
    assert template is not None
    containers = template["spec"]["containers"]
    assert set(env_of(containers[0])) == {"DRA_SEPARATE_GPU_CLAIM_DEVICES", "NVIDIA_VISIBLE_DEVICES"}
    assert set(env_of(containers[1])) == {"DRA_SHARED_GPU_CLAIM_DEVICES", "NVIDIA_VISIBLE_DEVICES"}
    # each container has its own GPU annotation: container0 never sees the shared claim's devices
    assert env_of(containers[1])["NVIDIA_VISIBLE_DEVICES"] != env_of(containers[2])["NVIDIA_VISIBLE_DEVICES"]
    manifest = json.loads(template["metadata"]["annotations"][names.CLAIMS_ANNOTATION])
    assert [r["name"] for r in manifest["resourceClaims"]] == ["separate-gpu-claim", "shared-gpu-claim"]


@pytest.mark.parametrize(
    ("lookup", "ours"),
    [
        (Lookup(builtin_dra=False, ours_exists=False, builtin_exists=False), True),
        (Lookup(builtin_dra=False, ours_exists=False, builtin_exists=True), True),
        (Lookup(builtin_dra=True, ours_exists=True, builtin_exists=False), True),
        (Lookup(builtin_dra=True, ours_exists=True, builtin_exists=True), True),
        (Lookup(builtin_dra=True, ours_exists=False, builtin_exists=True), False),
        (Lookup(builtin_dra=True, ours_exists=False, builtin_exists=False), True),
    ],
)
def test_ownership_rule(lookup: Lookup, ours: bool) -> None:
    assert belongs_to_us(lookup) is ours


def test_the_1_30_source_form_is_moved_and_recorded_flat() -> None:
    """A Kubernetes 1.30 Pod names its claims under `source:`; the manifest records the flat form that the
    operator reads on every version, and an entry kept for built-in DRA stays as the user wrote it."""
    spec = {
        "resourceClaims": [
            {"name": "gpu", "source": {"resourceClaimTemplateName": "tmpl"}},
            {"name": "shared", "source": {"resourceClaimName": "claim"}},
        ],
        "containers": [
            {"name": "a", "image": "x", "resources": {"claims": [{"name": "gpu"}, {"name": "shared"}]}}
        ],
    }
    result = mutate(wrap("Pod", spec), "Pod", ours=lambda ref: ref["name"] == "gpu")
    assert result.moved == ("gpu",) and result.kept == ("shared",)
    manifest = read_manifest(result.obj["metadata"]["annotations"])
    assert manifest["resourceClaims"] == [{"name": "gpu", "resourceClaimTemplateName": "tmpl"}]
    assert result.obj["spec"]["resourceClaims"] == [
        {"name": "shared", "source": {"resourceClaimName": "claim"}}
    ]


# ----------------------------------------------------------------------------------- extended resources

EXTENDED = {"nvidia.com/gpu": "gpu-class", "example.com/fpga": "fpga-class"}


def _gpu_container(name: str, count: str = "2", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "x",
        "resources": {"limits": {"nvidia.com/gpu": count, "cpu": "1"}, **extra},
    }


@pytest.mark.parametrize("kind", sorted(TEMPLATE_PATHS))
def test_a_declared_extended_resource_becomes_a_generated_claim(kind: str) -> None:
    """A manifest written for the NVIDIA device plugin, unchanged: `nvidia.com/gpu: 2` becomes one request
    of the claim generated for the Pod, for two devices of the class that declares the name."""
    spec = {
        "initContainers": [{"name": "init", "image": "x"}],
        "containers": [_gpu_container("train"), {"name": "sidecar", "image": "x"}],
    }
    result = mutate(wrap(kind, spec), kind, extended=EXTENDED)
    template = template_of(result.obj, kind)
    assert template is not None
    train = template["spec"]["containers"][0]
    assert train["resources"] == {"limits": {"cpu": "1"}}, (
        "the extended resource no longer reaches kube-scheduler"
    )
    manifest = read_manifest(template["metadata"]["annotations"])
    assert manifest["resourceClaims"] == [
        {
            "name": names.EXTENDED_RESOURCE_CLAIM,
            "claimSpec": {
                "devices": {
                    "requests": [
                        {
                            "name": "container-1-request-0",
                            "exactly": {"deviceClassName": "gpu-class", "count": 2},
                        }
                    ]
                }
            },
            "extendedResources": {"container-1-request-0": "nvidia.com/gpu"},
        }
    ]
    assert manifest["containers"] == {
        "train": [{"name": names.EXTENDED_RESOURCE_CLAIM, "request": "container-1-request-0"}]
    }
    assert set(env_of(train)) == {"DRA_EXTENDED_RESOURCES_DEVICES", "NVIDIA_VISIBLE_DEVICES"}
    assert (
        "env" not in template["spec"]["containers"][1] and "env" not in template["spec"]["initContainers"][0]
    )
    assert [g["name"] for g in template["spec"]["schedulingGates"]] == [names.SCHEDULING_GATE]
    assert result.moved == (names.EXTENDED_RESOURCE_CLAIM,)
    again = mutate(result.obj, kind, extended=EXTENDED)
    assert again.obj == result.obj, "idempotent: nothing is asked for twice"


def test_mixed_pod_claims_and_extended_resources_in_one_manifest() -> None:
    spec = pod_spec()
    spec["containers"][2] = _gpu_container(
        "plain", "1", requests={"nvidia.com/gpu": "1", "example.com/fpga": "3"}
    )
    spec["containers"][2]["resources"]["limits"]["example.com/fpga"] = "3"
    result = mutate(wrap("Pod", spec), "Pod", extended=EXTENDED)
    manifest = read_manifest(result.obj["metadata"]["annotations"])
    extended = next(r for r in manifest["resourceClaims"] if r["name"] == names.EXTENDED_RESOURCE_CLAIM)
    assert extended["claimSpec"]["devices"]["requests"] == [
        {"name": "container-3-request-0", "exactly": {"deviceClassName": "fpga-class", "count": 3}},
        {"name": "container-3-request-1", "exactly": {"deviceClassName": "gpu-class", "count": 1}},
    ]
    assert {r["name"] for r in manifest["resourceClaims"]} == {"gpu", "shared", names.EXTENDED_RESOURCE_CLAIM}
    assert manifest["containers"]["plain"] == [
        {"name": names.EXTENDED_RESOURCE_CLAIM, "request": "container-3-request-0"},
        {"name": names.EXTENDED_RESOURCE_CLAIM, "request": "container-3-request-1"},
    ]
    plain = result.obj["spec"]["containers"][2]
    assert plain["resources"] == {"limits": {"cpu": "1"}}
    assert set(env_of(plain)) == {"DRA_EXTENDED_RESOURCES_DEVICES", "NVIDIA_VISIBLE_DEVICES"}


@pytest.mark.parametrize(
    "limits",
    [{"example.com/other": "2"}, {"cpu": "2"}, {}],
    ids=["undeclared name", "standard resource", "none"],
)
def test_names_no_class_declares_are_left_alone(limits: dict[str, str]) -> None:
    spec = {"containers": [{"name": "c", "image": "x", "resources": {"limits": limits}}]}
    result = mutate(wrap("Pod", spec), "Pod", extended=EXTENDED)
    assert not result.changed and result.obj == wrap("Pod", spec)


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"limits": {"nvidia.com/gpu": "500m"}}, 'Invalid value: "500m": must be a whole number'),
        ({"limits": {"nvidia.com/gpu": "0"}}, 'Invalid value: "0": must be a whole number'),
        (
            {"limits": {"nvidia.com/gpu": "2"}, "requests": {"nvidia.com/gpu": "1"}},
            "spec.containers[0].resources.requests[nvidia.com/gpu]: must be equal to nvidia.com/gpu limit",
        ),
    ],
)
def test_bad_extended_resource_counts_are_refused(resources: dict[str, Any], message: str) -> None:
    spec = {"containers": [{"name": "c", "image": "x", "resources": resources}]}
    with pytest.raises(AdmissionRejected, match=re.escape(message)):
        mutate(wrap("Pod", spec), "Pod", extended=EXTENDED)


def test_the_generated_claims_pod_claim_name_is_reserved() -> None:
    spec = {
        "containers": [_gpu_container("c")],
        "resourceClaims": [{"name": names.EXTENDED_RESOURCE_CLAIM, "resourceClaimName": "mine"}],
    }
    with pytest.raises(AdmissionRejected, match="is reserved for the claim dra-operator generates"):
        mutate(wrap("Pod", spec), "Pod", extended=EXTENDED)
