"""The node device plugin: which Pod and container an Allocate is for, what each container gets, and the
gRPC service against a stand-in kubelet (Registration server, ListAndWatch, Allocate, re-registration)."""

from __future__ import annotations

import asyncio
import copy
import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from dra_operator.admission import delivery, names
from dra_operator.admission.mutation import mutate
from dra_operator.agent import deviceplugin
from dra_operator.agent.deviceplugin import api_pb2, api_pb2_grpc
from dra_operator.agent.deviceplugin.plugin import (
    NVIDIA_CONTROL_NODES,
    DevicePlugin,
    DevicePluginService,
    Options,
    respond,
)
from dra_operator.operator.placement import device_annotations

Json = dict[str, Any]
NOW = datetime.datetime(2026, 12, 3, 12, 0, 0, tzinfo=datetime.UTC)
RESOURCE = names.DEVICE_PLUGIN_RESOURCE


def placed_pod(
    name: str,
    node: str = "n1",
    devices: dict[str, list[str]] | None = None,
    uid: str | None = None,
    ungated_seconds_ago: float = 1.0,
) -> Json:
    """A Pod as the webhook (with the device plugin) and then the operator leave it: containers `a` (claim
    gpu) and `b` (claims gpu and shared), a sidecar `c` with none; allocated on `node`."""
    raw: Json = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": uid or f"uid-{name}"},
        "spec": {
            "initContainers": [{"name": "init", "image": "x", "resources": {"claims": [{"name": "gpu"}]}}],
            "containers": [
                {"name": "a", "image": "x", "resources": {"claims": [{"name": "gpu"}]}},
                {"name": "b", "image": "x", "resources": {"claims": [{"name": "gpu"}, {"name": "shared"}]}},
                {"name": "c", "image": "x"},
            ],
            "resourceClaims": [
                {"name": "gpu", "resourceClaimTemplateName": "t"},
                {"name": "shared", "resourceClaimName": "s"},
            ],
        },
    }
    pod = mutate(raw, "Pod", delivery_resource=RESOURCE).obj
    picked = devices or {"gpu": ["gpu.nvidia.com/n1/gpu-3"], "shared": ["driver.example.com/n1/dev-7"]}
    allocations = {
        claim: {
            "devices": {
                "results": [
                    {
                        "request": "r",
                        "driver": d.split("/")[0],
                        "pool": d.split("/")[1],
                        "device": d.split("/")[2],
                    }
                    for d in refs
                ]
            }
        }
        for claim, refs in picked.items()
    }
    uuids = {("gpu.nvidia.com", "n1", "gpu-3"): "GPU-aaa"}
    annotations = pod["metadata"]["annotations"]
    annotations.update(device_annotations(pod, allocations, uuids))
    annotations[names.NODE_ANNOTATION] = node
    ungated = NOW - datetime.timedelta(seconds=ungated_seconds_ago)
    annotations[names.UNGATED_AT_ANNOTATION] = delivery.timestamp(ungated)
    pod["spec"].pop("schedulingGates", None)
    pod["spec"]["nodeName"] = node
    pod["status"] = {"phase": "Pending"}
    return pod


# --------------------------------------------------------------------------------------------- the rule


def test_the_webhook_asks_for_one_slot_per_container_that_uses_claims() -> None:
    pod = placed_pod("p")
    limits = {c["name"]: (c.get("resources") or {}).get("limits") for c in pod["spec"]["containers"]}
    assert limits == {"a": {RESOURCE: "1"}, "b": {RESOURCE: "1"}, "c": None}
    assert delivery.delivery_containers(pod) == ["init", "a", "b"]  # the kubelet's order


def test_each_container_gets_the_devices_its_env_points_at() -> None:
    pod = placed_pod("p")
    assert delivery.container_devices(pod, "a") == delivery.ContainerDevices(
        "a", ("gpu.nvidia.com/n1/gpu-3",), ("GPU-aaa",)
    )
    b = delivery.container_devices(pod, "b")
    assert set(b.devices) == {"gpu.nvidia.com/n1/gpu-3", "driver.example.com/n1/dev-7"}
    assert delivery.container_devices(pod, "c") == delivery.ContainerDevices("c")


@pytest.mark.parametrize(
    ("pods", "outcome"),
    [
        ([], "no Pod on node n1 is waiting"),
        ([placed_pod("p")], ("p", "init")),
        ([placed_pod("p"), placed_pod("q")], "several Pods on node n1"),
        ([placed_pod("p"), placed_pod("q", node="n2")], ("p", "init")),
        (
            [placed_pod("p"), placed_pod("old", ungated_seconds_ago=delivery.DELIVERY_TIMEOUT + 1)],
            ("p", "init"),
        ),
    ],
    ids=["none", "one", "two-ambiguous", "other-node", "timed-out"],
)
def test_an_allocate_is_tied_to_exactly_one_pod(pods: list[Json], outcome: Any) -> None:
    served = delivery.Served()
    if isinstance(outcome, str):
        with pytest.raises(delivery.NotServable, match=outcome):
            delivery.next_container(pods, "n1", served, NOW)
        return
    pod, container = delivery.next_container(pods, "n1", served, NOW)
    assert (pod["metadata"]["name"], container) == outcome


