"""The NVML backend against patched pynvml functions: attribute mapping, MIG devices, missing library, failing
devices, Xid events, and the agent's `--print` / error exits on such a fake machine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest
import yaml

from dra_operator import cli
from dra_operator.agent.health import WHOLE_GPU, HealthEvent
from dra_operator.agent.inventory import Version
from dra_operator.agent.nvml import (
    NvmlBackend,
    NvmlUnavailable,
    XidWatcher,
    binary_si,
    cuda_driver_version,
    mig_device_name,
    mig_memory_gb,
    mig_profile_name,
    pcie_bus_id,
)
from dra_operator.api.quantity import Quantity

MIB = 2**20

# A100-SXM4-40GB GPU-instance profiles as NVML lists them: index -> (id, slices, memory MiB, SMs).
A100_PROFILES = {
    0: (19, 1, 4864, 14),  # 1g.5gb
    1: (14, 2, 9984, 28),  # 2g.10gb
    2: (9, 3, 19968, 42),  # 3g.20gb
    3: (5, 4, 19968, 56),  # 4g.20gb
    4: (0, 7, 40192, 98),  # 7g.40gb
    7: (20, 1, 4864, 14),  # 1g.5gb+me
    9: (15, 1, 9984, 14),  # 1g.10gb
}


@dataclass
class FakeMig:
    uuid: str
    gi_id: int
    ci_id: int
    profile_index: int
    start: int
    size: int
    ci_slices: int | None = None  # None: as many as the GPU instance


@dataclass
class FakeGpu:
    uuid: str
    minor: int
    name: str = "NVIDIA A100-SXM4-40GB"
    brand: int = 2  # Tesla
    arch: int = 7  # Ampere
    cc: tuple[int, int] = (8, 0)
    bus: str = "00000000:3B:00.0"
    memory: int | None = 40960 * MIB
    migs: list[FakeMig] | None = None  # None: MIG mode off
    mig_capable: bool = True
    fail: set[str] = field(default_factory=set)  # pynvml function names that fail for this GPU


@dataclass
class FakeNvml:
    """A machine as pynvml would show it; `install` patches the pynvml module with it."""

    gpus: list[FakeGpu]
    driver_version: str = "580.159.04"
    cuda_version: int = 13000
    init_error: int | None = None
    events: list[Any] = field(default_factory=list)
    registered: list[int] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        handles = {id(g): g for g in self.gpus}
        migs = {id(m): (g, m) for g in self.gpus for m in g.migs or []}

        def gpu(handle: Any, call: str) -> FakeGpu:
            found = handles[handle]
            if call in found.fail:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
            return found

        def init() -> None:
            if self.init_error is not None:
                raise pynvml.NVMLError(self.init_error)

        def get_uuid(handle: Any) -> str:
            if handle in migs:
                return migs[handle][1].uuid
            return gpu(handle, "nvmlDeviceGetUUID").uuid

        def memory(handle: Any) -> Any:
            found = gpu(handle, "nvmlDeviceGetMemoryInfo")
            if found.memory is None:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return SimpleNamespace(total=found.memory, free=found.memory, used=0)

        def mig_mode(handle: Any) -> list[int]:
            found = gpu(handle, "nvmlDeviceGetMigMode")
            if not found.mig_capable:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return [1, 1] if found.migs is not None else [0, 0]

        def profile_info(handle: Any, index: int, version: int = 2) -> Any:
            gpu(handle, "nvmlDeviceGetGpuInstanceProfileInfo")
            if index not in A100_PROFILES:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            pid, slices, mem, sms = A100_PROFILES[index]
            return SimpleNamespace(
                id=pid,
                sliceCount=slices,
                memorySizeMB=mem,
                multiprocessorCount=sms,
                copyEngineCount=slices,
                decoderCount=0 if slices < 2 else 1,
                encoderCount=0,
                jpegCount=0,
                ofaCount=0,
            )

        def mig_handle(handle: Any, slot: int) -> Any:
            found = gpu(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
            if found.migs is None or slot >= len(found.migs):
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
            return id(found.migs[slot])

        def gi_info(gi: Any) -> Any:
            _, mig = gi
            return SimpleNamespace(
                id=mig.gi_id,
                profileId=A100_PROFILES[mig.profile_index][0],
                placement=SimpleNamespace(start=mig.start, size=mig.size),
            )

        def gi_by_id(handle: Any, gi_id: int) -> Any:
            found = gpu(handle, "nvmlDeviceGetGpuInstanceById")
            return next((found, m) for m in found.migs or [] if m.gi_id == gi_id)

        def attributes(mig_handle: Any) -> Any:
            _, mig = migs[mig_handle]
            slices = A100_PROFILES[mig.profile_index][1]
            return SimpleNamespace(
                computeInstanceSliceCount=mig.ci_slices or slices, gpuInstanceSliceCount=slices
            )

        def wait(event_set: Any, timeout_ms: int) -> Any:
            if not self.events:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
            event = self.events.pop(0)
            if isinstance(event, int):
                raise pynvml.NVMLError(event)
            return event

        patches: dict[str, Any] = {
            "nvmlInit": init,
            "nvmlShutdown": lambda: None,
            "nvmlDeviceGetCount": lambda: len(self.gpus),
            "nvmlSystemGetDriverVersion": lambda: self.driver_version,
            "nvmlSystemGetCudaDriverVersion": lambda: self.cuda_version,
            "nvmlDeviceGetHandleByIndex": lambda i: (
                id(self.gpus[i])
                if "handle" not in self.gpus[i].fail
                else (_ for _ in ()).throw(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST))
            ),
            "nvmlDeviceGetUUID": get_uuid,
            "nvmlDeviceGetMinorNumber": lambda h: gpu(h, "nvmlDeviceGetMinorNumber").minor,
            "nvmlDeviceGetName": lambda h: gpu(h, "nvmlDeviceGetName").name,
            "nvmlDeviceGetBrand": lambda h: gpu(h, "nvmlDeviceGetBrand").brand,
            "nvmlDeviceGetArchitecture": lambda h: gpu(h, "nvmlDeviceGetArchitecture").arch,
            "nvmlDeviceGetCudaComputeCapability": lambda h: gpu(h, "nvmlDeviceGetCudaComputeCapability").cc,
            "nvmlDeviceGetPciInfo": lambda h: SimpleNamespace(busId=gpu(h, "nvmlDeviceGetPciInfo").bus),
            "nvmlDeviceGetMemoryInfo": memory,
            "nvmlDeviceGetMigMode": mig_mode,
            "nvmlDeviceGetGpuInstanceProfileInfo": profile_info,
            "nvmlDeviceGetMaxMigDeviceCount": lambda h: 7,
            "nvmlDeviceGetMigDeviceHandleByIndex": mig_handle,
            "nvmlDeviceGetGpuInstanceId": lambda m: migs[m][1].gi_id,
            "nvmlDeviceGetComputeInstanceId": lambda m: migs[m][1].ci_id,
            "nvmlDeviceGetGpuInstanceById": gi_by_id,
            "nvmlGpuInstanceGetInfo": gi_info,
            "nvmlDeviceGetAttributes": attributes,
            "nvmlEventSetCreate": lambda: "event-set",
            "nvmlEventSetFree": lambda s: None,
            "nvmlDeviceGetSupportedEventTypes": lambda h: 0x8 | 0x4,
            "nvmlDeviceRegisterEvents": lambda h, mask, s: self.registered.append(mask),
            "nvmlEventSetWait_v2": wait,
        }
        for name, function in patches.items():
            monkeypatch.setattr(pynvml, name, function)


def h100(minor: int = 0, **changes: Any) -> FakeGpu:
    base = FakeGpu(
        uuid=f"GPU-{minor:08d}-aaaa-bbbb-cccc-dddddddddddd",
        minor=minor,
        name="NVIDIA H100 80GB HBM3",
        brand=14,
        arch=9,
        cc=(9, 0),
        bus=f"00000000:{0x18 + minor:02X}:00.0",
        memory=81559 * MIB,
    )
    return dataclasses.replace(base, **changes)


def read(monkeypatch: pytest.MonkeyPatch, machine: FakeNvml) -> Any:
    machine.install(monkeypatch)
    backend = NvmlBackend("gpu.nvidia.com")
    backend.open()
    try:
        return backend.read()
    finally:
        backend.close()


# ------------------------------------------------------------------------------------ conversions


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(12040, "12.4.0"), (13000, "13.0.0"), (11080, "11.8.0"), (12090, "12.9.0"), (12020, "12.2.0")],
)
def test_cuda_driver_version_is_major_minor(raw: int, expected: str) -> None:
    assert cuda_driver_version(raw) == Version(expected)


@pytest.mark.parametrize(
    ("count", "expected"),
    [(0, "0"), (1000, "1000"), (1024, "1Ki"), (81559 * MIB, "81559Mi"), (40 * 2**30, "40Gi"), (1025, "1025")],
)
def test_bytes_are_written_as_binary_quantities(count: int, expected: str) -> None:
    assert binary_si(count) == expected
    assert Quantity.parse(expected) == Quantity.parse(count)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("00000000:3B:00.0", "0000:3b:00.0"),
        ("00000001:AF:00.0", "0001:af:00.0"),
        ("0000:01:00.0", "0000:01:00.0"),
    ],
)
def test_pcie_bus_id_is_linux_form(raw: str, expected: str) -> None:
    assert pcie_bus_id(raw) == expected


@pytest.mark.parametrize(
    ("index", "total_mib", "ci_slices", "expected"),
    [
        (0, 40960, 1, "1g.5gb"),
        (1, 40960, 2, "2g.10gb"),
        (2, 40960, 3, "3g.20gb"),
        (4, 40960, 7, "7g.40gb"),
        (7, 40960, 1, "1g.5gb+me"),
        (9, 40960, 1, "1g.10gb"),
        (2, 40960, 1, "1c.3g.20gb"),
        (0, 81559, 1, "1g.10gb"),  # H100 80GB: 1g profile of 9856 MiB
    ],
)
def test_mig_profile_names_match_nvidia_smi(
    index: int, total_mib: int, ci_slices: int, expected: str
) -> None:
    _, slices, mem, _ = A100_PROFILES[index]
    mem = 9856 if total_mib == 81559 else mem
    assert mig_profile_name(index, slices, ci_slices, mig_memory_gb(total_mib * MIB, mem)) == expected


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("1g.5gb", "gpu-0-mig-1g5gb-19-0"),
        ("1g.5gb+me", "gpu-0-mig-1g5gb-me-19-0"),
        ("1c.3g.20gb", "gpu-0-mig-1c3g20gb-19-0"),
    ],
)
def test_mig_device_names_are_dns_labels(profile: str, expected: str) -> None:
    assert mig_device_name(0, profile, 19, 0) == expected


# ---------------------------------------------------------------------------------- full GPUs


def test_gpu_attributes_map_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = h100(minor=3)
    inventory = read(monkeypatch, FakeNvml([gpu]))
    (device,) = inventory.devices
    assert device.name == "gpu-3"
    expected = {
        "type": "gpu",
        "uuid": gpu.uuid,
        "productName": gpu.name,
        "brand": "Nvidia",
        "architecture": "Hopper",
        "cudaComputeCapability": Version("9.0.0"),
        "driverVersion": Version("580.159.4"),
        "cudaDriverVersion": Version("13.0.0"),
        "pcieBusID": "0000:1b:00.0",
    }
    assert dict(device.attributes) == expected
    assert dict(device.capacity) == {"memory": "81559Mi"}
    assert device.locator == (gpu.uuid, WHOLE_GPU, WHOLE_GPU)
    assert inventory.skipped == ()


@pytest.mark.parametrize(
    ("brand", "arch", "brand_name", "arch_name"),
    [(2, 7, "Tesla", "Ampere"), (5, 8, "GeForce", "Ada Lovelace"), (99, 99, "Unknown", "Unknown")],
)
def test_brand_and_architecture_names(
    monkeypatch: pytest.MonkeyPatch, brand: int, arch: int, brand_name: str, arch_name: str
) -> None:
    (device,) = read(monkeypatch, FakeNvml([h100(brand=brand, arch=arch)])).devices
    assert (device.attributes["brand"], device.attributes["architecture"]) == (brand_name, arch_name)


def test_memory_not_supported_leaves_capacity_out(monkeypatch: pytest.MonkeyPatch) -> None:
    (device,) = read(monkeypatch, FakeNvml([h100(memory=None)])).devices
    assert "memory" not in device.capacity


def test_gpu_without_mig_support_is_a_plain_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    (device,) = read(monkeypatch, FakeNvml([h100(mig_capable=False)])).devices
    assert device.attributes["type"] == "gpu"


@pytest.mark.parametrize(
    "failing_call", ["handle", "nvmlDeviceGetName", "nvmlDeviceGetPciInfo", "nvmlDeviceGetMigMode"]
)
def test_a_failing_gpu_is_skipped_and_the_others_reported(
    monkeypatch: pytest.MonkeyPatch, failing_call: str
) -> None:
    machine = FakeNvml([h100(0), h100(1, fail={failing_call}), h100(2)])
    inventory = read(monkeypatch, machine)
    assert [d.name for d in inventory.devices] == ["gpu-0", "gpu-2"]
    ((where, reason),) = inventory.skipped
    assert "index 1" in where
    assert reason


# ---------------------------------------------------------------------------------------- MIG


def mig_gpu() -> FakeGpu:
    return FakeGpu(
        uuid="GPU-a100",
        minor=0,
        migs=[
            FakeMig("MIG-one", gi_id=7, ci_id=0, profile_index=2, start=4, size=4),  # 3g.20gb
            FakeMig("MIG-two", gi_id=9, ci_id=0, profile_index=0, start=0, size=1),  # 1g.5gb
            FakeMig("MIG-three", gi_id=11, ci_id=0, profile_index=7, start=1, size=1),  # 1g.5gb+me
        ],
    )


def test_mig_devices_replace_their_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = mig_gpu()
    inventory = read(monkeypatch, FakeNvml([parent]))
    by_name = inventory.by_name()
    assert set(by_name) == {"gpu-0-mig-3g20gb-9-4", "gpu-0-mig-1g5gb-19-0", "gpu-0-mig-1g5gb-me-20-1"}
    for mig in parent.migs or []:
        _, _, mem, sms = A100_PROFILES[mig.profile_index]
        (device,) = [d for d in inventory.devices if d.attributes["uuid"] == mig.uuid]
        assert device.attributes["type"] == "mig"
        assert device.attributes["parentUUID"] == parent.uuid
        assert device.attributes["productName"] == parent.name
        assert Quantity.parse(device.capacity["memory"]) == Quantity.parse(mem * MIB)
        assert device.capacity["multiprocessors"] == sms
        assert device.locator == (parent.uuid, mig.gi_id, mig.ci_id)
        slices_held = {k for k in device.capacity if k.startswith("memorySlice")}
        assert slices_held == {f"memorySlice{i}" for i in range(mig.start, mig.start + mig.size)}
    assert by_name["gpu-0-mig-3g20gb-9-4"].attributes["profile"] == "3g.20gb"


def test_mig_mode_without_instances_publishes_nothing_for_that_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = read(monkeypatch, FakeNvml([dataclasses.replace(mig_gpu(), migs=[]), h100(1)]))
    assert [d.name for d in inventory.devices] == ["gpu-1"]


def test_a_failing_mig_device_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = mig_gpu()
    assert parent.migs is not None
    parent.migs[1] = dataclasses.replace(parent.migs[1], profile_index=3)  # the GPU lists no GI of that id
    parent.migs[1].gi_id = 9
    broken = {**A100_PROFILES}
    inventory_profiles = broken.pop(3)
    monkeypatch.setattr(__name__ + ".A100_PROFILES", {**broken, 3: inventory_profiles})
    machine = FakeNvml([parent])
    machine.install(monkeypatch)
    # The GPU-instance lookup breaks for one MIG device only.
    real = pynvml.nvmlGpuInstanceGetInfo

    def flaky(gi: Any) -> Any:
        if gi[1].uuid == "MIG-two":
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
        return real(gi)

    monkeypatch.setattr(pynvml, "nvmlGpuInstanceGetInfo", flaky)
    backend = NvmlBackend("gpu.nvidia.com")
    backend.open()
    inventory = backend.read()
    assert {d.attributes["uuid"] for d in inventory.devices} == {"MIG-one", "MIG-three"}
    ((where, _),) = inventory.skipped
    assert "MIG slot 1" in where


# ------------------------------------------------------------------------------- init failures


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so.1"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "driver is not loaded"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "permission"),
        (pynvml.NVML_ERROR_UNKNOWN, "NVML initialisation failed"),
    ],
)
def test_init_failures_become_one_line_messages(
    monkeypatch: pytest.MonkeyPatch, code: int, fragment: str
) -> None:
    FakeNvml([], init_error=code).install(monkeypatch)
    with pytest.raises(NvmlUnavailable) as caught:
        NvmlBackend("gpu.nvidia.com").open()
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------- Xid events


def event(handle: Any, xid: int, gi: int = WHOLE_GPU, ci: int = WHOLE_GPU, kind: int = 0x8) -> Any:
    return SimpleNamespace(
        device=handle, eventType=kind, eventData=xid, gpuInstanceId=gi, computeInstanceId=ci
    )


def test_xid_watcher_turns_events_into_health_events(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = h100()
    machine = FakeNvml([gpu])
    machine.events = [
        event(id(gpu), 79),
        event(id(gpu), 48, gi=3, ci=0),
        event(id(gpu), 1, kind=0x4),  # not a critical Xid
        pynvml.NVML_ERROR_GPU_IS_LOST,
    ]
    machine.install(monkeypatch)
    watcher = XidWatcher(lambda e: None, poll_ms=1)
    watcher._event_set = pynvml.nvmlEventSetCreate()
    seen = [watcher.wait_once() for _ in range(5)]
    assert seen == [
        HealthEvent(kind="xid", uuid=gpu.uuid, xid=79),
        HealthEvent(kind="xid", uuid=gpu.uuid, gpu_instance=3, compute_instance=0, xid=48),
        None,
        HealthEvent(kind="gpu-lost"),
        None,  # timeout
    ]


def test_xid_watcher_registers_every_gpu_and_delivers_events(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [h100(0), h100(1)]
    machine = FakeNvml(gpus)
    machine.events = [event(id(gpus[1]), 79)]
    machine.install(monkeypatch)
    delivered: list[HealthEvent] = []
    import threading

    got = threading.Event()

    def on_event(health_event: HealthEvent) -> None:
        delivered.append(health_event)
        got.set()

    watcher = XidWatcher(on_event, poll_ms=5)
    assert watcher.start() == 2
    try:
        assert got.wait(timeout=10)
    finally:
        watcher.stop()
    assert machine.registered == [0x8, 0x8]
    assert delivered == [HealthEvent(kind="xid", uuid=gpus[1].uuid, xid=79)]


# --------------------------------------------------------------------------- the CLI on a fake GPU


def test_print_on_a_fake_gpu_machine(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dra_operator.api.resource import ResourceSlice, load_object

    machine = FakeNvml([h100(0), mig_gpu()])
    machine.install(monkeypatch)
    assert cli.main(["agent", "--backend", "nvml", "--print", "--node", "gpu-node"]) == 0
    (document,) = list(yaml.safe_load_all(capsys.readouterr().out))
    resource_slice = load_object(document)
    assert isinstance(resource_slice, ResourceSlice)
    assert resource_slice.spec.driver == "gpu.nvidia.com"
    assert resource_slice.spec.node_name == resource_slice.spec.pool.name == "gpu-node"
    devices = {d.name: d for d in resource_slice.spec.devices or []}
    assert devices["gpu-0"].attributes is not None
    assert devices["gpu-0"].attributes["driverVersion"].version == "580.159.4"
    assert devices["gpu-0"].attributes["uuid"].string == machine.gpus[0].uuid
    assert {n for n in devices if "-mig-" in n} == {
        "gpu-0-mig-3g20gb-9-4",
        "gpu-0-mig-1g5gb-19-0",
        "gpu-0-mig-1g5gb-me-20-1",
    }


@pytest.mark.parametrize(
    ("machine", "fragment"),
    [
        (FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND), "libnvidia-ml.so.1"),
        (FakeNvml([]), "no usable NVIDIA GPU"),
        (FakeNvml([h100(0, fail={"handle"})]), "no usable NVIDIA GPU"),
    ],
)
def test_no_nvml_or_no_gpu_is_one_line_and_nonzero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], machine: FakeNvml, fragment: str
) -> None:
    machine.install(monkeypatch)
    status = cli.main(["agent", "--print", "--node", "gpu-node"])
    captured = capsys.readouterr()
    assert status != 0
    assert captured.out == ""
    error_lines = [line for line in captured.err.splitlines() if line.startswith("dra-operator agent:")]
    assert len(error_lines) == 1
    assert fragment in error_lines[0]
    assert "Traceback" not in captured.err
