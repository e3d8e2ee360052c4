#!/usr/bin/env bash
# One call on a lent GPU machine (issue 14, "every stage on the device"): what a session with an
# H100/H200 runs in one go, from the repository root:
#
#     bash bench/device_session.sh            # writes everything under $OUT (default out/device-session)
#
# The machine has no internet, so nothing is installed: the script uses the python3 and the torch
# that are there (PYTHON=... to choose another) and says what is missing. Steps, each under its own
# time limit so that the whole stays under about 8 minutes:
#
#   1. versions.txt       python, torch, CUDA, the GPU, numpy and scipy
#   2. tests.txt          tests/m2unet/test_postprocess_torch.py (the torch clean-up against scipy,
#                         on the CPU and on CUDA)
#   3. predictor-random.txt  bench/bench_predictor.py on the GPU, 300 x 512 x 512, random weights at
#                         the paper's resolution: stages, peak RSS and GPU memory, the torch clean-up
#                         against scipy's, the fast path against the plain forward, then the same
#                         study on the CPU (its stages and the CPU-vs-GPU lobe Dice)
#   4. predictor-demo.txt the same with the shipped demo weights (2 mm)
#   5. training.txt       bench/bench_training.py --device cuda, when that file exists
#
# Every step's exit status is in status.txt; a step that fails or times out does not stop the rest.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-out/device-session}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
: > "$OUT/status.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start)) limit=$limit" | tee -a "$OUT/status.txt"
}

step versions 60 "$PY" - <<'EOF'
import platform, sys
print("python", sys.version.replace("\n", " "), platform.platform())
for name in ("torch", "numpy", "scipy", "structlog", "pydicom", "SimpleITK", "pytest"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as error:  # a missing package is a finding, not a failure of this step
        print(name, "MISSING:", error)
import torch
print("cuda available", torch.cuda.is_available(), "torch cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory // 2**20, "MiB")
EOF
nvidia-smi >> "$OUT/versions.txt" 2>&1 || true

if "$PY" -c "import pytest" 2>/dev/null; then
    step tests 90 "$PY" -m pytest -q -p no:cacheprovider tests/m2unet/test_postprocess_torch.py
else
    echo "tests skipped: no pytest" | tee -a "$OUT/status.txt"
fi

step predictor-random 240 "$PY" bench/bench_predictor.py --slices 300 --size 512 --device cuda \
    --repeat 2 --reference-slices 6 --bags 1 --compare-device cpu --json

step predictor-demo 120 "$PY" bench/bench_predictor.py --slices 300 --size 512 --device cuda \
    --weights m2unet/weights/m2unet-demo.pt --repeat 2 --reference-slices 6 --bags 1 --json

if [ -f bench/bench_training.py ]; then
    step training 90 "$PY" bench/bench_training.py --device cuda
else
    echo "training skipped: no bench/bench_training.py" | tee -a "$OUT/status.txt"
fi

grep -h -E "stage seconds|peak RSS|clean-up|Dice|reference:|lifetime" "$OUT"/predictor-*.txt > "$OUT/summary.txt" 2>/dev/null
