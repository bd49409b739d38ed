#!/usr/bin/env bash
# The GPU suites, on a GPU machine that may have no network and no project venv, only a
# python3 with pyproject.toml's packages (torch, triton, numpy, grpcio, scikit-learn,
# matplotlib, tqdm, aiohttp, prometheus-client, cloudpickle, threadpoolctl, xxhash) and
# pytest, pytest-timeout, hypothesis and psutil. Runs from the repo root with no install:
#   1. the tests marked `gpu` (Triton kernels compiled for real, CUDA backends; TESTS=path
#      for some, TESTS= for none);
#   2. every system's `casebook bench SYSTEM --device cuda` cases (SYSTEMS="a b" for some,
#      SYSTEMS= for none: a call for one of the steps below only);
#   3. with PROFILE=1, scripts/gpu-profile-miniflow.py (torch.profiler tables and traces),
#      right after miniflow's bench;
#   4. with RECORD_SPACE=N, N configs of each replay task measured into a replay table;
#   5. with PROBE_GEMM=1, scripts/gpu-probe-gemm.py (the square fp16 GEMMs tuned with 64
#      trials each; do_bench vs interleaved timing of the tuned, tutorial and cuBLAS);
#   6. with CPU_SYSTEMS="minips", those systems' CPU cases on this machine's cores
#      (CPU_ONLY="minips:consistency,fault miniclipper:overhead" for some cases only);
#   DEADLINE=S ends the whole run within S seconds (each step's limit cut to what is left).
# miniansor runs its quick GPU sweep (fp16, half the shapes) unless ANSOR_FULL=1 (fp16 and
# bf16, every shape, a budget of 32 trials a GEMM: 347 s on an H200 on 2026-11-27, of
# which 300 s gemm-cuda), about half of a 15-minute lease on its own:
#   DEADLINE=430 ANSOR_FULL=1 SYSTEMS=miniansor \
#     TESTS="tests/miniansor tests/common/test_timing.py" scripts/gpu-suite.sh
# and the other systems' GPU cases go in a call of their own (about 3 min with PROFILE=1):
#   DEADLINE=300 PROFILE=1 SYSTEMS="common miniflow miniclipper minips" scripts/gpu-suite.sh
# Everything (logs, JSON results, plots, miniansor's measured table) goes into one archive,
# $OUT/results.tar.gz, rewritten after every step so that a run cut short keeps what it
# finished; a table of targets is printed last.
# Each step has its own time limit (BUDGET below), cut to fit DEADLINE when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
WORK=$(mktemp -d)  # logs and results; only the archive goes to $OUT
mkdir -p "$WORK/bench" "$WORK/tables"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
pack() {
  cp systems/miniansor/data/recorded-nvidia*.json systems/miniansor/data/space-*.json* \
    "$WORK/tables/" 2>/dev/null
  # written aside, then renamed: a run killed while packing keeps the archive before
  tar czf "$OUT/.results.tar.gz" -C "$WORK" . 2>/dev/null \
    && mv -f "$OUT/.results.tar.gz" "$OUT/results.tar.gz"
}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-suite: no CUDA device visible to $PY" >&2
  exit 1
fi
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv
  "$PY" -c "import torch, triton, numpy, grpc, sys; print(sys.version); print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__, 'grpcio', grpc.__version__)"
  "$PY" -m common.cli env --json; } > "$WORK/env.log" 2>&1
stamp "env: $(head -3 "$WORK/env.log" | tail -1)"
pack

# Per-step limits (seconds); miniansor runs its quick GPU sweep to fit the lease.
declare -A BUDGET=([tests]=80 [common]=30 [miniflow]=45 [miniclipper]=80 [minips]=60
                   [miniansor]=190 [profile]=90 [cpu-minips]=330 [cpu-miniclipper]=400
                   [record]=240 [probe]=200)
# DEADLINE=S: the whole script ends within S seconds of its start; each step's limit is cut
# to what is left (less 15 s for a killed step to exit and 15 s to pack), so the last step
# (put miniansor last) gets the rest. A step left under 20 s is skipped: `timeout 0` would
# mean no limit at all.
DEADLINE=${DEADLINE:-0}
limit() {  # limit STEP -> the step's budget, cut to the time left before DEADLINE
  local b=${BUDGET[$1]:-60}
  if [ "$DEADLINE" -gt 0 ]; then
    local left=$(( DEADLINE - ($(date +%s) - T0) - 30 ))
    [ "$left" -lt "$b" ] && b=$left
  fi
  echo "$b"
}
status=0
TESTS=${TESTS-tests}  # empty: no tests (without the colon, empty is not unset)
b=$(limit tests)
if [ -z "$TESTS" ]; then stamp "gpu tests: none asked for"
elif [ "$b" -lt 20 ]; then stamp "gpu tests: skipped, ${b}s left"; status=1
else
  # shellcheck disable=SC2086  # $TESTS is a word list on purpose
  timeout -k 10 "$b" "$PY" -m pytest -m gpu -q -p no:cacheprovider $TESTS \
    -o addopts="" --timeout 60 > "$WORK/gpu-tests.log" 2>&1
  stamp "gpu tests: exit $? -- $(tail -n 1 "$WORK/gpu-tests.log")"
  pack
