"""`dra-operator controlplane {build,start,env}`: build binaries, run a control plane, print exports."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from dra_operator.controlplane import build
from dra_operator.controlplane.fakes import node_manifest
from dra_operator.controlplane.launcher import ControlPlane, ControlPlaneError


def _state_file() -> Path:
    # Where `start` records the running control plane, so `env` in another shell can find it.
    return build.cache_root() / "running.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do")
    p_build = sub.add_parser("build", help="build (or reuse the cached) Kubernetes and etcd binaries")
    p_build.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    p_build.add_argument("-p", "--jobs", type=int, default=2, help="parallel compile jobs (go build -p)")
    p_build.add_argument(
        "--version",
        action="append",
        metavar="V",
        help=f"a release of the version matrix ({', '.join(build.RELEASES)}; 1.30 names its 1.30 patch; "
        "`all` for every one); repeatable (default: {build.K8S_VERSION})",
    )
    p_build.add_argument(
        "--nodes",
        action="store_true",
        help="also the real nodes' kubelet, CNI plugins and pause, and (as root) the Debian packages they "
        "run with: containerd, runc, iptables, socat, busybox-static",
    )
    p_start = sub.add_parser("start", help="start a control plane and keep it running until Ctrl-C")
    p_start.add_argument(
        "--run-dir", type=Path, help="keep certificates, data and logs here (default: temp dir)"
    )
    p_start.add_argument(
        "--keep", action="store_true", help="keep the temporary run directory after stopping"
    )
    p_start.add_argument("--fake-nodes", type=int, default=0, metavar="N", help="create N Ready fake Nodes")
    p_start.add_argument(
        "--version",
        default=build.K8S_VERSION,
        metavar="V",
        help=f"the Kubernetes release to run ({', '.join(build.RELEASES)}; default {build.K8S_VERSION})",
    )
    sub.add_parser("env", help="print shell exports (PATH with kubectl; KUBECONFIG of a running `start`)")


def main(args: argparse.Namespace) -> int:
    try:
        if args.action == "build":
            return _build(args)
        if args.action == "start":
            return _start(args)
        return _env()
    except (build.BuildError, ControlPlaneError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _build(args: argparse.Namespace) -> int:
    wanted = args.version or [build.K8S_VERSION]
    versions = list(build.RELEASES) if "all" in wanted else [build.release(v).kubernetes for v in wanted]
    for version in versions:
        result = build.ensure_binaries(force=args.force, jobs=args.jobs, version=version)
        how = "cached" if result.cached else "built"
        chosen = build.RELEASES[version]
        print(
            f"{how} Kubernetes {chosen.kubernetes} + etcd {chosen.etcd} "
            f"in {result.seconds:.1f}s: {result.bin_dir}"
        )
    if args.nodes:
        from dra_operator.realnodes import RealNodesUnavailable, ensure_host_packages

        nodes = build.ensure_node_binaries(force=args.force, jobs=args.jobs)
        how = "cached" if nodes.cached else "built"
        print(f"{how} {build.NODE.description} in {nodes.seconds:.1f}s: {nodes.bin_dir}")
        try:
            ensure_host_packages()
        except RealNodesUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0


def _start(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    plane = ControlPlane(run_dir=args.run_dir, keep_run_dir=args.keep, version=args.version)
    with plane:
        for index in range(args.fake_nodes):
            plane.request("POST", "/api/v1/nodes", node_manifest(f"fake-node-{index}"))
        state = {"pid": os.getpid(), "kubeconfig": str(plane.kubeconfig), "bin_dir": str(plane.bin_dir)}
        _state_file().write_text(json.dumps(state))
        try:
            print(f"control plane {plane.version} ready in {plane.startup_seconds:.1f}s at {plane.server}")
            print(f"logs: {plane.run_dir}/<component>.log\n")
            print(f"export KUBECONFIG={shlex.quote(str(plane.kubeconfig))}")
            print(f"export PATH={shlex.quote(str(plane.bin_dir))}:$PATH")
            print('kubectl get nodes   # or, in another shell: eval "$(dra-operator controlplane env)"')
            print("\nCtrl-C stops it.", flush=True)
            while not stop.wait(1.0):
                plane.check()
        finally:
            with contextlib.suppress(OSError):
                _state_file().unlink()
    print("stopped")
    return 0


def _env() -> int:
    print(f"export PATH={shlex.quote(str(build.bin_dir()))}:$PATH")
    try:
        state = json.loads(_state_file().read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError):
        print("# no running `dra-operator controlplane start` found", file=sys.stderr)
        return 0
    print(f"export KUBECONFIG={shlex.quote(state['kubeconfig'])}")
    return 0
