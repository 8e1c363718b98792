"""Device health seen from allocations: withdrawn devices, the agent's health taints, NoExecute taints."""

from __future__ import annotations

from typing import Any

import pytest

from dra_operator.allocation.health import unhealthy_devices
from dra_operator.api.resource import ResourceSlice

Json = dict[str, Any]
D = "gpu.nvidia.com"


def _slice(pool: str, generation: int, devices: list[Json]) -> ResourceSlice:
    spec = {
        "driver": D,
        "nodeName": pool,
        "pool": {"name": pool, "generation": generation, "resourceSliceCount": 1},
        "devices": devices,
    }
    return ResourceSlice.model_validate({"metadata": {"name": f"{pool}-{generation}"}, "spec": spec})


def _claim(*devices: str, pool: str = "n1") -> Json:
    results = [{"driver": D, "pool": pool, "device": d, "request": "r"} for d in devices]
    return {"status": {"allocation": {"devices": {"results": results}}}}


def _tainted(name: str, key: str, effect: str, value: str | None = None) -> Json:
    return {"name": name, "taints": [{"key": key, "effect": effect, **({"value": value} if value else {})}]}


@pytest.mark.parametrize(
    ("slices", "claims", "expected"),
    [
        ([_slice("n1", 1, [{"name": "gpu-0"}, {"name": "gpu-1"}])], [_claim("gpu-0")], {}),
        (  # withdrawn after a critical Xid (policy withdraw): gone from the newest generation
            [_slice("n1", 1, [{"name": "gpu-0"}, {"name": "gpu-1"}]), _slice("n1", 2, [{"name": "gpu-1"}])],
            [_claim("gpu-0", "gpu-1")],
            {(D, "n1", "gpu-0"): "no longer offered"},
        ),
        (  # policy taint: the agent's xid taint
            [_slice("n1", 2, [_tainted("gpu-0", f"{D}/xid", "NoSchedule", "79"), {"name": "gpu-1"}])],
            [_claim("gpu-0")],
            {(D, "n1", "gpu-0"): f"tainted {D}/xid=79:NoSchedule"},
        ),
        (
            [_slice("n1", 2, [_tainted("gpu-0", f"{D}/gpu-lost", "NoSchedule")])],
            [_claim("gpu-0")],
            {(D, "n1", "gpu-0"): f"tainted {D}/gpu-lost:NoSchedule"},
        ),
        (  # any NoExecute taint
            [_slice("n1", 1, [_tainted("gpu-0", "example.com/maintenance", "NoExecute")])],
            [_claim("gpu-0")],
            {(D, "n1", "gpu-0"): "tainted example.com/maintenance:NoExecute"},
        ),
        (  # an administrator's NoSchedule says nothing about health
            [_slice("n1", 1, [_tainted("gpu-0", "example.com/drain", "NoSchedule")])],
            [_claim("gpu-0")],
            {},
        ),
        (
            [],
            [_claim("gpu-0", pool="gone")],
            {(D, "gone", "gpu-0"): "no longer offered"},
        ),  # node and slices gone
        ([_slice("n1", 1, [])], [{"status": {}}, {}], {}),  # unallocated claims hold nothing
    ],
)
def test_unhealthy_devices(slices: list[ResourceSlice], claims: list[Json], expected: dict[Any, str]) -> None:
    found = unhealthy_devices(slices, claims)
    assert set(found) == set(expected)
    for key, part in expected.items():
        assert part in found[key]
