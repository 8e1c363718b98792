"""The embedded Kubernetes control plane: pinned binaries built from Go modules, run on loopback for tests.

See launcher.py for the ControlPlane API, build.py for the cached build, fakes.py for fake Node manifests,
polling.py for waiting on conditions.
"""

from dra_operator.controlplane.build import BINARIES, K8S_VERSION, BuildError, ensure_binaries
from dra_operator.controlplane.fakes import (
    gpu_slice_manifest,
    in_claim_form,
    node_manifest,
    pod_succeeded_status,
)
from dra_operator.controlplane.launcher import ApiError, ControlPlane, ControlPlaneError
from dra_operator.controlplane.polling import wait_until

__all__ = [
    "BINARIES",
    "K8S_VERSION",
    "ApiError",
    "BuildError",
    "ControlPlane",
    "ControlPlaneError",
    "ensure_binaries",
    "gpu_slice_manifest",
    "in_claim_form",
    "node_manifest",
    "pod_succeeded_status",
    "wait_until",
]
