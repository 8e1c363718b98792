"""Configuration files of one real test node, as pure functions: addresses, containerd, kubelet, CNI.

Nothing here touches the host; `launcher.py` writes what these return and starts the processes.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dra_operator.realnodes.images import PAUSE_IMAGE

# The `kubernetes` Service's ClusterIP (first address of the control plane's service range): in-cluster
# clients dial it, and each node rewrites it to the apiserver relay, as kube-proxy would.
KUBERNETES_SERVICE_IP = "10.0.0.1"
KUBERNETES_SERVICE_PORT = 443
KUBELET_PORT = 10250
MAX_NODES = 16
# Node and Pod addresses: private ranges on our own bridge and in our own network namespaces, never routed
# off this machine (no default route in a node, forwarding off on the host). Cluster k of concurrently running
# ones gets 10.250.k.0/24 for nodes and 10.(128+k).i.0/24 for the Pods of node i.
MAX_CLUSTERS = 64


@dataclass(frozen=True)
class NodeNetwork:
    """Addresses and names of one cluster's node network (index `cluster` among concurrent clusters)."""

    cluster: int

    def __post_init__(self) -> None:
        if not 0 <= self.cluster < MAX_CLUSTERS:
            raise ValueError(f"cluster index {self.cluster} outside 0..{MAX_CLUSTERS - 1}")

    @property
    def bridge(self) -> str:
        return f"dranodes{self.cluster}"

    @property
    def gateway(self) -> str:
        """The host's address on the node bridge: where nodes reach the apiserver relay."""
        return f"10.250.{self.cluster}.1"

    @property
    def prefix_length(self) -> int:
        return 24

    def node_ip(self, index: int) -> str:
        _check_index(index)
        return f"10.250.{self.cluster}.{10 + index}"

    def pod_cidr(self, index: int) -> str:
        _check_index(index)
        return f"10.{128 + self.cluster}.{index}.0/24"

    def netns(self, index: int) -> str:
        _check_index(index)
        return f"dra{self.cluster}n{index}"

    def host_veth(self, index: int) -> str:
        # Interface names are limited to 15 characters.
        return f"{self.netns(index)}h"


def _check_index(index: int) -> None:
    if not 0 <= index < MAX_NODES:
        raise ValueError(f"node index {index} outside 0..{MAX_NODES - 1}")


