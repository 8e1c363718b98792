"""The kubelet device-plugin API v1beta1 in Python: checked-in gRPC stubs and the API's constants.

The stubs `api_pb2` (messages), `api_pb2.pyi` (their types) and `api_pb2_grpc` (the `Registration` and
`DevicePlugin` services) are generated from `pkg/apis/deviceplugin/v1beta1/api.proto` of the Go module
k8s.io/kubelet at the release matching the pinned Kubernetes (`controlplane.build.K8S_VERSION`): never edit
them, regenerate with `python -m dra_operator.agent.deviceplugin.generate --write` (see generate.py);
tests/unit/test_deviceplugin_stubs.py fails when they are stale. They are not imported here, so reading the
constants below needs neither grpcio nor protobuf.

The constants restate the facts of the same package's constants.go: where the kubelet listens, which API
version a plugin registers with, and the two values a device's health field takes.
"""

from __future__ import annotations

from typing import Final

#: The API version a device plugin names in its RegisterRequest; the only one this kubelet API accepts.
VERSION: Final = "v1beta1"
SUPPORTED_VERSIONS: Final = (VERSION,)

#: The directory where the kubelet's registration socket and the plugins' own sockets live (Linux).
DEVICE_PLUGIN_PATH: Final = "/var/lib/kubelet/device-plugins/"
#: The file name of the kubelet's Registration service socket inside DEVICE_PLUGIN_PATH.
KUBELET_SOCKET_NAME: Final = "kubelet.sock"
#: The full path of the kubelet's Registration service socket.
KUBELET_SOCKET: Final = DEVICE_PLUGIN_PATH + KUBELET_SOCKET_NAME

#: The value of `Device.health` for a device that may be allocated.
HEALTHY: Final = "Healthy"
#: The value of `Device.health` for a device the kubelet must not hand out.
UNHEALTHY: Final = "Unhealthy"

#: How long (seconds) the kubelet waits for a PreStartContainer call to return.
PRE_START_CONTAINER_TIMEOUT_SECONDS: Final = 30
