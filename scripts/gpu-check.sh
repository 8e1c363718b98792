#!/usr/bin/env bash
# Checks the node agent's NVML backend on a real GPU: prints the agent's `--print` ResourceSlice next to
# `nvidia-smi -q` and compares UUID, product name, memory and versions (PASS/FAIL per field).
#
# Self-contained, for a bare GPU machine without network, run from the repository root:
#   bash scripts/gpu-check.sh
# It installs, into a private --target folder (nothing global changes): the wheels in $GPU_CHECK_WHEELS
# (default .whl/, fetched beforehand with pip download for the machine's Python), then this tree's package
# with --no-deps. Results go to stdout and, when $OUT is set (the device tool), to files in $OUT.
# Exit status: 0 all compared fields PASS; 1 a field FAILs; 2 not a GPU machine; 3 install failed;
# 4 the agent failed.
set -u -o pipefail

PY=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
RESULTS=${OUT:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
SITE=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
NODE=gpu-node
mkdir -p "$RESULTS"

say() { printf '\n=== %s\n' "$*"; }

say "machine"
echo "python: $($PY -c 'import sys; print(sys.version.split()[0], sys.executable)' 2>&1)"
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "FAIL: nvidia-smi not found: this is not a GPU machine (nothing to compare)"
    # Still show that the agent fails cleanly there: one line, non-zero status, no traceback.
    NO_GPU_ONLY=1
else
    NO_GPU_ONLY=0
    nvidia-smi -L || true
fi

say "install (offline, into $SITE)"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl || { echo "FAIL: installing the wheels in $WHEELS failed"; exit 3; }
    echo "wheels: $(cd "$WHEELS" && ls ./*.whl | xargs -n1 basename | tr '\n' ' ')"
else
    echo "no wheels in $WHEELS: relying on the machine's packages"
fi
# The build backend runs in a subprocess that sees PYTHONPATH, so a carried setuptools wheel (pyproject's SPDX
# license string needs setuptools >= 77) is used even where the machine's own setuptools is older.
export PYTHONPATH="$SITE"
if $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
        --target "$SITE" . >"$RESULTS/pip-install.log" 2>&1; then
    echo "package: dra-operator installed from this tree (--no-deps)"
else
    # A pip without a usable setuptools cannot build the tree; the sources run the same from operator/.
    echo "package: pip could not build the tree (see pip-install.log); using the sources in operator/"
    export PYTHONPATH="$SITE:$PWD/operator"
fi
$PY -c 'import importlib.metadata as m, pydantic, structlog, yaml, pynvml, dra_operator
print("pydantic", pydantic.VERSION, "| structlog", structlog.__version__, "| nvidia-ml-py", m.version("nvidia-ml-py"),
      "| dra_operator from", dra_operator.__file__)' \
    || { echo "FAIL: the installed package does not import"; exit 3; }

# pynvml loads libnvidia-ml.so.1 by name: make sure the dynamic loader can find the driver's copy.
if ! ldconfig -p 2>/dev/null | grep -q 'libnvidia-ml.so.1'; then
    for dir in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
        if [ -e "$dir/libnvidia-ml.so.1" ]; then
            export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            echo "libnvidia-ml.so.1 found in $dir (added to LD_LIBRARY_PATH)"
            break
        fi
    done
fi

say "dra-operator agent --backend nvml --print --node $NODE"
set +e
$PY -m dra_operator.cli agent --backend nvml --print --node "$NODE" >"$RESULTS/agent.yaml" 2>"$RESULTS/agent.log"
agent_status=$?

cat "$RESULTS/agent.yaml"
echo "--- agent stderr (status $agent_status):"
cat "$RESULTS/agent.log"
if [ "$NO_GPU_ONLY" = 1 ]; then
    if [ "$agent_status" -ne 0 ] && ! grep -q Traceback "$RESULTS/agent.log"; then
        echo "agent without a GPU: clean failure (status $agent_status, no traceback)"
    else
        echo "FAIL: agent without a GPU did not fail cleanly"
    fi
    exit 2
fi
[ "$agent_status" -eq 0 ] || { echo "FAIL: the agent exited with status $agent_status"; exit 4; }

say "nvidia-smi -q"
nvidia-smi -q >"$RESULTS/nvidia-smi-q.txt" 2>&1 || true
grep -E '^(Driver Version|CUDA Version)|^GPU |Product (Name|Brand|Architecture)|GPU UUID|Minor Number|Bus Id|^ {4}FB Memory Usage|^ {8}Total|MIG Mode|^ {8}Current' \
    "$RESULTS/nvidia-smi-q.txt" | head -60
nvidia-smi --query-gpu=uuid,compute_cap --format=csv,noheader >"$RESULTS/compute-cap.csv" 2>/dev/null || true
echo "compute capability: $(tr '\n' ' ' <"$RESULTS/compute-cap.csv")"

say "Xid event watching (registration on the real GPU, one bounded wait)"
$PY - <<'PYEOF' || echo "INFO: Xid watcher check raised (see above); not part of PASS/FAIL"
from dra_operator.agent.nvml import NvmlBackend, XidWatcher
backend = NvmlBackend("gpu.nvidia.com")
backend.open()
watcher = XidWatcher(lambda event: print("event:", event), poll_ms=500)
print("GPUs registered for critical Xid events:", watcher.start())
print("one wait:", watcher.wait_once() if watcher._event_set is not None else "no event set")
watcher.stop()
backend.close()
PYEOF

say "comparison"
$PY scripts/gpu_check_compare.py --agent "$RESULTS/agent.yaml" --smi "$RESULTS/nvidia-smi-q.txt" \
    --compute-cap "$RESULTS/compute-cap.csv" | tee "$RESULTS/compare.txt"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] && echo "RESULT: PASS" || echo "RESULT: FAIL"
exit "$status"
