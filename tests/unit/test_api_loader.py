"""YAML text to objects: multi-document files, Lists, other kinds passed through, errors naming the source."""

from __future__ import annotations

import pytest

from dra_operator.api.loader import InvalidObject, load_dra_objects, load_yaml_documents
from dra_operator.api.resource import DeviceClass, ResourceSlice

TEXT = """
---
apiVersion: resource.dra-operator.io/v1
kind: DeviceClass
metadata: {name: a}
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {containers: []}
---
apiVersion: v1
kind: List
items:
- apiVersion: resource.k8s.io/v1
  kind: ResourceSlice
  metadata: {name: s}
  spec: {driver: d.io, pool: {name: n, resourceSliceCount: 1}, allNodes: true}
---
"""


def test_multi_document_text() -> None:
    docs = load_yaml_documents(TEXT, source="x.yaml")
    assert [d["kind"] for d in docs] == ["DeviceClass", "Pod", "ResourceSlice"]
    models, others = load_dra_objects(TEXT, source="x.yaml")
    assert [type(m) for m in models] == [DeviceClass, ResourceSlice]
    assert [o["kind"] for o in others] == ["Pod"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [1, 2", "x.yaml: not valid YAML"),
        ("- 1\n- 2\n", "x.yaml: document 1 is a list"),
        (
            "kind: DeviceClass\napiVersion: example.com/v1\nmetadata: {name: c}\n",
            "x.yaml: DeviceClass c: apiVersion",
        ),
        (
            "kind: ResourceSlice\napiVersion: resource.dra-operator.io/v1\n"
            "metadata: {name: s}\nspec: {driver: d.io}\n",
            "x.yaml: ResourceSlice s:",
        ),
    ],
)
def test_errors_name_the_source(text: str, expected: str) -> None:
    with pytest.raises(InvalidObject) as info:
        load_dra_objects(text, source="x.yaml")
    assert str(info.value).startswith(expected)
