"""scripts/gpu_check_compare.py, the comparison behind scripts/gpu-check.sh: nvidia-smi -q parsing and the
per-field verdicts, on a synthetic H100 report (the real run happens on the lent GPU machine)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from dra_operator.agent.inventory import DeviceInfo, Inventory, Version
from dra_operator.agent.slices import build_slice, slice_dict

SCRIPT = Path(__file__).parents[2] / "scripts" / "gpu_check_compare.py"
UUID = "GPU-5d3c1b2a-0000-1111-2222-333344445555"

SMI_Q = f"""
==============NVSMI LOG==============

Timestamp                                 : Thu Nov 26 10:00:00 2026
Driver Version                            : 580.159.04
CUDA Version                              : 13.0

Attached GPUs                             : 1
GPU 00000000:18:00.0
    Product Name                          : NVIDIA H100 80GB HBM3
    Product Brand                         : NVIDIA
    Product Architecture                  : Hopper
    MIG Mode
        Current                           : Disabled
        Pending                           : Disabled
    GPU UUID                              : {UUID}
    Minor Number                          : 0
    PCI
        Bus                               : 0x18
        Bus Id                            : 00000000:18:00.0
    FB Memory Usage
        Total                             : 81559 MiB
        Reserved                          : 551 MiB
        Used                              : 0 MiB
    BAR1 Memory Usage
        Total                             : 131072 MiB
"""


@pytest.fixture(scope="module")
def compare_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check_compare", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check_compare"] = module
    spec.loader.exec_module(module)
    return module


def agent_yaml(**overrides: Any) -> list[dict[str, Any]]:
    """What `agent --print` writes for the GPU SMI_Q describes (as the NVML backend maps it)."""
    attributes: dict[str, Any] = {
        "type": "gpu",
        "uuid": UUID,
        "productName": "NVIDIA H100 80GB HBM3",
        "brand": "Nvidia",
        "architecture": "Hopper",
        "cudaComputeCapability": Version("9.0.0"),
        "driverVersion": Version("580.159.4"),
        "cudaDriverVersion": Version("13.0.0"),
        "pcieBusID": "0000:18:00.0",
    }
    attributes.update(overrides)
    device = DeviceInfo(name="gpu-0", attributes=attributes, capacity={"memory": 81559 * 2**20})
    text = yaml.safe_dump(slice_dict(build_slice("gpu-node", Inventory("gpu.nvidia.com", (device,)))))
    return [yaml.safe_load(text)]


def verdicts(rows: list[tuple[str, ...]]) -> dict[str, str]:
    return {row[1]: row[4] for row in rows}


def test_parser_reads_top_level_and_nested_fields(compare_module: ModuleType) -> None:
    top, gpus = compare_module.parse_smi_q(SMI_Q)
    assert (top["Driver Version"], top["CUDA Version"]) == ("580.159.04", "13.0")
    (gpu,) = gpus
    assert gpu["GPU UUID"] == UUID
    assert gpu["FB Memory Usage"]["Total"] == "81559 MiB"
    assert gpu["BAR1 Memory Usage"]["Total"] == "131072 MiB"
    assert gpu["PCI"]["Bus Id"] == "00000000:18:00.0"
    assert gpu["MIG Mode"]["Current"] == "Disabled"


def test_matching_report_passes_every_field(compare_module: ModuleType) -> None:
    rows = compare_module.compare(agent_yaml(), SMI_Q, {UUID: "9.0"})
    assert set(verdicts(rows).values()) == {"PASS"}
    assert {"uuid", "productName", "memory (MiB)", "driverVersion", "cudaDriverVersion"} <= set(
        verdicts(rows)
    )


@pytest.mark.parametrize(
    ("field", "replace"),
    [
        ("uuid", (UUID, "GPU-ffffffff-0000-1111-2222-333344445555")),
        ("productName", ("NVIDIA H100 80GB HBM3\n", "NVIDIA H200\n")),
        ("memory (MiB)", ("81559 MiB", "40960 MiB")),
        ("driverVersion", ("580.159.04", "575.57.08")),
        ("cudaDriverVersion", ("CUDA Version                              : 13.0", "CUDA Version : 12.9")),
        ("pcieBusID", ("00000000:18:00.0\n    FB", "00000000:19:00.0\n    FB")),
    ],
)
def test_a_disagreeing_field_fails(compare_module: ModuleType, field: str, replace: tuple[str, str]) -> None:
    assert replace[0] in SMI_Q
    rows = compare_module.compare(agent_yaml(), SMI_Q.replace(*replace), {UUID: "9.0"})
    failed = {name for name, verdict in verdicts(rows).items() if verdict == "FAIL"}
    assert field in failed


def test_missing_compute_capability_is_not_applicable(compare_module: ModuleType) -> None:
    assert verdicts(compare_module.compare(agent_yaml(), SMI_Q))["cudaComputeCapability"] == "n/a"


def test_no_gpu_in_report_fails(compare_module: ModuleType) -> None:
    rows = compare_module.compare(agent_yaml(), "Driver Version : 580.159.04\n")
    assert [row[4] for row in rows] == ["FAIL"]


def test_main_exit_status(
    compare_module: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = tmp_path / "agent.yaml"
    agent.write_text(yaml.safe_dump_all(agent_yaml()))
    smi = tmp_path / "smi.txt"
    smi.write_text(SMI_Q)
    assert compare_module.main(["--agent", str(agent), "--smi", str(smi)]) == 0
    smi.write_text(SMI_Q.replace("81559 MiB", "1 MiB"))
    assert compare_module.main(["--agent", str(agent), "--smi", str(smi)]) == 1
    assert "FAIL" in capsys.readouterr().out
