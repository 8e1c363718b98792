"""The DRA CEL environment: selectors on devices, domains, quantities, semvers, extensions and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dra_operator.api.quantity import Quantity
from dra_operator.api.resource import Device, DeviceAttribute
from dra_operator.api.semver import Semver
from dra_operator.cel import (
    MAX_EXPRESSION_LENGTH,
    CelCompileError,
    CelDevice,
    CelEvaluationError,
    compile_selector,
)

DRIVER = "driver.example.com"
SEED = (
    'device.attributes["driver.example.com"].type == "gpu" &&\n'
    'device.capacity["driver.example.com"].memory == quantity("64Gi")'
)


def gpu(
    memory: str = "64Gi", kind: str = "gpu", driver: str = DRIVER, name: str = "gpu-0", **extra: object
) -> CelDevice:
    attributes: dict[str, int | bool | str | Semver] = {
        "type": kind,
        "model": "a100",
        "index": 3,
        "healthy": True,
    }
    attributes.update(extra)  # type: ignore[arg-type]
    return CelDevice.from_plain(
        driver,
        attributes,
        {"memory": memory, "other.example.com/slots": "4"},
        name=name,
    )


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (gpu(), True),
        (gpu(memory="68719476736"), True),
        (gpu(memory="65536Mi"), True),
        (gpu(memory="32Gi"), False),
        (gpu(kind="nic"), False),
        (gpu(memory="64G"), False),
    ],
)
def test_seed_selector(device: CelDevice, expected: bool) -> None:
    assert compile_selector(SEED).evaluate(device) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('device.driver == "driver.example.com"', True),
        ('device.driver == "other.example.com"', False),
        # unqualified names fold into the driver's domain; qualified ones keep their own
        ('device.attributes["driver.example.com"].model == "a100"', True),
        ("device.attributes[device.driver].index == 3", True),
        ('device.capacity["other.example.com"].slots == quantity("4")', True),
        ('has(device.capacity["driver.example.com"].slots)', False),
        # a missing domain is an empty map: has() is false, not an error
        ('has(device.attributes["unknown.example.com"].type)', False),
        ('has(device.attributes["driver.example.com"].type)', True),
        ('has(device.attributes["driver.example.com"].nothing)', False),
        ('device.attributes["driver.example.com"].healthy', True),
        ('cel.bind(d, device.attributes["driver.example.com"], d.type == "gpu" && d.index > 2)', True),
        ('device.attributes[?"unknown.example.com"].hasValue() || true', True),
        # quantities: semantic equality and the comparison members
        ('device.capacity["driver.example.com"].memory == quantity("65536Mi")', True),
        ('device.capacity["driver.example.com"].memory != quantity("64G")', True),
        ('device.capacity["driver.example.com"].memory.compareTo(quantity("32Gi")) == 1', True),
        ('device.capacity["driver.example.com"].memory.compareTo(quantity("64Gi")) == 0', True),
        ('device.capacity["driver.example.com"].memory.isGreaterThan(quantity("64G"))', True),
        ('device.capacity["driver.example.com"].memory.isLessThan(quantity("1Ti"))', True),
        ('quantity("100m").isLessThan(quantity("1"))', True),
        ('quantity("1.5Gi") == quantity("1536Mi")', True),
        ('quantity("200M").compareTo(quantity("0.2G")) == 0', True),
        ('quantity("50k").add(quantity("20k")) == quantity("70k")', True),
        ('quantity("50k").add(20) == quantity("50020")', True),
        ('quantity("50k").sub(20000) == quantity("30k")', True),
        ('quantity("50k").add(20).sub(quantity("100k")).sub(-50000) == quantity("20")', True),
        ('quantity("50k").asInteger() == 50000', True),
        ('quantity("50k").isInteger()', True),
        ('quantity("1.5").isInteger()', False),
        ('quantity("50k").sub(20000).asApproximateFloat() == 30000.0', True),
        ('quantity("-3m").sign() == -1', True),
        ('isQuantity("1.3Gi") && !isQuantity("200K") && !isQuantity("1,3G")', True),
        # semantic versions
        (
            'semver("1.2.3").major() == 1 && semver("1.2.3").minor() == 2 && semver("1.2.3").patch() == 3',
            True,
        ),
        ('semver("1.2.3").isLessThan(semver("1.10.0"))', True),
        ('semver("1.0.0-rc.1").isLessThan(semver("1.0.0"))', True),
        ('semver("1.0.0+a") == semver("1.0.0+b")', True),
        ('semver("2.0.0").compareTo(semver("1.9.9")) == 1', True),
        ('semver("v1.2", true) == semver("1.2.0")', True),
        ('isSemver("1.2.3") && !isSemver("v1.2.3") && isSemver("v1.2.3", true)', True),
        ('device.attributes["driver.example.com"].driverVersion.isGreaterThan(semver("1.2.0"))', True),
        ('device.attributes["driver.example.com"].driverVersion == semver("1.2.3")', True),
        # strings extension (version 2), regex, lists, sets
        ('"abc".charAt(1) == "b"', True),
        ('"abcabc".indexOf("c") == 2 && "abcabc".lastIndexOf("c") == 5', True),
        ('"AbC".lowerAscii() == "abc" && "AbC".upperAscii() == "ABC"', True),
        ('"a-b-c".replace("-", "+") == "a+b+c"', True),
        ('"a,b,c".split(",").size() == 3', True),
        ('"abcdef".substring(2, 4) == "cd"', True),
        ('"  x ".trim() == "x"', True),
        ('["a", "b"].join("/") == "a/b"', True),
        ('"%s-%d".format(["gpu", 3]) == "gpu-3"', True),
        ('device.attributes["driver.example.com"].model.startsWith("a1")', True),
        ('device.attributes["driver.example.com"].model.matches("^a[0-9]+$")', True),
        ('"gpu-123".find("[0-9]+") == "123" && "a1b2".findAll("[0-9]") == ["1", "2"]', True),
        ("[3, 1, 2].max() == 3 && [3, 1, 2].min() == 1 && [1, 2, 3].sum() == 6", True),
        ("[1, 2, 3].isSorted() && ![3, 1].isSorted()", True),
        ("sets.contains([1, 2, 3], [2]) && sets.intersects([1], [1, 5])", True),
        ("sets.equivalent([1, 2], [2, 1]) && !sets.equivalent([1], [1, 2])", True),
        ('[1, 2, 3].exists(x, x == device.attributes["driver.example.com"].index)', True),
        ("[1, 2, 3, 4].slice(1, 3) == [2, 3] && [[1], [2, [3]]].flatten() == [1, 2, [3]]", True),
        ("[1, 1, 2].distinct() == [1, 2] && [1, 2].reverse() == [2, 1] && [2, 1].sort() == [1, 2]", True),
        ("lists.range(3) == [0, 1, 2]", True),
        ("device.allowMultipleAllocations == false", True),
        # Kubernetes' commutative logic: an error on one side is absorbed by a decisive other side
        ('device.attributes["driver.example.com"].nothing == 1 || true', True),
    ],
)
def test_expressions(expression: str, expected: bool) -> None:
    device = gpu(driverVersion=Semver.parse("1.2.3"))
    assert compile_selector(expression).evaluate(device) is expected


@pytest.mark.parametrize(
    ("expression", "key"),
    [
        ('device.attributes["driver.example.com"].nothing == "x"', "nothing"),
        ('device.attributes["unknown.example.com"].type == "gpu"', "type"),
        ('device.capacity["driver.example.com"].nothing == quantity("1")', "nothing"),
    ],
)
def test_missing_key_is_a_runtime_error_naming_device_and_key(expression: str, key: str) -> None:
    with pytest.raises(CelEvaluationError) as caught:
        compile_selector(expression).evaluate(gpu(name="gpu-7"))
    err = caught.value
    assert err.key == key
    assert err.device == "gpu-7"
    assert err.expression == expression
    assert f"no such key: {key}" in str(err)
    assert "gpu-7" in str(err)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ('device.attributes["driver.example.com"].model', "must evaluate to bool, not string"),
        ('quantity("Three") == quantity("1")', "invalid quantity 'Three'"),
        ('semver("1.2") == semver("1.2.0")', "invalid semantic version '1.2'"),
        ('quantity("1.5").asInteger() == 1', "cannot convert value to integer"),
        ("[1, 2, 3].map(x, x / 0).size() == 3", "divide by zero"),
    ],
)
def test_other_runtime_errors(expression: str, reason: str) -> None:
    with pytest.raises(CelEvaluationError, match=reason):
        compile_selector(expression).evaluate(gpu())


@pytest.mark.parametrize(
    ("expression", "line", "column", "reason"),
    [
        ('device.driver == "x" &&', 1, 24, "Syntax error"),
        ('device.driver ==\n  "a" && foo(1)', 2, 13, "undeclared reference to 'foo'"),
        ('quantity("1") == "1"', 1, 15, "no matching overload"),
        ('"x" == 1', 1, 5, "no matching overload"),
        ("device.foo == 1", 1, 8, "undefined field 'foo'"),
        ('device.attributes["a"].model.matches("(")', None, None, None),
    ],
)
def test_compile_errors_name_expression_and_position(
    expression: str, line: int | None, column: int | None, reason: str | None
) -> None:
    if reason is None:  # a bad regex literal is a runtime error in cel-cpp, not at compile time
        with pytest.raises(CelEvaluationError, match="regular expression"):
            compile_selector(expression).evaluate(CelDevice.from_plain("a", {"model": "x"}))
        return
    with pytest.raises(CelCompileError) as caught:
        compile_selector(expression)
    err = caught.value
    assert (err.line, err.column) == (line, column)
    assert reason in err.reason
    assert err.expression == expression
    assert f"line {line}, column {column}" in str(err)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        (
            'device.attributes["driver.example.com"].index + 1',
            "must evaluate to bool or the unknown type, not int",
        ),
        ('"a" + "b"', "not string"),
        ("", "empty"),
    ],
)
def test_non_bool_result_is_a_compile_error_when_typed(expression: str, reason: str) -> None:
    with pytest.raises(CelCompileError, match=reason):
        compile_selector(expression)


def test_length_limit() -> None:
    filler = " || ".join(['device.driver == "x"'] * 600)
    assert len(filler) > MAX_EXPRESSION_LENGTH
    with pytest.raises(CelCompileError, match="more than the limit of 10240"):
        compile_selector(filler)


def test_runtime_budget_stops_expensive_expressions() -> None:
    hundred = "[" + ",".join(str(i) for i in range(100)) + "]"
    expensive = f"{hundred}.all(x, {hundred}.all(y, {hundred}.all(z, true)))"
    with pytest.raises(CelEvaluationError, match="runtime cost limit exceeded"):
        compile_selector(expensive).evaluate(gpu())


def test_compile_is_cached_and_folding_keeps_semantics() -> None:
    first = compile_selector(SEED)
    assert compile_selector(SEED) is first
    # An invalid literal is not folded: it still fails at evaluation, as in Kubernetes.
    with pytest.raises(CelEvaluationError):
        compile_selector('quantity("1e") == quantity("1")').evaluate(gpu())
    # Literals inside strings and member calls are left alone.
    tricky = (
        'device.attributes["driver.example.com"].model != \'quantity("1")\''
        " && quantity('2') == quantity(\"2\")"
    )
    assert compile_selector(tricky).evaluate(gpu()) is True
    raw = 'r"a\\d" == "a\\\\d" && quantity("""1Ki""") == quantity("1024")'
    assert compile_selector(raw).evaluate(gpu()) is True


def test_from_device_binds_the_api_model() -> None:
    device = Device.model_validate(
        {
            "name": "gpu-1",
            "attributes": {
                "type": {"string": "gpu"},
                "index": {"int": 1},
                "healthy": {"bool": True},
                "driverVersion": {"version": "1.2.3"},
                "other.example.com/zone": {"string": "a"},
            },
            "capacity": {"memory": {"value": "64Gi"}},
        }
    )
    bound = CelDevice.from_device(DRIVER, device)
    assert bound.name == "gpu-1"
    assert compile_selector(SEED).evaluate(bound) is True
    checks = (
        'device.attributes["driver.example.com"].index == 1'
        ' && device.attributes["driver.example.com"].healthy'
        ' && device.attributes["driver.example.com"].driverVersion == semver("1.2.3")'
        ' && device.attributes["other.example.com"].zone == "a"'
    )
    assert compile_selector(checks).evaluate(bound) is True


def test_devices_are_reusable_across_selectors() -> None:
    device = gpu()
    selectors = [compile_selector(SEED), compile_selector('device.driver == "driver.example.com"')]
    for _ in range(3):
        assert [s.evaluate(device) for s in selectors] == [True, True]


def test_from_plain_accepts_quantities() -> None:
    device = CelDevice.from_plain(DRIVER, {}, {"memory": Quantity.parse("1Gi"), "cores": 8})
    assert compile_selector('device.capacity["driver.example.com"].cores == quantity("8")').evaluate(device)
    assert compile_selector(
        'device.capacity["driver.example.com"].memory == quantity("1073741824")'
    ).evaluate(device)


def test_allow_multiple_allocations() -> None:
    shared = CelDevice.from_plain(DRIVER, {}, {}, allow_multiple_allocations=True)
    assert compile_selector("device.allowMultipleAllocations").evaluate(shared) is True
    model = Device.model_validate({"name": "gpu-2", "allowMultipleAllocations": True})
    assert compile_selector("device.allowMultipleAllocations").evaluate(CelDevice.from_device(DRIVER, model))


def test_regex_library_is_linear_time_and_reports_bad_patterns() -> None:
    device = CelDevice.from_plain(DRIVER, {"model": "a" * 5000 + "!"}, {})
    pathological = 'device.attributes["driver.example.com"].model.find("(a+)+$") == ""'
    assert compile_selector(pathological).evaluate(device) is True  # would take ages with backtracking
    with pytest.raises(CelEvaluationError, match="invalid regular expression"):
        compile_selector('"abc".find("(") == ""').evaluate(device)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_a_device_evaluated_once_keeps_no_cel_memory() -> None:
    # cel-cpp converts an activation's maps into its arena at the first evaluation, outside Python's heap
    # (tracemalloc cannot see it): ~9.5 KiB per device while the activation lives, 450 MiB at 40,000
    # devices when every device kept one. Measured by RSS, with a margin far from both outcomes.
    selectors = [compile_selector(SEED), compile_selector('device.driver == "driver.example.com"')]
    devices = [gpu(name=f"gpu-{i}") for i in range(5000)]
    for device in devices[:100]:  # the allocator's and interpreter's first growth is not the subject
        for selector in selectors:
            selector.evaluate(device)
    before = _rss_mib()
    for device in devices[100:]:
        for selector in selectors:
            assert selector.evaluate(device)
    grown = _rss_mib() - before
    assert grown < 12, f"{grown:.1f} MiB kept for 4,900 devices (54 MiB measured when each kept its arena)"


def test_devices_that_share_their_maps_share_their_cel_form() -> None:
    import gc

    from dra_operator.cel import device as cel_device

    def parsed(name: str, uuid: str) -> Device:
        return Device.model_validate(
            {
                "name": name,
                "attributes": {"model": {"string": "H100"}, "uuid": {"string": uuid}},
                "capacity": {"memory": {"value": "80Gi"}},
            }
        )

    a, b, c = parsed("gpu-0", "GPU-0"), parsed("gpu-1", "GPU-0"), parsed("gpu-2", "GPU-2")
    bound = [CelDevice.from_device("driver.example.com", d) for d in (a, b, c)]
    assert bound[0]._attributes is bound[1]._attributes and bound[0]._capacity is bound[2]._capacity
    assert bound[2]._attributes is not bound[0]._attributes  # another uuid: another map
    assert [d.name for d in bound] == ["gpu-0", "gpu-1", "gpu-2"]
    selector = compile_selector('device.attributes["driver.example.com"].uuid == "GPU-2"')
    assert [selector.evaluate(d) for d in bound] == [False, False, True]
    # Another driver's devices with the same maps fold their domain-less names apart.
    other = CelDevice.from_device("other.example.com", a)
    assert other._attributes is not bound[0]._attributes and "other.example.com" in other._attributes

    held = len(cel_device._BOUND)
    del a, b, c, bound, other
    gc.collect()
    assert len(cel_device._BOUND) <= held - 3, "the CEL forms leave with the maps they came from"


def test_a_device_built_without_validation_is_bound_apart() -> None:
    attributes = {"v": DeviceAttribute.model_construct(version="not-a-version")}
    device = Device.model_construct(name="d", attributes=attributes, capacity=None)
    bound = CelDevice.from_device("driver.example.com", device)
    assert bound.binding_error is not None and "semantic version" in bound.binding_error
