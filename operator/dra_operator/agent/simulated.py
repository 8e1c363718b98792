"""Simulated backend: device inventories from a YAML file, for clusters without GPUs, tests and the demo.

File format (validated; errors name the file and the field). The file holds one pool entry, a list of them, or
`{pools: [...]}`; several YAML documents are read one after another. Each entry:

    driver: driver.example.com      # optional; defaults to the agent's --driver
    nodes: [node-a, "gpu-*"]        # node names or shell patterns; omitted = every node
    gpus:                           # shorthand: devices gpu-0..gpu-(N-1), attribute type=gpu, capacity memory
      count: 4
      memory: 64Gi
      attributes: {productName: Simulated GPU}   # optional, added to each
    devices:                        # explicit devices
      - name: fpga-0
        attributes:
          type: fpga                # a plain string, integer or boolean is a string/int/bool attribute
          firmware: {version: 1.2.0}  # or explicit: {string|int|bool|version: value}
        capacity: {memory: 8Gi}     # quantities; {value: 8Gi} also accepted
        taints: [{key: example.com/broken, effect: NoSchedule}]

The file is re-read on every pass, so editing it (or the ConfigMap it comes from) changes what is published.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)

from dra_operator.agent.inventory import AttributeValue, DeviceInfo, Inventory, Taint, Version

MAX_DEVICES_PER_POOL = 128


class InventoryFileError(ValueError):
    """The inventory file cannot be used; the message names the file and the offending field."""


def _check_quantity(value: str | int) -> str | int:
    from dra_operator.api.quantity import Quantity  # the core's parser gives the canonical error messages

    Quantity.parse(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _first_problem(error: ValidationError) -> str:
    item = error.errors()[0]
    where = ".".join(str(part) for part in item["loc"])
    message = str(item["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


class AttributeSpec(_Strict):
    """An attribute with its type spelled out, as in a ResourceSlice."""

    string: str | None = None
    int_value: StrictInt | None = Field(default=None, alias="int")
    bool_value: StrictBool | None = Field(default=None, alias="bool")
    version: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> AttributeSpec:
        given = [v for v in (self.string, self.int_value, self.bool_value, self.version) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of string, int, bool, version")
        if self.version is not None:
            Version.coerce(self.version)
        return self

    def value(self) -> AttributeValue:
        if self.version is not None:
            return Version.coerce(self.version)
        for candidate in (self.string, self.int_value, self.bool_value):
            if candidate is not None:
                return candidate
        raise AssertionError("validated to hold one value")


def _attribute(value: Any) -> AttributeValue:
    # Dispatch on the YAML type ourselves: a pydantic union would report one error per branch.
    if isinstance(value, dict):
        try:
            return AttributeSpec.model_validate(value).value()
        except ValidationError as error:
            raise ValueError(_first_problem(error)) from None
    if isinstance(value, bool | int | str):
        return value
    raise ValueError(
        f"{value!r}: an attribute is a string, an integer, a boolean, or {{string|int|bool|version: value}}"
    )


def _capacity(value: Any) -> str | int:
    if isinstance(value, dict):
        if set(value) != {"value"}:
            raise ValueError(f"{value!r}: a capacity written as a mapping has exactly one key, value")
        value = value["value"]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r}: a capacity is a quantity such as 64Gi or 4, or {{value: quantity}}")
    return _check_quantity(value)


AttributeInput = Annotated[Any, AfterValidator(_attribute)]
CapacityInput = Annotated[Any, AfterValidator(_capacity)]


class TaintSpec(_Strict):
    key: str
    value: str | None = None
    effect: Literal["NoSchedule", "NoExecute", "None"]


class DeviceSpec(_Strict):
    name: str
    attributes: dict[str, AttributeInput] = Field(default_factory=dict)
    capacity: dict[str, CapacityInput] = Field(default_factory=dict)
    taints: list[TaintSpec] = Field(default_factory=list)

    def device(self) -> DeviceInfo:
        return DeviceInfo(
            name=self.name,
            attributes=dict(self.attributes),
            capacity=dict(self.capacity),
            taints=tuple(Taint(key=t.key, value=t.value, effect=t.effect) for t in self.taints),
        )


class GpuShorthand(_Strict):
    """`count` GPUs named `<namePrefix>-<i>` with type=gpu and, if given, capacity memory."""

    count: int = Field(ge=0, le=MAX_DEVICES_PER_POOL)
    memory: CapacityInput | None = None
    name_prefix: str = Field(default="gpu", alias="namePrefix")
    attributes: dict[str, AttributeInput] = Field(default_factory=dict)

    def devices(self) -> list[DeviceInfo]:
        attributes: dict[str, AttributeValue] = {"type": "gpu", **self.attributes}
        capacity: dict[str, str | int] = {} if self.memory is None else {"memory": self.memory}
        return [
            DeviceInfo(name=f"{self.name_prefix}-{i}", attributes=dict(attributes), capacity=dict(capacity))
            for i in range(self.count)
        ]


class PoolEntry(_Strict):
    driver: str | None = None
    nodes: list[str] | None = None
    gpus: GpuShorthand | None = None
    devices: list[DeviceSpec] = Field(default_factory=list)

    def matches(self, node: str) -> bool:
        return self.nodes is None or any(fnmatch.fnmatchcase(node, pattern) for pattern in self.nodes)

    def device_infos(self) -> list[DeviceInfo]:
        return [*(self.gpus.devices() if self.gpus else []), *(d.device() for d in self.devices)]


class InventoryFile(_Strict):
    pools: list[PoolEntry]


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _format(path: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{_location(tuple(item['loc']))}: {message}")
    return f"invalid inventory file {path}: " + "; ".join(lines)


def parse_inventory(text: str, path: str = "<inventory>") -> InventoryFile:
    """Validate an inventory file's text; raises InventoryFileError with every problem found."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise InventoryFileError(f"{path}: not valid YAML: {error}") from None
    entries: list[Any] = []
    for document in documents:
        if isinstance(document, list):
            entries.extend(document)
        elif isinstance(document, dict) and set(document) == {"pools"}:
            pools = document["pools"]
            entries.extend(pools if isinstance(pools, list) else [pools])
        else:
            entries.append(document)
    try:
        return InventoryFile.model_validate({"pools": entries})
    except ValidationError as error:
        raise InventoryFileError(_format(path, error)) from None


