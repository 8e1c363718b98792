"""The node agent's publisher on the real control plane: create, update on change, no write when unchanged,
withdraw, restart without duplicates, external edits repaired, and the slice gone with its Node (GC)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers import get_or_none
from kubernetes_asyncio import client, config

from dra_operator.agent.health import DeviceHealth, HealthEvent
from dra_operator.agent.inventory import DeviceInfo, Inventory
from dra_operator.agent.main import Agent
from dra_operator.agent.publisher import PLURAL, SlicePublisher
from dra_operator.agent.simulated import SimulatedBackend
from dra_operator.agent.slices import MANAGED_BY, MANAGED_BY_LABEL, NODE_LABEL, node_selector, slice_name
from dra_operator.api.resource import GROUP, VERSION, ResourceSlice
from dra_operator.controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
SLICE_CRD = REPO / "crds" / "resource.dra-operator.io_resourceslices.yaml"
DRIVER = "driver.example.com"
T = TypeVar("T")


@pytest.fixture
def slice_crd(control_plane: ControlPlane, wait_for: Callable[..., Any]) -> None:
    """Install our ResourceSlice CRD (idempotent) and wait until it is Established."""
    apply = ("apply", "--server-side", "--force-conflicts", "-f", str(SLICE_CRD))
    # Right after start-up the apiserver may refuse a CRD write for a moment; what counts is that it lands.
    wait_for(
        lambda: control_plane.kubectl(*apply, check=False).returncode == 0, timeout=60, message="CRD applied"
    )
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s")


@pytest.fixture
def node(
    make_node: Callable[..., dict[str, Any]], request: pytest.FixtureRequest, slice_crd: None
) -> Iterator[dict[str, Any]]:
    name = "agent-" + request.node.name.removeprefix("test_").replace("_", "-")[:40].strip("-")
    yield make_node(name)


def gpus(count: int, memory: str = "64Gi", driver: str = DRIVER) -> Inventory:
    return Inventory(
        driver=driver,
        devices=tuple(
            DeviceInfo(
                name=f"gpu-{i}",
                attributes={"type": "gpu"},
                capacity={"memory": memory},
                locator=(f"GPU-{i}", -1, -1),
            )
            for i in range(count)
        ),
    )


def run(kubeconfig: str, scenario: Callable[[client.ApiClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with await config.new_client_from_config(config_file=kubeconfig) as api:
            return await scenario(api)

    return asyncio.run(main())


async def eventually(check: Callable[[], Awaitable[T | None]], within: float, message: str) -> T:
    """Poll `check` until it returns a truthy value; fail the test after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s: {message}", pytrace=False)
        await asyncio.sleep(0.1)


def get_slice(plane: ControlPlane, name: str) -> dict[str, Any] | None:
    return get_or_none(plane, f"/apis/{GROUP}/{VERSION}/{PLURAL}/{name}")


def our_slices(plane: ControlPlane, node_name: str) -> list[dict[str, Any]]:
    listed = plane.request(
        "GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}?labelSelector={node_selector(node_name)}"
    )
    return list(listed["items"])


def device_names(obj: dict[str, Any]) -> list[str]:
    return [d["name"] for d in obj["spec"].get("devices", [])]


