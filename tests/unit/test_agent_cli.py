"""`dra-operator agent` on the command line: --print with the simulated backend, and usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dra_operator import cli
from dra_operator.agent.simulated import inventories_for_node, parse_inventory
from dra_operator.agent.slices import build_slice, slice_dict
from dra_operator.api.resource import ResourceSlice, load_object

SAMPLES = Path(__file__).parents[2] / "operator" / "dra_operator" / "agent" / "samples"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli.main(["agent", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize(
    ("sample", "node"), [("inventory-seed.yaml", "gpu-node-1"), ("inventory-mixed.yaml", "worker-1")]
)
def test_print_writes_the_slices_the_inventory_describes(
    capsys: pytest.CaptureFixture[str], sample: str, node: str
) -> None:
    path = SAMPLES / sample
    status, out, err = run(
        ["--backend", "simulated", "--inventory", str(path), "--node", node, "--print"], capsys
    )
    assert status == 0, err
    printed = [load_object(doc) for doc in yaml.safe_load_all(out)]
    expected = [
        slice_dict(build_slice(node, pool))
        for pool in inventories_for_node(parse_inventory(path.read_text()), node, "gpu.nvidia.com")
    ]
    assert [slice_dict(p) for p in printed if isinstance(p, ResourceSlice)] == expected
    assert all(p.metadata.owner_references is None for p in printed)  # nothing to own without an API server


def test_seed_sample_gives_what_the_seed_class_selects(capsys: pytest.CaptureFixture[str]) -> None:
    from dra_operator.api.quantity import Quantity

    args = [
        "--backend",
        "simulated",
        "--inventory",
        str(SAMPLES / "inventory-seed.yaml"),
        "--node",
        "gpu-node-0",
    ]
    status, out, _ = run([*args, "--print"], capsys)
    assert status == 0
    (printed,) = [load_object(doc) for doc in yaml.safe_load_all(out)]
    assert isinstance(printed, ResourceSlice)
    assert printed.spec.driver == "driver.example.com"
    for device in printed.spec.devices or []:
        assert device.attributes is not None and device.capacity is not None
        assert device.attributes["type"].string == "gpu"
        assert device.capacity["memory"].value == Quantity.parse("64Gi")


def test_node_name_comes_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODE_NAME", "gpu-node-7")
    status, out, _ = run(
        ["--backend", "simulated", "--inventory", str(SAMPLES / "inventory-seed.yaml"), "--print"], capsys
    )
    assert status == 0
    assert {doc["spec"]["nodeName"] for doc in yaml.safe_load_all(out)} == {"gpu-node-7"}


def test_a_node_without_pools_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--backend", "simulated", "--inventory", str(SAMPLES / "inventory-seed.yaml"), "--node", "cpu-1"]
    status, out, _ = run([*args, "--print"], capsys)
    assert (status, list(yaml.safe_load_all(out))) == (0, [])


@pytest.mark.parametrize(
    ("args", "status", "fragment"),
    [
        (["--backend", "simulated", "--inventory", "x.yaml", "--print"], 2, "no node name"),
        (["--backend", "simulated", "--node", "n", "--print"], 2, "needs --inventory"),
        (
            ["--backend", "simulated", "--inventory", "/nonexistent.yaml", "--node", "n", "--print"],
            1,
            "cannot read",
        ),
        (["--backend", "simulated", "--inventory", "x", "--node", "n", "--interval", "0"], 2, "--interval"),
        (
            [
                "--backend",
                "simulated",
                "--inventory",
                str(SAMPLES / "inventory-seed.yaml"),
                "--node",
                "n",
                "--kubeconfig",
                "/nonexistent",
            ],
            2,
            "kubeconfig /nonexistent does not exist",
        ),
    ],
)
def test_usage_errors_are_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    status: int,
    fragment: str,
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    monkeypatch.delenv("DRA_AGENT_INVENTORY", raising=False)
    got, out, err = run(args, capsys)
    assert got == status
    assert out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("dra-operator agent: ")
    assert fragment in line


def test_invalid_inventory_file_is_reported_with_its_fields(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("gpus: {count: two}\n")
    status, out, err = run(
        ["--backend", "simulated", "--inventory", str(path), "--node", "n", "--print"], capsys
    )
    assert status == 1
    assert out == ""
    assert str(path) in err
    assert "gpus.count" in err
