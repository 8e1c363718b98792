"""`dra-operator demo`: the seed's DRA walkthrough on an embedded control plane with simulated GPU nodes.

It builds (or reuses) the pinned control plane, starts it, creates fake GPU Nodes each served by a
simulated `dra-operator agent`, installs the CRDs, starts `dra-operator run`, then follows "Allocate Devices
to Workloads with DRA" with our apiVersion using the real kubectl: DeviceClasses, a ResourceClaimTemplate and
a ResourceClaim, a Pod with the template, Pods sharing the claim, the seed's Job as written (it cannot be
placed: the demo shows why) and a variant whose shared claim selects other GPUs (it runs to completion, two
Pods at a time). Where this machine can run real nodes (root, cgroup v1: dra_operator.realnodes), every node
runs a kubelet and containerd and the containers print the devices they got; elsewhere the Nodes are fake and
the demo plays the kubelet by marking bound Pods Succeeded; it says which. It ends with the seed's clean-up
and stops every process it started, on success, on error and on Ctrl-C.

The manifests it applies are in `manifests/` beside this file (the seed's, ported; see the notes in them).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from dra_operator.controlplane import ApiError, BuildError, ControlPlaneError
from dra_operator.demo.console import Console
from dra_operator.demo.processes import DemoError, Interrupted, raise_interrupted
from dra_operator.demo.walkthrough import STEPS, Walkthrough

MIN_NODES = 2  # the shared All claim needs a node where the template Pod took no GPU


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nodes",
        type=int,
        default=3,
        metavar="N",
        help="fake GPU nodes, each with four 64Gi and two 32Gi simulated GPUs "
        f"(default 3, at least {MIN_NODES})",
    )
    parser.add_argument(
        "--nodes-kind",
        choices=("auto", "real", "fake"),
        default="auto",
        help="real: kubelet + containerd nodes that run the Pods (root, cgroup v1); fake: Node objects only, "
        "the demo plays the kubelet; auto (default): real where this machine can run them",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="after the walkthrough, skip the clean-up and keep everything running until Ctrl-C "
        "(prints the KUBECONFIG to use; bound Pods keep being marked Succeeded)",
    )


def manifests_dir() -> Path:
    return Path(str(resources.files("dra_operator.demo") / "manifests"))


def main(args: argparse.Namespace) -> int:
    if args.nodes < MIN_NODES:
        print(f"dra-operator demo: --nodes must be at least {MIN_NODES}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_interrupted)
    console = Console(total_steps=len(STEPS) - (1 if args.keep else 0))
    workdir = Path(tempfile.mkdtemp(prefix="dra-operator-demo-"))
    walkthrough = Walkthrough(console, workdir, manifests_dir(), args.nodes, args.nodes_kind)
    keep_logs = False
    started = time.monotonic()
    try:
        walkthrough.run(keep=args.keep)
        return 0
    except (KeyboardInterrupt, Interrupted):
        console.print()
        console.print("interrupted: stopping everything the demo started")
        return 130
    except (DemoError, BuildError, ControlPlaneError, ApiError, TimeoutError) as error:
        keep_logs = True
        console.print()
        console.print(f"dra-operator demo: error: {error}")
        return 1
    finally:
        # A second Ctrl-C while stopping must not leave processes behind: ignore it until everything is down.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        walkthrough.stop()
        if keep_logs:
            console.print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        took = time.monotonic() - started
        built = walkthrough.build_seconds
        console.print(
            f"demo took {took:.0f}s" + (f" ({built:.0f}s of it building binaries)" if built else "")
        )
