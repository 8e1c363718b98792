"""The agent as its node's device plugin: registers with the kubelet, advertises delivery slots, and answers
Allocate with exactly the devices allocated to the container the call is for.

The kubelet API (gRPC over unix sockets in the kubelet's device-plugin directory): the plugin serves
`DevicePlugin` on its own socket and registers it through the kubelet's `Registration` socket, naming the
extended resource (names.DEVICE_PLUGIN_RESOURCE). ListAndWatch advertises `slots` interchangeable IDs; the
webhook makes each container that uses claims ask for one, so the kubelet calls Allocate for that container
and not otherwise. Which Pod and container a call is for: see dra_operator.admission.delivery.

What a container gets, per device of its claims (`respond`):
- an NVML GPU (`gpu-<minor>`, or a MIG device `gpu-<minor>-mig-...` of it): its device node
  /dev/nvidia<minor> and the driver's control nodes that exist on the host (/dev/nvidiactl, /dev/nvidia-uvm,
  /dev/nvidia-uvm-tools), as DeviceSpecs: the runtime creates them and the device cgroup allows them;
- for a MIG device also the capability nodes of its GPU instance and compute instance,
  /dev/nvidia-caps/nvidia-cap<M>, without which CUDA cannot open it. The minors M come from the host's
  /proc/driver/nvidia-caps/mig-minors (lines `gpu<minor>/gi<GI>/access M`,
  `gpu<minor>/gi<GI>/ci<CI>/access M`), read at each delivery of a MIG device (a MIG reconfiguration
  renumbers them); the GI and CI ids come from the agent's NVML inventory. A MIG device whose capabilities
  are not found is delivered without them, with a warning (CUDA in the container will fail to initialise on
  it). The nodes are not checked to exist: the agent's container need not see the host's /dev/nvidia-caps;
- the NVML GPU UUIDs as NVIDIA_VISIBLE_DEVICES for runtimes that read it, as the NVIDIA toolkit's volume-mount
  list (/var/run/nvidia-container-devices/<uuid>) for runtimes that refuse env-var devices from unprivileged
  containers, and as CDI device names (nvidia.com/gpu=<uuid>) where the runtime has CDI (`cdi`);
- any other device, when the agent simulates devices (`simulated_dir`): a file per device on the host,
  mounted read-only at /var/run/dra-devices/<driver>/<pool>/<device>, so a container can list what it got.

Health. A container allocated a device the agent has marked unhealthy (a critical Xid, a GPU lost) is refused
at Allocate: the kubelet fails the Pod's admission instead of starting it on a broken GPU; the slice withdraws
or taints the device, so no new claim gets it. The slots the plugin advertises are not devices (any slot may
carry any device), so one GPU's health cannot be shown on one slot. What ListAndWatch does instead: it sends
the slot list again whenever the agent's health marks (or the devices it reads) change, every slot Unhealthy
when every device the plugin delivers (the NVML driver's devices; with simulated devices, all of them) is
marked, and every slot Healthy otherwise. All Unhealthy drops the node's allocatable of the resource to 0, so
no new Pod that needs a delivery is placed on or admitted to the node while no device there can serve it;
while some device is still good, Pods keep coming (those on a marked device are refused at Allocate). Marks
are sticky (see dra_operator.agent.health), so the slots do not turn Healthy again while the agent runs. The
streams end when the agent stops.

When the kubelet restarts it removes every plugin socket; the plugin then serves and registers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog

from dra_operator.admission import delivery, names
from dra_operator.agent import deviceplugin
from dra_operator.agent.deviceplugin import api_pb2, api_pb2_grpc

log = structlog.get_logger("dra_operator.agent.deviceplugin")

SOCKET_NAME = "dra-operator.sock"
DEFAULT_SLOTS = 128
NVIDIA_CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
NVIDIA_VOLUME_DIR = "/var/run/nvidia-container-devices"
SIMULATED_MOUNT_DIR = "/var/run/dra-devices"
MIG_MINORS_FILE = "/proc/driver/nvidia-caps/mig-minors"
NVIDIA_CAPS_DIR = "/dev/nvidia-caps"
_GPU_NAME = re.compile(r"^gpu-(\d+)(-mig-.*)?$")

Json = dict[str, Any]
PodLister = Callable[[], Awaitable[list[Json]]]


@dataclass(frozen=True)
class Delivery:
    """What the plugin hands the kubelet for one container (a ContainerAllocateResponse, as plain data)."""

    devices: tuple[tuple[str, str, str], ...] = ()  # (container path, host path, permissions)
    mounts: tuple[tuple[str, str, bool], ...] = ()  # (container path, host path, read only)
    envs: tuple[tuple[str, str], ...] = ()
    cdi_devices: tuple[str, ...] = ()

    def message(self) -> api_pb2.ContainerAllocateResponse:
        return api_pb2.ContainerAllocateResponse(
            envs=dict(self.envs),
            mounts=[api_pb2.Mount(container_path=c, host_path=h, read_only=r) for c, h, r in self.mounts],
            devices=[
                api_pb2.DeviceSpec(container_path=c, host_path=h, permissions=p) for c, h, p in self.devices
            ],
            cdi_devices=[api_pb2.CDIDevice(name=n) for n in self.cdi_devices],
        )


class MigMinorsFile:
    """Reads the host's MIG capability minors file at each call (it changes when MIG is reconfigured); None
    when it cannot be read, logged once."""

    def __init__(self, path: str | Path = MIG_MINORS_FILE) -> None:
        self.path = Path(path)
        self.warned = False

    def __call__(self) -> str | None:
        try:
            return self.path.read_text()
        except OSError as error:
            if not self.warned:
                self.warned = True
                log.warning(
                    "cannot read the MIG capability minors: MIG devices are delivered without their "
                    "/dev/nvidia-caps nodes",
                    path=str(self.path),
                    error=str(error),
                )
            return None


@dataclass(frozen=True)
class Options:
    nvidia_driver: str = "gpu.nvidia.com"
    simulated_dir: Path | None = None  # host directory of the simulated devices' files; None: not simulated
    cdi: bool = False
    exists: Callable[[str], bool] = field(default=lambda path: Path(path).exists())
    # `driver/device` -> why it is unhealthy (the agent's health marks), read at each Allocate.
    unhealthy: Callable[[], Mapping[str, str]] = field(default=lambda: {})
    # NVML MIG device name -> (GPU-instance id, compute-instance id) as the agent last read it; None: unknown.
    mig_instances: Callable[[str], tuple[int, int] | None] = field(default=lambda name: None)
    # The text of /proc/driver/nvidia-caps/mig-minors, read when a MIG device is delivered; None: unreadable.
    read_mig_minors: Callable[[], str | None] = field(default_factory=MigMinorsFile)
    # `driver/device` of every device the plugin delivers (the agent's current inventory): the slots' health.
    delivered_devices: Callable[[], Collection[str]] = field(default=lambda: ())


def _parts(ref: str) -> tuple[str, str, str]:
    """`driver/pool/device` split into its three parts (missing ones empty)."""
    driver, _, rest = ref.partition("/")
    pool, _, device = rest.partition("/")
    return driver, pool, device


def parse_mig_minors(text: str) -> dict[str, int]:
    """The lines of /proc/driver/nvidia-caps/mig-minors (`gpu0/gi1/access 12`, `gpu0/gi1/ci0/access 13`,
    `config 1`, ...) as name -> minor of /dev/nvidia-caps/nvidia-cap<minor>; other lines are ignored."""
    minors: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and re.fullmatch(r"[0-9]+", fields[1]):
            minors[fields[0]] = int(fields[1])
    return minors


def mig_capability_nodes(
    gpu_minor: int, instance: tuple[int, int], minors: Mapping[str, int]
) -> tuple[str, str] | None:
    """The capability nodes of GPU instance and compute instance `instance` of GPU `gpu_minor`, or None
    when `minors` (parse_mig_minors) lacks either."""
    gi, ci = instance
    gi_minor = minors.get(f"gpu{gpu_minor}/gi{gi}/access")
    ci_minor = minors.get(f"gpu{gpu_minor}/gi{gi}/ci{ci}/access")
    if gi_minor is None or ci_minor is None:
        return None
    return f"{NVIDIA_CAPS_DIR}/nvidia-cap{gi_minor}", f"{NVIDIA_CAPS_DIR}/nvidia-cap{ci_minor}"


def respond(wanted: delivery.ContainerDevices, options: Options) -> Delivery:
    """The container's delivery (pure apart from the callables of `options`): see the module docstring."""
    devices: list[tuple[str, str, str]] = []
    mounts: list[tuple[str, str, bool]] = []
    minors: dict[str, int] | None = None  # read at the first MIG device
    without_caps: list[str] = []

    def add_node(node: str) -> None:
        if (node, node, "rw") not in devices:
            devices.append((node, node, "rw"))

    for ref in wanted.devices:
        driver, pool, device = _parts(ref)
        if driver == options.nvidia_driver:
            match = _GPU_NAME.match(device)
            if match:
                add_node(f"/dev/nvidia{match.group(1)}")
                if match.group(2):  # a MIG device: its GPU instance's and compute instance's capabilities
                    instance = options.mig_instances(device)
                    caps = None
                    if instance is not None:
                        if minors is None:
                            minors = parse_mig_minors(options.read_mig_minors() or "")
                        caps = mig_capability_nodes(int(match.group(1)), instance, minors)
                    if caps is None:
                        without_caps.append(ref)
                    else:
                        for node in caps:
                            add_node(node)
        elif options.simulated_dir is not None and pool and device:
            host = options.simulated_dir / driver / pool / device
            mounts.append((f"{SIMULATED_MOUNT_DIR}/{driver}/{pool}/{device}", str(host), True))
    if without_caps:
        log.warning(
            "MIG devices delivered without their capability device nodes (/dev/nvidia-caps): CUDA in the "
            "container will fail to initialise on them",
            container=wanted.container,
            devices=without_caps,
            minors_file=MIG_MINORS_FILE,
        )
    if devices:
        devices += [(n, n, "rw") for n in NVIDIA_CONTROL_NODES if options.exists(n)]
    envs: list[tuple[str, str]] = []
    cdi: list[str] = []
    if wanted.gpu_uuids:
        envs.append((names.NVIDIA_ENV, ",".join(wanted.gpu_uuids)))
        mounts += [(f"{NVIDIA_VOLUME_DIR}/{uuid}", "/dev/null", True) for uuid in wanted.gpu_uuids]
        if options.cdi:
            cdi += [f"nvidia.com/gpu={uuid}" for uuid in wanted.gpu_uuids]
    return Delivery(tuple(devices), tuple(mounts), tuple(envs), tuple(cdi))


