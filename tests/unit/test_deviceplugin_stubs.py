"""The checked-in kubelet device-plugin v1beta1 stubs: byte-identical to what the pinned proto generates, and
usable (messages, services, the package's constants).

The pinned proto comes from the Go module cache (through the module proxy when the cache lacks it). When it
cannot be had the staleness tests fail with the reason; they never skip.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from dra_operator.agent import deviceplugin
from dra_operator.agent.deviceplugin import api_pb2, api_pb2_grpc, generate
from dra_operator.controlplane.build import K8S_VERSION


@functools.cache
def _pinned_proto() -> str:
    return generate.fetch_proto()


def _fetched() -> str:
    try:
        return _pinned_proto()
    except generate.GenerateError as error:
        reason = str(error)
    # Outside the except block, so the report is the reason alone, without the chained traceback.
    pytest.fail(
        f"cannot fetch {generate.SOURCE.module_version} {generate.SOURCE.path} to check the checked-in "
        f"stubs against: {reason}",
        pytrace=False,
    )


# --- staleness ---------------------------------------------------------------------------------------------


def test_source_is_the_kubelet_module_of_the_pinned_kubernetes() -> None:
    assert generate.staging_version(K8S_VERSION) == "v0." + K8S_VERSION.removeprefix("v1.")
    pinned = generate.ProtoSource(
        "k8s.io/kubelet", generate.staging_version(K8S_VERSION), "pkg/apis/deviceplugin/v1beta1/api.proto"
    )
    assert pinned == generate.SOURCE


def test_checked_in_stubs_are_byte_identical_to_what_the_pinned_proto_generates() -> None:
    expected = generate.generate(_fetched())
    assert sorted(expected) == ["api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py"]
    problems = generate.stale(expected)
    assert problems == [], f"stale device-plugin stubs; regenerate with `{generate.COMMAND}`"
    for name, text in expected.items():
        assert (generate.PACKAGE_DIR / name).read_bytes() == text.encode(), name


def test_headers_name_the_proto_and_its_digest() -> None:
    digest = generate.sha256(_fetched())
    for name in generate.GENERATED:
        text = (generate.PACKAGE_DIR / name).read_text()
        assert generate.recorded_source(text) == (generate.SOURCE.module_version, generate.PROTO_PATH, digest)


def test_check_tells_a_stub_of_another_proto_from_an_edited_one(tmp_path: Path) -> None:
    body = "x = 1\n"
    expected = {"api_pb2.py": generate.header(generate.SOURCE, "0" * 64) + body}
    older = generate.ProtoSource("k8s.io/kubelet", "v0.35.0", generate.PROTO_PATH)
    (tmp_path / "api_pb2.py").write_text(generate.header(older, "1" * 64) + body)
    [problem] = generate.stale(expected, tmp_path)
    assert f"generated from k8s.io/kubelet@v0.35.0 {generate.PROTO_PATH} {'1' * 64}" in problem
    assert f"expected {generate.SOURCE.module_version} {generate.PROTO_PATH} {'0' * 64}" in problem
    (tmp_path / "api_pb2.py").write_text(expected["api_pb2.py"] + "# edited\n")
    assert generate.stale(expected, tmp_path) == [
        "api_pb2.py: differs from what the same proto generates (edited by hand?)"
    ]
    (tmp_path / "api_pb2.py").unlink()
    assert generate.stale(expected, tmp_path) == ["api_pb2.py: missing"]
    generate.write(expected, tmp_path)
    assert generate.stale(expected, tmp_path) == []


@pytest.mark.parametrize(
    ("version", "expected"),
    [("v1.36.5", "v0.36.5"), ("v1.30.0", "v0.30.0"), ("v1.37.0-rc.1", "v0.37.0-rc.1")],
)
def test_staging_version(version: str, expected: str) -> None:
    assert generate.staging_version(version) == expected


@pytest.mark.parametrize("version", ["1.36.5", "v2.0.0", "v1.36", "v0.36.5"])
def test_staging_version_refuses_what_is_no_kubernetes_version(version: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes"):
        generate.staging_version(version)


# --- the gogoproto transformation (the pinned proto has none left; older kubelet protos do) ---------------

GOGO_PROTO = """\
syntax = "proto3";

package v1beta1;

import "github.com/gogo/protobuf/gogoproto/gogo.proto";

option (gogoproto.goproto_stringer_all) = false;
option (gogoproto.stringer_all) =  true;
option go_package = "v1beta1";

message Device {
\t// The device's [unique] ID; see gogoproto docs in Go.
\tstring ID = 1 [(gogoproto.customname) = "ID"];
\tstring health = 2 [(gogoproto.nullable) = false, json_name = "health"];
\tstring other = 3 [deprecated = true,(gogoproto.moretags) = "yaml:\\"x,y\\""];
\tstring plain = 4 [deprecated = true];
}

service Registration {
\trpc Register(Device) returns (Device) {}
}
"""

GOGO_STRIPPED = """\
syntax = "proto3";

package v1beta1;


option go_package = "v1beta1";

