"""DeviceTaintRules in the pure core: which devices a rule matches, the taints it adds, the allocator
honouring them, and the evictions NoExecute taints call for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dra_operator.allocation import (
    Allocation,
    PodRef,
    SelectorCache,
    SelectorFailure,
    Snapshot,
    Unallocatable,
)
from dra_operator.allocation import allocate as allocate_pod
from dra_operator.allocation.taints import (
    Consumer,
    Eviction,
    RuleTaints,
    current_devices,
    device_taints,
    due_now,
    evictions,
    format_time,
    next_due,
    parse_time,
    rule_matches,
    rule_taints,
)
from dra_operator.api.resource import (
    DeviceClass,
    DeviceTaint,
    DeviceTaintRule,
    ResourceClaim,
    ResourceSlice,
)

Json = dict[str, Any]
GPU = "gpu.nvidia.com"
NIC = "nic.example.com"
CREATED = "2025-01-01T00:00:00Z"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
POD = PodRef("default", "pod", "uid-1")


def rule(
    name: str = "r",
    selector: Json | None = None,
    *,
    key: str = "example.com/maintenance",
    value: str | None = "planned",
    effect: str = "NoExecute",
    time_added: str | None = None,
    created: str | None = CREATED,
) -> DeviceTaintRule:
    taint: Json = {"key": key, "effect": effect}
    if value is not None:
        taint["value"] = value
    if time_added is not None:
        taint["timeAdded"] = time_added
    spec: Json = {"taint": taint}
    if selector is not None:
        spec["deviceSelector"] = selector
    meta: Json = {"name": name}
    if created is not None:
        meta["creationTimestamp"] = created
    return DeviceTaintRule.model_validate({"metadata": meta, "spec": spec})


def cel(*expressions: str) -> list[Json]:
    return [{"cel": {"expression": e}} for e in expressions]


def slice_(
    node: str, *devices: Json, driver: str = GPU, generation: int = 0, name: str | None = None
) -> ResourceSlice:
    return ResourceSlice.model_validate(
        {
            "metadata": {"name": name or f"{node}-{driver}-{generation}"},
            "spec": {
                "driver": driver,
                "nodeName": node,
                "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
                "devices": list(devices),
            },
        }
    )


def gpu(name: str, product: str | None = "H100", **extra: Any) -> Json:
    device: Json = {"name": name, **extra}
    if product is not None:
        device["attributes"] = {"productName": {"string": product}}
    return device


SLICES = [
    slice_("node-1", gpu("gpu-0"), gpu("gpu-1", "A100")),
    slice_("node-2", gpu("gpu-0", "A100"), gpu("gpu-1")),
    slice_("node-1", {"name": "eth-0"}, driver=NIC),
]
DEVICES = {device_id: device for device_id, _, device in current_devices(SLICES)}


def ids(*labels: str) -> set[tuple[str, ...]]:
    return {tuple(label.split("/")) for label in labels}


# ------------------------------------------------------------------------------------------- matching

H100 = f'device.attributes["{GPU}"].productName == "H100"'
ALL_GPUS = ids(f"{GPU}/node-1/gpu-0", f"{GPU}/node-1/gpu-1", f"{GPU}/node-2/gpu-0", f"{GPU}/node-2/gpu-1")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        pytest.param(None, set(), id="no selector: nothing"),
        pytest.param({}, ALL_GPUS | ids(f"{NIC}/node-1/eth-0"), id="empty selector: everything"),
        pytest.param({"driver": GPU}, ALL_GPUS, id="driver"),
        pytest.param({"pool": "node-2"}, ids(f"{GPU}/node-2/gpu-0", f"{GPU}/node-2/gpu-1"), id="pool"),
        pytest.param({"device": "gpu-0"}, ids(f"{GPU}/node-1/gpu-0", f"{GPU}/node-2/gpu-0"), id="device"),
        pytest.param(
            {"driver": GPU, "pool": "node-1", "device": "gpu-1"}, ids(f"{GPU}/node-1/gpu-1"), id="all three"
        ),
        pytest.param({"driver": "other.example.com"}, set(), id="unknown driver"),
        pytest.param(
            {"driver": GPU, "selectors": cel(H100)},
            ids(f"{GPU}/node-1/gpu-0", f"{GPU}/node-2/gpu-1"),
            id="CEL",
        ),
        pytest.param(
            {"driver": GPU, "selectors": cel(H100, 'device.driver == "x"')}, set(), id="every CEL must hold"
        ),
        pytest.param(
            {"pool": "node-1", "selectors": cel("true")},
            ids(f"{GPU}/node-1/gpu-0", f"{GPU}/node-1/gpu-1", f"{NIC}/node-1/eth-0"),
            id="CEL true on every driver",
        ),
    ],
)
def test_rule_matches(selector: Json | None, expected: set[tuple[str, ...]]) -> None:
    cache = SelectorCache()
    found = {
        i for i, device in DEVICES.items() if rule_matches(rule(selector=selector), i, device, cache) is True
    }
    assert found == expected


def test_a_cel_error_does_not_match_and_is_reported_not_raised() -> None:
    # The NIC has no speed attribute: a runtime error there ("no such key"), which means "no match".
    cache = SelectorCache()
    nic = (NIC, "node-1", "eth-0")
    result = rule_matches(
        rule(selector={"selectors": cel(f'device.attributes["{NIC}"].speed > 1')}), nic, DEVICES[nic], cache
    )
    assert isinstance(result, SelectorFailure) and not result.compile_error
    assert result.device == f"{NIC}/node-1/eth-0" and "no such key" in result.message

    found = rule_taints([rule("bad", {"selectors": cel(H100)})], SLICES, cache)
    assert found.matched == {"bad": 2}  # the two H100s; the NIC's failure only reported
    assert [f.device for f in found.failures["bad"]] == [f"{NIC}/node-1/eth-0"]


def test_a_compile_error_is_reported_once_and_matches_nothing() -> None:
    found = rule_taints([rule("broken", {"selectors": cel("device.driver ==")})], SLICES, SelectorCache())
    assert found.matched == {"broken": 0} and found.by_device == {}
    (failure,) = found.failures["broken"]
    assert failure.compile_error


def test_selector_results_are_shared_with_the_snapshot_cache() -> None:
    versioned = [
        s.model_copy(update={"metadata": s.metadata.model_copy(update={"resource_version": "7"})})
        for s in SLICES
    ]
    cache = SelectorCache()
    rule_taints([rule(selector={"selectors": cel(H100)})], versioned, cache)
    evaluated = cache.evaluations
    rule_taints([rule("other", {"selectors": cel(H100)})], versioned, cache)
    # The allocator asks the same question of the same device versions (a class with the rule's selector).
    snapshot = Snapshot.build([device_class(H100)], versioned, cache=cache)
    assert isinstance(allocate_pod(snapshot, POD, [gpu_claim()]), Allocation)
    assert cache.evaluations == evaluated


# ------------------------------------------------------------------------------------------ rule_taints


@pytest.mark.parametrize(
    ("taint_time", "created", "now", "expected"),
    [
        pytest.param("2024-06-01T10:00:00Z", CREATED, None, "2024-06-01T10:00:00Z", id="own timeAdded"),
        pytest.param(None, CREATED, None, CREATED, id="the rule's creation"),
        pytest.param(None, None, T0 + timedelta(seconds=90), "2025-01-01T00:01:30Z", id="now"),
        pytest.param(None, None, None, None, id="nothing known"),
    ],
)
def test_time_added_defaults_to_the_rules_creation(
    taint_time: str | None, created: str | None, now: datetime | None, expected: str | None
) -> None:
    found = rule_taints(
        [rule(selector={"device": "gpu-0", "pool": "node-1"}, time_added=taint_time, created=created)],
        SLICES,
        SelectorCache(),
        now,
    )
    ((taint,),) = found.by_device.values()
    assert taint.time_added == expected


def test_several_rules_on_one_device_in_name_order_with_counts() -> None:
    rules = [
        rule("z-info", {"driver": GPU}, key="example.com/inventory", value=None, effect="None"),
        rule("a-drain", {"driver": GPU, "pool": "node-1"}, key="example.com/drain", effect="NoSchedule"),
        rule("m-none", None),
        rule("b-h100", {"selectors": cel(H100)}),
    ]
    found = rule_taints(rules, SLICES, SelectorCache())
    assert found.matched == {"a-drain": 2, "b-h100": 2, "m-none": 0, "z-info": 4}
    assert [t.key for t in found.taints_of((GPU, "node-1", "gpu-0"))] == [
        "example.com/drain",
        "example.com/maintenance",
        "example.com/inventory",
    ]
    assert [t.render() for t in found.taints_of((GPU, "node-2", "gpu-0"))] == ["example.com/inventory:None"]
    assert found.taints_of((NIC, "node-1", "eth-0")) == ()
    assert found.failures.keys() == {"b-h100"}  # the NIC has no productName


def test_only_the_current_generation_of_a_pool_counts() -> None:
    slices = [
        slice_("node-1", gpu("old-0"), generation=1),
        slice_("node-1", gpu("gpu-0"), generation=2),
    ]
    found = rule_taints([rule(selector={})], slices, SelectorCache())
    assert set(found.by_device) == {(GPU, "node-1", "gpu-0")} and found.matched == {"r": 1}


def test_device_taints_puts_slice_taints_first() -> None:
    own = {"key": "example.com/xid", "value": "79", "effect": "NoSchedule"}
    slices = [slice_("node-1", gpu("gpu-0", taints=[own]), gpu("gpu-1"))]
    found = rule_taints([rule(selector={"device": "gpu-0"})], slices, SelectorCache())
    merged = device_taints(slices, found.by_device)
    assert [t.render() for t in merged[(GPU, "node-1", "gpu-0")]] == [
        "example.com/xid=79:NoSchedule",
        "example.com/maintenance=planned:NoExecute",
    ]
    assert (GPU, "node-1", "gpu-1") not in merged


XID = {"key": "example.com/xid", "value": "79", "effect": "NoExecute"}
HOT = {"key": "example.com/hot", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("slices", "expected"),
    [
        pytest.param([slice_("node-1", gpu("gpu-0"), gpu("gpu-1"))], {}, id="no-taint-anywhere"),
        pytest.param(
            [
                slice_("node-1", gpu("gpu-0", taints=[XID]), generation=1),
                slice_("node-1", gpu("gpu-0"), generation=2),
            ],
            {},
            id="an-older-generation's-taint-is-ignored",
        ),
        pytest.param(
            [
                slice_("node-1", gpu("gpu-0"), generation=1),
                slice_("node-1", gpu("gpu-0", taints=[XID]), generation=2),
            ],
            {(GPU, "node-1", "gpu-0"): ["example.com/xid=79:NoExecute"]},
            id="the-current-generation's-taint-counts",
        ),
        pytest.param(
            [
                slice_("node-1", gpu("gpu-0"), name="a"),
                slice_("node-1", gpu("gpu-0", taints=[XID, HOT]), name="b"),
            ],
            {(GPU, "node-1", "gpu-0"): ["example.com/xid=79:NoExecute", "example.com/hot:NoSchedule"]},
            id="a-duplicate-id-takes-the-first-with-taints",
        ),
        pytest.param(
            [
                slice_("node-1", gpu("gpu-0", taints=[HOT])),
                slice_("node-1", gpu("gpu-0", taints=[XID]), driver=NIC),
            ],
            {
                (GPU, "node-1", "gpu-0"): ["example.com/hot:NoSchedule"],
                (NIC, "node-1", "gpu-0"): ["example.com/xid=79:NoExecute"],
            },
            id="pools-are-per-driver",
        ),
    ],
)
def test_device_taints_reads_the_current_generation_only(
    slices: list[ResourceSlice], expected: dict[tuple[str, str, str], list[str]]
) -> None:
    found = device_taints(slices)
    assert {device: [t.render() for t in taints] for device, taints in found.items()} == expected


def test_no_rules_taint_nothing_and_read_no_device() -> None:
    class Untouchable(list[ResourceSlice]):
        def __iter__(self) -> Any:
            raise AssertionError("the slices were read")

    assert rule_taints([], Untouchable(SLICES), SelectorCache()) == RuleTaints()


# ---------------------------------------------------------------------------------------- allocation


def device_class(*expressions: str) -> DeviceClass:
    return DeviceClass.model_validate({"metadata": {"name": "gpu"}, "spec": {"selectors": cel(*expressions)}})


def gpu_claim(tolerations: list[Json] | None = None) -> ResourceClaim:
    exactly: Json = {"deviceClassName": "gpu", "count": 1}
    if tolerations:
        exactly["tolerations"] = tolerations
    return ResourceClaim.model_validate(
        {
            "metadata": {"name": "c", "namespace": "default"},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}},
        }
    )


def _allocate(extra_taints: Any, tolerations: list[Json] | None = None) -> Allocation | Unallocatable:
    klass = device_class(f'device.driver == "{GPU}"')
    snapshot = Snapshot.build([klass], [slice_("node-1", gpu("gpu-0"))], extra_taints=extra_taints)
    return allocate_pod(snapshot, POD, [gpu_claim(tolerations)])


@pytest.mark.parametrize(
    ("effect", "tolerations", "allocated"),
    [
        pytest.param("NoSchedule", None, False, id="NoSchedule blocks"),
        pytest.param("NoExecute", None, False, id="NoExecute blocks"),
        pytest.param("None", None, True, id="None informs only"),
        pytest.param(
            "NoSchedule",
            [{"key": "example.com/maintenance", "operator": "Exists"}],
            True,
            id="tolerated by key",
        ),
        pytest.param(
            "NoExecute",
            [{"key": "example.com/maintenance", "value": "planned", "effect": "NoExecute"}],
            True,
            id="tolerated by key, value and effect",
        ),
        pytest.param(
            "NoExecute", [{"key": "example.com/maintenance", "value": "other"}], False, id="other value"
        ),
    ],
)
def test_the_snapshot_honours_rule_taints(
    effect: str, tolerations: list[Json] | None, allocated: bool
) -> None:
    found = rule_taints(
        [rule(selector={"driver": GPU}, effect=effect)], [slice_("node-1", gpu("gpu-0"))], SelectorCache()
    )
    outcome = _allocate(found.by_device, tolerations)
    assert isinstance(outcome, Allocation) is allocated
    if isinstance(outcome, Unallocatable):
        # The node's own pool: its devices are named without driver and pool, as for slice taints.
        assert "0 of 1 matching are free; tainted (not tolerated): gpu-0" in outcome.explanation.render()
    else:
        (result,) = outcome.results[("default", "c")].devices.results or []
        assert result.device == "gpu-0"


def test_without_extra_taints_the_device_is_free() -> None:
    assert isinstance(_allocate(None), Allocation)


# ------------------------------------------------------------------------------------------ evictions

DEVICE = (GPU, "node-1", "gpu-0")
ADDED = "2025-01-01T00:00:00Z"
PODS = [{"resource": "pods", "name": "p-0", "uid": "u-0"}]


def claim(
    *tolerations: Json,
    reserved: list[Json] | None = None,
    device: str = "gpu-0",
    name: str = "c",
) -> Json:
    result: Json = {"request": "gpu", "driver": GPU, "pool": "node-1", "device": device}
    if tolerations:
        result["tolerations"] = list(tolerations)
    status: Json = {"allocation": {"devices": {"results": [result]}}}
    if reserved is None:
        reserved = PODS
    if reserved:
        status["reservedFor"] = reserved
    return {"metadata": {"name": name, "namespace": "ns"}, "status": status}


def taint(
    effect: str = "NoExecute", added: str | None = ADDED, key: str = "example.com/maintenance"
) -> DeviceTaint:
    return DeviceTaint.model_validate({"key": key, "value": "planned", "effect": effect, "timeAdded": added})


MAINTENANCE = {"key": "example.com/maintenance", "operator": "Exists", "effect": "NoExecute"}
NOW = T0 + timedelta(seconds=100)


@pytest.mark.parametrize(
    ("claims", "taints", "expected"),
    [
        pytest.param([claim()], [taint()], [(T0, None, True)], id="not tolerated: due since it was added"),
        pytest.param(
            [claim()], [taint(added=None)], [(NOW, None, True)], id="not tolerated, no timeAdded: now"
        ),
        pytest.param([claim(MAINTENANCE)], [taint()], [], id="tolerated forever"),
        pytest.param([claim({"operator": "Exists"})], [taint()], [], id="tolerate everything"),
        pytest.param(
            [claim({**MAINTENANCE, "tolerationSeconds": 60})],
            [taint()],
            [(T0 + timedelta(seconds=60), 60, True)],
            id="tolerationSeconds over",
        ),
        pytest.param(
            [claim({**MAINTENANCE, "tolerationSeconds": 300})],
            [taint()],
            [(T0 + timedelta(seconds=300), 300, False)],
            id="tolerationSeconds not yet over",
        ),
        pytest.param(
            [claim({**MAINTENANCE, "tolerationSeconds": 300}, {**MAINTENANCE, "tolerationSeconds": 30})],
            [taint()],
            [(T0 + timedelta(seconds=30), 30, True)],
            id="the smallest tolerationSeconds",
        ),
        pytest.param(
            [claim({**MAINTENANCE, "tolerationSeconds": 30}, MAINTENANCE)],
            [taint()],
            [],
            id="one forever wins",
        ),
        pytest.param(
            [claim({**MAINTENANCE, "tolerationSeconds": -5})], [taint()], [(T0, 0, True)], id="negative is 0"
        ),
        pytest.param(
            [claim({"key": "example.com/maintenance", "value": "other", "effect": "NoExecute"})],
            [taint()],
            [(T0, None, True)],
            id="toleration for another value",
        ),
        pytest.param([claim()], [taint("NoSchedule")], [], id="NoSchedule never evicts"),
        pytest.param([claim()], [taint("None")], [], id="None never evicts"),
        pytest.param([claim(reserved=[])], [taint()], [], id="no consumer, nobody to evict"),
        pytest.param([claim(device="gpu-1")], [taint()], [], id="another device"),
        pytest.param([{"metadata": {"name": "c"}, "status": {}}], [taint()], [], id="not allocated"),
    ],
)
def test_evictions(
    claims: list[Json], taints: list[DeviceTaint], expected: list[tuple[datetime, int | None, bool]]
) -> None:
    found = evictions(claims, {DEVICE: taints}, NOW)
    assert [(e.due, e.tolerated_for, e.is_due(NOW)) for e in found] == expected


def test_an_eviction_names_claim_consumers_device_and_taint() -> None:
    consumers = [
        {"resource": "pods", "name": "p-0", "uid": "u-0"},
        {"resource": "pods", "name": "p-1", "uid": "u-1"},
        {"apiGroup": "example.com", "resource": "pods", "name": "x", "uid": "u-x"},  # not a core Pod
    ]
    (eviction,) = evictions([claim(reserved=consumers)], {DEVICE: [taint()]}, NOW)
    assert eviction.claim == ("ns", "c") and eviction.device == DEVICE
    assert eviction.consumers == (Consumer("p-0", "u-0"), Consumer("p-1", "u-1"))
    assert eviction.taint.key == "example.com/maintenance"
    assert eviction.message == (
        "device gpu.nvidia.com/node-1/gpu-0 has taint example.com/maintenance=planned:NoExecute, "
        "which claim ns/c does not tolerate"
    )
    (later,) = evictions([claim({**MAINTENANCE, "tolerationSeconds": 300})], {DEVICE: [taint()]}, NOW)
    assert later.message.endswith(f"which claim ns/c tolerates for only 300s (taint added {ADDED})")


def test_next_due_and_due_now() -> None:
    claims = [
        claim(name="now"),
        claim({**MAINTENANCE, "tolerationSeconds": 300}, name="later"),
        claim({**MAINTENANCE, "tolerationSeconds": 200}, name="sooner"),
    ]
    found = evictions(claims, {DEVICE: [taint()]}, NOW)
    assert [e.claim[1] for e in due_now(found, NOW)] == ["now"]
    assert next_due(found, NOW) == T0 + timedelta(seconds=200)
    assert next_due(found, T0 + timedelta(seconds=300)) is None
    assert next_due([], NOW) is None


def test_several_taints_on_one_device_each_evict() -> None:
    taints = [taint(), taint(key="example.com/broken"), taint("NoSchedule", key="example.com/drain")]
    found = evictions([claim(MAINTENANCE)], {DEVICE: taints}, NOW)
    assert [e.taint.key for e in found] == ["example.com/broken"]


def test_times() -> None:
    assert parse_time("2025-01-01T00:00:00Z") == T0
    assert parse_time("2025-01-01T01:00:00+01:00") == T0
    assert parse_time("yesterday") is None and parse_time(None) is None
    assert format_time(T0 + timedelta(microseconds=5)) == "2025-01-01T00:00:00Z"
    assert format_time(datetime(2025, 1, 1)) == "2025-01-01T00:00:00Z"  # naive counts as UTC


def test_an_eviction_is_a_value() -> None:
    (a,) = evictions([claim()], {DEVICE: [taint()]}, NOW)
    (b,) = evictions([claim()], {DEVICE: [taint()]}, NOW)
    assert a == b and isinstance(a, Eviction)
