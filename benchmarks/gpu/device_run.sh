#!/usr/bin/env bash
# One call on a lent GPU machine (see benchmarks/gpu/NOTES.md): what is there, the suite
# with GPUSTREAM_ENGINE=cuda, then the GPU benchmark. Logs go to $OUT (or ./gpu-out).
#   bash benchmarks/gpu/device_run.sh [suite] [bench] [pytest args after --]
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
if [ -d .whl ]; then   # packages the machine lacks (pydantic), carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import sys, numba, numba_cuda, cupy, pyarrow, numpy; print(sys.version.split()[0], 'numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, 'cupy', cupy.__version__, 'pyarrow', pyarrow.__version__, 'numpy', numpy.__version__)"
python3 -m gpustream.cli info 2>&1 | tail -5
parts=${1:-suite,bench}
shift || true
[ "${1:-}" = "--" ] && shift
if [[ $parts == *suite* ]]; then
  # brokers need redis-server and Tansu, lint needs ruff/mypy, container needs hadolint:
  # none of them is on the GPU machine, and none of them depends on the engine
  GPUSTREAM_ENGINE=cuda timeout ${SUITE_S:-330} python3 -m pytest -q -p no:cacheprovider \
    -n ${WORKERS:-8} --timeout 240 -m "not cudasim and not ptx" \
    --ignore tests/test_brokers.py --ignore tests/test_lint.py \
    --ignore tests/test_container.py "$@" 2>&1 | tee "$OUT/suite.log" | \
    grep -E "^(FAILED|ERROR)|passed|failed|error" | tail -80
fi
if [[ $parts == *bench* ]]; then
  timeout ${BENCH_S:-200} python3 benchmarks/gpu/bench_device.py ${BENCH_ARGS:-} 2>&1 | \
    tee "$OUT/bench.log" | tail -30
fi