def test_containers_are_served_in_order_then_the_pod_is_done() -> None:
    pod, served = placed_pod("p"), delivery.Served()
    order = []
    for _ in range(3):
        chosen, container = delivery.next_container([pod], "n1", served, NOW)
        delivery.mark_served(served, chosen)
        order.append(container)
    assert order == ["init", "a", "b"]
    with pytest.raises(delivery.NotServable):
        delivery.next_container([pod], "n1", served, NOW)
    pod["status"] = {"phase": "Pending", "containerStatuses": [{"name": "a"}]}
    assert delivery.admitted(pod)
    delivery.forget_admitted(served, [pod])
    assert served.containers == {}


def test_busy_until_the_kubelet_admitted_it_or_the_timeout() -> None:
    pod = placed_pod("p")
    assert delivery.busy_with([pod], "n1", NOW) == ["ns/p"]
    assert delivery.busy_with([pod], "n1", NOW, exclude_uid="uid-p") == []
    assert delivery.busy_with([pod], "n2", NOW) == []
    later = NOW + datetime.timedelta(seconds=delivery.DELIVERY_TIMEOUT)
    assert delivery.busy_with([pod], "n1", later) == []
    pod["status"]["initContainerStatuses"] = [{"name": "init"}]
    assert delivery.busy_with([pod], "n1", NOW) == []


# ------------------------------------------------------------------------------------- what is handed


def test_nvml_gpus_get_their_device_nodes_env_volume_list_and_cdi() -> None:
    wanted = delivery.ContainerDevices(
        "a", ("gpu.nvidia.com/n1/gpu-3", "gpu.nvidia.com/n1/gpu-0-mig-1g10gb-19-0"), ("GPU-aaa", "MIG-bbb")
    )
    present = {"/dev/nvidiactl", "/dev/nvidia-uvm"}
    given = respond(wanted, Options(cdi=True, exists=lambda path: path in present))
    assert [d[1] for d in given.devices] == [
        "/dev/nvidia3",
        "/dev/nvidia0",
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
    ]
    assert set(NVIDIA_CONTROL_NODES) - present == {"/dev/nvidia-uvm-tools"}
    assert dict(given.envs) == {names.NVIDIA_ENV: "GPU-aaa,MIG-bbb"}
    assert ("/var/run/nvidia-container-devices/GPU-aaa", "/dev/null", True) in given.mounts
    assert given.cdi_devices == ("nvidia.com/gpu=GPU-aaa", "nvidia.com/gpu=MIG-bbb")
    message = given.message()
    assert (
        message.devices[0].host_path == "/dev/nvidia3" and message.envs[names.NVIDIA_ENV] == "GPU-aaa,MIG-bbb"
    )


def test_simulated_devices_are_files_and_nothing_else_is_handed(tmp_path: Path) -> None:
    wanted = delivery.ContainerDevices("b", ("driver.example.com/n1/dev-7",))
    given = respond(wanted, Options(nvidia_driver="", simulated_dir=tmp_path))
    assert given.mounts == (
        (
            "/var/run/dra-devices/driver.example.com/n1/dev-7",
            str(tmp_path / "driver.example.com/n1/dev-7"),
            True,
        ),
    )
    assert given.devices == () and given.envs == () and given.cdi_devices == ()
    assert respond(delivery.ContainerDevices("c"), Options(simulated_dir=tmp_path)) == type(given)()


# ------------------------------------------------------------------------------------- over gRPC


