"""The real nodes' files, checked without a host: addresses, containerd TOML, CNI, kubelet, image archives."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

from dra_operator.realnodes import config
from dra_operator.realnodes.images import (
    PAUSE_IMAGE,
    ImageConfig,
    LayerFile,
    pause_image,
    write_image_archive,
)


@pytest.mark.parametrize("cluster", [0, 7, config.MAX_CLUSTERS - 1])
def test_node_network_addresses_are_distinct_private_and_fit_interface_names(cluster: int) -> None:
    network = config.NodeNetwork(cluster)
    nodes = [ipaddress.ip_address(network.node_ip(i)) for i in range(config.MAX_NODES)]
    pods = [ipaddress.ip_network(network.pod_cidr(i)) for i in range(config.MAX_NODES)]
    gateway = ipaddress.ip_address(network.gateway)
    node_net = ipaddress.ip_network(f"{network.gateway}/{network.prefix_length}", strict=False)
    assert len(set(nodes)) == len(nodes) and all(ip in node_net and ip.is_private for ip in nodes)
    assert gateway not in nodes
    assert all(pod.is_private and not pod.overlaps(node_net) for pod in pods)
    assert all(not a.overlaps(b) for i, a in enumerate(pods) for b in pods[i + 1 :])
    names = [network.bridge, *(network.host_veth(i) for i in range(config.MAX_NODES))]
    assert all(len(name) <= 15 for name in names)  # IFNAMSIZ - 1


def test_clusters_do_not_share_addresses() -> None:
    a, b = config.NodeNetwork(1), config.NodeNetwork(2)
    assert {a.node_ip(0), a.gateway}.isdisjoint({b.node_ip(0), b.gateway})
    assert not ipaddress.ip_network(a.pod_cidr(0)).overlaps(ipaddress.ip_network(b.pod_cidr(0)))
    assert a.netns(0) != b.netns(0) and a.bridge != b.bridge


def test_out_of_range_indexes_are_refused() -> None:
    with pytest.raises(ValueError):
        config.NodeNetwork(config.MAX_CLUSTERS)
    with pytest.raises(ValueError):
        config.NodeNetwork(0).node_ip(config.MAX_NODES)


def test_containerd_config_keeps_every_path_under_the_node(tmp_path: Path) -> None:
    paths = config.NodePaths(tmp_path / "node-0")
    parsed = tomllib.loads(config.containerd_config(paths, tmp_path / "bin"))
    assert parsed["version"] == 2
    assert parsed["root"] == str(paths.containerd_root) and parsed["state"] == str(paths.containerd_state)
    assert parsed["grpc"]["address"] == str(paths.containerd_socket)
    cri = parsed["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == PAUSE_IMAGE
    assert cri["restrict_oom_score_adj"] is True
    assert cri["cni"] == {
        "bin_dir": str(tmp_path / "bin"),
        "conf_dir": str(paths.cni_conf_dir),
        "max_conf_num": 1,
    }
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["options"]["Root"] == str(paths.runc_root) and runc["options"]["SystemdCgroup"] is False


def test_cni_network_is_the_nodes_pod_range_without_masquerade(tmp_path: Path) -> None:
    network = config.NodeNetwork(3)
    conflist = config.cni_conflist(network, 2, config.NodePaths(tmp_path))
    bridge = conflist["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["ipMasq"] is False and bridge["isGateway"] is True
    (subnet,) = bridge["ipam"]["ranges"][0]
    assert subnet["subnet"] == network.pod_cidr(2)
    assert ipaddress.ip_address(subnet["gateway"]) in ipaddress.ip_network(network.pod_cidr(2))
    assert bridge["ipam"]["dataDir"].startswith(str(tmp_path))


def test_kubelet_config_authenticates_and_isolates_its_cgroups(tmp_path: Path) -> None:
    network = config.NodeNetwork(0)
    paths = config.NodePaths(tmp_path)
    kubelet = config.kubelet_config(network, 1, paths, ca_file=tmp_path / "ca.crt", cgroup_root="/x/node-1")
    assert kubelet["address"] == network.node_ip(1)
    assert kubelet["authentication"]["anonymous"]["enabled"] is False
    assert kubelet["authorization"]["mode"] == "Webhook" and kubelet["readOnlyPort"] == 0
    assert kubelet["cgroupRoot"] == "/x/node-1" and kubelet["cgroupDriver"] == "cgroupfs"
    assert kubelet["containerRuntimeEndpoint"] == f"unix://{paths.containerd_socket}"
    assert kubelet["imageGCHighThresholdPercent"] == 100  # imported images must never be collected
    kubeconfig = yaml.safe_load(
        config.kubeconfig(
            "https://10.250.0.1:1", tmp_path / "ca", tmp_path / "c", tmp_path / "k", "kubernetes"
        )
    )
    assert kubeconfig["clusters"][0]["cluster"]["tls-server-name"] == "kubernetes"


def test_bind_mounts_cover_the_kubelets_fixed_paths(tmp_path: Path) -> None:
    targets = {str(target) for _, target in config.NodePaths(tmp_path).bind_mounts()}
    assert {"/var/lib/kubelet", "/var/log/pods", "/var/log/containers"} <= targets
    assert all(
        str(source).startswith(str(tmp_path)) for source, _ in config.NodePaths(tmp_path).bind_mounts()
    )


def _read_archive(path: Path) -> tuple[list[dict[str, object]], dict[str, bytes]]:
    with tarfile.open(path) as archive:
        files = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}  # type: ignore[union-attr]
    return json.loads(files["manifest.json"]), files


def test_image_archive_is_a_loadable_docker_archive(tmp_path: Path) -> None:
    binary = tmp_path / "hello"
    binary.write_bytes(b"#!/bin/sh\necho hi\n")
    archive = write_image_archive(
        tmp_path / "out" / "img.tar",
        "example.local/hello:1",
        [
            LayerFile("bin/hello", source=binary),
            LayerFile("bin/hi", link="hello"),
            LayerFile("tmp", directory=True),
        ],
        ImageConfig(entrypoint=("/bin/hello",)),
    )
    (manifest,), files = _read_archive(archive)
    assert manifest["RepoTags"] == ["example.local/hello:1"]
    layer = files[manifest["Layers"][0]]  # type: ignore[index]
    image = json.loads(files[manifest["Config"]])  # type: ignore[index]
    # containerd checks the layer against the config's diff_id on import.
    assert image["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(layer).hexdigest()}"]
    assert image["config"]["Entrypoint"] == ["/bin/hello"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        members = {m.name: m for m in inner.getmembers()}
    assert members["bin/hello"].mode == 0o755 and members["bin/hi"].issym() and members["tmp"].isdir()
    again = write_image_archive(
        tmp_path / "again.tar",
        "example.local/hello:1",
        [
            LayerFile("bin/hello", source=binary),
            LayerFile("bin/hi", link="hello"),
            LayerFile("tmp", directory=True),
        ],
        ImageConfig(entrypoint=("/bin/hello",)),
    )
    assert again.read_bytes() == archive.read_bytes()  # deterministic: same inputs, same image


def test_pause_image_runs_the_pause_binary(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF")
    (manifest,), files = _read_archive(pause_image(binary, tmp_path))
    assert manifest["RepoTags"] == [PAUSE_IMAGE]
    assert json.loads(files[manifest["Config"]])["config"]["Entrypoint"] == ["/pause"]  # type: ignore[index]
