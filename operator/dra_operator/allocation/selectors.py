"""CEL selector results, cached per (expression, device version), and the failures they can produce.

Slices change rarely while thousands of Pods share a handful of selectors, so a selector is evaluated at most
once per device version: the cache key is the expression plus a device token (slice uid, resourceVersion, pool
generation and device name). Snapshots rebuilt from unchanged slices therefore reuse every result, and
steady-state allocation evaluates almost no CEL. A result is True, False or a `SelectorFailure`; the search
decides when a failure is fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from dra_operator.cel import (
    CelCompileError,
    CelDevice,
    CelEvaluationError,
    CompiledSelector,
    compile_selector,
)


@dataclass(frozen=True, slots=True)
class SelectorFailure:
    """A selector that could not be evaluated on a device: a compile error or a CEL runtime error."""

    expression: str
    device: str
    message: str  # the reason, e.g. "no such key: type"
    key: str | None = None
    compile_error: bool = False
    text: str = ""  # the CEL layer's message of a compile error (with the position)

    def render(self) -> str:
        if self.text:
            return self.text
        what = "does not compile" if self.compile_error else f"failed on device {self.device}"
        return f"CEL expression {self.expression!r} {what}: {self.message}"


Result = bool | SelectorFailure


class SelectorCache:
    """Compiled selectors and their results per device token; share one instance across snapshots."""

    def __init__(self) -> None:
        self._compiled: dict[str, CompiledSelector | CelCompileError] = {}
        # expression -> {token: result}: one table per selector rather than one per device (a dict and a tuple
        # for each of 40,000 devices were 11 MiB, issue 14).
        self._results: dict[str, dict[Hashable, Result]] = {}
        # token -> the object whose id() the token is (offline input without versions): kept alive with it.
        self._anchors: dict[Hashable, object] = {}
        self.evaluations = 0
        self.hits = 0

    def compiled(self, expression: str) -> CompiledSelector | CelCompileError:
        found = self._compiled.get(expression)
        if found is None:
            try:
                found = compile_selector(expression)
            except CelCompileError as err:
                found = err
            self._compiled[expression] = found
        return found

    def compile_error(self, expression: str) -> CelCompileError | None:
        found = self.compiled(expression)
        return found if isinstance(found, CelCompileError) else None

    def result(
        self,
        expression: str,
        token: Hashable,
        anchor: object | None,
        cel_device: Callable[[], CelDevice],
        device_label: str,
    ) -> Result:
        """The selector's result on the device `token` names; `anchor`: the object whose id() is part of the
        token, if it is (None for tokens made of versions)."""
        results = self._results.get(expression)
        if results is None:
            results = self._results[expression] = {}
        found = results.get(token)
        if found is not None:
            self.hits += 1
            return found
        compiled = self.compiled(expression)
        if isinstance(compiled, CelCompileError):
            found = SelectorFailure(
                expression, device_label, compiled.reason, compile_error=True, text=str(compiled)
            )
        else:
            self.evaluations += 1
            try:
                found = bool(compiled.evaluate(cel_device()))
            except CelEvaluationError as err:
                # Named by driver/pool/device here, which the CEL layer does not know.
                found = SelectorFailure(expression, device_label, err.reason, key=err.key)
        if anchor is not None:
            self._anchors[token] = anchor
        results[token] = found
        return found

    def retain(self, tokens: Iterable[Hashable]) -> None:
        """Forget results of devices that are gone (call after building a snapshot from new slices)."""
        keep = set(tokens)
        tables: list[dict[Hashable, Any]] = [*self._results.values(), self._anchors]
        for table in tables:
            for token in [t for t in table if t not in keep]:
                del table[token]

    def __len__(self) -> int:
        return sum(len(results) for results in self._results.values())