class Kubelet(api_pb2_grpc.RegistrationServicer):  # type: ignore[misc]
    """The kubelet's Registration service, and a client of what registers."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.registered = asyncio.Event()

    async def Register(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        self.registered.set()
        return api_pb2.Empty()


def test_registers_advertises_slots_allocates_and_registers_again(tmp_path: Path) -> None:
    pods = [placed_pod("p")]
    # The service judges "in delivery" by the wall clock: ungated just now.
    now = delivery.timestamp(datetime.datetime.now(datetime.UTC))
    pods[0]["metadata"]["annotations"][names.UNGATED_AT_ANNOTATION] = now

    async def list_pods() -> list[Json]:
        return copy.deepcopy(pods)

    async def scenario() -> None:
        kubelet = Kubelet()
        server = grpc.aio.server()
        api_pb2_grpc.add_RegistrationServicer_to_server(kubelet, server)
        server.add_insecure_port(f"unix://{tmp_path / deviceplugin.KUBELET_SOCKET_NAME}")
        await server.start()
        service = DevicePluginService(
            "n1", list_pods, Options(nvidia_driver="", simulated_dir=tmp_path / "sim"), slots=4
        )
        plugin = DevicePlugin(service, tmp_path)
        task = asyncio.create_task(plugin.run(poll=0.05))
        try:
            await asyncio.wait_for(kubelet.registered.wait(), 10)
            (request,) = kubelet.requests
            assert (request.version, request.resource_name, request.endpoint) == (
                "v1beta1",
                RESOURCE,
                "dra-operator.sock",
            )
            async with grpc.aio.insecure_channel(f"unix://{tmp_path / request.endpoint}") as channel:
                stub = api_pb2_grpc.DevicePluginStub(channel)
                stream = stub.ListAndWatch(api_pb2.Empty())
                first = await stream.read()
                assert [d.health for d in first.devices] == [deviceplugin.HEALTHY] * 4
                stream.cancel()
                answers = []
                for _ in range(3):  # the kubelet: one call per container, init container first
                    reply = await stub.Allocate(
                        api_pb2.AllocateRequest(
                            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=["slot-0001"])]
                        )
                    )
                    answers.append(reply.container_responses[0])
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Allocate(
                        api_pb2.AllocateRequest(
                            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=["slot-0002"])]
                        )
                    )
                assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "no Pod on node n1 is waiting" in (refused.value.details() or "")
            init, a, b = answers
            assert init.envs[names.NVIDIA_ENV] == "GPU-aaa" and a.envs[names.NVIDIA_ENV] == "GPU-aaa"

            def files(answer: Any) -> list[str]:
                return sorted(m.container_path for m in answer.mounts if "dra-devices" in m.container_path)

            # Simulated: every device, the GPU included, is a file; b uses both claims, a only gpu.
            assert files(b) == [
                "/var/run/dra-devices/driver.example.com/n1/dev-7",
                "/var/run/dra-devices/gpu.nvidia.com/n1/gpu-3",
            ]
            assert files(a) == files(init) == ["/var/run/dra-devices/gpu.nvidia.com/n1/gpu-3"]
            assert (
                tmp_path / "sim/driver.example.com/n1/dev-7"
            ).read_text() == "driver.example.com/n1/dev-7\n"

            # The kubelet restarts: it removes the plugin sockets; the plugin serves and registers again.
            kubelet.registered.clear()
            (tmp_path / "dra-operator.sock").unlink()
            await asyncio.wait_for(kubelet.registered.wait(), 10)

            async def registered_twice() -> None:
                while plugin.registrations < 2:  # noqa: ASYNC110 - counted just after the kubelet answered
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(registered_twice(), 10)
            assert len(kubelet.requests) == 2
        finally:
            task.cancel()
            service.stopping.set()
            await asyncio.gather(task, return_exceptions=True)
            await server.stop(grace=None)

    asyncio.run(scenario())


def test_a_container_allocated_an_unhealthy_gpu_is_refused() -> None:
    from dra_operator.agent.deviceplugin.plugin import unhealthy_refusal

    wanted = delivery.ContainerDevices("a", ("gpu.nvidia.com/n1/gpu-3", "driver.example.com/n1/dev-7"))
    assert unhealthy_refusal(wanted, {}) is None
    assert unhealthy_refusal(wanted, {"gpu.nvidia.com/gpu-1": "gpu.nvidia.com/xid=79"}) is None
    refusal = unhealthy_refusal(wanted, {"gpu.nvidia.com/gpu-3": "gpu.nvidia.com/xid=79"})
    assert refusal == (
        "unhealthy devices allocated to container a: gpu.nvidia.com/n1/gpu-3 (gpu.nvidia.com/xid=79)"
    )


def test_the_service_refuses_allocate_for_an_unhealthy_device(tmp_path: Path) -> None:
    pod = placed_pod("p")
    pod["metadata"]["annotations"][names.UNGATED_AT_ANNOTATION] = delivery.timestamp(
        datetime.datetime.now(datetime.UTC)
    )

    async def list_pods() -> list[Json]:
        return [copy.deepcopy(pod)]

    class Context:
        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            raise RuntimeError(f"{code.name}: {details}")

    options = Options(
        unhealthy=lambda: {"gpu.nvidia.com/gpu-3": "gpu.nvidia.com/xid=79"}, exists=lambda _: False
    )
    service = DevicePluginService("n1", list_pods, options)
    request = api_pb2.AllocateRequest(
        container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=["s"])]
    )
    with pytest.raises(RuntimeError, match="FAILED_PRECONDITION: dra-operator: unhealthy devices allocated"):
        asyncio.run(service.Allocate(request, Context()))
    assert service.allocations == 0
