"""The DRA CEL environment: device selectors compiled once and evaluated against devices.

Public API:
    compile_selector(expression) -> CompiledSelector     cached per expression; raises CelCompileError
    CompiledSelector.evaluate(device: CelDevice) -> bool  raises CelEvaluationError (expression, device, key)
    CelDevice.from_device(driver, device)                 binds an api.resource.Device (domain folding)
    CelDevice.from_plain(driver, attributes, capacity)    the same from plain data (tests, tools)
    CelError / CelCompileError / CelEvaluationError       ValueError subclasses; .expression, .reason,
                                                          compile: .line/.column; runtime: .device/.key
    MAX_EXPRESSION_LENGTH                                 10 KiB, Kubernetes' selector length limit

Semantics follow Kubernetes resource.k8s.io/v1 (k8s.io/dynamic-resource-allocation/cel): `device.driver`,
`device.attributes[domain].name`, `device.capacity[domain].name` (a quantity) and
`device.allowMultipleAllocations` (false when unset); a name without a domain in
the slice belongs to the driver's domain; an unknown domain looks up as an empty map (so `has()` on it is
false) while an unknown name in a known map is the runtime error "no such key: <name>", which fails the
allocation rather than skipping the device. Functions: see `library` (quantity, semver, strings v2, lists,
sets, regex, optional types, cel.bind).

Runtime: cel-expr-python (Google's cel-cpp), chosen by measurement (bench/cel.py: 4,000 distinct devices, half
matching the seed selector, 2-core shared machine, medians of 5 passes over 3 runs; noise +-30 %):

    runtime                          evals/s bound  bind us/device  first pass/s  10^6-step expression
    cel-expr-python 0.1.3 (raw)         90k-400k         3-12          31k-127k    stopped after <0.1 s
    common-expression-language 0.10     135k-255k       24-55          17k-38k     ran to completion, 0.6 s
    cel-python 0.5.0 (interpreted)      1k-1.8k         87-172         0.8k-1.5k   not stopped in 20 s
    dra_operator.cel (on cel-expr-py)   80k-170k         5-15          18k-53k     stopped after <0.1 s

"bound" evaluates on prebuilt bindings; "first pass" binds each device and evaluates once (what the allocator
pays per device and slice generation, since it caches results); our row includes the checks and error
translation around every evaluation.

cel-expr-python is the only one that type-checks at compile time (errors carry line and column, `quantity("1")
== "1"` is rejected as in Kubernetes) and bounds evaluation; it has no estimated-cost limit like Kubernetes'
1,000,000, so the bound is Kubernetes' 10 KiB expression length plus cel-cpp's fixed runtime budgets
(comprehension iterations, nesting depth 32 — lower than Kubernetes allows). Its traps and how we avoid them:
Python objects cannot be CEL values (quantities and semvers are protobuf messages with normalized contents, so
message equality is semantic equality); each call into a Python function leaks (measured ~1.2 KB per
evaluation of `memory.isGreaterThan(quantity("32Gi"))`), so literal `quantity("..")`/`semver("..")` calls are
folded into message constants and `compareTo`/`isGreaterThan`/`isLessThan` are rewritten into comparisons of
an order-preserving string field (no growth measured over 100k first evaluations afterwards); an activation
converts its maps into its own arena at the first evaluation (~9.5 KiB per device) and grows ~80-230 B per
further one, so each evaluation gets a fresh activation, dropped after it (results are cached per slice
generation, so that is one per device and expression); maps have no default (the domains an expression
indexes are pre-created empty per device); two Python overloads of one name on two message types collide (one
implementation dispatches on type).

Known differences from Kubernetes: `isInteger()`/`asInteger()` answer from the value (Kubernetes answers from
its internal representation, so `quantity("1000m").isInteger()` is false there); `"d" in device.attributes` is
true for a domain the expression indexes; no cross-type numeric comparison (`1 < 1.5`) and no homogeneity
check of list literals; no two-variable comprehensions; `device.<unknown field>` is rejected by a
token-level check (a comprehension variable named `device` would confuse it).
"""

from dra_operator.cel.device import CelDevice, split_qualified_name
from dra_operator.cel.errors import CelCompileError, CelError, CelEvaluationError
from dra_operator.cel.selector import MAX_EXPRESSION_LENGTH, CompiledSelector, compile_selector

__all__ = [
    "MAX_EXPRESSION_LENGTH",
    "CelCompileError",
    "CelDevice",
    "CelError",
    "CelEvaluationError",
    "CompiledSelector",
    "compile_selector",
    "split_qualified_name",
]