def test_create_update_noop_withdraw(
    control_plane: ControlPlane, kubeconfig: str, node: dict[str, Any]
) -> None:
    node_name = node["metadata"]["name"]
    name = slice_name(node_name, DRIVER)

    async def scenario(api: client.ApiClient) -> None:
        publisher = SlicePublisher(api, node_name)

        # Create: one slice, pool = node, generation 1, owned by the Node.
        await publisher.sync([gpus(2)])
        created = get_slice(control_plane, name)
        assert created is not None
        ResourceSlice.model_validate(created)
        assert created["spec"]["pool"] == {"name": node_name, "generation": 1, "resourceSliceCount": 1}
        assert created["spec"]["nodeName"] == node_name
        assert device_names(created) == ["gpu-0", "gpu-1"]
        (owner,) = created["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("Node", node_name, node["metadata"]["uid"])
        assert dict(publisher.writes) == {"create": 1}

        # Unchanged: no write at all, the stored object is untouched.
        assert await publisher.sync([gpus(2)]) == []
        unchanged = get_slice(control_plane, name)
        assert unchanged is not None
        assert unchanged["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
        assert dict(publisher.writes) == {"create": 1}

        # Changed: updated in place, generation bumped.
        await publisher.sync([gpus(3)])
        grown = get_slice(control_plane, name)
        assert grown is not None
        assert grown["spec"]["pool"]["generation"] == 2
        assert device_names(grown) == ["gpu-0", "gpu-1", "gpu-2"]
        assert grown["metadata"]["uid"] == created["metadata"]["uid"]

        # Withdraw a device (as after a critical Xid): it disappears, generation bumped again.
        health = DeviceHealth(DRIVER, "withdraw")
        health.record(HealthEvent(kind="xid", uuid="GPU-1", xid=79), gpus(3))
        await publisher.sync([health.apply(gpus(3))])
        withdrawn = get_slice(control_plane, name)
        assert withdrawn is not None
        assert device_names(withdrawn) == ["gpu-0", "gpu-2"]
        assert withdrawn["spec"]["pool"]["generation"] == 3

        # Taint instead: the device stays, with the taint the API server accepted.
        health.policy = "taint"
        await publisher.sync([health.apply(gpus(3))])
        tainted = get_slice(control_plane, name)
        assert tainted is not None
        (gpu1,) = [d for d in tainted["spec"]["devices"] if d["name"] == "gpu-1"]
        assert gpu1["taints"][0]["key"] == f"{DRIVER}/xid"
        assert tainted["spec"]["pool"]["generation"] == 4

        # No devices left: the slice goes.
        await publisher.sync([gpus(0)])
        assert get_slice(control_plane, name) is None
        assert publisher.writes == {"create": 1, "replace": 3, "delete": 1}

    run(kubeconfig, scenario)


def test_restart_finds_its_slice_and_removes_duplicates(
    control_plane: ControlPlane, kubeconfig: str, node: dict[str, Any]
) -> None:
    node_name = node["metadata"]["name"]

    async def first(api: client.ApiClient) -> None:
        await SlicePublisher(api, node_name).sync([gpus(2)])

    run(kubeconfig, first)
    original = our_slices(control_plane, node_name)
    assert len(original) == 1
    # A stray copy with our labels under another name (e.g. left by an older agent build).
    stray = {k: v for k, v in original[0].items() if k != "status"}
    stray["metadata"] = {"name": f"stray-{node_name}", "labels": original[0]["metadata"]["labels"]}
    control_plane.request("POST", f"/apis/{GROUP}/{VERSION}/{PLURAL}", stray)
    assert len(our_slices(control_plane, node_name)) == 2

    async def restarted(api: client.ApiClient) -> dict[str, int]:
        publisher = SlicePublisher(api, node_name)
        await publisher.sync([gpus(2)])
        await publisher.sync([gpus(2)])
        return dict(publisher.writes)

    assert run(kubeconfig, restarted) == {"delete": 1}
    (kept,) = our_slices(control_plane, node_name)
    assert kept["metadata"]["uid"] == original[0]["metadata"]["uid"]
    assert kept["metadata"]["resourceVersion"] == original[0]["metadata"]["resourceVersion"]


def test_external_edit_is_repaired_with_a_new_generation(
    control_plane: ControlPlane, kubeconfig: str, node: dict[str, Any]
) -> None:
    node_name = node["metadata"]["name"]
    name = slice_name(node_name, DRIVER)

    async def publish(api: client.ApiClient) -> dict[str, int]:
        publisher = SlicePublisher(api, node_name)
        await publisher.sync([gpus(2)])
        return dict(publisher.writes)

    run(kubeconfig, publish)
    edited = get_slice(control_plane, name)
    assert edited is not None
    edited["spec"]["devices"] = edited["spec"]["devices"][:1]
    control_plane.request("PUT", f"/apis/{GROUP}/{VERSION}/{PLURAL}/{name}", edited)

    assert run(kubeconfig, publish) == {"replace": 1}
    repaired = get_slice(control_plane, name)
    assert repaired is not None
    assert device_names(repaired) == ["gpu-0", "gpu-1"]
    assert repaired["spec"]["pool"]["generation"] == 2


def test_missing_node_publishes_nothing(
    control_plane: ControlPlane, kubeconfig: str, slice_crd: None
) -> None:
    async def publish(api: client.ApiClient) -> list[Any]:
        return await SlicePublisher(api, "agent-no-such-node").sync([gpus(1)])

    assert run(kubeconfig, publish) == []
    assert our_slices(control_plane, "agent-no-such-node") == []


def test_slice_goes_with_its_node(
    control_plane: ControlPlane, kubeconfig: str, node: dict[str, Any], wait_for: Callable[..., Any]
) -> None:
    node_name = node["metadata"]["name"]

    async def publish(api: client.ApiClient) -> None:
        await SlicePublisher(api, node_name).sync([gpus(1)])

    run(kubeconfig, publish)
    assert len(our_slices(control_plane, node_name)) == 1
    control_plane.request("DELETE", f"/api/v1/nodes/{node_name}")
    # The garbage collector in kube-controller-manager deletes dependents whose owner is gone; it discovers a
    # newly installed CRD's resource within its periodic discovery resync (30 s), hence the generous timeout.
    wait_for(
        lambda: not our_slices(control_plane, node_name), timeout=120, message="slice deleted with its Node"
    )


def test_agent_loop_follows_the_inventory_file(
    control_plane: ControlPlane, kubeconfig: str, node: dict[str, Any], tmp_path: Path
) -> None:
    node_name = node["metadata"]["name"]
    name = slice_name(node_name, DRIVER)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(f"driver: {DRIVER}\nnodes: [{node_name}]\ngpus: {{count: 2, memory: 64Gi}}\n")

    async def scenario(api: client.ApiClient) -> None:
        backend = SimulatedBackend(inventory, node_name, "gpu.nvidia.com")
        agent = Agent(backend, node_name, SlicePublisher(api, node_name), driver=DRIVER, policy="withdraw",
                      interval=0.2)  # fmt: skip
        task = asyncio.create_task(agent.run())
        try:

            async def devices(count: int) -> dict[str, Any] | None:
                found = get_slice(control_plane, name)
                return found if found is not None and len(device_names(found)) == count else None

            first = await eventually(lambda: devices(2), 30, "slice with 2 devices")
            assert first["spec"]["pool"]["generation"] == 1
            inventory.write_text(inventory.read_text().replace("count: 2", "count: 4"))
            grown = await eventually(lambda: devices(4), 30, "slice with 4 devices")
            assert grown["spec"]["pool"]["generation"] == 2
            # A broken file keeps the last good inventory published.
            inventory.write_text("gpus: {count: lots}")
            writes = dict(agent.publisher.writes)
            start = agent.passes

            async def three_more_passes() -> bool:
                return agent.passes >= start + 3

            await eventually(three_more_passes, 30, "three more passes")
            assert dict(agent.publisher.writes) == writes
        finally:
            agent.stopping.set()
            await asyncio.wait_for(task, timeout=10)

    run(kubeconfig, scenario)


def test_labels_mark_our_slices(control_plane: ControlPlane, kubeconfig: str, node: dict[str, Any]) -> None:
    node_name = node["metadata"]["name"]

    async def publish(api: client.ApiClient) -> None:
        await SlicePublisher(api, node_name).sync(
            [gpus(1), dataclasses.replace(gpus(1), driver="other.example.com")]
        )

    run(kubeconfig, publish)
    found = our_slices(control_plane, node_name)
    assert sorted(s["spec"]["driver"] for s in found) == [DRIVER, "other.example.com"]
    for obj in found:
        assert obj["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY
        assert obj["metadata"]["labels"][NODE_LABEL] == node_name


class _FixedBackend:
    """A backend that always reads the same inventory (as NVML does between events)."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def read_pools(self) -> list[Inventory]:
        return [self.inventory]


def test_xid_event_withdraws_the_device_without_waiting_for_the_interval(
    control_plane: ControlPlane, kubeconfig: str, node: dict[str, Any]
) -> None:
    node_name = node["metadata"]["name"]
    name = slice_name(node_name, DRIVER)

    async def scenario(api: client.ApiClient) -> None:
        agent = Agent(_FixedBackend(gpus(3)), node_name, SlicePublisher(api, node_name), driver=DRIVER,
                      policy="withdraw", interval=3600)  # fmt: skip
        task = asyncio.create_task(agent.run())
        try:

            async def devices(names: list[str]) -> dict[str, Any] | None:
                found = get_slice(control_plane, name)
                return found if found is not None and device_names(found) == names else None

            await eventually(lambda: devices(["gpu-0", "gpu-1", "gpu-2"]), 30, "first publication")
            # The NVML watcher thread hands events over like this; the interval (1 h) is not waited for.
            loop = asyncio.get_running_loop()
            event = HealthEvent(kind="xid", uuid="GPU-2", xid=79)
            await asyncio.to_thread(loop.call_soon_threadsafe, agent.on_health_event, event)
            withdrawn = await eventually(
                lambda: devices(["gpu-0", "gpu-1"]), 30, "gpu-2 withdrawn after Xid 79"
            )
            assert withdrawn["spec"]["pool"]["generation"] == 2
        finally:
            agent.stopping.set()
            await asyncio.wait_for(task, timeout=10)

    run(kubeconfig, scenario)


class _CountingCalls:
    """Forwards to `target`, counting each call by method name (a watch request counted apart)."""

    def __init__(self, target: Any) -> None:
        self.target, self.calls = target, collections.Counter[str]()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.target, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls["watch" if kwargs.get("watch") else name] += 1
            return method(*args, **kwargs)

        return counted


def test_a_watching_agent_asks_nothing_at_rest_and_repairs_hand_edits_at_once(
    control_plane: ControlPlane, kubeconfig: str, node: dict[str, Any]
) -> None:
    """As `dra-operator agent` runs it: the publisher plans against its SliceView. Passes with nothing to
    change make no request; a slice deleted or edited by hand comes back without the interval (1 h)."""
    node_name = node["metadata"]["name"]
    name = slice_name(node_name, DRIVER)

    async def scenario(api: client.ApiClient) -> None:
        publisher = SlicePublisher(api, node_name)
        custom, core = _CountingCalls(publisher._custom), _CountingCalls(publisher._core)
        publisher._custom, publisher._core = custom, core  # type: ignore[assignment]
        agent = Agent(_FixedBackend(gpus(2)), node_name, publisher, driver=DRIVER, policy="withdraw",
                      interval=3600)  # fmt: skip
        view = publisher.watch(agent.wake.set)
        view_task, agent_task = asyncio.create_task(view.run()), asyncio.create_task(agent.run())
        try:

            async def published() -> dict[str, Any] | None:
                found = get_slice(control_plane, name)
                return found if found is not None and device_names(found) == ["gpu-0", "gpu-1"] else None

            first = await eventually(published, 30, "first publication")

            def viewed() -> list[str]:
                return [i["metadata"]["name"] for i in view.items() or []]

            await eventually(lambda: _true(name in viewed()), 30, "the view holds the slice")
            custom.calls.clear()
            core.calls.clear()
            for _ in range(10):  # ten passes with nothing to change
                done = agent.passes
                agent.wake.set()
                await eventually(lambda done=done: _true(agent.passes > done), 10, "a pass")
            assert (dict(custom.calls), dict(core.calls)) == ({}, {})

            control_plane.request("DELETE", f"/apis/{GROUP}/{VERSION}/{PLURAL}/{name}")
            recreated = await eventually(published, 30, "the deleted slice back without the interval")
            assert recreated["metadata"]["uid"] != first["metadata"]["uid"]

            edited = dict(recreated)
            edited["spec"] = {**recreated["spec"], "devices": recreated["spec"]["devices"][:1]}
            control_plane.request("PUT", f"/apis/{GROUP}/{VERSION}/{PLURAL}/{name}", edited)
            repaired = await eventually(published, 30, "the edit repaired without the interval")
            assert repaired["metadata"]["uid"] == recreated["metadata"]["uid"]
            assert custom.calls["create_cluster_custom_object"] == 1
            assert custom.calls["replace_cluster_custom_object"] == 1
            assert custom.calls["list_cluster_custom_object"] == 0  # planned against the view throughout
        finally:
            agent.stopping.set()
            await asyncio.wait_for(agent_task, timeout=10)
            view_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await view_task

    run(kubeconfig, scenario)


async def _true(value: bool) -> bool:
    return value


def test_nvml_shaped_devices_are_accepted_by_the_crd(
    control_plane: ControlPlane, kubeconfig: str, node: dict[str, Any]
) -> None:
    """A full GPU and a MIG device with every attribute and capacity the NVML backend writes."""
    from dra_operator.agent.inventory import Version
    from dra_operator.agent.nvml import binary_si, mig_device_name

    node_name = node["metadata"]["name"]
    common: dict[str, Any] = {
        "productName": "NVIDIA A100-SXM4-40GB",
        "brand": "Tesla",
        "architecture": "Ampere",
        "cudaComputeCapability": Version("8.0.0"),
        "driverVersion": Version("580.159.4"),
        "cudaDriverVersion": Version("13.0.0"),
        "pcieBusID": "0000:3b:00.0",
    }
    gpu = DeviceInfo(
        name="gpu-0",
        attributes={"type": "gpu", "uuid": "GPU-0", **common},
        capacity={"memory": binary_si(40960 * 2**20)},
    )
    mig = DeviceInfo(
        name=mig_device_name(1, "1g.5gb+me", 20, 6),
        attributes={"type": "mig", "uuid": "MIG-1", "parentUUID": "GPU-1", "profile": "1g.5gb+me", **common},
        capacity={
            "multiprocessors": 14, "copyEngines": 1, "decoders": 0, "encoders": 0, "jpegEngines": 1,
            "ofaEngines": 1, "memory": binary_si(4864 * 2**20), "memorySlice6": 1,
        },
    )  # fmt: skip

    async def publish(api: client.ApiClient) -> None:
        await SlicePublisher(api, node_name).sync([Inventory("gpu.nvidia.com", (gpu, mig))])

    run(kubeconfig, publish)
    stored = get_slice(control_plane, slice_name(node_name, "gpu.nvidia.com"))
    assert stored is not None
    assert device_names(stored) == ["gpu-0", "gpu-1-mig-1g5gb-me-20-6"]
    assert stored["spec"]["devices"][0]["capacity"]["memory"] == {"value": "40Gi"}
    assert stored["spec"]["devices"][1]["attributes"]["driverVersion"] == {"version": "580.159.4"}


def test_agent_command_publishes_and_stops_on_sigterm(
    control_plane: ControlPlane,
    kubeconfig: str,
    node: dict[str, Any],
    tmp_path: Path,
    wait_for: Callable[..., Any],
) -> None:
    """The real `dra-operator agent` process: NODE_NAME from the environment, publish, SIGTERM, exit 0."""
    node_name = node["metadata"]["name"]
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("driver: driver.example.com\ngpus: {count: 2, memory: 64Gi}\n")
    command = [sys.executable, "-m", "dra_operator.cli", "agent", "--backend", "simulated",
               "--inventory", str(inventory), "--kubeconfig", kubeconfig, "--interval", "0.5"]  # fmt: skip
    process = subprocess.Popen(
        command, env={**os.environ, "NODE_NAME": node_name}, stderr=subprocess.PIPE, text=True
    )
    try:
        (published,) = wait_for(
            lambda: (found := our_slices(control_plane, node_name)) and found,
            timeout=60,
            message="slice published",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    # The agent introduces itself: its fields are managed by it, not by the client library's default name.
    assert {m["manager"] for m in published["metadata"]["managedFields"]} == {"dra-operator-agent"}
    events = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
    assert "created slice" in events
    assert events[-1] == "agent stopped"
