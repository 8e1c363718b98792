"""The device-taint loop: when a NoExecute taint evicts, what it writes, and the rules' status."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

from dra_operator.operator import taintrules
from dra_operator.operator.allocating import Allocator
from dra_operator.operator.state import CLAIMS, INDEXES, PODS, SLICES, TAINT_RULES, State, key_of
from dra_operator.operator.taintrules import DISRUPTION_REASON, EVICTION_REASON, TaintRules

Json = dict[str, Any]
T0 = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
GROUP = "/apis/resource.dra-operator.io/v1"


class FakeKube:
    answer: Json = {}  # what every request answers

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> Json:
        self.calls.append((method, path, body))
        return dict(self.answer)

    async def delete(self, path: str, preconditions: Json | None = None) -> Json:
        self.calls.append(("DELETE", path, preconditions))
        return {}

    async def merge_patch(self, path: str, body: Json) -> Json:
        self.calls.append(("PATCH", path, body))
        return {}


class FakeRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def warning(self, obj: Json, reason: str, message: str) -> None:
        self.events.append((obj["metadata"]["name"], reason, message))


def slice_with(taints: list[Json] | None = None) -> Json:
    device: Json = {"name": "gpu-0"} | ({"taints": taints} if taints else {})
    return {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": "n1-slice", "uid": "s1", "resourceVersion": "1"},
        "spec": {
            "driver": "d.example.com",
            "nodeName": "n1",
            "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 1},
            "devices": [device, {"name": "gpu-1"}],
        },
    }


def rule(effect: str = "NoExecute", device: str = "gpu-0") -> Json:
    return {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "DeviceTaintRule",
        "metadata": {
            "name": "maintenance",
            "uid": "r1",
            "resourceVersion": "1",
            "creationTimestamp": "2026-12-01T12:00:00Z",
        },
        "spec": {
            "deviceSelector": {"driver": "d.example.com", "device": device},
            "taint": {"key": "example.com/maintenance", "effect": effect},
        },
    }


def claim(tolerations: list[Json] | None = None) -> Json:
    result: Json = {"request": "gpu", "driver": "d.example.com", "pool": "n1", "device": "gpu-0"}
    if tolerations:
        result["tolerations"] = tolerations
    return {
        "metadata": {"name": "c", "namespace": "ns", "uid": "c1", "resourceVersion": "1"},
        "status": {
            "allocation": {"devices": {"results": [result]}},
            "reservedFor": [{"resource": "pods", "name": "p", "uid": "p1"}],
        },
    }


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "uid": "p1"}}


def loop(
    *, slices: list[Json], rules: list[Json], claims: list[Json]
) -> tuple[TaintRules, FakeKube, FakeRecorder]:
    state = State()
    objects = {SLICES: slices, TAINT_RULES: rules, CLAIMS: claims, PODS: [POD]}
    state.bind({name: {key_of(o): [o] for o in objects.get(name, [])} for name in INDEXES})
    kube, recorder = FakeKube(), FakeRecorder()
    watcher = TaintRules(kube, state, recorder, Allocator(), lambda: True)  # type: ignore[arg-type]
    return watcher, kube, recorder


def deleted(kube: FakeKube) -> list[str]:
    return [path for method, path, _ in kube.calls if method == "DELETE"]


def count_gatherings(watcher: TaintRules) -> list[int]:
    """A list that grows by one each time the loop gathers what the rules taint."""
    gathered: list[int] = []
    rule_taints = watcher.allocator.rule_taints

    def counted(*args: Any, **kwargs: Any) -> Any:
        gathered.append(1)
        return rule_taints(*args, **kwargs)

    watcher.allocator.rule_taints = counted  # type: ignore[method-assign]
    return gathered


def test_an_untolerated_noexecute_rule_evicts_with_event_condition_and_delete() -> None:
    watcher, kube, recorder = loop(slices=[slice_with()], rules=[rule()], claims=[claim()])
    assert asyncio.run(watcher.check(T0)) == 1
    (event,) = [e for e in recorder.events if e[1] == EVICTION_REASON]
    assert event[2] == (
        "evicted: device d.example.com/n1/gpu-0 has taint example.com/maintenance:NoExecute, which claim "
        "ns/c does not tolerate (DeviceTaintRule maintenance)"
    )
    condition = next(body for method, path, body in kube.calls if path.endswith("/pods/p/status"))
    assert condition["status"]["conditions"][0]["reason"] == DISRUPTION_REASON
    assert deleted(kube) == ["/api/v1/namespaces/ns/pods/p"]
    status = next(body for method, path, body in kube.calls if "devicetaintrules" in path)["status"]
    assert status["matchedDevices"] == 1
    assert asyncio.run(watcher.check(T0)) == 0, "evicted once"


@pytest.mark.parametrize(
    ("tolerations", "effect", "evicts"),
    [
        ([{"key": "example.com/maintenance", "operator": "Exists"}], "NoExecute", False),
        ([{"key": "other", "operator": "Exists"}], "NoExecute", True),
        ([], "NoSchedule", False),
        ([], "None", False),
    ],
)
def test_what_evicts(tolerations: list[Json], effect: str, evicts: bool) -> None:
    watcher, kube, _ = loop(slices=[slice_with()], rules=[rule(effect)], claims=[claim(tolerations)])
    assert asyncio.run(watcher.check(T0)) == int(evicts)
    assert bool(deleted(kube)) == evicts


def test_toleration_seconds_count_from_the_rules_creation() -> None:
    grace = [
        {
            "key": "example.com/maintenance",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 60,
        }
    ]
    watcher, kube, _ = loop(slices=[slice_with()], rules=[rule()], claims=[claim(grace)])
    assert asyncio.run(watcher.check(T0 + datetime.timedelta(seconds=59))) == 0
    status = next(body for method, path, body in kube.calls if "devicetaintrules" in path)["status"]
    (condition,) = status["conditions"]
    assert (condition["type"], condition["status"]) == ("EvictionInProgress", "True")
    assert asyncio.run(watcher.check(T0 + datetime.timedelta(seconds=60))) == 1


def test_a_slice_taint_without_time_counts_from_when_it_was_first_seen() -> None:
    """The node agent's NoExecute health taint has no timeAdded: a toleration's seconds run from the moment
    this replica first saw it, and the event says where the taint comes from."""
    taint = [{"key": "d.example.com/xid", "value": "79", "effect": "NoExecute"}]
    grace = [
        {"key": "d.example.com/xid", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}
    ]
    watcher, _, recorder = loop(slices=[slice_with(taint)], rules=[], claims=[claim(grace)])
    later = T0 + datetime.timedelta(hours=5)
    assert asyncio.run(watcher.check(later)) == 0
    assert asyncio.run(watcher.check(later + datetime.timedelta(seconds=29))) == 0
    assert asyncio.run(watcher.check(later + datetime.timedelta(seconds=30))) == 1
    (event,) = [e for e in recorder.events if e[1] == EVICTION_REASON]
    assert "d.example.com/xid=79:NoExecute" in event[2] and event[2].endswith(
        "(set in the device's ResourceSlice)"
    )


def test_a_pass_is_skipped_until_slices_rules_or_claims_change_after_one_that_found_nothing() -> None:
    watcher, kube, _ = loop(slices=[slice_with()], rules=[], claims=[claim()])
    passes = count_gatherings(watcher)
    asyncio.run(watcher.check(T0))
    asyncio.run(watcher.check(T0 + datetime.timedelta(seconds=2)))
    assert len(passes) == 1, "nothing changed and nothing was pending: the second pass is skipped"
    assert watcher.state.indexes is not None
    watcher.state.indexes[TAINT_RULES][("", "maintenance")] = [rule()]
    watcher.state.touch(TAINT_RULES, ("", "maintenance"))  # as the rules' watch handler does
    assert asyncio.run(watcher.check(T0 + datetime.timedelta(seconds=4))) == 1
    assert len(passes) == 2 and deleted(kube) == ["/api/v1/namespaces/ns/pods/p"]


def test_the_devices_taints_are_gathered_again_only_after_a_slice_or_rule_changed() -> None:
    """In a burst of allocations only claims change: the pass that follows each reads the taints it gathered
    before; a new slice spec (here: a taint the node agent set) is read at the next pass."""
    watcher, kube, _ = loop(slices=[slice_with()], rules=[], claims=[claim()])
    gathered = count_gatherings(watcher)
    assert watcher.state.indexes is not None
    asyncio.run(watcher.check(T0))
    for n in range(3):  # claims come and go: every pass runs (the claims changed), none gathers again
        other = claim() | {
            "metadata": {"name": f"c{n}", "namespace": "ns", "uid": f"u{n}", "resourceVersion": "1"}
        }
        watcher.state.indexes[CLAIMS][("ns", f"c{n}")] = [other]
        watcher.state.touch(CLAIMS, ("ns", f"c{n}"))
        assert asyncio.run(watcher.check(T0 + datetime.timedelta(seconds=2 * n + 2))) == 0
    assert len(gathered) == 1 and not deleted(kube)
    tainted = slice_with([{"key": "d.example.com/xid", "value": "79", "effect": "NoExecute"}])
    tainted["metadata"]["resourceVersion"] = "2"
    tainted["spec"]["pool"]["generation"] = 2
    watcher.state.indexes[SLICES][("", "n1-slice")] = [tainted]
    watcher.state.touch(SLICES, ("", "n1-slice"))  # as the slices' watch handler does for a new spec
    assert (
        asyncio.run(watcher.check(T0 + datetime.timedelta(seconds=10))) == 1
    )  # Pod p, whose claims hold gpu-0
    assert len(gathered) == 2


@pytest.mark.parametrize(("effect", "read"), [("NoSchedule", False), ("NoExecute", True)])
def test_claims_are_read_only_while_a_device_has_a_noexecute_taint(
    monkeypatch: pytest.MonkeyPatch, effect: str, read: bool
) -> None:
    """Only NoExecute taints evict: with none, a pass reads no claim (in a burst, every pass ran over all)."""
    tainted = slice_with([{"key": "example.com/maintenance", "effect": effect}])
    watcher, _, _ = loop(slices=[tainted], rules=[], claims=[claim()])
    looked: list[int] = []
    monkeypatch.setattr(taintrules, "evictions", lambda *args: looked.append(1) or [])
    asyncio.run(watcher.check(T0))
    assert bool(looked) is read
