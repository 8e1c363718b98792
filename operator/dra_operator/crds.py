"""`dra-operator crds`: print the generated CRDs, write them into crds/, or check that directory.

The shell around api.crdgen, which only generates: this module does the file and terminal I/O.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dra_operator.api.crdgen import rendered
from dra_operator.api.group import GROUP

DEFAULT_DIR = Path("crds")


def stale_files(directory: Path) -> list[str]:
    """Names of files in `directory` that differ from the generated output, are missing, or are left over."""
    expected = rendered()
    problems = [
        name
        for name, text in expected.items()
        if not (directory / name).is_file() or (directory / name).read_text() != text
    ]
    if directory.is_dir():
        problems += sorted(p.name for p in directory.glob("*.yaml") if p.name not in expected)
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", metavar="DIR", type=Path, help="write one file per CRD into DIR")
    mode.add_argument(
        "--check",
        metavar="DIR",
        type=Path,
        nargs="?",
        const=DEFAULT_DIR,
        help=f"exit 1 if the files in DIR (default {DEFAULT_DIR}/) differ from the generated CRDs",
    )


def main(args: argparse.Namespace) -> int:
    if args.write is not None:
        directory: Path = args.write
        directory.mkdir(parents=True, exist_ok=True)
        expected = rendered()
        for leftover in directory.glob(f"{GROUP}_*.yaml"):
            if leftover.name not in expected:
                leftover.unlink()
        for name, text in expected.items():
            (directory / name).write_text(text)
        print(f"wrote {len(expected)} CRDs to {directory}/")
        return 0
    if args.check is not None:
        stale = stale_files(args.check)
        if stale:
            print(
                f"{args.check}/ is stale ({', '.join(stale)}): run `dra-operator crds --write {args.check}`",
                file=sys.stderr,
            )
            return 1
        print(f"{args.check}/ is up to date")
        return 0
    sys.stdout.write("---\n".join(rendered().values()))
    return 0
