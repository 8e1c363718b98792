"""Real nodes leave nothing behind: after stop(), and after `kill -9` once the next start has swept.

A child process starts its own control plane and one real node, runs a Pod on it (so containerd shims and a
container exist), and reports what it made. Then it either stops cleanly or is killed with SIGKILL; what it
made on the host (network namespace, bridge, cgroups, processes, state file, run directory) is checked gone —
after the kill, once `host.sweep()` (what every start runs first) has run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dra_operator.controlplane import wait_until
from dra_operator.realnodes import host
from dra_operator.realnodes.config import NodeNetwork

pytestmark = pytest.mark.realnodes

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from dra_operator.controlplane import ControlPlane, wait_until
    from dra_operator.realnodes import BUSYBOX_IMAGE, RealNodes

    cp = ControlPlane().start()
    nodes = RealNodes(cp, count=1, prefix="hygiene").start()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
           "spec": {"containers": [{"name": "c", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                                    "command": ["sleep", "3600"]}]}}
    cp.request("POST", "/api/v1/namespaces/default/pods", pod)
    wait_until(lambda: cp.request("GET", "/api/v1/namespaces/default/pods/sleeper")["status"].get("phase")
               == "Running", timeout=120, message="the Pod to run")
    state = nodes._state
    print(json.dumps({"run_dir": str(nodes.run_dir), "cluster": state.cluster, "cgroup": state.cgroup_root}),
          flush=True)
    if sys.argv[1] == "stop":
        nodes.stop()
        cp.stop()
        print("stopped", flush=True)
    else:
        time.sleep(3600)
    """
)


def start_child(mode: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.wait(timeout=30)
        pytest.fail(f"the child failed to start its node:\n{child.stderr.read() if child.stderr else ''}")
    return child, json.loads(line)


def processes_using(path: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if path in cmdline:
                found.append(int(proc.name))
    return found


def what_is_left(made: dict[str, Any]) -> list[str]:
    network = NodeNetwork(made["cluster"])
    left = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    if network.netns(0) in netns.split():
        left.append(f"netns {network.netns(0)}")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    left += [f"link {name}" for name in (network.bridge, network.host_veth(0)) if f" {name}" in links]
    left += [
        f"cgroup {hierarchy.name}{made['cgroup']}"
        for hierarchy in host.cgroup_hierarchies()
        if (hierarchy / made["cgroup"].strip("/")).exists()
    ]
    left += [f"process {pid}" for pid in processes_using(made["run_dir"])]
    if Path(made["run_dir"]).exists():
        left.append(f"run dir {made['run_dir']}")
    if (host.STATE_DIR / f"{made['cluster']}.json").exists():
        left.append("state file")
    return left


def test_stop_undoes_every_host_change() -> None:
    child, made = start_child("stop")
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "stopped"
    child.wait(timeout=60)
    assert what_is_left(made) == []


def test_after_kill_9_the_next_start_cleans_what_was_left() -> None:
    child, made = start_child("kill")
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    # The kubelet and containerd die with their parent; the Pod's container and its shim, the namespace,
    # the bridge and the cgroups do not.
    assert what_is_left(made), "a killed run left nothing: nothing to sweep, so this test proves nothing"
    wait_until(lambda: host.sweep() or not what_is_left(made), timeout=30, message="the sweep to run")
    assert what_is_left(made) == []
