"""The free-devices view: per slice, devices, allocated (adminAccess excepted), tainted and free."""

from __future__ import annotations

import random
from typing import Any

import pytest

from dra_operator.allocation.usage import (
    SliceDevices,
    SliceUsage,
    UsageLedger,
    allocated_devices,
    claim_devices,
    count_usage,
    slice_usage,
    table,
)
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


def _offered(pool: str, keys: list[tuple[str, str, str]], tainted: int) -> SliceDevices:
    """What a slice of `pool` offers (its devices' keys name that pool, as `slice_devices` builds them)."""
    return SliceDevices(pool, D, pool, tuple(keys), frozenset(keys[:tainted]))


@pytest.mark.parametrize("seed", range(40))
def test_the_ledger_counts_as_count_usage_and_names_every_slice_whose_counts_moved(seed: int) -> None:
    """Random slices of two pools (some listing the same device, or one twice), claims (some adminAccess) and
    rule taints put one change at a time: the ledger's counts are count_usage's from scratch, and a slice
    left out of `changed` still has the counts last answered for it."""
    rng = random.Random(seed)
    universe = [(D, pool, f"gpu-{i}") for pool in ("p0", "p1") for i in range(4)]
    ledger = UsageLedger()
    offered: dict[str, SliceDevices] = {}
    claims: dict[str, Json] = {}
    ruled: set[tuple[str, str, str]] = set()
    answered: dict[str, SliceUsage] = {}
    for _ in range(60):
        action = rng.choice(["slice", "slice", "claim", "claim", "claim", "rules"])
        if action == "slice":
            name = rng.choice(["s0", "s1", "s2", "s3"])
            if rng.random() < 0.2:
                offered.pop(name, None)
                ledger.put_slice(name, None)
            else:  # a pool's slices may list the same device (broken input), or one device twice
                pool = rng.choice(["p0", "p1"])
                keys = rng.sample([key for key in universe if key[1] == pool], rng.randint(0, 4))
                keys += keys[:1] if rng.random() < 0.1 else []
                offered[name] = _offered(pool, keys, rng.randint(0, len(keys)))
                ledger.put_slice(name, offered[name])
        elif action == "claim":
            name = rng.choice(["c0", "c1", "c2", "c3", "c4"])
            chosen = rng.sample(universe, rng.randint(0, 2))
            claims[name] = _claim(*chosen, admin=rng.random() < 0.2) if chosen else {}
            ledger.put_claim(("ns", name), claim_devices(claims[name]))
        else:
            ruled = set(rng.sample(universe, rng.randint(0, 3)))
            ledger.put_ruled(ruled)
        expected = count_usage(offered, allocated_devices(claims.values()), ruled)
        assert {name: ledger.usage(name) for name in offered} == expected
        if rng.random() < 0.5:
            changed = ledger.changed()
            assert set(changed) <= set(offered)
            for name, usage in expected.items():
                assert changed.get(name, answered.get(name)) == usage, name
            answered = {name: changed.get(name, answered.get(name)) for name in offered}  # type: ignore[misc]


def test_a_slice_put_or_marked_again_is_answered_again() -> None:
    ledger = UsageLedger()
    ledger.put_slice("s0", _offered("p0", [(D, "p0", "a")], 0))
    ledger.put_slice("s1", _offered("p1", [(D, "p1", "b")], 0))
    assert set(ledger.changed()) == {"s0", "s1"}
    assert ledger.changed() == {}
    ledger.put_claim(("ns", "c"), claim_devices(_claim((D, "p0", "a"))))
    assert list(ledger.changed()) == ["s0"], "only the slice of the claimed device's pool"
    ledger.put_claim(("ns", "c"), claim_devices(_claim((D, "p0", "a"))))
    assert ledger.changed() == {}, "the same devices again: nothing moved"
    ledger.mark(["s1", "gone"])
    assert list(ledger.changed()) == ["s1"]
    ledger.mark()
    assert set(ledger.changed()) == {"s0", "s1"}
    ledger.put_slice("s0", None)
    assert ledger.changed() == {}


def test_a_ledger_built_at_once_is_one_put_piece_by_piece() -> None:
    offered = {
        "s0": _offered("p0", [(D, "p0", "a"), (D, "p0", "b")], 1),
        "s1": _offered("p0", [(D, "p0", "b"), (D, "p0", "c")], 0),
    }
    claims = [(("ns", "c0"), claim_devices(_claim((D, "p0", "b")))), (("ns", "c1"), frozenset())]
    piece_by_piece = UsageLedger()
    for name, devices in offered.items():
        piece_by_piece.put_slice(name, devices)
    for key, taken in claims:
        piece_by_piece.put_claim(key, taken)
    at_once = UsageLedger.of(offered, claims)
    assert at_once.changed() == piece_by_piece.changed()
    for ledger in (at_once, piece_by_piece):
        ledger.put_claim(("ns", "c0"), frozenset())
        assert ledger.changed() == {name: ledger.usage(name) for name in offered}
        assert ledger.usage("s1").allocated == 0