def slot_health(delivered: Collection[str], unhealthy: Mapping[str, str]) -> str:
    """The health every slot is advertised with: Unhealthy when the plugin delivers devices and every one of
    them (`driver/device`) is marked unhealthy, else Healthy."""
    if delivered and all(key in unhealthy for key in delivered):
        return deviceplugin.UNHEALTHY
    return deviceplugin.HEALTHY


def unhealthy_refusal(wanted: delivery.ContainerDevices, unhealthy: Mapping[str, str]) -> str | None:
    """Why the container must not start (one of its devices is marked unhealthy: `driver/device` -> what
    happened), or None. Such a device is already withdrawn or tainted in its slice, so no new claim gets it;
    this stops a Pod allocated it before the fault from starting on a broken GPU."""
    bad = []
    for ref in wanted.devices:
        driver, _, device = _parts(ref)
        reason = unhealthy.get(f"{driver}/{device}")
        if reason is not None:
            bad.append(f"{ref} ({reason})")
    return f"unhealthy devices allocated to container {wanted.container}: {', '.join(bad)}" if bad else None


def ensure_simulated_files(wanted: delivery.ContainerDevices, options: Options) -> None:
    """The host files a simulated delivery mounts: one per device, naming it (made on first use)."""
    if options.simulated_dir is None:
        return
    for ref in wanted.devices:
        driver, pool, device = _parts(ref)
        if driver == options.nvidia_driver or not (pool and device):
            continue
        path = options.simulated_dir / driver / pool / device
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{ref}\n")


