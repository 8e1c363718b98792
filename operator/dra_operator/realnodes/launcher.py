"""Real Kubernetes nodes beside a ControlPlane: per node a network namespace, containerd + runc, CNI, kubelet.

Python API (the e2e tests, the chart test and the demo use it)::

    from dra_operator.controlplane import ControlPlane
    from dra_operator.realnodes import RealNodes

    with ControlPlane() as cp, RealNodes(cp, count=2) as nodes:
        nodes.names                      # ["node-0", "node-1"], Ready
        nodes.import_image(archive)      # a `docker save` archive into every node's containerd
        cp.kubectl("logs", pod)          # the apiserver reaches each kubelet at its own address

Each node is a host of its own on a private bridge (10.250.k.0/24, its Pods on 10.(128+k).i.0/24), with its
own containerd (root, state, socket, runc root), and its kubelet and containerd share a mount namespace in
which the node's directories are bound over /var/lib/kubelet, /var/log/pods and /var/log/containers — the
kubelet's device-plugin and pod-resources sockets are fixed under /var/lib/kubelet, and two
kubelets must not share them. Pods reach the apiserver as in-cluster clients do, at the `kubernetes`
Service's ClusterIP: each node rewrites it to a relay on the bridge (socat) that forwards to the apiserver's
loopback port. Nothing can leave the machine: nodes have no default route and the host does not forward.

Root and cgroup v1 are required (`available()` says why not). stop() kills every process under the cluster's
cgroups, deletes the namespaces and the bridge, restores the sysctls the kubelet changed and removes the run
directory; the kubelets, containerds and the relay die with the process that started them, and the next
start sweeps what a killed run left (host.sweep).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlparse

import yaml

from dra_operator.controlplane import build
from dra_operator.controlplane.certs import load_ca
from dra_operator.controlplane.launcher import ApiError, Component, ControlPlane, log_tail, terminate
from dra_operator.controlplane.polling import wait_until
from dra_operator.pki import write_pem
from dra_operator.realnodes import config, host
from dra_operator.realnodes.images import busybox_image, pause_image
from dra_operator.tools.docker import DockerError, apt_install

DEFAULT_START_TIMEOUT = 180.0
# Debian packages that provide what the nodes run beside our own builds (kubelet, CNI plugins, pause).
HOST_PACKAGES = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "socat": "socat",
    "busybox": "busybox-static",
    "nsenter": "util-linux",
    "ip": "iproute2",
}


class RealNodesUnavailable(RuntimeError):
    """This machine cannot run real nodes (not root, no cgroup v1, ...); the message says why."""


class RealNodesError(RuntimeError):
    """A node failed to start; the message names it and ends with the tail of its log."""


def available() -> tuple[bool, str]:
    """Whether real nodes can run here, and if not, why (the demo falls back to fake nodes)."""
    if os.geteuid() != 0:
        return False, "real nodes need root (network namespaces, mounts, cgroups)"
    if not host.cgroup_v1():
        return False, "real nodes are set up for cgroup v1 hierarchies; this machine has none"
    if not Path("/proc/self/ns/net").exists():
        return False, "no network namespaces"
    return True, ""


def ensure_host_packages() -> None:
    """Install the Debian packages of HOST_PACKAGES that are missing (root; apt-get, as the image build)."""
    missing = sorted({package for command, package in HOST_PACKAGES.items() if not shutil.which(command)})
    if not missing:
        return
    try:
        apt_install(missing)
    except DockerError as error:
        raise RealNodesUnavailable(str(error)) from None


@dataclass(frozen=True)
class Node:
    """One started node: its name, index, address and directories."""

    name: str
    index: int
    ip: str
    paths: config.NodePaths
    cgroup: str


class RealNodes:
    """`count` real nodes joined to `control_plane`; use as a context manager or call start() and stop()."""

    def __init__(
        self,
        control_plane: ControlPlane,
        count: int = 2,
        *,
        prefix: str = "node",
        labels: Mapping[str, str] | None = None,
        images: Sequence[Path] = (),
        start_timeout: float = DEFAULT_START_TIMEOUT,
        keep_run_dir: bool = False,
    ) -> None:
        if not 1 <= count <= config.MAX_NODES:
            raise ValueError(f"count must be 1..{config.MAX_NODES}")
        self.cp = control_plane
        self.count = count
        self.prefix = prefix
        self.labels = dict(labels or {})
        self.images = list(images)
        self.start_timeout = start_timeout
        self.keep_run_dir = keep_run_dir
        self.nodes: list[Node] = []
        self._processes: list[Component] = []
        self._state: host.ClusterState | None = None
        self._lock: IO[str] | None = None
        self._bin_dir: Path | None = None
        self.startup_seconds: float | None = None

    # ---- public ------------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    @property
    def run_dir(self) -> Path:
        if self._state is None:
            raise RealNodesError("nodes not started")
        return Path(self._state.run_dir)

    @property
    def network(self) -> config.NodeNetwork:
        if self._state is None:
            raise RealNodesError("nodes not started")
        return self._state.network

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def logs(self, name: str, component: str = "kubelet", lines: int = 50) -> str:
        """The last lines of a node's kubelet or containerd log."""
        return log_tail(self.run_dir / f"{name}-{component}.log", lines)

    def ctr(self, name: str, *args: str, input_file: Path | None = None) -> str:
        """Run `ctr` (namespace k8s.io) against node `name`'s containerd."""
        command = ["ctr", "--address", str(self.node(name).paths.containerd_socket), "-n", "k8s.io", *args]
        with contextlib.ExitStack() as stack:
            stdin = stack.enter_context(input_file.open("rb")) if input_file else subprocess.DEVNULL
            result = subprocess.run(command, stdin=stdin, capture_output=True, check=False)
        if result.returncode != 0:
            raise RealNodesError(f"{' '.join(command)}: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout.decode(errors="replace")

    def import_image(self, archive: Path, nodes: Sequence[str] | None = None) -> None:
        """Load a `docker save` archive into the containerd of every node (or of `nodes`)."""
        for name in nodes or self.names:
            self.ctr(name, "images", "import", "-", input_file=archive)

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def __enter__(self) -> RealNodes:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> RealNodes:
        ok, why = available()
        if not ok:
            raise RealNodesUnavailable(why)
        started = time.monotonic()
        ensure_host_packages()
        self._bin_dir = build.ensure_node_binaries().bin_dir
        host.sweep()
        index, self._lock = host.claim_cluster_index()
        run_dir = Path(tempfile.mkdtemp(prefix="dra-nodes-"))
        self._state = host.ClusterState(
            cluster=index, owner_pid=os.getpid(), run_dir=str(run_dir), cgroup_root=f"/dra-nodes-{index}"
        )
        self._state.save()
        atexit.register(self.stop)
        try:
            self._start(run_dir)
        except BaseException:
            self.keep_run_dir = True
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop every node and undo every host change; safe to call more than once."""
        atexit.unregister(self.stop)
        for process in reversed(self._processes):
            if process.name.endswith("kubelet"):
                terminate(process.process)
        if self.nodes:
            self._delete_node_objects()
        for process in reversed(self._processes):
            terminate(process.process)
        self._processes.clear()
        self.nodes.clear()
        if self._state is not None:
            if self.keep_run_dir:
                kept, self._state.run_dir = self._state.run_dir, ""
                self._state.save()
                host.teardown(self._state)
                self._state.run_dir = kept
            else:
                host.teardown(self._state)
            self._state = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ---- start-up -----------------------------------------------------------------------------------------

    def _start(self, run_dir: Path) -> None:
        state = self._require_state()
        network = state.network
        host.record_host_defaults()
        images = run_dir / "images"
        archives = [pause_image(self._bin() / "pause", images), busybox_image(images), *self.images]
        apiserver_port = urlparse(self.cp.server).port
        assert apiserver_port is not None
        state.nodes, state.relay_port = self.count, apiserver_port
        state.save()
        host.create_bridge(network)
        self._spawn(
            "relay",
            [
                "socat",
                f"TCP-LISTEN:{apiserver_port},bind={network.gateway},reuseaddr,fork",
                f"TCP:127.0.0.1:{apiserver_port}",
            ],
        )
        for index in range(self.count):
            host.create_node_netns(network, index, self.count, apiserver_port)
        ca = load_ca(self.cp.ca_file, self.cp.ca_key_file)
        for index in range(self.count):
            name = f"{self.prefix}-{index}"
            node = Node(
                name=name,
                index=index,
                ip=network.node_ip(index),
                paths=config.NodePaths(run_dir / name),
                cgroup=f"{state.cgroup_root}/{name}",
            )
            self._write_node_files(node, network, ca, apiserver_port)
            host.make_cgroup(f"{node.cgroup}/runtime")
            self.nodes.append(node)
            self._start_containerd(node)
        deadline = time.monotonic() + self.start_timeout
        for node in self.nodes:
            self._wait_containerd(node, deadline)
            for archive in archives:
                self.ctr(node.name, "images", "import", "-", input_file=archive)
            self._start_kubelet(node)
        for node in self.nodes:
            self._wait_ready(node, deadline)

    def _bin(self) -> Path:
        if self._bin_dir is None:
            raise RealNodesError("node binaries not built")
        return self._bin_dir

    def _require_state(self) -> host.ClusterState:
        if self._state is None:
            raise RealNodesError("nodes not started")
        return self._state

    def _write_node_files(
        self, node: Node, network: config.NodeNetwork, ca: Any, apiserver_port: int
    ) -> None:
        paths = node.paths
        for directory in (
            paths.root,
            paths.cni_conf_dir,
            paths.cni_data_dir,
            paths.runc_root,
            paths.containerd_root,
            paths.containerd_state,
            *(source for source, _ in paths.bind_mounts()),
        ):
            directory.mkdir(parents=True, exist_ok=True)
        cert, key = ca.issue(f"system:node:{node.name}", organizations=("system:nodes",), client=True)
        cert_file = write_pem(paths.root / "kubelet-client.crt", cert)
        key_file = write_pem(paths.root / "kubelet-client.key", key, private=True)
        paths.kubeconfig.write_text(
            config.kubeconfig(
                f"https://{network.gateway}:{apiserver_port}",
                self.cp.ca_file,
                cert_file,
                key_file,
                tls_server_name="kubernetes",
            )
        )
        paths.resolv_conf.write_text("")
        paths.containerd_config.write_text(config.containerd_config(paths, self._bin()))
        (paths.cni_conf_dir / "10-dra-nodes.conflist").write_text(
            json.dumps(config.cni_conflist(network, node.index, paths), indent=2)
        )
        paths.kubelet_config.write_text(
            yaml.safe_dump(
                config.kubelet_config(
                    network, node.index, paths, ca_file=self.cp.ca_file, cgroup_root=node.cgroup
                )
            )
        )

    def _start_containerd(self, node: Node) -> None:
        network = self._require_state().network
        binds = " && ".join(f"mount --bind {source} {target}" for source, target in node.paths.bind_mounts())
        script = (
            f"{host.join_cgroup_command(f'{node.cgroup}/runtime')} && {binds} && "
            f"exec containerd --config {node.paths.containerd_config}"
        )
        self._spawn(
            f"{node.name}-containerd",
            [
                "nsenter",
                f"--net=/run/netns/{network.netns(node.index)}",
                "--",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
            ],
        )

    def _containerd_pid(self, node: Node) -> int:
        return next(p.process.pid for p in self._processes if p.name == f"{node.name}-containerd")

    def _wait_containerd(self, node: Node, deadline: float) -> None:
        def up() -> bool:
            self._check()
            with contextlib.suppress(RealNodesError):
                self.ctr(node.name, "version")
                return True
            return False

        self._wait(up, deadline, f"{node.name}: containerd did not answer", f"{node.name}-containerd")

    def _start_kubelet(self, node: Node) -> None:
        labels = ",".join(f"{key}={value}" for key, value in sorted(self.labels.items()))
        kubelet = [
            str(self._bin() / "kubelet"),
            f"--config={node.paths.kubelet_config}",
            f"--kubeconfig={node.paths.kubeconfig}",
            f"--hostname-override={node.name}",
            f"--node-ip={node.ip}",
            *([f"--node-labels={labels}"] if labels else []),
            "--v=1",
        ]
        script = f"{host.join_cgroup_command(f'{node.cgroup}/runtime')} && exec {' '.join(kubelet)}"
        self._spawn(
            f"{node.name}-kubelet",
            [
                "nsenter",
                f"--target={self._containerd_pid(node)}",
                "--mount",
                "--net",
                "--",
                "sh",
                "-c",
                script,
            ],
        )

    def _wait_ready(self, node: Node, deadline: float) -> None:
        def ready() -> bool:
            self._check()
            try:
                status = self.cp.request("GET", f"/api/v1/nodes/{node.name}")["status"]
            except ApiError:
                return False
            return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))

        self._wait(ready, deadline, f"{node.name}: not Ready", f"{node.name}-kubelet")

    def _wait(self, predicate: Any, deadline: float, what: str, log_of: str) -> None:
        try:
            wait_until(predicate, timeout=max(deadline - time.monotonic(), 0.1), message=what)
        except TimeoutError as error:
            raise RealNodesError(f"{error}; last lines of {log_of}.log:\n{self._log(log_of)}") from None

    def _log(self, name: str) -> str:
        return log_tail(self.run_dir / f"{name}.log")

    def _check(self) -> None:
        for process in self._processes:
            if (exited := process.exited()) is not None:
                raise RealNodesError(exited)

    def _spawn(self, name: str, argv: list[str]) -> None:
        env = dict(os.environ)
        env["PATH"] = f"{self._bin()}{os.pathsep}{env.get('PATH', '')}"
        self._processes.append(Component.spawn(name, argv, self.run_dir / f"{name}.log", env=env))

    def _delete_node_objects(self) -> None:
        # The control plane may outlive these nodes (a session fixture): leave no NotReady Node behind.
        for node in self.nodes:
            with contextlib.suppress(ApiError, OSError):
                self.cp.request("DELETE", f"/api/v1/nodes/{node.name}")
