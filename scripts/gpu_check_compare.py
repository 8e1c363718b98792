"""Compares the agent's `--print` ResourceSlice for a real GPU with what `nvidia-smi -q` reports.

Used by scripts/gpu-check.sh on the GPU machine; needs only PyYAML. Prints one row per GPU and field: the
agent's value, nvidia-smi's value, and PASS / FAIL (or n/a when nvidia-smi does not show the field). Exit
status 0 when every compared field passes and at least one GPU was compared, 1 otherwise.

    python3 scripts/gpu_check_compare.py --agent agent.yaml --smi nvidia-smi-q.txt [--compute-cap caps.csv]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

MIB = 2**20
Section = dict[str, Any]


def parse_smi_q(text: str) -> tuple[Section, list[Section]]:
    """`nvidia-smi -q` text -> (top-level fields, one nested dict per "GPU <bus id>" section).

    The format is "Key<spaces>: value" lines, nested by indentation, with section headers that have no value.
    The first occurrence of a key in a section wins.
    """
    top: Section = {}
    gpus: list[Section] = []
    stack: list[tuple[int, Section]] = [(-1, top)]
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("="):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        line = raw.strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else top
        match = re.match(r"^(.*?\S)\s+:\s?(.*)$", line)
        if indent == 0 and re.match(r"^GPU [0-9A-Fa-f]+:[0-9A-Fa-f]+:[0-9A-Fa-f]+\.[0-9A-Fa-f]+$", line):
            section: Section = {"Bus Id": line.split(" ", 1)[1]}
            gpus.append(section)
            stack = [(-1, top), (indent, section)]
        elif match:
            parent.setdefault(match.group(1), match.group(2).strip())
        else:
            child: Section = {}
            if isinstance(parent.get(line), dict):
                child = parent[line]
            else:
                parent.setdefault(line, child)
            stack.append((indent, child))
    return top, gpus


def _numbers(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def _bus(value: str) -> str:
    domain, _, rest = value.lower().partition(":")
    return (domain[-4:] if len(domain) == 8 and domain.startswith("0000") else domain) + ":" + rest


def _attr(device: dict[str, Any], name: str) -> str | None:
    value = (device.get("attributes") or {}).get(name)
    if not value:
        return None
    return str(next(iter(value.values())))


def _memory_mib(device: dict[str, Any]) -> float | None:
    value = ((device.get("capacity") or {}).get("memory") or {}).get("value")
    if value is None:
        return None
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(value))
    if match is None:
        return None
    scale = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[match.group(2)]
    return int(match.group(1)) * scale / MIB


Row = tuple[str, str, str, str, str]  # gpu, field, agent, nvidia-smi, verdict


def compare(
    slices: list[dict[str, Any]], smi_text: str, compute_caps: dict[str, str] | None = None
) -> list[Row]:
    top, gpus = parse_smi_q(smi_text)
    devices = [d for s in slices for d in (s.get("spec") or {}).get("devices") or []]
    rows: list[Row] = []

    def row(
        gpu: str, field: str, ours: Any, theirs: Any, same: Callable[[Any, Any], bool] | None = None
    ) -> None:
        if theirs in (None, "", "N/A"):
            rows.append((gpu, field, str(ours), "n/a", "n/a"))
            return
        ok = ours is not None and (same(ours, theirs) if same else str(ours) == str(theirs))
        rows.append((gpu, field, str(ours), str(theirs), "PASS" if ok else "FAIL"))

    if not gpus:
        rows.append(("-", "GPUs in nvidia-smi -q", str(len(devices)), "0", "FAIL"))
    for section in gpus:
        uuid = section.get("GPU UUID", "?")
        label = str(section.get("Minor Number", uuid))
        mig_on = str((section.get("MIG Mode") or {}).get("Current", "")).lower() == "enabled"
        if mig_on:
            mine = [d for d in devices if _attr(d, "parentUUID") == uuid]
            row(label, "MIG devices for this GPU", len(mine), "MIG mode enabled", lambda a, _: a > 0)
            device = mine[0] if mine else {}
        else:
            device = next((d for d in devices if _attr(d, "uuid") == uuid), {})
            row(label, "uuid", _attr(device, "uuid"), uuid)
            row(label, "device name", device.get("name"), f"gpu-{section.get('Minor Number')}")
            smi_mib = str((section.get("FB Memory Usage") or {}).get("Total", "")).split(" ")[0]
            row(label, "memory (MiB)", _memory_mib(device), smi_mib or None,
                lambda a, b: abs(float(a) - float(b)) < 1)  # fmt: skip
        row(label, "productName", _attr(device, "productName"), section.get("Product Name"))
        row(
            label,
            "brand",
            _attr(device, "brand"),
            section.get("Product Brand"),
            lambda a, b: a.lower() == b.lower(),
        )
        row(label, "architecture", _attr(device, "architecture"), section.get("Product Architecture"),
            lambda a, b: a.lower() == b.lower())  # fmt: skip
        row(label, "driverVersion", _attr(device, "driverVersion"), top.get("Driver Version"),
            lambda a, b: _numbers(a) == _numbers(b))  # fmt: skip
        row(label, "cudaDriverVersion", _attr(device, "cudaDriverVersion"), top.get("CUDA Version"),
            lambda a, b: _numbers(a) == _numbers(b))  # fmt: skip
        bus = (section.get("PCI") or {}).get("Bus Id") or section.get("Bus Id")
        row(label, "pcieBusID", _attr(device, "pcieBusID"), bus, lambda a, b: a == _bus(b))
        cap = (compute_caps or {}).get(uuid)
        row(label, "cudaComputeCapability", _attr(device, "cudaComputeCapability"), cap,
            lambda a, b: _numbers(a) == _numbers(b))  # fmt: skip
    return rows


def render(rows: list[Row]) -> str:
    header = ("GPU", "field", "agent (--print)", "nvidia-smi", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", required=True, type=Path, help="the agent's --print output (YAML)")
    parser.add_argument("--smi", required=True, type=Path, help="nvidia-smi -q output")
    parser.add_argument("--compute-cap", type=Path, help="nvidia-smi --query-gpu=uuid,compute_cap CSV")
    args = parser.parse_args(argv)
    slices = [d for d in yaml.safe_load_all(args.agent.read_text()) if d]
    caps: dict[str, str] = {}
    if args.compute_cap and args.compute_cap.exists():
        for line in args.compute_cap.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0].startswith("GPU-"):
                caps[parts[0]] = parts[1]
    rows = compare(slices, args.smi.read_text(), caps)
    print(render(rows))
    failed = [r for r in rows if r[4] == "FAIL"]
    passed = [r for r in rows if r[4] == "PASS"]
    print(f"\n{len(passed)} PASS, {len(failed)} FAIL, {len(rows) - len(passed) - len(failed)} n/a")
    return 0 if passed and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
