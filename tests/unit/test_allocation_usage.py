"""The free-devices view: per slice, devices, allocated (adminAccess excepted), tainted and free."""

from __future__ import annotations

from typing import Any

import pytest

from dra_operator.allocation.usage import allocated_devices, slice_usage, table
from dra_operator.api.resource import ResourceSlice

Json = dict[str, Any]


def _slice(name: str, node: str | None, devices: list[Json], driver: str = "d.example.com") -> ResourceSlice:
    pool = {"name": node or "shared", "resourceSliceCount": 1}
    spec: Json = {"driver": driver, "pool": pool, "devices": devices}
    spec.update({"nodeName": node} if node else {"allNodes": True})
    return ResourceSlice.model_validate({"metadata": {"name": name}, "spec": spec})


def _claim(*results: tuple[str, str, str], admin: bool = False) -> Json:
    return {
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {
                            "driver": d,
                            "pool": p,
                            "device": n,
                            "request": "r",
                            **({"adminAccess": True} if admin else {}),
                        }
                        for d, p, n in results
                    ]
                }
            }
        }
    }


NO_SCHEDULE = {"key": "k", "effect": "NoSchedule"}
IDLE = {"n1": (4, 0, 1, 3), "n2": (2, 0, 0, 2), "net": (1, 0, 0, 1)}
D = "d.example.com"
SLICES = [
    _slice("n1", "n1", [{"name": "a"}, {"name": "b"}, {"name": "c", "taints": [NO_SCHEDULE]}, {"name": "d"}]),
    _slice("n2", "n2", [{"name": "a"}, {"name": "b", "taints": [{"key": "k", "effect": "None"}]}]),
    _slice("net", None, [{"name": "x"}]),
]


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ([], IDLE),
        (
            [_claim((D, "n1", "a"), (D, "n1", "b")), _claim((D, "n2", "a"))],
            {"n1": (4, 2, 1, 1), "n2": (2, 1, 0, 1), "net": (1, 0, 0, 1)},
        ),
        # adminAccess does not take the device; an allocated tainted device counts as allocated, once.
        (
            [_claim((D, "n1", "a"), admin=True), _claim((D, "n1", "c"))],
            {"n1": (4, 1, 0, 3), "n2": (2, 0, 0, 2), "net": (1, 0, 0, 1)},
        ),
        # another driver's device of the same name is not this slice's
        ([_claim(("other.example.com", "n1", "a"))], IDLE),
        ([_claim((D, "shared", "x")), {"status": {}}, {}], {**IDLE, "net": (1, 1, 0, 0)}),
    ],
)  # fmt: skip
def test_counts_per_slice(claims: list[Json], expected: dict[str, tuple[int, int, int, int]]) -> None:
    usage = slice_usage(SLICES, claims)
    assert {n: (u.devices, u.allocated, u.tainted, u.free) for n, u in usage.items()} == expected
    for u in usage.values():
        assert u.status() == {
            "devices": u.devices,
            "allocated": u.allocated,
            "tainted": u.tainted,
            "free": u.free,
        }


def test_allocated_devices_skips_admin_access() -> None:
    assert allocated_devices([_claim(("d", "p", "a")), _claim(("d", "p", "b"), admin=True)]) == {
        ("d", "p", "a")
    }


def test_table_rows_sorted_with_a_total() -> None:
    rows = table(slice_usage(SLICES, [_claim(("d.example.com", "n2", "a"))]))
    assert rows[0] == ["NODE", "DRIVER", "POOL", "DEVICES", "ALLOCATED", "TAINTED", "FREE"]
    assert [r[0] for r in rows[1:]] == ["(all nodes)", "n1", "n2", "(total)"]
    assert rows[-1][3:] == ["7", "1", "1", "5"]
    assert table({}) == [rows[0]]
