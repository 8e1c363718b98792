"""Leader chaos as a soak (a benchmark-style script, not a test): the suite's chaos round, longer and larger.

Two `dra-operator run` replicas on one embedded control plane with fake Nodes; the leader is SIGKILLed every
few seconds (and restarted at once as the standby) while Pods that use their own template claim, a shared
claim, or both come and go. Invariants are checked on every poll (see dra_operator.controlplane.chaos); the
script prints the report and exits 1 on any violation.

    .venv/bin/python bench/chaos_soak.py [--pods 600] [--nodes 50] [--chaos-seconds 600] [--live 60]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from dra_operator.controlplane import ControlPlane
from dra_operator.controlplane.chaos import Chaos, ChaosConfig

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=600)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--gpus-per-node", type=int, default=4)
    parser.add_argument("--shared-claims", type=int, default=10)
    parser.add_argument("--live", type=int, default=60)
    parser.add_argument("--chaos-seconds", type=float, default=600.0)
    parser.add_argument("--kill-min", type=float, default=3.0)
    parser.add_argument("--kill-max", type=float, default=10.0)
    parser.add_argument("--settle-bound", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    config = ChaosConfig(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        shared_claims=args.shared_claims,
        pods=args.pods,
        live=args.live,
        chaos_seconds=args.chaos_seconds,
        kill_every=(args.kill_min, args.kill_max),
        settle_bound=args.settle_bound,
        timeout=args.timeout,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory(prefix="dra-chaos-") as work, ControlPlane() as cp:
        cp.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        report = Chaos(cp, Path(work), config).run()
        print(report.summary())
        for violation in report.violations:
            print(f"VIOLATION: {violation}")
        return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
