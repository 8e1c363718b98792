"""`dra-operator crds`: print the generated CRDs, write them into crds/, check that directory, or apply them.

The shell around api.crdgen, which only generates: this module does the file, terminal and API I/O, and reads
the field descriptions from the models' source (`field_docs`). `generate()` and `rendered()` are the CRDs as
shipped. `--apply` is what the chart's pre-upgrade hook runs, because Helm installs a chart's crds/ once and
never updates them: each CRD is server-side applied as this image generates it, then waited for until it is
Established.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import functools
import inspect
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dra_operator.api import crdgen
from dra_operator.api.group import GROUP

DEFAULT_DIR = Path("crds")
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
APPLY_PATCH = "application/apply-patch+yaml"
#: The field manager of the applied CRDs. Forced: the fields Helm (or kubectl) wrote at install become ours.
FIELD_MANAGER = "dra-operator-crds"


@functools.cache
def field_docs(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the attribute docstring below it in `model` or a base class, as one line of text.

    Read from the source when the CRDs are generated: the models themselves carry no descriptions (a string
    after an assignment compiles to nothing), so they cost the running operator nothing."""
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not issubclass(cls, BaseModel) or cls.__module__.startswith("pydantic"):
            continue
        (node,) = ast.parse(textwrap.dedent(inspect.getsource(cls))).body
        assert isinstance(node, ast.ClassDef)
        for statement, following in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def generate() -> dict[str, dict[str, Any]]:
    """File name -> CRD, for every kind, with the models' field descriptions."""
    return crdgen.generate(field_docs)


def rendered() -> dict[str, str]:
    """File name -> file text, exactly as `--write` writes it."""
    return crdgen.rendered(field_docs)


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
    mode.add_argument(
        "--apply",
        action="store_true",
        help="server-side apply the CRDs to the cluster and wait until each is Established",
    )
    parser.add_argument(
        "--kubeconfig", help="with --apply: kubeconfig file (default: in-cluster, then $KUBECONFIG / ~/.kube)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="with --apply: seconds to wait for the CRDs to be Established (default 60)",
    )


def _established(crd: dict[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


async def apply(kubeconfig: str | None, wait_seconds: float) -> int:
    """Apply every generated CRD; 0 once all are Established, 1 (with the API server's reason) otherwise."""
    from dra_operator.kube.client import Kube, KubeError, NoApiServer, api_client

    try:
        api = await api_client(kubeconfig)
    except NoApiServer as error:
        print(error, file=sys.stderr)
        return 1
    try:
        kube = Kube(api)
        names = []
        for crd in generate().values():
            name = crd["metadata"]["name"]
            path = f"{CRDS}/{name}"
            try:
                before = await kube.get(path)
                after = await kube.request(
                    "PATCH",
                    path,
                    crd,
                    content_type=APPLY_PATCH,
                    query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                )
            except KubeError as error:
                print(f"customresourcedefinition {name}: not applied: {error}", file=sys.stderr)
                return 1
            if before is None:
                outcome = "created"
            elif before["metadata"].get("resourceVersion") == after["metadata"].get("resourceVersion"):
                outcome = "unchanged"
            else:
                outcome = "configured"
            print(f"customresourcedefinition {name} {outcome}", flush=True)
            names.append(name)
        deadline = time.monotonic() + wait_seconds
        waiting = list(names)
        while waiting:
            try:
                waiting = [n for n in waiting if not _established(await kube.get(f"{CRDS}/{n}") or {})]
            except KubeError as error:
                print(f"reading the CRDs back failed: {error}", file=sys.stderr)
                return 1
            if waiting and time.monotonic() > deadline:
                print(f"not Established after {wait_seconds:g}s: {', '.join(waiting)}", file=sys.stderr)
                return 1
            if waiting:
                await asyncio.sleep(0.5)
        print(f"{len(names)} CRDs established", flush=True)
        return 0
    finally:
        await api.close()


def main(args: argparse.Namespace) -> int:
    if args.apply:
        return asyncio.run(apply(args.kubeconfig, args.timeout))
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
