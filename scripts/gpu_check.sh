#!/usr/bin/env bash
# The GPU check: on a machine with one CUDA GPU and PyTorch (no network needed), in under 8 minutes,
# the hf engine in bfloat16 on a random ~0.48B model built in-process (its reference test, the rollout
# benchmark with a real sandbox), one SFT, DAPO and PPO step on that model, and the `gpu`-marked tests
# that need no vLLM; everything into ONE JSON. Without a GPU it writes {"gpu": false, "skipped": ...}
# and exits 0.
#
#   scripts/gpu_check.sh [--out FILE] [--wheels DIR] [--budget-s S] [--tiny-cpu]
#
#   --out       default $OUT/gpu_check.json when $OUT is set, else ./gpu_check.json (and the run's
#               output beside it, gpu_check.log)
#   --wheels    the carried wheelhouse (scripts/make_gpu_wheelhouse.sh), default .gpu-wheels: retool's
#               missing dependencies are installed from it (--no-index, --no-deps, only distributions
#               this Python lacks), bwrap/prlimit/libseccomp where missing (root), and its tokenizer/
#               (SmolLM2's) is the model's; without it the tests' in-process BPE tokenizer is used
#   --budget-s  the whole run's time, default 450 (the driver gets what install leaves, less 150 s
#               for pytest; each side is stopped at its limit, and what ran is still in the JSON)
#   --tiny-cpu  the whole pipeline without a GPU, on the driver's tiny model (tests the script itself)
#   $PYTHON     the Python with torch, default python3
#
# Exit 0: skipped, or every step and test passed; 1: the JSON says what failed.
# Steps and tolerances: scripts/gpu_check.py. For a GPU machine without network: build the wheelhouse
# on a set-up checkout (scripts/make_gpu_wheelhouse.sh, ~25 MiB), bring the checkout with its
# .gpu-wheels/ there, and run `bash scripts/gpu_check.sh` with that machine's Python.
set -uo pipefail
STARTED=$(date +%s)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_FILE="${OUT:+$OUT/gpu_check.json}"
OUT_FILE="${OUT_FILE:-gpu_check.json}"
WHEELS="$ROOT/.gpu-wheels"
BUDGET=450
DRIVER_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_FILE="$2"; shift 2 ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --budget-s) BUDGET="$2"; shift 2 ;;
        --tiny-cpu) DRIVER_ARGS=(--tiny --device cpu --threads 1); shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$OUT_FILE" in /*) ;; *) OUT_FILE="$PWD/$OUT_FILE" ;; esac
case "$WHEELS" in /*) ;; *) WHEELS="$PWD/$WHEELS" ;; esac
mkdir -p "$(dirname "$OUT_FILE")"
LOG="${OUT_FILE%.json}.log"  # the driver's and pytest's output, beside the JSON
PYTHON=${PYTHON:-python3}
SETUP="$ROOT/scripts/gpu_check_setup.py"
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"

skip() {  # the reason, and torch's version where known
    if command -v "$PYTHON" >/dev/null; then
        "$PYTHON" "$SETUP" skip "$1" --out "$OUT_FILE" --torch "${2:-}" --nvidia-smi "$WORK/nvidia-smi.txt" \
            --started "$STARTED" && exit 0
    fi
    printf '{"gpu": false, "skipped": "%s", "steps": {}, "pytest": null}\n' "$1" >"$OUT_FILE"
    echo "gpu_check: skipped ($1); wrote $OUT_FILE"
    exit 0
}

# -- is there a GPU? -----------------------------------------------------------------------------------
if [ ${#DRIVER_ARGS[@]} -gt 0 ]; then
    echo "gpu_check: --tiny-cpu: no GPU wanted"
elif command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$WORK/nvidia-smi.txt" 2>&1 \
        || skip "nvidia-smi failed: $(head -c 200 "$WORK/nvidia-smi.txt" | tr -d '"\\' | tr '\n' ' ')"
elif [ ! -e /dev/nvidia0 ]; then
    skip "no NVIDIA GPU: nvidia-smi not found and no /dev/nvidia0"
fi
command -v "$PYTHON" >/dev/null || skip "no Python ($PYTHON) on this machine"
probe=$("$PYTHON" -c 'import torch; print(torch.__version__, torch.cuda.is_available())' 2>"$WORK/probe.err")
[ -n "$probe" ] || skip "PyTorch is not importable by $PYTHON"
TORCH=${probe% *}
[ "${probe##* }" = True ] || [ ${#DRIVER_ARGS[@]} -gt 0 ] || skip "torch.cuda.is_available() is False (torch $TORCH)" "$TORCH"
echo "gpu_check: $(head -1 "$WORK/nvidia-smi.txt" 2>/dev/null), torch $TORCH; budget ${BUDGET} s"

# -- retool importable: PYTHONPATH, and the carried wheels of whatever this Python lacks -----------------
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
"$PYTHON" "$SETUP" install --wheels "$WHEELS" --report "$WORK/install.json" --env-file "$WORK/env.sh"
[ -f "$WORK/env.sh" ] && . "$WORK/env.sh"

# -- the driver, then the tests ------------------------------------------------------------------------
elapsed=$(( $(date +%s) - STARTED ))
DRIVER_S=$(( BUDGET - elapsed - 150 ))
[ "$DRIVER_S" -ge 60 ] || DRIVER_S=60
tokenizer=()
[ -f "$WHEELS/tokenizer/tokenizer.json" ] && tokenizer=(--tokenizer "$WHEELS/tokenizer")
timeout -k 10 "$DRIVER_S" "$PYTHON" scripts/gpu_check.py --out "$WORK/driver.json" --budget-s $(( DRIVER_S - 20 )) \
    "${tokenizer[@]}" "${DRIVER_ARGS[@]}" 2>&1 | tee "$LOG"
DRIVER_RC=${PIPESTATUS[0]}

# the gpu-marked tests that need no vLLM: the files that mark any, vLLM's deselected by name
mapfile -t FILES < <(grep -l "pytest.mark.gpu" tests/test_*.py)
SELECTED="-m gpu -k 'not vllm' ${FILES[*]}"
PYTEST_S=$(( BUDGET - ($(date +%s) - STARTED) - 10 ))
[ "$PYTEST_S" -ge 30 ] || PYTEST_S=30
echo "gpu_check: pytest $SELECTED (${PYTEST_S} s)"
timeout -k 10 "$PYTEST_S" "$PYTHON" -m pytest -m gpu -k "not vllm" -p no:cacheprovider -q \
    --junitxml "$WORK/junit.xml" "${FILES[@]}" 2>&1 | tee -a "$LOG" | tail -n 30
PYTEST_RC=${PIPESTATUS[0]}

"$PYTHON" "$SETUP" finish --out "$OUT_FILE" --driver "$WORK/driver.json" --driver-rc "$DRIVER_RC" \
    --install "$WORK/install.json" --junit "$WORK/junit.xml" --pytest-rc "$PYTEST_RC" --selected "$SELECTED" \
    --nvidia-smi "$WORK/nvidia-smi.txt" --started "$STARTED"
