"""Property-based tests of the admission mutation (dra_operator.admission.mutation.mutate).

For valid Pods and workloads: only references that are ours move; every container that names a moved claim
gets exactly the env vars of its claims (and no other container any); annotation keys are valid and the
manifest is JSON; mutating the result again changes nothing; the input is not modified. For malformed ones
(wrong types, missing keys, nulls anywhere): a Mutation or AdmissionRejected with a message, nothing else.
Profiles and example counts: tests/conftest.py.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from dra_operator.admission import names
from dra_operator.admission.mutation import TEMPLATE_PATHS, AdmissionRejected, Mutation, mutate, template_of
from dra_operator.api.meta import annotation_problems

KINDS = sorted(TEMPLATE_PATHS)
CLAIM_NAMES = ["gpu", "shared", "nic", "a-b", "x" * 63]
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
FIELD_PATH = re.compile(r"^metadata\.annotations\['([^']+)'\]$")

junk: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers(-2, 2) | st.text(max_size=4) | st.just([]) | st.just({})
)
json_values = st.recursive(
    junk, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
)


@st.composite
def pod_template(draw: st.DrawFn) -> dict[str, Any]:
    """A valid Pod (template): unique claim names with one source each, containers naming some of them."""
    claims = draw(st.lists(st.sampled_from(CLAIM_NAMES), max_size=4, unique=True))
    refs = []
    for claim in claims:
        source = draw(st.sampled_from(["resourceClaimName", "resourceClaimTemplateName"]))
        refs.append({"name": claim, source: draw(st.sampled_from(["c", "tmpl", "my.claim"]))})
    container_names = draw(
        st.lists(st.from_regex(r"\A[a-z][a-z0-9-]{0,70}[a-z0-9]\Z"), max_size=5, unique=True)
    )
    containers: dict[str, list[dict[str, Any]]] = {"containers": [], "initContainers": []}
    for name in container_names:
        used = draw(st.lists(st.sampled_from(claims), max_size=3, unique=True)) if claims else []
        claim_refs: list[dict[str, Any]] = []
        for claim in used:
            requests = draw(st.lists(st.sampled_from(["r1", "r2", "big"]), max_size=2, unique=True))
            claim_refs += [{"name": claim, "request": r} for r in requests] or [{"name": claim}]
        container: dict[str, Any] = {"name": name, "image": "busybox"}
        if claim_refs:
            container["resources"] = {"claims": claim_refs}
        if draw(st.booleans()):
            container["env"] = [{"name": draw(st.sampled_from(["KEEP", "DRA_GPU_DEVICES"])), "value": "1"}]
        containers[draw(st.sampled_from(["containers", "containers", "initContainers"]))].append(container)
    spec: dict[str, Any] = {key: value for key, value in containers.items() if value}
    if refs:
        spec["resourceClaims"] = refs
    if draw(st.booleans()):
        spec["nodeName"] = "node-1"
    if draw(st.booleans()):
        spec["schedulingGates"] = [{"name": "other.example.com/gate"}]
    metadata: dict[str, Any] = {"name": "p"}
    if draw(st.booleans()):
        metadata["annotations"] = {"note": "x"}
    return {"metadata": metadata, "spec": spec}


def wrap(kind: str, pod: dict[str, Any]) -> dict[str, Any]:
    path = TEMPLATE_PATHS[kind]
    if not path:
        return {"apiVersion": "v1", "kind": "Pod", **pod}
    obj: dict[str, Any] = {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "w"}}
    node = obj
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = pod
    return obj


def _positions(node: Any) -> list[tuple[Any, Any]]:
    found: list[tuple[Any, Any]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found.append((node, key))
        found.extend(_positions(value))
    return found


@st.composite
def corrupted_object(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid workload with one to three values replaced by junk or removed, anywhere in it."""
    kind = draw(st.sampled_from(KINDS))
    obj = wrap(kind, draw(pod_template()))
    for _ in range(draw(st.integers(1, 3))):
        container, key = draw(st.sampled_from(_positions(obj)))
        if isinstance(container, dict) and draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(json_values)
    return kind, obj


not_ours = st.sets(st.sampled_from(CLAIM_NAMES))


def env_of(container: dict[str, Any]) -> list[Any]:
    return list(container.get("env") or [])


def claim_names(container: dict[str, Any]) -> set[str]:
    return {r["name"] for r in (container.get("resources") or {}).get("claims") or []}


def mutated_or_rejected(obj: dict[str, Any], kind: str, others: set[str]) -> Mutation | None:
    snapshot = copy.deepcopy(obj)
    try:
        result = mutate(obj, kind, lambda ref: ref.get("name") not in others)
    except AdmissionRejected as err:
        assert str(err).strip()
        return None
    finally:
        assert obj == snapshot, "the input must not be modified"
    assert not set(result.moved) & others
    again = mutate(result.obj, kind, lambda ref: ref.get("name") not in others)
    assert again.obj == result.obj and not again.changed
    return result


