"""Micro-benchmark of the Python CEL runtimes on the DRA seed selector (the measurement behind cel/'s choice).

Run: .venv/bin/python bench/cel.py [--devices 4000] [--passes 5]
Prints, per runtime: evaluations/s on prebuilt bindings, per-device binding cost, end-to-end first-pass rate,
and whether a crafted expensive expression (10^6 comprehension steps) is stopped, and how fast.
Runtimes that are not installed are skipped. Not a test: numbers vary with the machine (+-30 % here).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

# This file is named cel.py: keep its directory off the path so `import cel` finds the Rust runtime.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

SEED = (
    'device.attributes["driver.example.com"].type == "gpu" && '
    'device.capacity["driver.example.com"].memory == quantity("64Gi")'
)
_HUNDRED = "[" + ",".join(str(i) for i in range(100)) + "]"
EXPENSIVE = f"{_HUNDRED}.all(x, {_HUNDRED}.all(y, {_HUNDRED}.all(z, true)))"
GI = 2**30


def devices(count: int) -> list[dict[str, Any]]:
    """Distinct devices, half of them matching the seed selector."""
    return [
        {
            "driver": "driver.example.com",
            "attributes": {"type": "gpu" if i % 2 == 0 else "nic", "index": i},
            "capacity": {"memory": 64 * GI if i % 4 < 2 else 32 * GI},
        }
        for i in range(count)
    ]


def device_map(d: dict[str, Any]) -> dict[str, Any]:
    """The `device` variable of a plain device, all names in the driver's domain."""
    return {
        "driver": d["driver"],
        "attributes": {d["driver"]: d["attributes"]},
        "capacity": {d["driver"]: d["capacity"]},
    }


def rates(count: int, t_eval: float, t_bind: float, t_first: float) -> dict[str, str]:
    return {
        "evals/s (bound)": f"{count / t_eval:,.0f}",
        "bind us/device": f"{t_bind / count * 1e6:.1f}",
        "first pass/s": f"{count / t_first:,.0f}",
    }


def timed(fn: Callable[[], object], passes: int) -> float:
    runs = []
    for _ in range(passes):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def bench_ours(devs: list[dict[str, Any]], passes: int) -> dict[str, str]:
    from dra_operator.api.quantity import Quantity
    from dra_operator.cel import CelDevice, compile_selector

    selector = compile_selector(SEED)
    # Capacities arrive parsed (the API models hold Quantity objects).
    parsed = [
        (d["driver"], d["attributes"], {"memory": Quantity.from_int(d["capacity"]["memory"])}) for d in devs
    ]
    bound = [CelDevice.from_plain(*p) for p in parsed]
    t_bind = timed(lambda: [CelDevice.from_plain(*p) for p in parsed], passes)
    t_eval = timed(lambda: [selector.evaluate(b) for b in bound], passes)

    def first_pass() -> None:
        for p in parsed:
            selector.evaluate(CelDevice.from_plain(*p))

    t_first = timed(first_pass, passes)
    return rates(len(devs), t_eval, t_bind, t_first)


def bench_cel_expr_python(devs: list[dict[str, Any]], passes: int) -> dict[str, str]:
    from cel_expr_python import cel

    t = cel.Type
    env = cel.NewEnv(
        variables={"device": t.Map(t.STRING, t.DYN)},
        functions=[
            cel.FunctionDecl("quantity", [cel.Overload("q", t.INT, [t.STRING], impl=lambda s: 64 * GI)])
        ],
    )
    # Literal quantity() folded to a constant, as our layer does (no Python callback per evaluation).
    expr = env.compile(SEED.replace('quantity("64Gi")', str(64 * GI)))

    def binding(d: dict[str, Any]) -> dict[str, Any]:
        return {"device": device_map(d)}

    activations = [env.Activation(binding(d)) for d in devs]
    t_eval = timed(lambda: [expr.eval(a) for a in activations], passes)
    t_bind = timed(lambda: [env.Activation(binding(d)) for d in devs], passes)
    t_first = timed(lambda: [expr.eval(data=binding(d)) for d in devs], passes)
    return rates(len(devs), t_eval, t_bind, t_first)


