"""`dra-operator agent`: the command line and the publish loop of the node agent.

    dra-operator agent --node NAME [--backend nvml|simulated] [--inventory FILE] [--driver NAME] [--print]
                       [--kubeconfig FILE] [--interval SECONDS] [--on-unhealthy withdraw|taint|evict]
                       [--no-watch-slices]
    dra-operator agent --withdraw-all [--kubeconfig FILE]

The node name defaults to $NODE_NAME (the chart sets it from the downward API, spec.nodeName). `--print`
writes the ResourceSlices as YAML to stdout and exits without contacting an API server. Otherwise the agent
publishes, then re-reads the devices every --interval seconds (and at once after an NVML critical-Xid event,
or a change to its slices by someone else, which its watch brings) and writes only what changed. Logs are
structured (JSON lines on stderr). Problems that stop the agent (no NVML, no GPU, a bad inventory file, no
node name) are one line on stderr and a non-zero exit, no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog
import yaml
from pydantic import ValidationError

from dra_operator.agent.deviceplugin import DEVICE_PLUGIN_PATH
from dra_operator.agent.health import WHOLE_GPU, DeviceHealth, HealthEvent, Policy
from dra_operator.agent.inventory import Inventory
from dra_operator.agent.nvml import NvmlBackend, NvmlUnavailable
from dra_operator.agent.simulated import InventoryFileError, SimulatedBackend

if TYPE_CHECKING:  # the client is imported only when publishing, so --print never needs it
    from kubernetes_asyncio.client import ApiClient

    from dra_operator.agent.publisher import SlicePublisher

DEFAULT_DRIVER = "gpu.nvidia.com"
DEFAULT_SLOTS = 128  # the device plugin's slots (see dra_operator.agent.deviceplugin.plugin)
NODE_ENV = "NODE_NAME"
INVENTORY_ENV = "DRA_AGENT_INVENTORY"
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 1

log = structlog.get_logger("dra_operator.agent")


class Backend(Protocol):
    def open(self) -> None: ...
    def close(self) -> None: ...
    def read_pools(self) -> list[Inventory]: ...


class AgentError(Exception):
    """Stops the agent with a one-line message and an exit status (2: wrong usage, 1: cannot run here)."""

    def __init__(self, message: str, status: int = EXIT_UNAVAILABLE) -> None:
        super().__init__(message)
        self.status = status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node", default=os.environ.get(NODE_ENV), help=f"this node's name (default: ${NODE_ENV})"
    )
    parser.add_argument(
        "--backend", choices=("nvml", "simulated"), default="nvml", help="where devices come from"
    )
    parser.add_argument(
        "--inventory",
        default=os.environ.get(INVENTORY_ENV),
        metavar="FILE",
        help=f"YAML inventory for --backend simulated (default: ${INVENTORY_ENV})",
    )
    parser.add_argument(
        "--driver",
        default=DEFAULT_DRIVER,
        help=f"driver of the published devices (default {DEFAULT_DRIVER}; simulated pools may set their own)",
    )
    parser.add_argument(
        "--print", action="store_true", dest="print_only", help="print the slices as YAML and exit"
    )
    parser.add_argument(
        "--withdraw-all",
        action="store_true",
        help="delete every ResourceSlice published by agents, on every node, and exit (the chart runs this "
        "after `helm uninstall` removed the agents)",
    )
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG / ~/.kube)"
    )
    parser.add_argument(
        "--interval", type=float, default=60.0, metavar="SECONDS", help="re-read period (default 60)"
    )
    parser.add_argument(
        "--watch-slices",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep this node's slices by a watch, so a pass with nothing to change asks the API server "
        "nothing and a hand edit is repaired at once (default); --no-watch-slices lists them each pass "
        "instead, trading kube-apiserver's memory for one watch (about 70 KiB, bench/agent_sync.py) for a "
        "list's CPU each pass",
    )
    parser.add_argument(
        "--on-unhealthy",
        choices=("withdraw", "taint", "evict"),
        default="withdraw",
        help="after a critical Xid: drop the device (default), keep it with a NoSchedule taint, or with a "
        "NoExecute taint (the operator then evicts the Pods holding it that do not tolerate it)",
    )
    plugin = parser.add_argument_group("device plugin (delivers the allocated devices to containers)")
    plugin.add_argument(
        "--device-plugin",
        action="store_true",
        help="serve the kubelet device-plugin API: each container that uses claims gets its devices' device "
        "nodes, mounts, env and CDI names from the kubelet (the operator must run with --device-plugin too)",
    )
    plugin.add_argument(
        "--device-plugin-dir",
        default=DEVICE_PLUGIN_PATH,
        metavar="DIR",
        help=f"the kubelet's device-plugin directory (default {DEVICE_PLUGIN_PATH})",
    )
    plugin.add_argument(
        "--device-plugin-slots",
        type=int,
        default=DEFAULT_SLOTS,
        metavar="N",
        help=f"containers with claims this node runs at once, at most (default {DEFAULT_SLOTS})",
    )
    plugin.add_argument(
        "--cdi", action="store_true", help="also name GPUs as CDI devices (nvidia.com/gpu=UUID)"
    )
    plugin.add_argument(
        "--simulated-devices-dir",
        default="/var/lib/dra-operator/devices",
        metavar="DIR",
        help="--backend simulated: host directory of the per-device files containers get mounted",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="default info"
    )


class _StderrLogger:
    """Writes each rendered line to whatever sys.stderr is at that moment (not the stream at configure time,
    which a test harness or a redirect may have closed since)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = msg


