"""What real test nodes change on the host and how it is undone: bridge, namespaces, cgroups, sysctls.

Every change a cluster makes is recorded in a state file under STATE_DIR before it is made, and the cluster
holds a lock file there for its lifetime. `sweep()` tears down every recorded cluster whose lock is free —
one whose owner was killed with SIGKILL — so the next start cleans what a killed run left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from dra_operator.realnodes.config import (
    KUBERNETES_SERVICE_IP,
    KUBERNETES_SERVICE_PORT,
    MAX_CLUSTERS,
    NodeNetwork,
)

STATE_DIR = Path("/run/dra-operator-nodes")
CGROUP_MOUNT = Path("/sys/fs/cgroup")
# The kubelet sets these host-wide kernel tunables when they differ from what it wants; we put them back.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Fixed paths the kubelet and containerd use; each node binds its own directory over them in its own mount
# namespace, so they must exist on the host as mount points.
MOUNT_POINTS = (Path("/var/lib/kubelet"), Path("/var/log/pods"), Path("/var/log/containers"))


class HostError(RuntimeError):
    """A host command failed; the message has the command and its output."""


def run(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [*args] if netns is None else ["nsenter", f"--net=/run/netns/{netns}", "--", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise HostError(f"`{' '.join(command)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class ClusterState:
    """Everything one cluster of real nodes changed on the host, written before each change is made."""

    cluster: int
    owner_pid: int
    run_dir: str
    nodes: int = 0
    relay_port: int = 0
    cgroup_root: str = ""

    @property
    def network(self) -> NodeNetwork:
        return NodeNetwork(self.cluster)

    def path(self) -> Path:
        return STATE_DIR / f"{self.cluster}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        partial = self.path().with_suffix(".partial")
        partial.write_text(json.dumps(asdict(self), indent=2))
        os.replace(partial, self.path())


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[IO[str] | None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        yield None
        return
    try:
        yield handle
    finally:
        handle.close()


def claim_cluster_index() -> tuple[int, IO[str]]:
    """Lock the first free cluster index; the returned handle holds the lock until it is closed."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    for index in range(MAX_CLUSTERS):
        handle = (STATE_DIR / f"{index}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return index, handle
    raise HostError(f"all {MAX_CLUSTERS} node-cluster slots are in use ({STATE_DIR})")


def sweep() -> list[int]:
    """Tear down clusters whose owner is gone (their lock is free); returns the indexes cleaned."""
    cleaned: list[int] = []
    if not STATE_DIR.is_dir():
        return cleaned
    for state_file in sorted(STATE_DIR.glob("*.json")):
        try:
            index = int(state_file.stem)
        except ValueError:
            continue
        with _try_lock(STATE_DIR / f"{index}.lock") as held:
            if held is None:
                continue  # a live cluster
            try:
                state = ClusterState(**json.loads(state_file.read_text()))
            except (OSError, ValueError, TypeError):
                state_file.unlink(missing_ok=True)
                continue
            teardown(state)
            cleaned.append(index)
    return cleaned


# ---- network -------------------------------------------------------------------------------------------


def create_bridge(network: NodeNetwork) -> None:
    run("ip", "link", "add", network.bridge, "type", "bridge")
    run("ip", "addr", "add", f"{network.gateway}/{network.prefix_length}", "dev", network.bridge)
    run("ip", "link", "set", network.bridge, "up")


def create_node_netns(network: NodeNetwork, index: int, count: int, relay_port: int) -> None:
    """The node's network namespace: eth0 on the bridge, routes to the other nodes' Pods, the Service rule."""
    ns, veth = network.netns(index), network.host_veth(index)
    run("ip", "netns", "add", ns)
    run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    run("ip", "link", "set", veth, "master", network.bridge, "up")
    run("ip", "-n", ns, "addr", "add", f"{network.node_ip(index)}/{network.prefix_length}", "dev", "eth0")
    run("ip", "-n", ns, "link", "set", "lo", "up")
    run("ip", "-n", ns, "link", "set", "eth0", "up")
    # The host reaches this node's Pods (the apiserver calls webhooks at Pod addresses) through the node.
    run("ip", "route", "add", network.pod_cidr(index), "via", network.node_ip(index), "dev", network.bridge)
    for other in range(count):
        if other != index:
            run("ip", "-n", ns, "route", "add", network.pod_cidr(other), "via", network.node_ip(other))
    # No default route: nothing a Pod sends can leave this machine. Forwarding on, inside the node only.
    run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward", netns=ns)
    # What kube-proxy would do for the `kubernetes` Service: its ClusterIP leads to the apiserver relay.
    for chain in ("PREROUTING", "OUTPUT"):
        run(
            "iptables", "-w", "-t", "nat", "-A", chain,
            "-d", f"{KUBERNETES_SERVICE_IP}/32", "-p", "tcp", "--dport", str(KUBERNETES_SERVICE_PORT),
            "-j", "DNAT", "--to-destination", f"{network.gateway}:{relay_port}",
            netns=ns,
        )  # fmt: skip


def remove_network(network: NodeNetwork, nodes: int) -> None:
    # Deleting a namespace takes its interfaces, routes, iptables rules (the kubelet's chains too) along;
    # deleting the bridge takes the host ends of the veths and the host routes through it.
    for index in range(max(nodes, 0)):
        run("ip", "netns", "delete", network.netns(index), check=False)
    run("ip", "link", "delete", network.bridge, check=False)


# ---- cgroups -------------------------------------------------------------------------------------------


def cgroup_hierarchies() -> list[Path]:
    """Mounted cgroup v1 hierarchies (each directory under /sys/fs/cgroup with its own cgroup.procs)."""
    return sorted(
        path
        for path in CGROUP_MOUNT.iterdir()
        if path.is_dir() and not path.is_symlink() and (path / "cgroup.procs").exists()
    )


def cgroup_v1() -> bool:
    return (CGROUP_MOUNT / "memory" / "cgroup.procs").exists()


def make_cgroup(relative: str) -> None:
    """Create `relative` (e.g. /dra-nodes-0/node-0) in every hierarchy; cpusets get their parent's CPUs."""
    for hierarchy in cgroup_hierarchies():
        path = hierarchy / relative.strip("/")
        parts = path.relative_to(hierarchy).parts
        for depth in range(1, len(parts) + 1):
            directory = hierarchy.joinpath(*parts[:depth])
            if directory.is_dir():
                continue
            directory.mkdir()
            # A new v1 cpuset starts empty and refuses every process until it is given CPUs and memory nodes.
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (directory / name).exists():
                    (directory / name).write_text((directory.parent / name).read_text())


def join_cgroup_command(relative: str) -> str:
    """Shell to move the running shell (and so what it execs) into `relative` of every hierarchy."""
    return " && ".join(
        f"echo $$ > {hierarchy / relative.strip('/') / 'cgroup.procs'}" for hierarchy in cgroup_hierarchies()
    )


def _cgroup_pids(relative: str) -> set[int]:
    pids: set[int] = set()
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / relative.strip("/")
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(line) for line in procs.read_text().split())
    return pids


