"""The simulated backend: the YAML inventory schema, its shorthand, node matching and its error messages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dra_operator.agent.inventory import Version
from dra_operator.agent.simulated import (
    InventoryFileError,
    SimulatedBackend,
    inventories_for_node,
    parse_inventory,
)
from dra_operator.api.quantity import Quantity

SAMPLES = Path(__file__).parents[2] / "operator" / "dra_operator" / "agent" / "samples"


def pools(text: str, node: str = "node-a", driver: str = "gpu.nvidia.com") -> dict[str, dict[str, object]]:
    """driver -> device name -> device, for compact assertions."""
    return {inv.driver: inv.by_name() for inv in inventories_for_node(parse_inventory(text), node, driver)}


def test_shorthand_gives_count_gpus_with_type_and_memory() -> None:
    found = pools("{driver: driver.example.com, nodes: [node-a], gpus: {count: 4, memory: 64Gi}}")
    devices = found["driver.example.com"]
    assert list(devices) == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    for device in devices.values():
        assert dict(device.attributes) == {"type": "gpu"}  # type: ignore[attr-defined]
        assert Quantity.parse(device.capacity["memory"]) == Quantity.parse("64Gi")  # type: ignore[attr-defined]


def test_explicit_devices_with_typed_attributes() -> None:
    text = """
    devices:
      - name: fpga-0
        attributes: {type: fpga, lanes: 16, partial: true, firmware: {version: 2.1.0}, model: {string: "16"}}
        capacity: {memory: 8Gi, slots: {value: 4}}
        taints: [{key: example.com/broken, effect: NoSchedule}]
    """
    device = pools(text)["gpu.nvidia.com"]["fpga-0"]
    assert dict(device.attributes) == {  # type: ignore[attr-defined]
        "type": "fpga",
        "lanes": 16,
        "partial": True,
        "firmware": Version("2.1.0"),
        "model": "16",
    }
    assert dict(device.capacity) == {"memory": "8Gi", "slots": 4}  # type: ignore[attr-defined]
    (taint,) = device.taints  # type: ignore[attr-defined]
    assert (taint.key, taint.effect) == ("example.com/broken", "NoSchedule")


@pytest.mark.parametrize(
    ("nodes", "node", "matches"),
    [
        (None, "anything", True),
        (["node-a"], "node-a", True),
        (["node-a"], "node-b", False),
        (["gpu-*"], "gpu-7", True),
        (["gpu-*"], "cpu-7", False),
        ([], "node-a", False),
    ],
)
def test_node_matching(nodes: list[str] | None, node: str, matches: bool) -> None:
    entry = {"gpus": {"count": 1}} | ({} if nodes is None else {"nodes": nodes})
    import yaml

    assert bool(pools(yaml.safe_dump(entry), node=node)) is matches


def test_entries_merge_per_driver_and_documents_and_lists_are_read() -> None:
    text = """
    - {driver: a.example.com, gpus: {count: 1}}
    - {driver: b.example.com, devices: [{name: x}]}
    ---
    pools:
      - {driver: a.example.com, devices: [{name: extra}]}
    """
    found = pools(textwrap.dedent(text))
    assert {k: list(v) for k, v in found.items()} == {
        "a.example.com": ["gpu-0", "extra"],
        "b.example.com": ["x"],
    }


def test_pool_without_driver_takes_the_default() -> None:
    assert list(pools("gpus: {count: 1}", driver="driver.example.com")) == ["driver.example.com"]


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("gpus: {count: 2, memory: lots}", ["gpus.memory", "lots"]),
        ("gpus: {count: -1}", ["gpus.count", "greater than or equal to 0"]),
        ("gpus: {count: 200}", ["gpus.count", "128"]),
        ("gpu: {count: 2}", ["gpu", "Extra inputs"]),
        (
            "devices: [{name: a, attributes: {v: {version: banana}}}]",
            ["devices[0].attributes.v", "not a version"],
        ),
        (
            "devices: [{name: a, attributes: {v: {string: x, int: 3}}}]",
            ["devices[0].attributes.v", "exactly one"],
        ),
        ("devices: [{name: a, capacity: {memory: 1Q}}]", ["devices[0].capacity", "1Q"]),
        ("devices: [{name: a, taints: [{key: k, effect: Sometimes}]}]", ["devices[0].taints[0].effect"]),
        ("devices: [{attributes: {}}]", ["devices[0].name", "required"]),
        ("[1, 2", ["not valid YAML"]),
    ],
)
def test_schema_errors_name_the_file_and_field(text: str, fragments: list[str]) -> None:
    with pytest.raises(InventoryFileError) as caught:
        inventories_for_node(parse_inventory(text, "inv.yaml"), "node-a", "gpu.nvidia.com")
    message = str(caught.value)
    assert "inv.yaml" in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- {gpus: {count: 2}}\n- {devices: [{name: gpu-1}]}", "used twice: gpu-1"),
        ("devices: [{name: GPU_0}]", "DNS label"),
        ("gpus: {count: 100}\n---\ndevices: [{name: a}, {name: b}, {name: c}, {name: d}, {name: e}, "
         "{name: f}, {name: g}, {name: h}, {name: i}, {name: j}, {name: k}, {name: l}, {name: m}, {name: n}, "
         "{name: o}, {name: p}, {name: q}, {name: r}, {name: s}, {name: t}, {name: u}, {name: v}, {name: w}, "
         "{name: x}, {name: y}, {name: z}, {name: aa}, {name: ab}, {name: ac}]", "at most 128"),
    ],
)  # fmt: skip
def test_pool_level_errors(text: str, fragment: str) -> None:
    with pytest.raises(InventoryFileError, match=fragment):
        inventories_for_node(parse_inventory(text), "node-a", "gpu.nvidia.com")


def test_backend_rereads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("gpus: {count: 1}")
    backend = SimulatedBackend(path, "node-a", "driver.example.com")
    backend.open()
    assert [len(p.devices) for p in backend.read_pools()] == [1]
    path.write_text("gpus: {count: 3}")
    assert [len(p.devices) for p in backend.read_pools()] == [3]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InventoryFileError, match="cannot read inventory file"):
        SimulatedBackend(tmp_path / "absent.yaml", "node-a", "d.example.com").open()


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_samples_are_valid(sample: Path) -> None:
    parsed = parse_inventory(sample.read_text(), str(sample))
    assert parsed.pools
    for entry in parsed.pools:
        assert entry.device_infos()
