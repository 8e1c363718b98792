"""`dra-operator pools`: per node and pool, how many devices exist, are allocated, tainted and free.

Computed here from the ResourceSlices, ResourceClaims and DeviceTaintRules of resource.dra-operator.io (the
same counts the operator writes into each slice's status, see dra_operator.allocation.usage), so it is current
to the moment and needs no operator: read access to those kinds is enough (a cluster without the
DeviceTaintRule CRD counts no rule).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from dra_operator.allocation.selectors import SelectorCache
from dra_operator.allocation.taints import rule_taints
from dra_operator.allocation.usage import slice_usage, table
from dra_operator.api.resource import DeviceTaintRule, InvalidObject, ResourceSlice, load_object

Json = dict[str, Any]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG / ~/.kube)"
    )
    parser.add_argument("--node", help="only this node's slices")


async def _read(kubeconfig: str | None) -> tuple[list[Json], list[Json], list[Json]]:
    from dra_operator.kube.client import Kube, KubeError, api_client, ours

    api = await api_client(kubeconfig)
    try:
        kube = Kube(api)
        slices = await kube.request("GET", ours("resourceslices"))
        claims = await kube.request("GET", ours("resourceclaims"))
        try:
            rules = await kube.request("GET", ours("devicetaintrules"))
        except KubeError as error:
            if error.status != 404:
                raise
            rules = {}
        return (
            list(slices.get("items") or []),
            list(claims.get("items") or []),
            list(rules.get("items") or []),
        )
    finally:
        await api.close()


def _models(objs: list[Json], kind: type[Any]) -> list[Any]:
    found = []
    for obj in objs:
        try:
            model = load_object(obj)
        except InvalidObject:
            continue  # the operator ignores it too
        if isinstance(model, kind):
            found.append(model)
    return found


def main(args: argparse.Namespace) -> int:
    from dra_operator.kube.client import KubeError, NoApiServer

    try:
        slices, claims, rules = asyncio.run(_read(args.kubeconfig))
    except (KubeError, NoApiServer) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    parsed = _models(slices, ResourceSlice)
    ruled = rule_taints(_models(rules, DeviceTaintRule), parsed, SelectorCache()) if rules else None
    usage = slice_usage(parsed, claims, ruled.by_device if ruled is not None else None)
    if args.node:
        usage = {name: u for name, u in usage.items() if u.node == args.node}
    rows = table(usage)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0
