"""NVML backend: reads the node's NVIDIA GPUs (and MIG devices) through pynvml; watches critical Xids.

Names, attributes and capacities follow the NVIDIA DRA GPU driver (kubernetes-sigs/dra-driver-nvidia-gpu), so
selectors written for it work unchanged:
- a full GPU is `gpu-<minor>` with `type=gpu`, `uuid`, `productName`, `brand`, `architecture`, `pcieBusID`
  (strings), `cudaComputeCapability`, `driverVersion`, `cudaDriverVersion` (versions) and capacity `memory`
  (bytes);
- with MIG mode on, the GPU itself is not published; each MIG device is
  `gpu-<minor>-mig-<profile without dots>-<GI profile id>-<placement start>` with `type=mig`, its own
  `uuid`, `parentUUID`, `profile` (e.g. "1g.10gb") and the parent's other attributes, and capacities
  `multiprocessors`, `copyEngines`, `decoders`, `encoders`, `jpegEngines`, `ofaEngines`, `memory` and one
  `memorySlice<i>` per memory slice.

All pynvml calls go through the module (`pynvml.nvmlX(...)`) so tests can patch them.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from dra_operator.agent.health import WHOLE_GPU, HealthEvent
from dra_operator.agent.inventory import AttributeValue, DeviceInfo, Inventory, Version

log = structlog.get_logger("dra_operator.agent.nvml")

try:  # nvidia-ml-py is a dependency, but a broken install must still give a one-line error.
    import pynvml
except ImportError:  # pragma: no cover - exercised only on broken installs
    pynvml = None


class NvmlUnavailable(Exception):
    """NVML cannot be used on this machine; the message is one line, meant for the operator of the node."""


# nvmlBrandType_t and nvmlDeviceArchitecture_t values, named as go-nvlib (so the NVIDIA DRA driver) does.
BRANDS = {
    0: "Unknown", 1: "Quadro", 2: "Tesla", 3: "NVS", 4: "Grid", 5: "GeForce", 6: "Titan", 7: "NvidiaVApps",
    8: "NvidiaVPC", 9: "NvidiaVCS", 10: "NvidiaVWS", 11: "NvidiaCloudGaming", 12: "QuadroRTX",
    13: "NvidiaRTX", 14: "Nvidia", 15: "GeForceRTX", 16: "TitanRTX",
}  # fmt: skip
ARCHITECTURES = {
    2: "Kepler", 3: "Maxwell", 4: "Pascal", 5: "Volta", 6: "Turing", 7: "Ampere", 8: "Ada Lovelace",
    9: "Hopper", 10: "Blackwell", 13: "Rubin",
}  # fmt: skip

# GPU-instance profile indices (NVML_GPU_INSTANCE_PROFILE_*) that add a suffix to the profile name.
_PROFILE_SUFFIX = {7: "+me", 8: "+me", 15: "+me.all", 16: "+me.all", 10: "+gfx", 11: "+gfx", 12: "+gfx",
                   17: "+gfx",
                   13: "-me", 14: "-me"}  # fmt: skip
_PROFILE_INDEX_COUNT = 0x12  # NVML_GPU_INSTANCE_PROFILE_COUNT
_XID_CRITICAL = 0x8  # nvmlEventTypeXidCriticalError


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _error_class(name: str) -> type[BaseException]:
    found: type[BaseException] = getattr(pynvml, name, None) or pynvml.NVMLError
    return found


def describe_init_error(error: BaseException) -> str:
    """One line saying why NVML cannot start, and what the node's operator can do about it."""
    if isinstance(error, _error_class("NVMLError_LibraryNotFound")):
        return (
            "NVML library (libnvidia-ml.so.1) not found: this node has no NVIDIA driver, or it is not "
            "visible in this container (use the NVIDIA container runtime or mount the driver)"
        )
    if isinstance(error, _error_class("NVMLError_DriverNotLoaded")):
        return "NVIDIA kernel driver is not loaded on this node (NVML: Driver Not Loaded)"
    if isinstance(error, _error_class("NVMLError_NoPermission")):
        return "no permission to use NVML (run the agent with access to /dev/nvidia*)"
    if isinstance(error, _error_class("NVMLError_LibRmVersionMismatch")):
        return "NVML library and NVIDIA kernel driver versions differ (reboot or reload the driver)"
    return f"NVML initialisation failed: {error}"


def cuda_driver_version(raw: int) -> Version:
    """NVML reports CUDA 12.4 as 12040; the DRA driver publishes major.minor (patch dropped) as semver."""
    return Version.coerce(f"{raw // 1000}.{(raw % 1000) // 10}")


