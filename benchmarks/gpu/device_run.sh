#!/usr/bin/env bash
# The calls to make on a lent GPU machine (benchmarks/gpu/NOTES.md says how and why):
#
#   bash benchmarks/gpu/device_run.sh correctness [-- pytest args]  # suite, stress, sanitizers
#   bash benchmarks/gpu/device_run.sh speed                          # bench_device.py
#
# Parts may be joined with commas; `suite`, `stress`, `sanitizer` and `bench` run one step
# (the old form `suite,bench [-- pytest args]` still works). Each part first installs the
# carried wheels ($WHL_DIR) and checks the machine (setup.log), then runs its steps, each
# under its own time limit, its whole output in $OUT/<step>.log (OUT defaults to
# ./gpu-out). Each step prints one line; the script ends with a summary and exits with the
# worst step status (0 only when every step passed; a skipped step, said why, is not a
# failure). No step's status passes through a pipe.
#
# Environment (defaults in brackets):
#   ENGINE [cuda]        cudasim for a dry run without a GPU (sets NUMBA_ENABLE_CUDASIM=1)
#   PYTHON [python3]     WHL_DIR [.whl]   WHL_SITE [/tmp/site]   WORKERS [8]
#   SETUP_S [45] SUITE_S [240] STRESS_S [120] SANITIZER_S [45] BENCH_S [150]  (seconds)
#   SUITE_MARK [not cudasim and not ptx; cudasim under ENGINE=cudasim]
#   STRESS_ARGS []       benchmarks/gpu/stress.py's options (--preset tiny for a dry run)
#   SANITIZER_ARGS [--preset small --only hash,tumbling-hot,sliding-hot,session-hot]
#   BENCH_BATCHES [4194304 65536]  one bench_device.py run per batch size (ceilings in
#                                  the first), into $OUT/bench-<size>.log and its folder
#   BENCH_ARGS [--events 10000000 --repeat 2]
set -u -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.." || exit 2
OUT=${OUT:-gpu-out}
mkdir -p "$OUT" || exit 2
ENGINE=${ENGINE:-cuda}
PY=${PYTHON:-python3}
WHL_DIR=${WHL_DIR:-.whl}
WHL_SITE=${WHL_SITE:-/tmp/site}
if [ "$ENGINE" = cudasim ]; then
  export NUMBA_ENABLE_CUDASIM=1
  SUITE_MARK=${SUITE_MARK:-cudasim}
fi
SUITE_MARK=${SUITE_MARK:-not cudasim and not ptx}
SANITIZER_ARGS=${SANITIZER_ARGS:---preset small --only hash,tumbling-hot,sliding-hot,session-hot}
BENCH_BATCHES=${BENCH_BATCHES:-4194304 65536}
BENCH_ARGS=${BENCH_ARGS:---events 10000000 --repeat 2}

usage="usage: $0 correctness|speed|suite|stress|sanitizer|bench[,...] [-- pytest args]"
want_suite=0 want_stress=0 want_sanitizer=0 want_bench=0
IFS=, read -r -a parts <<<"${1:-correctness,speed}"
for part in "${parts[@]}"; do
  case $part in
    correctness) want_suite=1 want_stress=1 want_sanitizer=1 ;;
    speed) want_bench=1 ;;
    suite) want_suite=1 ;;
    stress) want_stress=1 ;;
    sanitizer|memcheck|racecheck) want_sanitizer=1 ;;
    bench) want_bench=1 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
shift || true
[ "${1:-}" = "--" ] && shift

WORST=0
SUMMARY=()
# record NAME STATUS SECONDS NOTE: STATUS is a number, or "skip" (counts as 0)
record() {
  local name=$1 rc=$2 secs=$3 note=$4 verdict
  case $rc in
    skip) verdict=SKIP rc=0 ;;
    0) verdict=ok ;;
    124|137) verdict=TIMEOUT ;;
    *) verdict=FAIL ;;
  esac
  local line
  line=$(printf '%-10s %-7s rc=%-3s %4ss  %s' "$name" "$verdict" "$rc" "$secs" "$note")
  echo "== $line"
  SUMMARY+=("$line")
  if [ "$rc" -gt "$WORST" ]; then WORST=$rc; fi
}
# run_step NAME LOG LIMIT CMD...: CMD under `timeout`, output appended to $OUT/LOG.log;
# sets RC (CMD's status; 124 when it ran past LIMIT) and SECS
run_step() {
  local name=$1 log=$2 limit=$3
  shift 3
  echo "== $name: started $(date +%H:%M:%S), limit ${limit}s, log $OUT/$log.log"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" >>"$OUT/$log.log" 2>&1
  RC=$?
  SECS=$((SECONDS - t0))
}
# show FILE PATTERN [N]: the first N lines of FILE matching PATTERN (for the eye only)
show() { grep -E -- "$2" "$1" 2>/dev/null | head -n "${3:-40}" || true; }
last_match() { grep -E -- "$2" "$1" 2>/dev/null | tail -n 1 || true; }