fi

SYSTEMS=${SYSTEMS-$("$PY" -c "from common.bench import SUITES; print(*SUITES)")}
for system in $SYSTEMS; do
  quick=""
  [ "$system" = miniansor ] && [ "${ANSOR_FULL:-0}" != 1 ] && quick="--quick"
  [ "$system" = miniansor ] && [ "${ANSOR_FULL:-0}" = 1 ] && BUDGET[miniansor]=480
  b=$(limit "$system")
  if [ "$b" -lt 20 ]; then stamp "bench $system: skipped, ${b}s left"; status=1; continue; fi
  timeout -k 15 "$b" "$PY" -m common.cli bench "$system" \
    --device cuda $quick --out "$WORK/bench" --no-progress > "$WORK/bench-$system.log" 2>&1
  rc=$?
  [ $rc = 0 ] || status=1
  stamp "bench $system: exit $rc (limit ${b}s)"
  pack
  # PROFILE=1: where a miniflow training step spends its time, beside PyTorch eager
  if [ "$system" = miniflow ] && [ "${PROFILE:-0}" = 1 ]; then
    b=$(limit profile)
    if [ "$b" -lt 20 ]; then stamp "profile miniflow: skipped, ${b}s left"; status=1; continue; fi
    timeout -k 10 "$b" "$PY" scripts/gpu-profile-miniflow.py "$WORK" \
      > "$WORK/profile-miniflow.log" 2>&1
    stamp "profile miniflow: exit $?"
    pack
  fi
done

# RECORD_SPACE=N: N random configs of each replay task's space measured on this GPU
# (casebook ansor record-table), the table the CPU search and cost-model studies replay
if [ "${RECORD_SPACE:-0}" -gt 0 ] && b=$(limit record) && [ "$b" -lt 20 ]; then
  stamp "record space: skipped, ${b}s left"; status=1
elif [ "${RECORD_SPACE:-0}" -gt 0 ]; then
  timeout -k 15 "$b" "$PY" -m common.cli ansor record-table --device cuda --no-progress \
    --configs "$RECORD_SPACE" --tasks gemm:2048x2048x2048:fp16:none \
    gemm:16x4096x14336:fp16:none > "$WORK/record-space.log" 2>&1
  stamp "record space: exit $? (limit ${b}s) -- $(tail -n 1 "$WORK/record-space.log")"
  pack
fi

# PROBE_GEMM=1: is the tuner short of trials or of space, and how far apart are the two
# timing methods (scripts/gpu-probe-gemm.py)
if [ "${PROBE_GEMM:-0}" = 1 ] && b=$(limit probe) && [ "$b" -lt 20 ]; then
  stamp "probe gemm: skipped, ${b}s left"; status=1
elif [ "${PROBE_GEMM:-0}" = 1 ]; then
  timeout -k 15 "$b" "$PY" scripts/gpu-probe-gemm.py "$WORK" > "$WORK/probe-gemm.log" 2>&1
  stamp "probe gemm: exit $? (limit ${b}s)"
  pack
fi

# CPU_SYSTEMS="minips": those systems' CPU cases too, on this machine's cores (the
# development VM has 2; a multi-process system's scaling targets need more), written to
# bench-host/SYSTEM/cpu/ so they are never mistaken for the development VM's results.
for system in ${CPU_SYSTEMS:-}; do
  b=$(limit "cpu-$system")
  if [ "$b" -lt 20 ]; then stamp "bench $system (cpu): skipped, ${b}s left"; status=1; continue; fi
  only=""
  for spec in ${CPU_ONLY:-}; do  # SYSTEM:case,case (a bare SYSTEM: all its cases)
    [[ "$spec" == "$system":* ]] && only="--only ${spec#*:}" && only=${only//,/ }
  done
  # shellcheck disable=SC2086  # $only is a word list on purpose
  timeout -k 15 "$b" "$PY" -m common.cli bench "$system" --device cpu $only \
    --out "$WORK/bench-host" --no-progress > "$WORK/bench-host-$system.log" 2>&1
  rc=$?
  [ $rc = 0 ] || status=1
  stamp "bench $system (cpu, $(nproc) cores): exit $rc (limit ${b}s)"
  pack
done

"$PY" - "$WORK" <<'PY'
import sys
from pathlib import Path
from common.bench import format_table, load_results, summary_rows
rows, gpu = [], "?"
# a suite cut off by its limit left only results.partial.json (the cases it finished)
paths = [p for pat in ("bench/*/cuda/results*.json", "bench-host/*/cpu/results*.json")
         for p in sorted(Path(sys.argv[1]).glob(pat))]
for path in paths:
    doc = load_results(path)
    gpu = (doc["machine"].get("gpu") or {}).get("name", gpu)
    cut = " (cut off)" if path.name == "results.partial.json" else ""
    rows += [(f"{doc['system']} ({doc['device']}){cut}", *r) for r in summary_rows(doc)]
print(f"device: {gpu}")
print(format_table(rows, ("system", "case", "target", "measured", "held")))
PY
grep -h "case failed\|Error" "$WORK"/bench-*.log 2>/dev/null | sort | uniq -c | head -20
exit $status
