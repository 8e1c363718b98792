"""Device health marks: which devices an Xid names, withdraw vs taint, application Xids ignored, sticky."""

from __future__ import annotations

import pytest

from dra_operator.agent.health import APPLICATION_XIDS, WHOLE_GPU, DeviceHealth, HealthEvent, Policy
from dra_operator.agent.inventory import DeviceInfo, Inventory

DRIVER = "gpu.nvidia.com"


def inventory() -> Inventory:
    return Inventory(
        driver=DRIVER,
        devices=(
            DeviceInfo(name="gpu-0", attributes={"type": "gpu"}, locator=("GPU-0", WHOLE_GPU, WHOLE_GPU)),
            DeviceInfo(name="gpu-1-mig-a", attributes={"type": "mig"}, locator=("GPU-1", 1, 0)),
            DeviceInfo(name="gpu-1-mig-b", attributes={"type": "mig"}, locator=("GPU-1", 2, 0)),
        ),
    )


@pytest.mark.parametrize(
    ("event", "marked"),
    [
        (HealthEvent(kind="xid", uuid="GPU-0", xid=79), ["gpu-0"]),
        (HealthEvent(kind="xid", uuid="GPU-1", gpu_instance=2, compute_instance=0, xid=48), ["gpu-1-mig-b"]),
        (HealthEvent(kind="xid", uuid="GPU-1", xid=79), ["gpu-1-mig-a", "gpu-1-mig-b"]),  # whole GPU
        (HealthEvent(kind="xid", uuid="GPU-1", gpu_instance=5, compute_instance=0, xid=48), []),  # unknown GI
        (HealthEvent(kind="xid", uuid="GPU-9", xid=79), []),  # not ours
        (HealthEvent(kind="gpu-lost"), ["gpu-0", "gpu-1-mig-a", "gpu-1-mig-b"]),
        *[(HealthEvent(kind="xid", uuid="GPU-0", xid=x), []) for x in sorted(APPLICATION_XIDS)],
    ],
)
def test_events_mark_the_devices_they_name(event: HealthEvent, marked: list[str]) -> None:
    health = DeviceHealth(DRIVER)
    assert health.record(event, inventory()) == marked
    assert sorted(health.marked) == marked


def test_withdraw_removes_marked_devices() -> None:
    health = DeviceHealth(DRIVER, "withdraw")
    health.record(HealthEvent(kind="xid", uuid="GPU-0", xid=79), inventory())
    assert [d.name for d in health.apply(inventory()).devices] == ["gpu-1-mig-a", "gpu-1-mig-b"]


@pytest.mark.parametrize(("policy", "effect"), [("taint", "NoSchedule"), ("evict", "NoExecute")])
def test_taint_keeps_marked_devices_with_the_policys_taint(policy: Policy, effect: str) -> None:
    health = DeviceHealth(DRIVER, policy)
    health.record(HealthEvent(kind="xid", uuid="GPU-0", xid=79), inventory())
    shown = health.apply(inventory()).by_name()
    assert len(shown) == 3
    (taint,) = shown["gpu-0"].taints
    assert (taint.key, taint.value, taint.effect) == (f"{DRIVER}/xid", "79", effect)
    assert shown["gpu-1-mig-a"].taints == ()


def test_gpu_lost_taint_has_its_own_key() -> None:
    health = DeviceHealth(DRIVER, "taint")
    health.record(HealthEvent(kind="gpu-lost"), inventory())
    assert {t.key for d in health.apply(inventory()).devices for t in d.taints} == {f"{DRIVER}/gpu-lost"}


def test_marks_are_sticky_and_reported_once() -> None:
    health = DeviceHealth(DRIVER)
    event = HealthEvent(kind="xid", uuid="GPU-0", xid=79)
    assert health.record(event, inventory()) == ["gpu-0"]
    assert health.record(event, inventory()) == []
    # A re-read inventory (same device again) still has the device withdrawn.
    assert "gpu-0" not in health.apply(inventory()).by_name()


def test_no_marks_leave_the_inventory_untouched() -> None:
    original = inventory()
    assert DeviceHealth(DRIVER).apply(original) is original
