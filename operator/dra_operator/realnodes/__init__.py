"""Real Kubernetes nodes for tests and the demo: kubelet + containerd + runc + CNI per node, on this machine.

See launcher.py for the RealNodes API, config.py for the files each node runs with, host.py for the host
changes and their undoing, images.py for the sandbox and test images made without a registry.
"""

from dra_operator.realnodes.images import BUSYBOX_IMAGE, PAUSE_IMAGE
from dra_operator.realnodes.launcher import (
    RealNodes,
    RealNodesError,
    RealNodesUnavailable,
    available,
    ensure_host_packages,
)

__all__ = [
    "BUSYBOX_IMAGE",
    "PAUSE_IMAGE",
    "RealNodes",
    "RealNodesError",
    "RealNodesUnavailable",
    "available",
    "ensure_host_packages",
]