message Device {
\t// The device's [unique] ID; see gogoproto docs in Go.
\tstring ID = 1;
\tstring health = 2 [json_name = "health"];
\tstring other = 3 [deprecated = true];
\tstring plain = 4 [deprecated = true];
}

service Registration {
\trpc Register(Device) returns (Device) {}
}
"""


def test_strip_gogoproto_removes_the_import_and_every_gogoproto_option() -> None:
    assert generate.strip_gogoproto(GOGO_PROTO) == GOGO_STRIPPED
    assert generate.strip_gogoproto(GOGO_STRIPPED) == GOGO_STRIPPED


def test_strip_gogoproto_keeps_a_proto_without_gogoproto_byte_for_byte() -> None:
    proto = _fetched()
    assert "gogoproto" not in proto
    assert generate.strip_gogoproto(proto) == proto


def test_strip_gogoproto_refuses_a_form_it_does_not_handle() -> None:
    with pytest.raises(generate.GenerateError, match="gogoproto left after stripping"):
        generate.strip_gogoproto("message M {\n  option (gogoproto.x) =\n}\n")


def test_a_proto_with_gogoproto_options_generates() -> None:
    texts = generate.generate(GOGO_PROTO)
    assert "from . import api_pb2 as " in texts["api_pb2_grpc.py"]
    assert "gogo" not in texts["api_pb2.py"].split("\n", 4)[4]


# --- the stubs ---------------------------------------------------------------------------------------------


def test_stubs_expose_the_api() -> None:
    for name in ("DevicePluginServicer", "DevicePluginStub", "RegistrationServicer", "RegistrationStub"):
        assert hasattr(api_pb2_grpc, name), name
    assert callable(api_pb2_grpc.add_DevicePluginServicer_to_server)
    response = api_pb2.ContainerAllocateResponse(
        envs={"NVIDIA_VISIBLE_DEVICES": "GPU-0"},
        devices=[
            api_pb2.DeviceSpec(container_path="/dev/nvidia0", host_path="/dev/nvidia0", permissions="rw")
        ],
        cdi_devices=[api_pb2.CDIDevice(name="nvidia.com/gpu=0")],
    )
    request = api_pb2.AllocateRequest(
        container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=["a"])]
    )
    device = api_pb2.Device(
        ID="GPU-0", health=deviceplugin.HEALTHY, topology=api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=1)])
    )
    for message in (response, request, device):
        assert type(message).FromString(message.SerializeToString()) == message
    assert api_pb2.Device.DESCRIPTOR.full_name == "v1beta1.Device"
    assert type(device).__module__ == "dra_operator.agent.deviceplugin.api_pb2"
    assert pickle.loads(pickle.dumps(device)) == device
    assert api_pb2.DESCRIPTOR.services_by_name["Registration"].full_name == "v1beta1.Registration"


def test_constants_are_the_kubelets() -> None:
    assert deviceplugin.VERSION == "v1beta1"
    assert deviceplugin.SUPPORTED_VERSIONS == ("v1beta1",)
    assert deviceplugin.KUBELET_SOCKET_NAME == "kubelet.sock"
    assert deviceplugin.KUBELET_SOCKET == "/var/lib/kubelet/device-plugins/kubelet.sock"
    assert (deviceplugin.HEALTHY, deviceplugin.UNHEALTHY) == ("Healthy", "Unhealthy")
    assert deviceplugin.PRE_START_CONTAINER_TIMEOUT_SECONDS == 30


class _Plugin(api_pb2_grpc.DevicePluginServicer):
    def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ListAndWatchResponse]:
        yield api_pb2.ListAndWatchResponse(devices=[api_pb2.Device(ID="d0", health=deviceplugin.HEALTHY)])
        yield api_pb2.ListAndWatchResponse(devices=[api_pb2.Device(ID="d0", health=deviceplugin.UNHEALTHY)])

    def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocateResponse:
        return api_pb2.AllocateResponse(
            container_responses=[
                api_pb2.ContainerAllocateResponse(envs={"DEVICES": ",".join(r.devices_ids)})
                for r in request.container_requests
            ]
        )


def test_a_plugin_serves_the_kubelets_calls_over_a_unix_socket(tmp_path: Path) -> None:
    socket = tmp_path / "plugin.sock"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_DevicePluginServicer_to_server(_Plugin(), server)
    assert server.add_insecure_port(f"unix://{socket}") == 1
    server.start()
    try:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            stub = api_pb2_grpc.DevicePluginStub(channel)
            updates = list(stub.ListAndWatch(api_pb2.Empty(), timeout=10))
            assert [u.devices[0].health for u in updates] == ["Healthy", "Unhealthy"]
            request = api_pb2.AllocateRequest(
                container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=["d0", "d1"])]
            )
            response = stub.Allocate(request, timeout=10)
            assert dict(response.container_responses[0].envs) == {"DEVICES": "d0,d1"}
            with pytest.raises(grpc.RpcError) as error:
                stub.PreStartContainer(api_pb2.PreStartContainerRequest(), timeout=10)
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None)