def inventories_for_node(parsed: InventoryFile, node: str, default_driver: str) -> list[Inventory]:
    """The pools this node has: entries for it grouped by driver, in the file's order of first appearance."""
    by_driver: dict[str, list[DeviceInfo]] = {}
    for entry in parsed.pools:
        if entry.matches(node):
            by_driver.setdefault(entry.driver or default_driver, []).extend(entry.device_infos())
    result = []
    for driver, devices in by_driver.items():
        names = [d.name for d in devices]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InventoryFileError(
                f"node {node}, driver {driver}: device names used twice: {', '.join(duplicates)}"
            )
        problems = [p for d in devices for p in d.problems()]
        if problems:
            raise InventoryFileError(f"node {node}, driver {driver}: " + "; ".join(problems))
        if len(devices) > MAX_DEVICES_PER_POOL:
            raise InventoryFileError(
                f"node {node}, driver {driver}: {len(devices)} devices; one ResourceSlice holds at most "
                f"{MAX_DEVICES_PER_POOL}"
            )
        result.append(Inventory(driver=driver, devices=tuple(devices)))
    return result


class SimulatedBackend:
    """Reads this node's pools from an inventory file on every `read()`."""

    def __init__(self, path: str | Path, node: str, default_driver: str) -> None:
        self.path = Path(path)
        self.node = node
        self.default_driver = default_driver

    def open(self) -> None:
        self.read_pools()  # fail at start-up, with the file's errors, rather than on the first pass

    def close(self) -> None:
        pass

    def read_pools(self) -> list[Inventory]:
        try:
            text = self.path.read_text()
        except OSError as error:
            raise InventoryFileError(f"cannot read inventory file {self.path}: {error.strerror}") from None
        return inventories_for_node(parse_inventory(text, str(self.path)), self.node, self.default_driver)
