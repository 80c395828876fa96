#!/usr/bin/env bash
# One GPU session's worth of checks and benchmarks, in under 8 minutes.
#
#   bash bench/run_gpu.sh OUTDIR [--dry-run]
#
# 1. env       nvidia-smi and versions                          -> OUTDIR/env.txt
# 2. check     the CUDA tests, with pytest and TRITON_INTERPRET=0: all of
#              tests/test_cuda_device.py (first_stage, part_cost, project on
#              CUDA vs the CPU references, fp32 and fp16, backends
#              auto/torch/triton; the solver vs SciPy; the head eager vs the
#              CPU head and compiled vs eager) and the CUDA tests (`-k cuda`)
#              of test_assign, test_part_cost, test_project, test_compile and
#              test_first_stage                                -> OUTDIR/check_cuda.xml
# 3. head      python -m bench.bench_head, `gpu` workload (DESIGN §4) -> OUTDIR/head_gpu.jsonl
# 4. kernels   python -m bench.bench_kernels                   -> OUTDIR/kernels_gpu.jsonl, .png
# 5. assign    python -m bench.bench_assign --device cuda      -> OUTDIR/assign_gpu.jsonl
# 6. tables    python -m bench.make_tables on the head rows    -> OUTDIR/head_gpu.md
# Every step's output goes to OUTDIR/run.log, which ends with one status line
# per step (also printed). At most 8 files, for the device tool's file limit.
#
# With --dry-run everything runs on the CPU with tiny shapes (a smoke test of
# this script on a machine without a GPU); the check step runs the same
# pytest command with TRITON_INTERPRET=1, where the CUDA tests skip.
#
# Needs python3 with torch, triton, numpy, scipy, pytest, hypothesis and
# torch-linear-assignment (tqdm, matplotlib, faiss optional), and geosteer
# installed: its geosteer.kernels lives in kernels/geosteer_kernels/ and exists only in an
# install (setup.cfg's package_dir). The script stops at once, with one line,
# when `import geosteer.kernels` fails.
#   on this machine:  pip install -e .
#   for a GPU one:    python3 -m pip wheel --no-deps --no-build-isolation -w .whl .
#                     (here; the wheels of pytest, hypothesis,
#                     torch-linear-assignment, ... go into .whl too), then there:
#                     python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#                     export PYTHONPATH=/tmp/site
# bench/ is a package of this checkout, not installed. So that the installed
# geosteer is the one imported (at the repo root, the source tree's geosteer,
# without geosteer.kernels, would shadow a --target install), every step runs
# from a scratch directory with the checkout appended to PYTHONPATH, after
# anything already there: `python -m bench.X` finds bench/, geosteer comes
# from the install.
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
# The steps' working directory: nothing in it to shadow an installed package,
# and what tools drop in the working directory (.hypothesis/) stays out of OUTDIR.
RUNDIR=$(mktemp -d)
trap 'rm -rf "$RUNDIR" "$STATUS"' EXIT
: > "$LOG"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$REPO"

if [ $DRY = 1 ]; then
  DEVICE=cpu; DRYFLAG=--dry-run; INTERPRET=1
else
  # Compiled Triton kernels on the device: an inherited TRITON_INTERPRET=1
  # would time (and test) the interpreter instead.
  DEVICE=cuda; DRYFLAG=; INTERPRET=0
  export TRITON_INTERPRET=0
fi
cd "$RUNDIR"

# geosteer must be installed (see the header); stop here, in one line, if not.
if ! problem=$("$PY" -c '
import sys
try:
    import geosteer.kernels
except Exception as error:
    import importlib.util
    spec = importlib.util.find_spec("geosteer")
    where = spec.origin if spec is not None else "nowhere"
    print(f"{type(error).__name__}: {error} (geosteer found at {where})")
    sys.exit(1)
' 2>&1); then
  echo "geosteer.kernels does not import, $problem: install geosteer first (pip install -e . here, or the wheel: see the header of bench/run_gpu.sh)" | tee -a "$LOG" >&2
  exit 1
fi

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
  "$PY" - <<'EOF'
import importlib, torch
print("python", __import__("sys").version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
for name in ("triton", "numpy", "scipy", "numba", "pytest", "hypothesis", "tqdm", "matplotlib",
             "torch_linear_assignment", "faiss", "geosteer", "geosteer.kernels", "bench"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:24s} {str(getattr(mod, '__version__', '?')):12s} {getattr(mod, '__file__', '')}")
    except Exception as error:
        print(f"{name:24s} MISSING ({type(error).__name__}: {error})")
EOF
} > "$OUTDIR/env.txt" 2>&1
cat "$OUTDIR/env.txt"
if [ $DRY = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "CUDA is not available; use --dry-run on a CPU machine" | tee -a "$STATUS"
  exit 1
fi

# 2. correctness on the device: the CUDA tests (in the dry run they skip).
# -k cuda keeps, of the five op/compile files, the tests named *cuda* (their
# CUDA tests; the rest are the CPU suite's) and all of test_cuda_device.py.
T=$REPO/tests
step check 150 env TRITON_INTERPRET=$INTERPRET "$PY" -m pytest -p no:cacheprovider -rs -k cuda \
  --junitxml "$OUTDIR/check_cuda.xml" "$T/test_cuda_device.py" "$T/test_assign.py" "$T/test_part_cost.py" \
  "$T/test_project.py" "$T/test_compile.py" "$T/test_first_stage.py"

# 3. the head's throughput against its peers, gpu workload
step head 230 "$PY" -m bench.bench_head --workload gpu --device $DEVICE $DRYFLAG --repeats 5 --budget 15 \
  --naive-budget 10 --profile always --out "$OUTDIR/head_gpu.jsonl"

# 4-5. the kernel and solver benches
if [ $DRY = 1 ]; then
  step kernels 60 "$PY" -m bench.bench_kernels --dry-run --out "$OUTDIR/kernels_gpu.jsonl"
  step assign 60 "$PY" -m bench.bench_assign --device cpu --shapes 64x4x16 256x3x9 --repeats 2 --no-plot \
    --out "$OUTDIR/assign_gpu.jsonl"
else
  step kernels 75 "$PY" -m bench.bench_kernels --workload gpu --out "$OUTDIR/kernels_gpu.jsonl" --plot "$OUTDIR/kernels_gpu.png"
  step assign 75 "$PY" -m bench.bench_assign --device cuda --no-plot --out "$OUTDIR/assign_gpu.jsonl"
fi

# 6. the README table of this run
if [ -s "$OUTDIR/head_gpu.jsonl" ]; then
  step tables 20 sh -c "\"$PY\" -m bench.make_tables \"$OUTDIR/head_gpu.jsonl\" $([ $DRY = 1 ] && echo --include-dry-run) > \"$OUTDIR/head_gpu.md\""
fi

{ echo "=== status ($(( SECONDS ))s in all)"; cat "$STATUS"; } >> "$LOG"
echo "--- $(( SECONDS ))s in all; files in $OUTDIR:"; ls -la "$OUTDIR"
exit $FAILED
