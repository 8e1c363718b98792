"""`dra-operator pools`: per node and pool, how many devices exist, are allocated, tainted and free.

Computed here from the ResourceSlices and ResourceClaims of resource.dra-operator.io (the same counts the
operator writes into each slice's status, see dra_operator.allocation.usage), so it is current to the moment
and needs no operator: read access to those two kinds is enough.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from dra_operator.allocation.usage import slice_usage, table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG / ~/.kube)"
    )
    parser.add_argument("--node", help="only this node's slices")


async def _read(kubeconfig: str | None) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    from dra_operator.kube.client import Kube, api_client, ours

    api = await api_client(kubeconfig)
    try:
        kube = Kube(api)
        slices = await kube.request("GET", ours("resourceslices"))
        claims = await kube.request("GET", ours("resourceclaims"))
        return list(slices.get("items") or []), list(claims.get("items") or [])
    finally:
        await api.close()


def main(args: argparse.Namespace) -> int:
    from dra_operator.kube.client import KubeError, NoApiServer

    try:
        slices, claims = asyncio.run(_read(args.kubeconfig))
    except (KubeError, NoApiServer) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    usage = slice_usage(slices, claims)
    if args.node:
        usage = {name: u for name, u in usage.items() if u.node == args.node}
    rows = table(usage)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0
