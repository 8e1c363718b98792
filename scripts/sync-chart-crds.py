#!/usr/bin/env python3
"""Copy the generated CRDs (crds/*.yaml) into the chart (charts/dra-operator/crds/), byte for byte.

    scripts/sync-chart-crds.py           copy, and remove chart CRDs that crds/ no longer has
    scripts/sync-chart-crds.py --check   exit 1 if the chart's CRDs differ from crds/

Helm installs a chart's crds/ as they are, so the chart carries copies; tests/unit/test_chart_files.py fails
when they drift. Run `dra-operator crds` (which regenerates crds/) first when the API models changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "crds"
TARGET = ROOT / "charts" / "dra-operator" / "crds"


def differences(source: Path = SOURCE, target: Path = TARGET) -> list[str]:
    """File names that are missing, extra or different in `target` compared with `source`."""
    wanted = {p.name: p.read_bytes() for p in source.glob("*.yaml")}
    present = {p.name: p.read_bytes() for p in target.glob("*.yaml")}
    return sorted(name for name in wanted.keys() | present.keys() if wanted.get(name) != present.get(name))


def sync(source: Path = SOURCE, target: Path = TARGET) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*.yaml"):
        if not (source / stale.name).exists():
            stale.unlink()
    for crd in source.glob("*.yaml"):
        (target / crd.name).write_bytes(crd.read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only report drift")
    args = parser.parse_args(argv)
    if not any(SOURCE.glob("*.yaml")):
        print(f"{SOURCE} has no CRDs; run `dra-operator crds` first", file=sys.stderr)
        return 1
    if args.check:
        drift = differences()
        if drift:
            print("chart CRDs differ from crds/: " + ", ".join(drift) + "; run scripts/sync-chart-crds.py",
                  file=sys.stderr)  # fmt: skip
            return 1
        return 0
    sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