# -- setup: carried wheels, then what the machine has ----------------------------------
: >"$OUT/setup.log"
if compgen -G "$WHL_DIR/*.whl" >/dev/null; then
  run_step wheels setup "${SETUP_S:-45}" "$PY" -m pip install -q --no-index --no-deps \
    --no-compile --no-cache-dir --upgrade --target "$WHL_SITE" "$WHL_DIR"/*.whl
  record wheels "$RC" "$SECS" "$(compgen -G "$WHL_DIR/*.whl" | wc -l) wheels into $WHL_SITE"
  export PYTHONPATH=$WHL_SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  record wheels skip 0 "no $WHL_DIR/*.whl: pydantic, polars, duckdb must already be installed"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

SANITIZER=$(command -v compute-sanitizer 2>/dev/null || true)
for f in /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer \
         /opt/nvidia/*/bin/compute-sanitizer; do
  if [ -z "$SANITIZER" ] && [ -x "$f" ]; then SANITIZER=$f; fi
done
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')  host: $(uname -n)  engine: $ENGINE"
  git log -1 --format='commit: %h %s' 2>/dev/null || true
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
      --format=csv 2>&1 || true
  else
    echo "nvidia-smi: not on PATH"
  fi
  echo "compute-sanitizer: ${SANITIZER:-not found (PATH, /usr/local/cuda*/bin, /opt/nvidia)}"
} >>"$OUT/setup.log" 2>&1
# every package the suite imports; the engine's own check decides whether the GPU works
run_step env setup "${SETUP_S:-45}" "$PY" - "$ENGINE" <<'PYEOF'
import importlib, importlib.metadata as md, sys
engine = sys.argv[1]
need = {"numpy": "numpy", "pyarrow": "pyarrow", "pandas": "pandas", "numba": "numba",
        "pydantic": "pydantic", "yaml": "pyyaml", "typer": "typer", "rich": "rich",
        "prometheus_client": "prometheus-client", "pytest": "pytest",
        "hypothesis": "hypothesis", "polars": "polars", "duckdb": "duckdb"}
if engine == "cuda":
    need |= {"cupy": "cupy-cuda13x", "numba.cuda": "numba-cuda"}
missing = []
for mod, dist in need.items():
    try:
        importlib.import_module(mod)
    except Exception as exc:
        missing.append(f"{mod} ({type(exc).__name__}: {exc})")
versions = []
for dist in (*need.values(), "cupy-cuda12x", "cuda-python", "pytest-xdist", "pytest-timeout"):
    try:
        versions.append(f"{dist} {md.version(dist)}")
    except md.PackageNotFoundError:
        pass
print("python", sys.version.split()[0], "|", ", ".join(versions))
from gpustream.backend import select_backend
backend = select_backend(engine)  # raises, naming the problem, where the engine cannot run
print("backend:", backend.describe())
if missing:
    sys.exit("missing on this machine (carry their wheels in .whl): " + "; ".join(missing))
PYEOF
ENV_OK=$RC
if [ "$RC" = 0 ]; then
  record env 0 "$SECS" "$(last_match "$OUT/setup.log" '^backend:')"
else
  record env "$RC" "$SECS" "$(tail -n 1 "$OUT/setup.log")"
fi
cat "$OUT/setup.log"
not_run() { record "$1" skip 0 "not run: the env step failed (setup.log)"; }

# -- correctness ------------------------------------------------------------------------
if [ "$want_suite" = 1 ]; then
  if [ "$ENV_OK" != 0 ]; then not_run suite; else
    extra=()
    "$PY" -c "import xdist" 2>/dev/null && extra+=(-n "${WORKERS:-8}")
    "$PY" -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout 200)
    # brokers need redis-server and Tansu, lint needs ruff and mypy, the container test
    # hadolint and docker: none is on the GPU machine, and none depends on the engine
    : >"$OUT/suite.log"
    run_step suite suite "${SUITE_S:-240}" env GPUSTREAM_ENGINE="$ENGINE" \
      "$PY" -m pytest -p no:cacheprovider -v -rfE --durations 15 ${extra[@]+"${extra[@]}"} \
      -m "$SUITE_MARK" --ignore tests/test_brokers.py \
      --ignore tests/test_broker_exactly_once.py --ignore tests/test_lint.py \
      --ignore tests/test_container.py \
      --deselect tests/test_spec.py::test_kafka_and_redis_sinks_round_trip_through_real_servers \
      "$@"
    show "$OUT/suite.log" '^(FAILED|ERROR) ' 40
    record suite "$RC" "$SECS" "$(last_match "$OUT/suite.log" '^=+ .* in [0-9.]+s' | tr -d '=')"
  fi