def _stderr_logger(*_args: object) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(level: str) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def make_backend(args: argparse.Namespace, node: str) -> Backend:
    if args.backend == "simulated":
        if not args.inventory:
            raise AgentError(f"--backend simulated needs --inventory FILE (or ${INVENTORY_ENV})", EXIT_USAGE)
        return SimulatedBackend(args.inventory, node, args.driver)
    return NvmlBackend(args.driver)


def read_checked(backend: Backend, backend_name: str) -> list[Inventory]:
    """Read once for start-up / --print: an NVML node without a single GPU is an error there."""
    pools = backend.read_pools()
    if backend_name == "nvml" and not any(p.devices for p in pools):
        skipped = [reason for p in pools for _, reason in p.skipped]
        detail = f" ({len(skipped)} failed: {skipped[0]})" if skipped else ""
        raise AgentError("NVML found no usable NVIDIA GPU on this node" + detail)
    return pools


def render_slices(
    node: str, pools: Sequence[Inventory], health: dict[str, DeviceHealth] | None = None
) -> str:
    from dra_operator.agent.slices import build_slice, slice_dict

    documents = []
    for pool in pools:
        shown = health[pool.driver].apply(pool) if health and pool.driver in health else pool
        if shown.devices:
            documents.append(slice_dict(build_slice(node, shown)))
    return yaml.safe_dump_all(documents, sort_keys=False)


