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
from structlog.testing import capture_logs

from dra_operator.admission import delivery, names
from dra_operator.admission.mutation import mutate
from dra_operator.agent import deviceplugin
from dra_operator.agent.deviceplugin import api_pb2, api_pb2_grpc
from dra_operator.agent.deviceplugin.plugin import (
    NVIDIA_CONTROL_NODES,
    DevicePlugin,
    DevicePluginService,
    MigMinorsFile,
    Options,
    parse_mig_minors,
    respond,
    slot_health,
)
from dra_operator.agent.health import WHOLE_GPU, HealthEvent
from dra_operator.agent.inventory import DeviceInfo, Inventory
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


# ------------------------------------------------------------------------------ MIG capability nodes

MIG_MINORS = """config 1
monitor 2
gpu0/gi1/access 12
gpu0/gi1/ci0/access 13
gpu0/gi1/ci1/access 14
gpu0/gi2/access 21
gpu0/gi2/ci0/access 22
gpu1/gi1/access 147
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("config 1\nmonitor 2\n", {"config": 1, "monitor": 2}),
        (
            "gpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n",
            {"gpu0/gi1/access": 12, "gpu0/gi1/ci0/access": 13},
        ),
        ("  gpu3/gi0/ci1/access \t 40  \r\n\n", {"gpu3/gi0/ci1/access": 40}),
        (
            "gpu0/gi1/access 12\ngarbage\na b c\ngpu0/gi2/access x1\ngpu0/gi3/access -1\n",
            {"gpu0/gi1/access": 12},
        ),
    ],
    ids=["empty", "config-monitor", "gi-ci", "whitespace", "malformed-lines-ignored"],
)
def test_parse_mig_minors(text: str, expected: dict[str, int]) -> None:
    assert parse_mig_minors(text) == expected


MIG_0_1G = "gpu-0-mig-1g10gb-19-0"  # GPU 0, GI 1, CI 0
MIG_0_1G_CI1 = "gpu-0-mig-1c2g20gb-14-0"  # GPU 0, GI 1, CI 1 (a second compute instance of GI 1)
MIG_0_2G = "gpu-0-mig-2g20gb-14-2"  # GPU 0, GI 2, CI 0
MIG_1_1G = "gpu-1-mig-1g10gb-19-0"  # GPU 1, GI 1, CI 0: the file lacks its compute instance
INSTANCES = {MIG_0_1G: (1, 0), MIG_0_1G_CI1: (1, 1), MIG_0_2G: (2, 0), MIG_1_1G: (1, 0)}


@pytest.mark.parametrize(
    ("names_", "minors_text", "nodes", "reads", "missing"),
    [
        (
            [MIG_0_1G],
            MIG_MINORS,
            ["/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia-caps/nvidia-cap13"],
            1,
            [],
        ),
        (
            [MIG_0_1G, MIG_0_1G_CI1, MIG_0_2G],
            MIG_MINORS,
            [
                "/dev/nvidia0",
                "/dev/nvidia-caps/nvidia-cap12",
                "/dev/nvidia-caps/nvidia-cap13",
                "/dev/nvidia-caps/nvidia-cap14",
                "/dev/nvidia-caps/nvidia-cap21",
                "/dev/nvidia-caps/nvidia-cap22",
            ],
            1,
            [],
        ),
        (
            ["gpu-3", MIG_0_2G],
            MIG_MINORS,
            [
                "/dev/nvidia3",
                "/dev/nvidia0",
                "/dev/nvidia-caps/nvidia-cap21",
                "/dev/nvidia-caps/nvidia-cap22",
            ],
            1,
            [],
        ),
        (["gpu-3"], MIG_MINORS, ["/dev/nvidia3"], 0, []),
        ([MIG_1_1G], MIG_MINORS, ["/dev/nvidia1"], 1, [MIG_1_1G]),
        ([MIG_0_1G], None, ["/dev/nvidia0"], 1, [MIG_0_1G]),
        (["gpu-0-mig-1g10gb-19-4"], MIG_MINORS, ["/dev/nvidia0"], 0, ["gpu-0-mig-1g10gb-19-4"]),
        (
            [MIG_1_1G, MIG_0_1G],
            MIG_MINORS,
            [
                "/dev/nvidia1",
                "/dev/nvidia0",
                "/dev/nvidia-caps/nvidia-cap12",
                "/dev/nvidia-caps/nvidia-cap13",
            ],
            1,
            [MIG_1_1G],
        ),
    ],
    ids=[
        "mig",
        "same-gpu-shared-gi",
        "full-gpu-and-mig",
        "full-gpu-reads-nothing",
        "caps-not-in-file",
        "file-missing",
        "instance-unknown",
        "one-found-one-missing",
    ],
)
def test_mig_devices_get_their_parent_node_and_capability_nodes(
    names_: list[str], minors_text: str | None, nodes: list[str], reads: int, missing: list[str]
) -> None:
    calls = []

    def read() -> str | None:
        calls.append(1)
        return minors_text

    wanted = delivery.ContainerDevices("a", tuple(f"gpu.nvidia.com/n1/{n}" for n in names_))
    options = Options(
        exists=lambda path: path == "/dev/nvidiactl", mig_instances=INSTANCES.get, read_mig_minors=read
    )
    with capture_logs() as logs:
        given = respond(wanted, options)
    assert list(given.devices) == [(n, n, "rw") for n in [*nodes, "/dev/nvidiactl"]]
    assert len(calls) == reads  # read lazily, once per container at most
    warnings = [e for e in logs if e["log_level"] == "warning"]
    if missing:
        (warning,) = warnings
        assert "CUDA in the container will fail" in warning["event"]
        assert warning["devices"] == [f"gpu.nvidia.com/n1/{n}" for n in missing]
    else:
        assert warnings == []


def test_the_mig_minors_file_is_read_at_each_call_and_its_absence_warned_once(tmp_path: Path) -> None:
    path = tmp_path / "mig-minors"
    reader = MigMinorsFile(path)
    with capture_logs() as logs:
        assert reader() is None
        assert reader() is None
    assert [e["log_level"] for e in logs] == ["warning"] and str(path) == logs[0]["path"]
    path.write_text(MIG_MINORS)
    assert reader() == MIG_MINORS
    path.write_text("gpu0/gi1/access 30\n")
    assert reader() == "gpu0/gi1/access 30\n"
    assert isinstance(Options().read_mig_minors, MigMinorsFile)


# --------------------------------------------------------------------------- health through ListAndWatch

GPUS = ["gpu.nvidia.com/gpu-0", "gpu.nvidia.com/gpu-1"]


@pytest.mark.parametrize(
    ("delivered", "marked", "health"),
    [
        ([], [], deviceplugin.HEALTHY),
        ([], ["gpu.nvidia.com/gpu-0"], deviceplugin.HEALTHY),
        (GPUS, [], deviceplugin.HEALTHY),
        (GPUS, ["gpu.nvidia.com/gpu-0"], deviceplugin.HEALTHY),
        (GPUS, ["other.example.com/gpu-0", "other.example.com/gpu-1"], deviceplugin.HEALTHY),
        (GPUS, GPUS, deviceplugin.UNHEALTHY),
        (GPUS, [*GPUS, "other.example.com/dev-1"], deviceplugin.UNHEALTHY),
    ],
    ids=["nothing", "nothing-delivered", "no-marks", "partial", "other-driver", "all", "all-and-more"],
)
def test_slots_are_unhealthy_only_when_every_delivered_device_is_marked(
    delivered: list[str], marked: list[str], health: str
) -> None:
    assert slot_health(delivered, dict.fromkeys(marked, "gpu.nvidia.com/xid=79")) == health


async def _no_pods() -> list[Json]:
    return []


@pytest.mark.parametrize(
    ("steps", "delivered"),
    [
        ([(["gpu.nvidia.com/gpu-0"], "Healthy"), (["gpu.nvidia.com/gpu-1"], "Unhealthy")], GPUS),
        ([(GPUS, "Unhealthy")], GPUS),  # GPU lost: all at once
        ([(["other.example.com/dev-0"], "Healthy"), (["gpu.nvidia.com/gpu-0"], "Healthy")], GPUS),
        ([(["driver.example.com/dev-7"], "Unhealthy")], ["driver.example.com/dev-7"]),  # simulated
    ],
    ids=["partial-then-all", "all-at-once", "other-driver-then-partial", "simulated-single"],
)
def test_list_and_watch_sends_the_slots_again_at_each_health_change(
    steps: list[tuple[list[str], str]], delivered: list[str]
) -> None:
    marks: dict[str, str] = {}
    options = Options(unhealthy=lambda: dict(marks), delivered_devices=lambda: delivered)

    async def scenario() -> None:
        service = DevicePluginService("n1", _no_pods, options, slots=3)
        stream = service.ListAndWatch(api_pb2.Empty(), object())
        first = await asyncio.wait_for(anext(stream), 5)
        assert [(d.ID, d.health) for d in first.devices] == [
            (f"slot-000{i}", deviceplugin.HEALTHY) for i in range(3)
        ]
        for marked, health in steps:
            pending = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0.01)
            assert not pending.done()  # nothing is sent until something changes
            marks.update(dict.fromkeys(marked, "xid"))
            service.health_changed()
            answer = await asyncio.wait_for(pending, 5)
            assert [d.health for d in answer.devices] == [health] * 3
        # A change while the stream is not waiting (the kubelet reading slowly) is not lost.
        service.health_changed()
        again = await asyncio.wait_for(anext(stream), 5)
        assert [d.health for d in again.devices] == [steps[-1][1]] * 3
        # Stopping ends the stream cleanly.
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.01)
        service.stopping.set()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(pending, 5)

    asyncio.run(scenario())


def test_a_cancelled_list_and_watch_leaves_no_waiters() -> None:
    async def scenario() -> None:
        service = DevicePluginService("n1", _no_pods, Options(), slots=1)
        stream = service.ListAndWatch(api_pb2.Empty(), object())
        await anext(stream)
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.01)
        pending.cancel()  # the kubelet went away: gRPC cancels the handler
        with pytest.raises(asyncio.CancelledError):
            await pending
        await asyncio.sleep(0)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert stream.ag_running is False

    asyncio.run(scenario())


def test_the_agent_tells_the_plugin_about_marks_and_mig_instances() -> None:
    from dra_operator.agent.main import Agent

    gpu, mig_a, mig_b = (
        DeviceInfo("gpu-1", locator=("GPU-1", WHOLE_GPU, WHOLE_GPU)),
        DeviceInfo(MIG_0_1G, locator=("GPU-0", 1, 0)),
        DeviceInfo(MIG_0_2G, locator=("GPU-0", 2, 0)),
    )
    agent = Agent(None, "n1", None, driver="gpu.nvidia.com", policy="withdraw", interval=60)  # type: ignore[arg-type]
    agent.pools = [
        Inventory("gpu.nvidia.com", (gpu, mig_a, mig_b)),
        Inventory("driver.example.com", (DeviceInfo("dev-7"),)),
    ]
    changes = []
    agent.on_health_change = lambda: changes.append(1)
    assert agent.mig_instance(MIG_0_1G) == (1, 0) and agent.mig_instance(MIG_0_2G) == (2, 0)
    assert agent.mig_instance("gpu-1") is None and agent.mig_instance("dev-7") is None
    assert agent.mig_instance("gpu-9-mig-1g10gb-19-0") is None
    nvidia = agent.device_keys("gpu.nvidia.com")
    assert nvidia == ["gpu.nvidia.com/gpu-1", f"gpu.nvidia.com/{MIG_0_1G}", f"gpu.nvidia.com/{MIG_0_2G}"]
    assert agent.device_keys() == [*nvidia, "driver.example.com/dev-7"]

    agent.on_health_event(HealthEvent(kind="xid", uuid="GPU-0", xid=13))  # an application error: no mark
    assert changes == [] and slot_health(nvidia, agent.unhealthy()) == deviceplugin.HEALTHY
    agent.on_health_event(HealthEvent(kind="xid", uuid="GPU-0", xid=79))  # whole GPU 0: both MIG devices
    assert len(changes) == 1 and slot_health(nvidia, agent.unhealthy()) == deviceplugin.HEALTHY
    agent.on_health_event(HealthEvent(kind="xid", uuid="GPU-0", xid=79))  # nothing new
    assert len(changes) == 1
    agent.on_health_event(HealthEvent(kind="xid", uuid="GPU-1", xid=48))
    assert len(changes) == 2 and slot_health(nvidia, agent.unhealthy()) == deviceplugin.UNHEALTHY


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
