"""Device health: NVML health events make devices withdrawn or tainted (sticky until the agent restarts).

Policy, following the NVIDIA DRA GPU driver's conventions:
- An Xid reported through NVML's critical-Xid event marks the device it names. Xids that NVIDIA documents as
  application errors (13, 31, 43, 45, 68, 109: the GPU itself is fine) are logged and otherwise ignored.
- "GPU is lost" while waiting for events marks every device.
- With policy `withdraw` (default) a marked device disappears from the ResourceSlice: no new claim gets it.
  With policy `taint` it stays, carrying the taint `<driver>/xid=<xid>` or `<driver>/gpu-lost` with effect
  NoSchedule, which allocators that honour device taints (Kubernetes 1.33+ with DRADeviceTaints) skip. With
  policy `evict` the taint's effect is NoExecute: the operator also evicts the running Pods that hold the
  device and do not tolerate it, exactly as for a DeviceTaintRule (one mechanism: device taints).
- Marks are never cleared while the agent runs: recovering from a critical Xid needs a GPU reset, after which
  the agent (restarted with the node's driver stack) reads a clean inventory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from dra_operator.agent.inventory import DeviceInfo, Inventory, Taint, TaintEffect

# NVML reports GPU-instance / compute-instance id 0xFFFFFFFF for events that concern the whole GPU.
WHOLE_GPU = 0xFFFFFFFF
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})

Policy = Literal["withdraw", "taint", "evict"]


@dataclass(frozen=True)
class HealthEvent:
    """One health observation. `uuid` is the physical GPU's UUID (None with kind gpu-lost: all devices)."""

    kind: Literal["xid", "gpu-lost"]
    uuid: str | None = None
    gpu_instance: int = WHOLE_GPU
    compute_instance: int = WHOLE_GPU
    xid: int = 0


class DeviceHealth:
    """The set of devices marked unhealthy, and how they are shown in the published inventory."""

    def __init__(self, driver: str, policy: Policy = "withdraw") -> None:
        self.driver = driver
        self.policy: Policy = policy
        self._marks: dict[str, Taint] = {}

    @property
    def marked(self) -> dict[str, Taint]:
        return dict(self._marks)

    def record(self, event: HealthEvent, inventory: Inventory) -> list[str]:
        """Mark the devices `event` concerns; returns the names newly marked (empty: nothing changed)."""
        if event.kind == "xid" and event.xid in APPLICATION_XIDS:
            return []
        if event.kind == "gpu-lost":
            taint = Taint(key=f"{self.driver}/gpu-lost", effect="NoSchedule")
            targets = [d.name for d in inventory.devices]
        else:
            taint = Taint(key=f"{self.driver}/xid", value=str(event.xid), effect="NoSchedule")
            targets = affected_devices(event, inventory.devices)
        newly = [name for name in targets if name not in self._marks]
        for name in newly:
            self._marks[name] = taint
        return newly

    def apply(self, inventory: Inventory) -> Inventory:
        """The inventory as it should be published: marked devices withdrawn, or tainted."""
        if not self._marks:
            return inventory
        if self.policy == "withdraw":
            kept = tuple(d for d in inventory.devices if d.name not in self._marks)
        else:
            effect: TaintEffect = "NoExecute" if self.policy == "evict" else "NoSchedule"
            kept = tuple(
                dataclasses.replace(
                    d, taints=(*d.taints, dataclasses.replace(self._marks[d.name], effect=effect))
                )
                if d.name in self._marks
                else d
                for d in inventory.devices
            )
        return dataclasses.replace(inventory, devices=kept)


def affected_devices(event: HealthEvent, devices: tuple[DeviceInfo, ...]) -> list[str]:
    """Devices an Xid event names: the exact (GPU, GPU instance, compute instance), else all of that GPU's.

    An event on a whole GPU (instance ids 0xFFFFFFFF) that has MIG devices concerns all of them.
    """
    exact = [d.name for d in devices if d.locator == (event.uuid, event.gpu_instance, event.compute_instance)]
    if exact:
        return exact
    if event.gpu_instance == WHOLE_GPU:
        return [d.name for d in devices if d.locator is not None and d.locator[0] == event.uuid]
    return []