def binary_si(count: int) -> str:
    """Bytes as Kubernetes writes a BinarySI quantity, as the NVIDIA driver publishes them: 81559Mi, 1000."""
    if count < 1024:
        return str(count)
    for exponent, suffix in ((60, "Ei"), (50, "Pi"), (40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")):
        if count % 2**exponent == 0:
            return f"{count >> exponent}{suffix}"
    return str(count)


def pcie_bus_id(raw: str) -> str:
    """NVML's "00000000:3B:00.0" as Linux and the DRA driver write it: "0000:3b:00.0"."""
    domain, sep, rest = raw.lower().partition(":")
    if len(domain) == 8 and domain.startswith("0000"):  # NVML writes a 32-bit domain; Linux shows 16 bits
        domain = domain[4:]
    return domain + sep + rest


def mig_memory_gb(total_device_bytes: int, mig_memory_mib: int) -> int:
    """The "<N>gb" in a MIG profile name, computed as nvidia-smi does (eighths of the GPU, rounded)."""
    fraction = (mig_memory_mib * 1024 * 1024) / total_device_bytes
    fraction = math.ceil(fraction * 8) / 8
    total_gb = (total_device_bytes + 2**30 - 1) // 2**30
    return round(fraction * total_gb)


def mig_profile_name(profile_index: int, gi_slices: int, ci_slices: int, memory_gb: int) -> str:
    """ "1g.10gb", "1c.2g.20gb", "1g.10gb+me" … (the names nvidia-smi and the DRA driver use)."""
    suffix = _PROFILE_SUFFIX.get(profile_index, "")
    if ci_slices == gi_slices:
        return f"{gi_slices}g.{memory_gb}gb{suffix}"
    return f"{ci_slices}c.{gi_slices}g.{memory_gb}gb{suffix}"


def mig_device_name(parent_minor: int, profile: str, profile_id: int, placement_start: int) -> str:
    """The DRA driver's canonical MIG device name, e.g. gpu-0-mig-1g10gb-19-0 (a DNS label: no dots)."""
    cleaned = re.sub(r"[^a-z0-9-]", "-", profile.replace(".", "").lower()).strip("-")
    return f"gpu-{parent_minor}-mig-{cleaned}-{profile_id}-{placement_start}"


@dataclass(frozen=True)
class _Common:
    driver_version: Version
    cuda_driver_version: Version


@dataclass(frozen=True)
class _Gpu:
    handle: Any
    minor: int
    uuid: str
    memory_bytes: int | None
    attributes: dict[str, AttributeValue]


class NvmlBackend:
    """Reads an Inventory from NVML. `open()` first (raises NvmlUnavailable), `close()` at the end."""

    def __init__(self, driver: str) -> None:
        self.driver = driver
        self._open = False

    def open(self) -> None:
        if pynvml is None:
            raise NvmlUnavailable("the Python package nvidia-ml-py (pynvml) is not installed")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            raise NvmlUnavailable(describe_init_error(error)) from None
        except OSError as error:  # a library that exists but cannot be loaded
            raise NvmlUnavailable(f"NVML library could not be loaded: {error}") from None
        self._open = True

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as error:
                log.warning("nvml shutdown failed", error=str(error))

    def read_pools(self) -> list[Inventory]:
        return [self.read()]

    def read(self) -> Inventory:
        """Every GPU (or its MIG devices). A failing device is skipped and logged; the others are reported."""
        try:
            count = pynvml.nvmlDeviceGetCount()
            common = _Common(
                driver_version=Version.coerce(_text(pynvml.nvmlSystemGetDriverVersion())),
                cuda_driver_version=cuda_driver_version(pynvml.nvmlSystemGetCudaDriverVersion()),
            )
        except pynvml.NVMLError as error:
            raise NvmlUnavailable(f"NVML could not list GPUs: {error}") from None
        devices: list[DeviceInfo] = []
        skipped: list[tuple[str, str]] = []
        for index in range(count):
            try:
                gpu = self._read_gpu(index, common)
                if self._mig_enabled(gpu.handle):
                    migs, failed = self._read_migs(gpu)
                    devices.extend(migs)
                    skipped.extend(failed)
                    if not migs and not failed:
                        log.warning(
                            "MIG mode is on but no MIG device exists: nothing to publish", gpu=gpu.uuid
                        )
                else:
                    devices.append(self._gpu_device(gpu))
            except pynvml.NVMLError as error:
                log.warning("skipping GPU that NVML cannot read", index=index, error=str(error))
                skipped.append((f"GPU index {index}", str(error)))
        return Inventory(driver=self.driver, devices=tuple(devices), skipped=tuple(skipped))

    def _read_gpu(self, index: int, common: _Common) -> _Gpu:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
        major, minor_cc = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        try:
            memory_bytes: int | None = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        except _error_class("NVMLError_NotSupported"):
            memory_bytes = None  # e.g. some integrated GPUs; published without a memory capacity
        attributes: dict[str, AttributeValue] = {
            "type": "gpu",
            "uuid": uuid,
            "productName": _text(pynvml.nvmlDeviceGetName(handle)),
            "brand": BRANDS.get(int(pynvml.nvmlDeviceGetBrand(handle)), "Unknown"),
            "architecture": ARCHITECTURES.get(int(pynvml.nvmlDeviceGetArchitecture(handle)), "Unknown"),
            "cudaComputeCapability": Version.coerce(f"{major}.{minor_cc}"),
            "driverVersion": common.driver_version,
            "cudaDriverVersion": common.cuda_driver_version,
            "pcieBusID": pcie_bus_id(_text(pynvml.nvmlDeviceGetPciInfo(handle).busId)),
        }
        return _Gpu(
            handle=handle,
            minor=int(pynvml.nvmlDeviceGetMinorNumber(handle)),
            uuid=uuid,
            memory_bytes=memory_bytes,
            attributes=attributes,
        )

    def _gpu_device(self, gpu: _Gpu) -> DeviceInfo:
        capacity: dict[str, str | int] = (
            {} if gpu.memory_bytes is None else {"memory": binary_si(gpu.memory_bytes)}
        )
        return DeviceInfo(
            name=f"gpu-{gpu.minor}",
            attributes=gpu.attributes,
            capacity=capacity,
            locator=(gpu.uuid, WHOLE_GPU, WHOLE_GPU),
        )

    @staticmethod
    def _mig_enabled(handle: Any) -> bool:
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
        except (_error_class("NVMLError_NotSupported"), _error_class("NVMLError_FunctionNotFound")):
            return False
        return int(current) == 1  # NVML_DEVICE_MIG_ENABLE

    def _gi_profiles(self, handle: Any) -> dict[int, tuple[int, Any]]:
        """GPU-instance profile id -> (profile index, profile info) for the profiles this GPU supports."""
        profiles: dict[int, tuple[int, Any]] = {}
        for index in range(_PROFILE_INDEX_COUNT):
            try:
                try:
                    info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, index)
                except _error_class("NVMLError_FunctionNotFound"):  # drivers older than the V call
                    info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, index, version=1)
            except pynvml.NVMLError:
                continue  # not supported on this GPU (NotSupported / InvalidArgument)
            profiles[int(info.id)] = (index, info)
        return profiles

    def _read_migs(self, gpu: _Gpu) -> tuple[list[DeviceInfo], list[tuple[str, str]]]:
        profiles = self._gi_profiles(gpu.handle)
        devices: list[DeviceInfo] = []
        failed: list[tuple[str, str]] = []
        for slot in range(int(pynvml.nvmlDeviceGetMaxMigDeviceCount(gpu.handle))):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu.handle, slot)
            except (_error_class("NVMLError_NotFound"), _error_class("NVMLError_InvalidArgument")):
                continue  # an empty slot
            except pynvml.NVMLError as error:
                failed.append((f"GPU {gpu.uuid} MIG slot {slot}", str(error)))
                log.warning(
                    "skipping MIG device that NVML cannot read", gpu=gpu.uuid, slot=slot, error=str(error)
                )
                continue
            try:
                devices.append(self._mig_device(gpu, mig, profiles))
            except (pynvml.NVMLError, LookupError) as error:
                failed.append((f"GPU {gpu.uuid} MIG slot {slot}", str(error)))
                log.warning(
                    "skipping MIG device that NVML cannot read", gpu=gpu.uuid, slot=slot, error=str(error)
                )
        return devices, failed

    def _mig_device(self, gpu: _Gpu, mig: Any, profiles: dict[int, tuple[int, Any]]) -> DeviceInfo:
        uuid = _text(pynvml.nvmlDeviceGetUUID(mig))
        gi_id = int(pynvml.nvmlDeviceGetGpuInstanceId(mig))
        ci_id = int(pynvml.nvmlDeviceGetComputeInstanceId(mig))
        gi_info = pynvml.nvmlGpuInstanceGetInfo(pynvml.nvmlDeviceGetGpuInstanceById(gpu.handle, gi_id))
        profile_id = int(gi_info.profileId)
        if profile_id not in profiles:
            raise LookupError(
                f"MIG device {uuid}: GPU-instance profile id {profile_id} is not listed by the GPU"
            )
        profile_index, profile = profiles[profile_id]
        gi_slices = int(profile.sliceCount)
        try:
            ci_slices = int(pynvml.nvmlDeviceGetAttributes(mig).computeInstanceSliceCount)
        except pynvml.NVMLError:
            ci_slices = gi_slices  # the common case: one compute instance spanning the GPU instance
        memory_mib = int(profile.memorySizeMB)  # NVML documents this field in MiB despite its name
        total = gpu.memory_bytes or memory_mib * 2**20
        profile_name = mig_profile_name(profile_index, gi_slices, ci_slices, mig_memory_gb(total, memory_mib))
        start, size = int(gi_info.placement.start), int(gi_info.placement.size)

        attributes = {k: v for k, v in gpu.attributes.items() if k != "uuid"}
        attributes.update(type="mig", uuid=uuid, parentUUID=gpu.uuid, profile=profile_name)
        capacity: dict[str, str | int] = {
            "multiprocessors": int(profile.multiprocessorCount),
            "copyEngines": int(profile.copyEngineCount),
            "decoders": int(profile.decoderCount),
            "encoders": int(profile.encoderCount),
            "jpegEngines": int(profile.jpegCount),
            "ofaEngines": int(profile.ofaCount),
            "memory": binary_si(memory_mib * 2**20),
        }
        for memory_slice in range(start, start + size):
            capacity[f"memorySlice{memory_slice}"] = 1
        return DeviceInfo(
            name=mig_device_name(gpu.minor, profile_name, profile_id, start),
            attributes=attributes,
            capacity=capacity,
            locator=(gpu.uuid, gi_id, ci_id),
        )