@given(st.sampled_from(KINDS), pod_template(), not_ours)
def test_valid_objects_move_exactly_our_claims_and_give_env_to_their_containers(
    kind: str, pod: dict[str, Any], others: set[str]
) -> None:
    obj = wrap(kind, pod)
    result = mutated_or_rejected(obj, kind, others)
    assert result is not None, "a valid object must not be rejected"
    refs = pod["spec"].get("resourceClaims", [])
    moved = {r["name"] for r in refs if r["name"] not in others}
    assert set(result.moved) == moved and set(result.kept) == {r["name"] for r in refs} - moved
    template = template_of(result.obj, kind)
    assert template is not None
    spec, metadata = template["spec"], template["metadata"]
    assert spec.get("resourceClaims", []) == [r for r in refs if r["name"] not in moved]
    if not moved:
        assert result.obj == obj
        return

    annotations = metadata["annotations"]
    assert annotation_problems(annotations, "metadata.annotations") == []
    manifest = json.loads(annotations[names.CLAIMS_ANNOTATION])
    assert {r["name"] for r in manifest["resourceClaims"]} == moved
    assert metadata["labels"][names.MANAGED_LABEL] == names.MANAGED_VALUE
    gates = [g["name"] for g in spec.get("schedulingGates", [])]
    assert gates.count(names.SCHEDULING_GATE) == (0 if spec.get("nodeName") else 1)

    for list_key in ("containers", "initContainers"):
        for before, after in zip(pod["spec"].get(list_key, []), spec.get(list_key, []), strict=True):
            uses = claim_names(before) & moved
            assert not claim_names(after) & moved, "moved claims leave every container"
            assert claim_names(after) == claim_names(before) - moved
            if not uses:
                assert after.get("env") == before.get("env"), "a container without our claims gets no env"
                continue
            expected = {names.env_name(claim) for claim in uses} | {names.NVIDIA_ENV}
            added = [item for item in env_of(after) if "valueFrom" in item]
            assert sorted(item["name"] for item in added) == sorted(expected)
            kept = [item for item in env_of(before) if item["name"] not in expected]
            assert [item for item in env_of(after) if "valueFrom" not in item] == kept
            for item in added:
                assert ENV_NAME.match(item["name"])
                found = FIELD_PATH.match(item["valueFrom"]["fieldRef"]["fieldPath"])
                assert found is not None
                key = found.group(1)
                assert annotation_problems({key: ""}, "key") == [] and key in manifest["devices"]
                claims = {c["name"] for c in manifest["devices"][key]["claims"]}
                assert claims == uses if item["name"] == names.NVIDIA_ENV else claims <= uses


@given(corrupted_object(), not_ours)
@example(  # found: AttributeError ('bool' object has no attribute 'get') for `annotations: true`
    (
        "Pod",
        {
            "metadata": {"annotations": True},
            "spec": {"resourceClaims": [{"name": "g", "resourceClaimName": "c"}]},
        },
    ),
    set(),
)
@example(  # found: AttributeError/TypeError on a claims manifest annotation of the wrong shape
    (
        "Pod",
        {
            "metadata": {
                "annotations": {names.CLAIMS_ANNOTATION: '{"resourceClaims": [1], "containers": []}'}
            },
            "spec": {
                "resourceClaims": [{"name": "g", "resourceClaimName": "c"}],
                "containers": [{"name": "a", "resources": {"claims": [{"name": "g"}]}}],
            },
        },
    ),
    set(),
)
@example(  # found: AttributeError ('int' object has no attribute 'get') for a non-object env entry;
    # (long profile) TypeError, unhashable env name
    (
        "Pod",
        {
            "spec": {
                "resourceClaims": [{"name": "g", "resourceClaimName": "c"}],
                "containers": [
                    {"name": "a", "env": [7, {"name": []}], "resources": {"claims": [{"name": "g"}]}}
                ],
            }
        },
    ),
    set(),
)
def test_malformed_objects_are_mutated_or_rejected_with_a_message(
    case: tuple[str, dict[str, Any]], others: set[str]
) -> None:
    kind, obj = case
    result = mutated_or_rejected(obj, kind, others)
    if result is not None and result.changed:
        template = template_of(result.obj, kind)
        assert template is not None
        json.loads(template["metadata"]["annotations"][names.CLAIMS_ANNOTATION])


@given(st.sampled_from(KINDS), json_values, not_ours)
def test_arbitrary_values_are_mutated_or_rejected(kind: str, value: Any, others: set[str]) -> None:
    obj = value if isinstance(value, dict) else {"spec": value}
    mutated_or_rejected(obj, kind, others)
