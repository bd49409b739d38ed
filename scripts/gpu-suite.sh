#!/usr/bin/env bash
# The GPU suites, on a GPU machine that may have no network and no project venv, only a
# python3 with torch, triton, numpy, grpcio, scikit-learn, matplotlib, tqdm, pytest,
# aiohttp, prometheus-client and cloudpickle. Runs from the repo root with no install:
#   1. the tests marked `gpu` (Triton kernels compiled for real, CUDA backends);
#   2. every system's `casebook bench SYSTEM --device cuda` cases.
# Writes logs, JSON results and plots under $OUT (default out/) and prints a table last.
# Budget: <= 8 minutes in all (each step has its own timeout).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-suite: no CUDA device visible to $PY" >&2
  exit 1
fi
"$PY" -m common.cli env --json > "$OUT/env.log" 2>&1

timeout 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests -o addopts="" \
  > "$OUT/gpu-tests.log" 2>&1
echo "gpu tests: exit $? (log: $OUT/gpu-tests.log)"
tail -n 3 "$OUT/gpu-tests.log"

# Per-system budgets (seconds); miniansor runs its quick GPU sweep to fit the 8 minutes.
declare -A BUDGET=([common]=60 [miniflow]=60 [miniclipper]=90 [minips]=90 [miniansor]=200)
status=0
for system in $("$PY" -c "from common.bench import SUITES; print(*SUITES)"); do
  quick=""
  [ "$system" = miniansor ] && quick="--quick"
  timeout "${BUDGET[$system]:-90}" "$PY" -m common.cli bench "$system" --device cuda \
    $quick --out "$OUT/bench" --no-progress > "$OUT/bench-$system.log" 2>&1 || status=1
done
# One archive, so that everything comes back from a machine that returns few files.
tar czf "$OUT/results.tar.gz" -C "$OUT" bench env.log gpu-tests.log \
  $(cd "$OUT" && ls bench-*.log) 2>/dev/null

"$PY" - "$OUT/bench" <<'PY'
import sys
from pathlib import Path
from common.bench import format_table, load_results, summary_rows
rows = []
for path in sorted(Path(sys.argv[1]).glob("*/cuda/results.json")):
    doc = load_results(path)
    gpu = (doc["machine"].get("gpu") or {}).get("name", "?")
    rows += [(doc["system"], *r) for r in summary_rows(doc)]
print(f"device: {gpu}")
print(format_table(rows, ("system", "case", "target", "measured", "held")))
PY
exit $status