def kill_cgroup(relative: str, timeout: float = 10.0) -> None:
    """SIGKILL every process under `relative` (containers, shims, runtimes) until none is left."""
    deadline = time.monotonic() + timeout
    while pids := _cgroup_pids(relative):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise HostError(f"processes {sorted(pids)} in cgroup {relative} survive SIGKILL")
        time.sleep(0.05)


def remove_cgroup(relative: str) -> None:
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / relative.strip("/")
        if not top.is_dir():
            continue
        # Deepest first: a cgroup with children cannot be removed.
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


# ---- sysctls, mount points: shared by every live cluster, put back by the last one out ---------------

_SHARED = STATE_DIR / "host.json"


def record_host_defaults() -> None:
    """Remember the kubelet's sysctls and create missing mount points, unless a live cluster already did."""
    try:
        shared = json.loads(_SHARED.read_text())
    except (OSError, ValueError):
        shared = {"sysctls": {}, "created_mount_points": []}
    if not shared["sysctls"]:
        for name in KUBELET_SYSCTLS:
            with contextlib.suppress(OSError):
                shared["sysctls"][name] = (Path("/proc/sys") / name).read_text().strip()
    for path in MOUNT_POINTS:
        if not path.exists():
            shared["created_mount_points"].append(str(path))
            _SHARED.parent.mkdir(parents=True, exist_ok=True)
            _SHARED.write_text(json.dumps(shared))  # recorded before the change, as everything here
            path.mkdir(parents=True)
    _SHARED.parent.mkdir(parents=True, exist_ok=True)
    _SHARED.write_text(json.dumps(shared))


def restore_host_defaults() -> None:
    try:
        shared = json.loads(_SHARED.read_text())
    except (OSError, ValueError):
        return
    for name, value in shared.get("sysctls", {}).items():
        path = Path("/proc/sys") / name
        with contextlib.suppress(OSError):
            if path.read_text().strip() != value:
                path.write_text(value)
    for mount_point in shared.get("created_mount_points", []):
        with contextlib.suppress(OSError):
            Path(mount_point).rmdir()
    _SHARED.unlink(missing_ok=True)


def _other_clusters_alive(own: int) -> bool:
    for state_file in STATE_DIR.glob("*.json"):
        if state_file.stem.isdigit() and state_file.stem != str(own):
            with _try_lock(STATE_DIR / f"{state_file.stem}.lock") as held:
                if held is None:
                    return True
    return False


# ---- teardown --------------------------------------------------------------------------------------------


def teardown(state: ClusterState) -> None:
    """Undo everything `state` records; safe on a half-built cluster and when run twice."""
    if state.cgroup_root:
        kill_cgroup(state.cgroup_root)
    remove_network(state.network, state.nodes)
    if state.cgroup_root:
        remove_cgroup(state.cgroup_root)
    if not _other_clusters_alive(state.cluster):
        # Another live cluster's kubelets want the same values and mount points; the last one out restores.
        restore_host_defaults()
    if state.run_dir:
        shutil.rmtree(state.run_dir, ignore_errors=True)
    state.path().unlink(missing_ok=True)
