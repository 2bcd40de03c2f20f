#!/usr/bin/env bash
# The GPU suite in one command (benchmarks/gpu_suite.py), run from anywhere in a checkout on a
# machine with jax (CUDA) and torch (CUDA). The project is used from the checkout, not installed.
# diffusers (and the packages it needs beyond the machine's) may travel as wheels in .whl/:
# they are installed into $SDEVP_WHEEL_SITE (default /tmp/site) when diffusers is not importable.
#   usage: benchmarks/run_gpu_suite.sh OUT [more gpu_suite.py options, e.g. --only sv_target]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/run_gpu_suite.sh OUT [gpu_suite.py options]}
shift
site=${SDEVP_WHEEL_SITE:-/tmp/site}
if compgen -G ".whl/*.whl" > /dev/null && ! python3 -c "import diffusers" 2> /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_suite.py --out "$out" --budget-s 420 "$@"