class XidWatcher:
    """Waits for NVML critical-Xid events in a thread and hands each one to `on_event` as a HealthEvent.

    NVML must be initialised (NvmlBackend.open) for the watcher's lifetime. GPUs that cannot register events
    are logged as unmonitored; they keep being published.
    """

    def __init__(self, on_event: Callable[[HealthEvent], None], poll_ms: int = 1000) -> None:
        self._on_event = on_event
        self._poll_ms = poll_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None

    def start(self) -> int:
        """Register every GPU; returns how many are monitored. Starts the waiting thread if any is."""
        self._event_set = pynvml.nvmlEventSetCreate()
        monitored = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                supported = int(pynvml.nvmlDeviceGetSupportedEventTypes(handle))
                if not supported & _XID_CRITICAL:
                    log.warning("GPU does not report Xid events: unmonitored", index=index)
                    continue
                pynvml.nvmlDeviceRegisterEvents(handle, _XID_CRITICAL, self._event_set)
                monitored += 1
            except pynvml.NVMLError as error:
                log.warning("cannot register Xid events: GPU unmonitored", index=index, error=str(error))
        if monitored:
            self._thread = threading.Thread(target=self._run, name="nvml-xid-watcher", daemon=True)
            self._thread.start()
        return monitored

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self._poll_ms / 1000)
        if self._event_set is not None:
            try:
                pynvml.nvmlEventSetFree(self._event_set)
            except pynvml.NVMLError as error:
                log.warning("freeing the NVML event set failed", error=str(error))
            self._event_set = None

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self.wait_once()
            if event is not None:
                self._on_event(event)

    def wait_once(self) -> HealthEvent | None:
        """One bounded wait: a HealthEvent, or None on timeout / an event of no interest."""
        try:
            data = pynvml.nvmlEventSetWait_v2(self._event_set, self._poll_ms)
        except _error_class("NVMLError_Timeout"):
            return None
        except _error_class("NVMLError_GpuIsLost"):
            log.error("NVML reports a GPU is lost: marking all devices")
            return HealthEvent(kind="gpu-lost")
        except pynvml.NVMLError as error:
            log.warning("waiting for NVML events failed", error=str(error))
            self._stop.wait(self._poll_ms / 1000)  # don't spin on a persistent error
            return None
        if int(data.eventType) != _XID_CRITICAL:
            return None
        try:
            uuid = _text(pynvml.nvmlDeviceGetUUID(data.device))
        except pynvml.NVMLError:
            log.error(
                "Xid event for a GPU whose UUID NVML cannot read: marking all devices",
                xid=int(data.eventData),
            )
            return HealthEvent(kind="gpu-lost")
        event = HealthEvent(
            kind="xid",
            uuid=uuid,
            gpu_instance=int(data.gpuInstanceId),
            compute_instance=int(data.computeInstanceId),
            xid=int(data.eventData),
        )
        log.warning("critical Xid", gpu=uuid, xid=event.xid, gi=event.gpu_instance, ci=event.compute_instance)
        return event