class Agent:
    """The publish loop: read, apply health marks, sync; then wait for the interval, an event or a stop."""

    def __init__(self, backend: Backend, node: str, publisher: SlicePublisher, *, driver: str, policy: Policy,
                 interval: float) -> None:  # fmt: skip
        self.backend = backend
        self.node = node
        self.publisher = publisher
        self.interval = interval
        self.policy: Policy = policy
        self.health: dict[str, DeviceHealth] = {driver: DeviceHealth(driver, policy)}
        self.pools: list[Inventory] = []
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.passes = 0  # completed read-and-sync passes, failed ones included
        # Called (in the event loop) when health marks or the devices read change: the device plugin's
        # ListAndWatch then advertises its slots again.
        self.on_health_change: Callable[[], None] = lambda: None

    def device_keys(self, driver: str | None = None) -> list[str]:
        """`driver/device` of every device last read (of `driver` only, unless None), marked ones included."""
        return [
            f"{p.driver}/{d.name}"
            for p in self.pools
            if driver is None or p.driver == driver
            for d in p.devices
        ]

    def mig_instance(self, name: str) -> tuple[int, int] | None:
        """(GPU-instance id, compute-instance id) of the NVML MIG device `name` as last read, or None."""
        for pool in self.pools:
            for device in pool.devices:
                if device.name == name and device.locator is not None and device.locator[1] != WHOLE_GPU:
                    return device.locator[1], device.locator[2]
        return None

    def unhealthy(self) -> dict[str, str]:
        """`driver/device` -> the taint it is marked with (`key=value`), for the device plugin."""
        return {
            f"{driver}/{name}": f"{taint.key}={taint.value}" if taint.value else taint.key
            for driver, health in self.health.items()
            for name, taint in health.marked.items()
        }

    def on_health_event(self, event: HealthEvent) -> None:
        """Called in the event loop (the watcher thread hands over with call_soon_threadsafe)."""
        for pool in self.pools:
            health = self.health.setdefault(pool.driver, DeviceHealth(pool.driver, self.policy))
            marked = health.record(event, pool)
            if marked:
                log.warning("devices marked unhealthy", devices=marked, policy=self.policy, kind=event.kind,
                            xid=event.xid)  # fmt: skip
                self.wake.set()
                self.on_health_change()

    async def run_once(self) -> None:
        before = self.device_keys()
        try:
            self.pools = await asyncio.to_thread(self.backend.read_pools)
        except (InventoryFileError, NvmlUnavailable) as error:
            # Keep publishing what was read last: a typo in a file must not withdraw every device.
            log.error("reading devices failed; keeping the last inventory", error=str(error))
        if self.device_keys() != before:
            self.on_health_change()  # whether every device is marked may have changed
        for pool in self.pools:
            for where, reason in pool.skipped:
                log.warning("device left out", driver=pool.driver, device=where, reason=reason)
        shown = [self.health[p.driver].apply(p) if p.driver in self.health else p for p in self.pools]
        await self.publisher.sync(shown)

    async def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            self.wake.clear()
            wait = self.interval
            try:
                await self.run_once()
                failures = 0
            except ValidationError as error:
                log.error("inventory breaks a ResourceSlice limit; not published", error=str(error))
            except Exception as error:
                # The API server may be away for a while (restarting): expected, so a warning, and tried again
                # sooner than the interval (1 s doubling), so the slices are back soon after it is.
                failures += 1
                wait = min(self.interval, 2.0 ** (failures - 1))
                what = "API server unavailable" if _unavailable(error) else "publishing failed"
                log.warning(f"{what}; retrying", error=f"{type(error).__name__}: {error}", retry_in=wait)
            self.passes += 1
            waiters = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(self.stopping.wait())]
            await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()


def _unavailable(error: Exception) -> bool:
    """No answer from the API server, or a server-side error (5xx, 429): it heals by itself."""
    status = getattr(error, "status", None)
    return (
        isinstance(error, OSError)
        or type(error).__module__.startswith("aiohttp")
        or (isinstance(status, int) and (status >= 500 or status == 429))
    )


async def _api_client(kubeconfig: str | None) -> ApiClient:
    from dra_operator.kube.client import AGENT_USER_AGENT, NoApiServer, api_client

    try:
        return await api_client(kubeconfig, user_agent=AGENT_USER_AGENT)
    except NoApiServer as error:
        raise AgentError(str(error)) from None


