"""Plain inventory data: version coercion and the per-device limits Kubernetes enforces."""

from __future__ import annotations

import pytest

from dra_operator.agent.inventory import DeviceInfo, Version


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("580.159.04", "580.159.4"),
        ("535.104.05", "535.104.5"),
        ("9.0", "9.0.0"),
        ("13", "13.0.0"),
        ("v1.2.3", "1.2.3"),
        (" 12.4 ", "12.4.0"),
    ],
)
def test_versions_are_coerced_to_semver(raw: str, expected: str) -> None:
    assert Version.coerce(raw).text == expected


@pytest.mark.parametrize("raw", ["", "abc", "1.2.3.4", "1.2.3-rc1", "1..2"])
def test_non_versions_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="not a version"):
        Version.coerce(raw)


@pytest.mark.parametrize(
    ("device", "fragment"),
    [
        (DeviceInfo(name="GPU-0"), "DNS label"),
        (DeviceInfo(name="gpu.0"), "DNS label"),
        (DeviceInfo(name="gpu-0", attributes={"bad-name": "x"}), "C identifier"),
        (DeviceInfo(name="gpu-0", attributes={"model": "x" * 65}), "more than 64"),
        (DeviceInfo(name="gpu-0", capacity={"9mem": 1}), "C identifier"),
        (DeviceInfo(name="gpu-0", attributes={f"a{i}": i for i in range(33)}), "more than 32"),
    ],
)
def test_device_problems_name_the_device_and_field(device: DeviceInfo, fragment: str) -> None:
    (problem,) = device.problems()
    assert device.name in problem
    assert fragment in problem


@pytest.mark.parametrize(
    "device",
    [
        DeviceInfo(
            name="gpu-0",
            attributes={"type": "gpu", "gpu.nvidia.com/uuid": "GPU-1"},
            capacity={"memory": "1Gi"},
        ),
        DeviceInfo(name="a", attributes={"x": True, "y": 3, "v": Version("1.0.0")}),
    ],
)
def test_valid_devices_have_no_problems(device: DeviceInfo) -> None:
    assert device.problems() == []
