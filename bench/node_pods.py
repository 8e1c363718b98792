"""What the device plugin's one-Pod-at-a-time check costs each ungating, no API server (a benchmark).

With `--device-plugin`, the operator ungates a Pod only when no other Pod on its node is still waiting for the
kubelet to admit it (admission.delivery.busy_with). At P managed Pods spread over N nodes, side by side in one
run: the check over every Pod in the caches (as before the fourth 2026-12-07 session) against the check over
the node's Pods, found through the caches' per-node lookup (State.pods_on). Prints ms per check (median of the
repeats) and the ratio.

    .venv/bin/python bench/node_pods.py [--nodes 5000] [--pods 10000] [--repeats 99]
"""

from __future__ import annotations

import argparse
import datetime
import itertools

from dra_operator.admission import names
from dra_operator.admission.delivery import busy_with
from dra_operator.operator.state import INDEXES, PODS, State, key_of
from pool_status import median_ms

NOW = datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC)


def pod(index: int, node: str) -> dict[str, object]:
    """A managed Pod bound to `node`, admitted long ago (so in delivery nowhere)."""
    return {
        "metadata": {
            "name": f"p{index}",
            "namespace": "bench",
            "uid": f"p{index}",
            "resourceVersion": "1",
            "labels": {names.MANAGED_LABEL: "true"},
        },
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/x:1"}]},
        "status": {"phase": "Running"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5000, help="nodes the Pods are spread over")
    parser.add_argument("--pods", type=int, default=10000, help="managed Pods in the caches")
    parser.add_argument("--repeats", type=int, default=99, help="checks timed per variant (median shown)")
    args = parser.parse_args()
    pods = [pod(i, f"node-{i % args.nodes}") for i in range(args.pods)]
    state = State()
    state.bind({name: {key_of(p): [p] for p in pods} if name == PODS else {} for name in INDEXES})
    turn = itertools.cycle(range(args.nodes))
    nodes: list[str] = []

    def next_node() -> None:
        nodes.append(f"node-{next(turn)}")

    assert busy_with(state.all(PODS), "node-0", NOW) == busy_with(state.pods_on("node-0"), "node-0", NOW)
    every = median_ms(lambda: busy_with(state.all(PODS), nodes[-1], NOW), args.repeats, next_node)
    lookup = median_ms(lambda: busy_with(state.pods_on(nodes[-1]), nodes[-1], NOW), args.repeats, next_node)
    print(f"{args.pods} managed Pods over {args.nodes} nodes; median of {args.repeats} checks")
    print(f"{'delivery check per ungating':<40} | ms")
    print(f"{'-' * 40}-+-------")
    for label, ms in (("over every Pod (before)", every), ("over the node's Pods (now)", lookup)):
        print(f"{label:<40} | {ms:6.3f}")
    print(f"ratio now / before: {lookup / every:.4f}x")


if __name__ == "__main__":
    main()