async def serve(args: argparse.Namespace, backend: Backend, node: str) -> int:
    from dra_operator.agent.nvml import XidWatcher
    from dra_operator.agent.publisher import SlicePublisher

    api = await _api_client(args.kubeconfig)
    async with api:
        agent = Agent(backend, node, SlicePublisher(api, node), driver=args.driver, policy=args.on_unhealthy,
                      interval=args.interval)  # fmt: skip
        view_task = None
        if args.watch_slices:
            # Someone else changed our slices (deleted or edited by hand, collected with a recreated Node):
            # the next pass comes now, and repairs them.
            view = agent.publisher.watch(agent.wake.set)
            view_task = asyncio.create_task(view.run(), name="slice-view")
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, agent.stopping.set)
        watcher = None
        if args.backend == "nvml":

            def hand_over(event: HealthEvent) -> None:  # runs in the watcher's thread
                loop.call_soon_threadsafe(agent.on_health_event, event)

            watcher = XidWatcher(hand_over)
            monitored = await asyncio.to_thread(watcher.start)
            log.info("watching critical Xid events", gpus=monitored)
        plugin_task = None
        plugin_stopping: asyncio.Event | None = None
        if args.device_plugin:
            from dra_operator.agent.deviceplugin.plugin import (
                DevicePlugin,
                DevicePluginService,
                Options,
                pod_lister,
            )

            # Simulated GPUs have no /dev/nvidia<minor>: every simulated device is delivered as a file.
            nvidia_driver = args.driver if args.backend == "nvml" else ""
            options = Options(
                nvidia_driver=nvidia_driver,
                simulated_dir=Path(args.simulated_devices_dir) if args.backend == "simulated" else None,
                cdi=args.cdi,
                unhealthy=agent.unhealthy,
                mig_instances=agent.mig_instance,
                # The slots turn Unhealthy when all of these are marked: the NVML driver's devices, or
                # (simulated) every device.
                delivered_devices=lambda: agent.device_keys(nvidia_driver or None),
            )
            service = DevicePluginService(
                node, pod_lister(api, node), options, slots=args.device_plugin_slots
            )
            agent.on_health_change = service.health_changed
            plugin_stopping = service.stopping
            plugin = DevicePlugin(service, Path(args.device_plugin_dir))
            plugin_task = asyncio.create_task(plugin.run(), name="device-plugin")
        log.info("agent started", node=node, backend=args.backend, interval=args.interval,
                 device_plugin=args.device_plugin)  # fmt: skip
        try:
            await agent.run()
        finally:
            if view_task is not None:
                view_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await view_task
            if plugin_stopping is not None:
                plugin_stopping.set()  # the ListAndWatch streams end
            if plugin_task is not None:
                plugin_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await plugin_task
            if watcher is not None:
                await asyncio.to_thread(watcher.stop)
        log.info("agent stopped", node=node, writes=dict(agent.publisher.writes))
    return 0


async def _withdraw_all(kubeconfig: str | None) -> int:
    from dra_operator.agent.publisher import withdraw_all

    api = await _api_client(kubeconfig)
    async with api:
        deleted = await withdraw_all(api)
    log.info("withdrew every agent's slices", count=len(deleted))
    return 0


def main(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    backend: Backend | None = None
    try:
        if args.withdraw_all:
            return asyncio.run(_withdraw_all(args.kubeconfig))
        if not args.node:
            raise AgentError(f"no node name: pass --node NAME or set ${NODE_ENV}", EXIT_USAGE)
        if args.interval <= 0:
            raise AgentError("--interval must be positive", EXIT_USAGE)
        backend = make_backend(args, args.node)
        backend.open()
        if args.print_only:
            sys.stdout.write(render_slices(args.node, read_checked(backend, args.backend)))
            return 0
        read_checked(backend, args.backend)
        if args.kubeconfig and not Path(args.kubeconfig).is_file():
            raise AgentError(f"kubeconfig {args.kubeconfig} does not exist", EXIT_USAGE)
        return asyncio.run(serve(args, backend, args.node))
    except (AgentError, NvmlUnavailable, InventoryFileError) as error:
        print(f"dra-operator agent: {error}", file=sys.stderr)
        return error.status if isinstance(error, AgentError) else EXIT_UNAVAILABLE
    except ValidationError as error:
        print(
            f"dra-operator agent: the devices do not fit a ResourceSlice: {error}".replace("\n", " "),
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    finally:
        if backend is not None:
            with contextlib.suppress(Exception):
                backend.close()