@dataclass(frozen=True)
class NodePaths:
    """Where one node keeps its state on the host (all under its own directory)."""

    root: Path

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def runc_root(self) -> Path:
        return self.root / "runc"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_data_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubelet.kubeconfig"

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"

    # Directories bound over the kubelet's fixed paths inside the node's mount namespace: two kubelets on one
    # host must not share /var/lib/kubelet (its device-plugin and pod-resources sockets are fixed there), nor
    # /var/log/pods (each kubelet removes the log directories of Pods it does not know).
    @property
    def var_lib_kubelet(self) -> Path:
        return self.root / "var-lib-kubelet"

    @property
    def var_log_pods(self) -> Path:
        return self.root / "var-log-pods"

    @property
    def var_log_containers(self) -> Path:
        return self.root / "var-log-containers"

    def bind_mounts(self) -> list[tuple[Path, Path]]:
        """(node directory, fixed host path) pairs bound inside the node's mount namespace."""
        return [
            (self.var_lib_kubelet, Path("/var/lib/kubelet")),
            (self.var_log_pods, Path("/var/log/pods")),
            (self.var_log_containers, Path("/var/log/containers")),
        ]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _toml(tables: dict[str, dict[str, object]], top: dict[str, object]) -> str:
    lines = [f"{key} = {_toml_value(value)}" for key, value in top.items()]
    for table, values in tables.items():
        lines += ["", f"[{table}]"]
        lines += [f"  {key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def containerd_config(paths: NodePaths, cni_bin_dir: Path, runc: str = "/usr/sbin/runc") -> str:
    """containerd 1.6 (config version 2) for one node: its own root, state, socket, runc root and CNI dirs."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return _toml(
        {
            "grpc": {"address": str(paths.containerd_socket)},
            "ttrpc": {"address": f"{paths.containerd_socket}.ttrpc"},
            "metrics": {"address": ""},
            cri: {
                "sandbox_image": PAUSE_IMAGE,
                # Without CAP_SYS_RESOURCE (a sandboxed root), runc cannot lower oom_score_adj below the
                # runtime's own; containerd must not ask it to.
                "restrict_oom_score_adj": True,
                "stream_server_address": "127.0.0.1",
                "stream_server_port": "0",
                "enable_selinux": False,
                "disable_apparmor": True,
                "max_container_log_line_size": 16384,
                # Pod network namespaces under the node's state directory, not the host's /run/netns.
                "netns_mounts_under_state_dir": True,
            },
            f"{cri}.containerd": {"snapshotter": "overlayfs", "default_runtime_name": "runc"},
            f"{cri}.containerd.runtimes.runc": {"runtime_type": "io.containerd.runc.v2"},
            f"{cri}.containerd.runtimes.runc.options": {
                "SystemdCgroup": False,
                "BinaryName": runc,
                "Root": str(paths.runc_root),
            },
            f"{cri}.cni": {
                "bin_dir": str(cni_bin_dir),
                "conf_dir": str(paths.cni_conf_dir),
                "max_conf_num": 1,
            },
            'plugins."io.containerd.internal.v1.opt"': {"path": str(paths.root / "opt")},
        },
        {
            "version": 2,
            "root": str(paths.containerd_root),
            "state": str(paths.containerd_state),
            "oom_score": 0,
        },
    )


def cni_conflist(network: NodeNetwork, index: int, paths: NodePaths) -> dict[str, Any]:
    """A bridge network on the node's own Pod range; the node routes it, nothing masquerades it."""
    pod_net = ipaddress.ip_network(network.pod_cidr(index))
    gateway = str(next(pod_net.hosts()))
    return {
        "cniVersion": "1.0.0",
        "name": "dra-nodes",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(paths.cni_data_dir),
                    "ranges": [[{"subnet": str(pod_net), "gateway": gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(
    network: NodeNetwork,
    index: int,
    paths: NodePaths,
    *,
    ca_file: Path,
    cgroup_root: str,
) -> dict[str, Any]:
    """KubeletConfiguration for node `index`: x509 + webhook auth, cgroupfs under its own cgroup root."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": network.node_ip(index),
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        # Each node's Pods under a cgroup of its own: a kubelet removes Pod cgroups it does not know, so two
        # kubelets sharing /kubepods would delete each other's.
        "cgroupRoot": cgroup_root,
        # The machines this runs on (CI included) are on cgroup v1, which 1.35+ refuses unless told otherwise.
        "failCgroupV1": False,
        "failSwapOn": False,
        "enforceNodeAllocatable": [],
        # A shared test machine's disk and memory are not this node's to protect: no eviction, and no image
        # garbage collection (images are imported, never pulled: a collected image could not come back).
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # Pods get an empty resolv.conf: no DNS server exists here, and the host's must not be asked.
        "resolvConf": str(paths.resolv_conf),
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "5s",
        "maxPods": 110,
    }


def kubeconfig(server: str, ca_file: Path, cert_file: Path, key_file: Path, tls_server_name: str) -> str:
    """The kubelet's kubeconfig: its node identity, the relay address, the apiserver's certificate name."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "cluster",
                "cluster": {
                    "server": server,
                    "certificate-authority": str(ca_file),
                    # The relay's address is not in the apiserver certificate; verify the name it does carry.
                    "tls-server-name": tls_server_name,
                },
            }
        ],
        "users": [
            {"name": "node", "user": {"client-certificate": str(cert_file), "client-key": str(key_file)}}
        ],
        "contexts": [{"name": "node", "context": {"cluster": "cluster", "user": "node"}}],
        "current-context": "node",
    }
    return yaml.safe_dump(config)
