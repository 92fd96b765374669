#!/usr/bin/env bash
# Run the cross-backend agreement suite with JAX on an NVIDIA GPU and print a summary:
# the platform JAX reported, tests passed, the largest relative difference seen.
# Needs a CUDA build of jax: `pip install "jax[cuda12]"` (or the wheels your machine has)
# in an environment that already holds klqp and both backends (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
report=$(mktemp)
export KLQP_GPU=1 KLQP_GPU_REPORT="$report" JAX_ENABLE_X64=${JAX_ENABLE_X64:-1}
tests=(tests/test_gpu.py tests/test_agreement.py)
if [ "$JAX_ENABLE_X64" = "0" ]; then
    # float32: PyTensor's JAX linker sets JAX's x64 flag from floatX, so keep the two in
    # step; test_agreement.py's tolerances are float64's, test_gpu.py picks float32's.
    export PYTENSOR_FLAGS="floatX=float32${PYTENSOR_FLAGS:+,$PYTENSOR_FLAGS}"
    # float32 matmuls on recent NVIDIA GPUs default to TF32 (~1e-3 relative); ask for
    # full float32 so the figures measure the lowering, not the tensor cores.
    export JAX_DEFAULT_MATMUL_PRECISION=${JAX_DEFAULT_MATMUL_PRECISION:-highest}
    tests=(tests/test_gpu.py)
fi
"$PY" -c "import jax; print('JAX platform:', jax.default_backend(), jax.devices())"
status=0
"$PY" -m pytest "${tests[@]}" -p no:xdist -q -o addopts="" -rs || status=$?
"$PY" - "$report" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
if not rows:
    sys.exit("no GPU agreement figures were recorded (did the GPU tests skip?)")
for backend in sorted({r["backend"] for r in rows}):
    mine = [r for r in rows if r["backend"] == backend]
    worst = max(mine, key=lambda r: r["max_rel_diff"])
    print(f"{backend}: {len(mine)} models on {worst['device']}, max relative difference "
          f"{worst['max_rel_diff']:.3g} ({worst['model']})")
PYEOF
exit $status