fi
if [ "$want_stress" = 1 ]; then
  if [ "$ENV_OK" != 0 ]; then not_run stress; else
    : >"$OUT/stress.log"
    # shellcheck disable=SC2086  # STRESS_ARGS is a list of options
    run_step stress stress "${STRESS_S:-120}" env -u GPUSTREAM_ENGINE \
      "$PY" benchmarks/gpu/stress.py --engine "$ENGINE" ${STRESS_ARGS:-}
    show "$OUT/stress.log" '^(stress|hash-|tumbling-|sliding-|session-)' 30
    record stress "$RC" "$SECS" "$(last_match "$OUT/stress.log" '^stress: ')"
  fi
fi
if [ "$want_sanitizer" = 1 ]; then
  for tool in memcheck racecheck; do
    if [ "$ENV_OK" != 0 ]; then not_run "$tool"; continue; fi
    if [ -z "$SANITIZER" ]; then
      record "$tool" skip 0 "compute-sanitizer not found (not a failure of the engine)"
      continue
    fi
    if [ "$ENGINE" != cuda ]; then
      record "$tool" skip 0 "compute-sanitizer needs ENGINE=cuda, not $ENGINE"
      continue
    fi
    : >"$OUT/$tool.log"
    # errors found: status 86; the program's own failure: its status
    # shellcheck disable=SC2086
    run_step "$tool" "$tool" "${SANITIZER_S:-45}" env -u GPUSTREAM_ENGINE GPUSTREAM_DEVICE_POOL=off \
      "$SANITIZER" --tool "$tool" --error-exitcode 86 --print-limit 25 \
      "$PY" benchmarks/gpu/stress.py --engine cuda --plain-alloc $SANITIZER_ARGS
    summary_line=$(last_match "$OUT/$tool.log" 'ERROR SUMMARY|RACECHECK SUMMARY')
    if [ "$RC" != 0 ] && grep -q "Device not supported" "$OUT/$tool.log"; then
      record "$tool" skip "$SECS" "compute-sanitizer refused the device: $(last_match "$OUT/$tool.log" 'not supported')"
    elif [ "$RC" = 86 ]; then
      show "$OUT/$tool.log" '^========= (Invalid|Race|Error|ERROR|Program hit)' 20
      record "$tool" 86 "$SECS" "found errors: $summary_line"
    else
      record "$tool" "$RC" "$SECS" "${summary_line:-no summary} | $(last_match "$OUT/$tool.log" '^stress: ')"
    fi
  done
fi

# -- speed ------------------------------------------------------------------------------
if [ "$want_bench" = 1 ]; then
  first=1
  for rows in $BENCH_BATCHES; do
    if [ $((rows % 1048576)) = 0 ]; then label=$((rows / 1048576))M
    elif [ $((rows % 1024)) = 0 ]; then label=$((rows / 1024))k
    else label=$rows; fi
    name=bench-$label
    if [ "$ENV_OK" != 0 ]; then not_run "$name"; continue; fi
    flags=(--engine "$ENGINE" --batch-rows "$rows")
    if [ "$first" = 0 ] || [ "$ENGINE" != cuda ]; then flags+=(--no-ceilings); fi
    first=0
    mkdir -p "$OUT/$name"
    : >"$OUT/$name.log"
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of options
    run_step "$name" "$name" "${BENCH_S:-150}" env -u GPUSTREAM_ENGINE OUT="$OUT/$name" \
      "$PY" benchmarks/gpu/bench_device.py "${flags[@]}" $BENCH_ARGS
    show "$OUT/$name.log" '^ceilings|on device|: FAILED$' 20
    record "$name" "$RC" "$SECS" "$(grep -c 'on device' "$OUT/$name.log") cases timed, \
$(grep -c ': FAILED$' "$OUT/$name.log") failed"
  done
fi

{
  echo "== summary ($(date -u '+%Y-%m-%d %H:%M UTC'), engine $ENGINE, worst status $WORST)"
  printf '%s\n' "${SUMMARY[@]}"
} | tee "$OUT/summary.txt"
exit "$WORST"
