"""The `dra-operator` command line: one subcommand per module, loaded only when it is run."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each subcommand lives in its own module, which provides `add_arguments(parser)` and `main(args) -> int`.
# Modules are imported lazily so that `dra-operator simulate` never pays for Kopf or a Kubernetes client.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("dra_operator.operator.main", "run the controller and the admission webhook"),
    "agent": ("dra_operator.agent.main", "publish this node's devices as ResourceSlices"),
    "simulate": ("dra_operator.simulate", "allocate claims offline from YAML files, no cluster needed"),
    "demo": ("dra_operator.demo", "run the seed walkthrough on an embedded control plane"),
    "controlplane": ("dra_operator.controlplane.main", "build or start the embedded control plane"),
    "crds": ("dra_operator.crds", "print or write the CustomResourceDefinitions"),
    "pools": ("dra_operator.pools", "per node and pool: devices, allocated, tainted, free"),
    "check": ("dra_operator.check", "whether an installation works: API, CRDs, leader, webhook, devices"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dra-operator", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(_module=module)
    args = parser.parse_args(argv)
    return int(args._module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