def bench_common_expression_language(devs: list[dict[str, Any]], passes: int) -> dict[str, str]:
    import cel

    program = cel.compile(SEED)

    def context(d: dict[str, Any]) -> Any:
        return cel.Context(
            variables={"device": device_map(d)},
            functions={"quantity": lambda s: 64 * GI},
        )

    contexts = [context(d) for d in devs]
    t_eval = timed(lambda: [program.execute(c) for c in contexts], passes)
    t_bind = timed(lambda: [context(d) for d in devs], passes)
    return rates(len(devs), t_eval, t_bind, t_eval + t_bind)


def bench_cel_python(devs: list[dict[str, Any]], passes: int) -> dict[str, str]:
    import celpy

    # The interpreted runner: the compiled one cannot call functions defined in a script run as __main__.
    env = celpy.Environment()
    program = env.program(env.compile(SEED), functions={"quantity": _celpy_quantity})

    def activation(d: dict[str, Any]) -> Any:
        return {"device": celpy.json_to_cel(device_map(d))}

    bound = [activation(d) for d in devs]
    t_eval = timed(lambda: [program.evaluate(a) for a in bound], passes)
    t_bind = timed(lambda: [activation(d) for d in devs], passes)
    return rates(len(devs), t_eval, t_bind, t_eval + t_bind)


def _celpy_quantity(text: Any) -> Any:
    import celpy

    return celpy.celtypes.IntType(64 * GI)


def _expensive(runtime: str) -> object:
    if runtime == "cel-expr-python":
        from cel_expr_python import cel

        return cel.NewEnv().compile(EXPENSIVE).eval().value()
    if runtime == "common-expression-language":
        import cel as rust_cel

        return rust_cel.evaluate(EXPENSIVE)
    if runtime == "cel-python":
        import celpy

        env = celpy.Environment()
        return env.program(env.compile(EXPENSIVE)).evaluate({})
    from dra_operator.cel import CelDevice, compile_selector

    return compile_selector(EXPENSIVE).evaluate(CelDevice.from_plain("d"))


def _expensive_child(runtime: str, queue: Any) -> None:
    try:
        queue.put(f"ran to completion ({_expensive(runtime)!r})")
    except Exception as err:
        queue.put(f"stopped: {type(err).__name__}: {str(err).splitlines()[0][:60]}")


def cost_probe(runtime: str, limit_s: float = 20.0) -> str:
    """Runs the 10^6-step expression in a child process; reports whether it was stopped and how fast."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_expensive_child, args=(runtime, queue))
    start = time.perf_counter()
    proc.start()
    proc.join(limit_s)
    elapsed = time.perf_counter() - start
    if proc.is_alive():
        proc.kill()
        proc.join()
        return f"NOT stopped (killed after {limit_s:.0f}s)"
    outcome = queue.get() if not queue.empty() else f"exit code {proc.exitcode}"
    return f"{outcome} after {elapsed:.2f}s"


RUNTIMES: dict[str, Callable[[list[dict[str, Any]], int], dict[str, str]]] = {
    "dra_operator.cel": bench_ours,
    "cel-expr-python": bench_cel_expr_python,
    "common-expression-language": bench_common_expression_language,
    "cel-python": bench_cel_python,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=4000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--no-cost-probe", action="store_true")
    args = parser.parse_args()
    devs = devices(args.devices)
    print(f"seed selector over {args.devices} devices, median of {args.passes} passes")
    for name, bench in RUNTIMES.items():
        try:
            row = bench(devs, args.passes)
        except ImportError as err:
            print(f"{name:28} not installed ({err})")
            continue
        if not args.no_cost_probe:
            row["10^6-step expression"] = cost_probe(name)
        print(f"{name:28} " + "  ".join(f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