class DevicePluginService(api_pb2_grpc.DevicePluginServicer):
    """The DevicePlugin gRPC service of one node."""

    def __init__(self, node: str, list_pods: PodLister, options: Options, slots: int = DEFAULT_SLOTS) -> None:
        self.node, self.list_pods, self.options, self.slots = node, list_pods, options, slots
        self.served = delivery.Served()
        self.stopping = asyncio.Event()
        self.allocations = 0  # containers served
        self._lock = asyncio.Lock()
        self._health_changed = asyncio.Event()  # set (then replaced) at each change: see health_changed

    def health_changed(self) -> None:
        """The agent's health marks (or its devices) changed: every open ListAndWatch stream sends the slots
        again. Call it in the event loop."""
        changed, self._health_changed = self._health_changed, asyncio.Event()
        changed.set()

    def slot_list(self) -> api_pb2.ListAndWatchResponse:
        health = slot_health(self.options.delivered_devices(), self.options.unhealthy())
        return api_pb2.ListAndWatchResponse(
            devices=[api_pb2.Device(ID=f"slot-{index:04d}", health=health) for index in range(self.slots)]
        )

    async def GetDevicePluginOptions(self, request: Any, context: Any) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=False)

    async def ListAndWatch(self, request: Any, context: Any) -> Any:
        """The slots, then again at each health change; open until the plugin stops (the kubelet reads an
        open stream as "still there")."""
        while not self.stopping.is_set():
            changed = self._health_changed  # taken before reading: a change from now on wakes this stream
            response = self.slot_list()
            health = response.devices[0].health if response.devices else deviceplugin.HEALTHY
            log.info("advertising slots", slots=self.slots, health=health)
            yield response
            await _first_set(changed, self.stopping)

    async def GetPreferredAllocation(self, request: Any, context: Any) -> api_pb2.PreferredAllocationResponse:
        return api_pb2.PreferredAllocationResponse()

    async def PreStartContainer(self, request: Any, context: Any) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()

    async def Allocate(self, request: Any, context: Any) -> api_pb2.AllocateResponse:
        async with self._lock:  # calls come one at a time from the kubelet; keep `served` consistent anyway
            try:
                pods = await self.list_pods()
            except Exception as error:  # the API server is away: the kubelet fails this admission, retried
                log.warning("allocate: cannot list this node's pods", error=str(error))
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, f"dra-operator agent: cannot list pods: {error}"
                )
            now = datetime.datetime.now(datetime.UTC)
            delivery.forget_admitted(self.served, pods)
            responses = []
            for _ in request.container_requests:
                try:
                    pod, container = delivery.next_container(pods, self.node, self.served, now)
                except delivery.NotServable as unservable:
                    log.warning("allocate refused", node=self.node, reason=str(unservable))
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"dra-operator: {unservable}")
                wanted = delivery.container_devices(pod, container)
                refusal = unhealthy_refusal(wanted, self.options.unhealthy())
                if refusal is not None:
                    log.warning("allocate refused", node=self.node, reason=refusal)
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"dra-operator: {refusal}")
                ensure_simulated_files(wanted, self.options)
                given = respond(wanted, self.options)
                delivery.mark_served(self.served, pod)
                self.allocations += 1
                meta = pod.get("metadata") or {}
                log.info(
                    "devices delivered",
                    pod=f"{meta.get('namespace')}/{meta.get('name')}",
                    container=container,
                    devices=list(wanted.devices),
                    gpus=list(wanted.gpu_uuids),
                )
                responses.append(given.message())
            return api_pb2.AllocateResponse(container_responses=responses)


