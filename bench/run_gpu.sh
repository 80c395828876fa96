#!/usr/bin/env bash
# One GPU session's worth of checks and benchmarks, in under 8 minutes.
#
#   bench/run_gpu.sh OUTDIR [--dry-run]
#
# 1. env       nvidia-smi and versions                       -> OUTDIR/env.txt
# 2. check     every geosteer op on CUDA vs the CPU reference
#              (first_stage, part_cost, project, assign; the head eager and
#              compiled; fp32 and fp16; backends auto/torch/triton)
#                                                            -> OUTDIR/check_cuda.jsonl
# 3. head      bench_head.py on the `gpu` workload (DESIGN §4) -> OUTDIR/head_gpu.jsonl
# 4. kernels   bench/bench_kernels.py, if present             -> OUTDIR/kernels_gpu.jsonl
# 5. assign    bench/bench_assign.py --device cuda, if present -> OUTDIR/assign_gpu.jsonl
# 6. tables    make_tables.py on the head rows               -> OUTDIR/head_gpu.md
# Every step's output goes to OUTDIR/run.log, which ends with one status line
# per step (also printed). At most 8 files, for the device tool's file limit.
#
# With --dry-run everything runs on the CPU with tiny shapes (a smoke test of
# this script on a machine without a GPU).
#
# Needs python3 with torch, triton, numpy, scipy (tqdm, matplotlib optional).
# geosteer need not be installed: it is imported from this checkout through a
# small package farm that maps kernels/ to geosteer.kernels. Packages the GPU
# machine lacks (torch-linear-assignment is pure Python) can be copied into
# .deps/ at the repo root (git-ignored), which is put on PYTHONPATH:
#   mkdir -p .deps && cp -r /work/venv/lib/python3.11/site-packages/torch_linear_assignment .deps/
# Environment: PYTHON (default python3), TOTAL_S (default 470: the whole
# script's budget in seconds; each step gets at most what is left).
set -uo pipefail

usage() { echo "usage: $0 OUTDIR [--dry-run]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUTDIR=$1; shift
DRY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    *) usage ;;
  esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-470}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG=$OUTDIR/run.log
STATUS=$(mktemp)
: > "$LOG"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# geosteer from this checkout, with kernels/ importable as geosteer.kernels
# (what setup.cfg's package_dir does at install time).
FARM=$(mktemp -d)
trap 'rm -rf "$FARM" "$STATUS"' EXIT
mkdir -p "$FARM/geosteer"
for entry in "$REPO"/geosteer/*; do ln -s "$entry" "$FARM/geosteer/"; done
[ -e "$FARM/geosteer/kernels" ] || ln -s "$REPO/kernels" "$FARM/geosteer/kernels"
export PYTHONPATH="$FARM:$REPO/.deps${PYTHONPATH:+:$PYTHONPATH}"

if [ $DRY = 1 ]; then DEVICE=cpu; DRYFLAG=--dry-run; else DEVICE=cuda; DRYFLAG=; fi

FAILED=0
# step NAME MAX_SECONDS CMD...: run CMD under `timeout`, at most MAX_SECONDS
# and never past the script's budget; log its output and status.
step() {
  local name=$1 max=$2; shift 2
  local left=$(( TOTAL_S - SECONDS - 5 ))
  local limit=$(( max < left ? max : left ))
  if [ "$limit" -lt 10 ]; then
    echo "$name: skipped (budget spent)" | tee -a "$STATUS"
    FAILED=1
    return
  fi
  echo "=== $name (limit ${limit}s): $*" >> "$LOG"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  local status=ok
  if [ $rc = 124 ] || [ $rc = 137 ]; then status="TIMEOUT after ${limit}s"; FAILED=1
  elif [ $rc != 0 ]; then status="FAILED rc=$rc"; FAILED=1; fi
  echo "$name: $status ($(( SECONDS - start ))s)" | tee -a "$STATUS"
}

# 1. environment
{
  echo "date: $(date -u +%FT%TZ)"; echo "repo: $REPO"; echo "commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  (cd "$FARM" && "$PY" - <<'EOF'
import importlib, torch
print("python", __import__("sys").version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
for name in ("triton", "numpy", "scipy", "tqdm", "matplotlib", "torch_linear_assignment", "faiss", "geosteer"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:24s} {getattr(mod, '__version__', '?'):12s} {getattr(mod, '__file__', '')}")
    except Exception as error:
        print(f"{name:24s} MISSING ({type(error).__name__}: {error})")
import geosteer.kernels
print("geosteer.kernels        ", geosteer.kernels.__file__)
EOF
  )
} > "$OUTDIR/env.txt" 2>&1
cat "$OUTDIR/env.txt"
if [ $DRY = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "CUDA is not available; use --dry-run on a CPU machine" | tee -a "$STATUS"
  exit 1
fi

cd "$REPO"
# 2. correctness on the device
step check 110 "$PY" bench/bench_head.py --check --device $DEVICE --out "$OUTDIR/check_cuda.jsonl"

# 3. the head's throughput against its peers, gpu workload
step head 230 "$PY" bench/bench_head.py --workload gpu --device $DEVICE $DRYFLAG --repeats 5 --budget 15 \
  --naive-budget 10 --profile always --out "$OUTDIR/head_gpu.jsonl"

# 4-5. the kernel and solver benches of the other issues, when present
if [ -f bench/bench_kernels.py ]; then
  if [ $DRY = 1 ]; then
    step kernels 60 "$PY" bench/bench_kernels.py --dry-run --out "$OUTDIR/kernels_gpu.jsonl"
  else
    step kernels 75 "$PY" bench/bench_kernels.py --workload gpu --out "$OUTDIR/kernels_gpu.jsonl" --plot "$OUTDIR/kernels_gpu.png"
  fi
else
  echo "kernels: skipped (bench/bench_kernels.py not present)" | tee -a "$STATUS"
fi
if [ -f bench/bench_assign.py ]; then
  if [ $DRY = 1 ]; then
    step assign 60 "$PY" bench/bench_assign.py --device cpu --shapes 64x4x16 256x3x9 --repeats 2 --no-plot \
      --out "$OUTDIR/assign_gpu.jsonl"
  else
    step assign 75 "$PY" bench/bench_assign.py --device cuda --no-plot --out "$OUTDIR/assign_gpu.jsonl"
  fi
else
  echo "assign: skipped (bench/bench_assign.py not present)" | tee -a "$STATUS"
fi

# 6. the README table of this run
if [ -s "$OUTDIR/head_gpu.jsonl" ]; then
  step tables 20 sh -c "\"$PY\" bench/make_tables.py \"$OUTDIR/head_gpu.jsonl\" $([ $DRY = 1 ] && echo --include-dry-run) > \"$OUTDIR/head_gpu.md\""
fi

{ echo "=== status ($(( SECONDS ))s in all)"; cat "$STATUS"; } >> "$LOG"
echo "--- $(( SECONDS ))s in all; files in $OUTDIR:"; ls -la "$OUTDIR"
exit $FAILED