async def _first_set(*events: asyncio.Event) -> None:
    """Wait until one of `events` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class DevicePlugin:
    """Serves `service` on `directory`/SOCKET_NAME and registers it with the kubelet there; again whenever
    the kubelet restarts (it deletes the plugin sockets when it starts)."""

    def __init__(
        self, service: DevicePluginService, directory: Path, resource: str = names.DEVICE_PLUGIN_RESOURCE
    ):
        self.service, self.directory, self.resource = service, directory, resource
        self.registrations = 0

    @property
    def socket(self) -> Path:
        return self.directory / SOCKET_NAME

    async def register(self) -> None:
        kubelet = self.directory / deviceplugin.KUBELET_SOCKET_NAME
        async with grpc.aio.insecure_channel(f"unix://{kubelet}") as channel:
            await api_pb2_grpc.RegistrationStub(channel).Register(  # type: ignore[no-untyped-call]
                api_pb2.RegisterRequest(
                    version=deviceplugin.VERSION,
                    endpoint=SOCKET_NAME,
                    resource_name=self.resource,
                    options=api_pb2.DevicePluginOptions(),
                ),
                timeout=10,
            )
        self.registrations += 1
        log.info("registered with the kubelet", resource=self.resource, socket=str(self.socket))

    async def run(self, poll: float = 1.0) -> None:
        """Until cancelled: serve, register (retrying while the kubelet is away), and start over when the
        socket disappears."""
        while True:
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()
            server = grpc.aio.server()
            api_pb2_grpc.add_DevicePluginServicer_to_server(self.service, server)  # type: ignore[no-untyped-call]
            server.add_insecure_port(f"unix://{self.socket}")
            await server.start()
            try:
                while True:
                    try:
                        await self.register()
                        break
                    except grpc.aio.AioRpcError as error:
                        log.info("kubelet not answering registration yet", error=error.details())
                        await asyncio.sleep(poll)
                while self.socket.exists():  # noqa: ASYNC110 - a file's disappearance has no event to wait on here
                    await asyncio.sleep(poll)
                log.info("plugin socket removed (kubelet restarted?): serving and registering again")
            finally:
                await server.stop(grace=None)


def pod_lister(api_client: Any, node: str) -> PodLister:
    """Pods bound to `node`, as plain dicts (one LIST per call: Allocate must see the latest bindings)."""

    async def list_pods() -> list[Json]:
        from kubernetes_asyncio import client

        core = client.CoreV1Api(api_client)
        answer = await core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}")
        items: list[Json] = api_client.sanitize_for_serialization(answer).get("items") or []
        return items

    return list_pods
