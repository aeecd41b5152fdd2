#!/usr/bin/env bash
# The student's GPU checks (issue 17, item 5) as one prepared command for a lent device machine (docs/student.md,
# "Speed"): the CUDA tests of the fused loops (CUDA-graph replay and the step kernels against the snntorch
# reference: dense and low-rank recurrence, scalar and per-neuron adaptation), then benchmarks/student_speed.py at
# the issue's sizes (320, 4,096 and 16,384 neurons) for the default student (dense) and for `student_slow` (the
# preset for large populations: low-rank recurrence, slow synapses and adaptation, 2 ms steps). Logs and JSON go to
# $OUT (the device tool's folder that comes back) or ./gpu_out.
#
#   bash benchmarks/gpu_student.sh fetch   # here, once: the wheels the device image lacks, into .whl/ (ignored)
#   bash benchmarks/gpu_student.sh         # there: device run with carry [".whl"], timeout_s ~540
#
# The device image has torch, numpy, scipy, h5py, pandas, lightning, sklearn, matplotlib and pytest; the code these
# checks import also needs omegaconf and snntorch (pure Python; fetched for CPython 3.12, the image's Python).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = fetch ]; then
    grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .whl omegaconf==2.4.0 snntorch==1.0.0
    exit 0
fi

out=${OUT:-gpu_out}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt" || true

status=0
python3 -m pytest -q -p no:cacheprovider tests/test_student.py -k "cuda or graphed or fast_network" 2>&1 \
    | tee "$out/tests.log" || status=1
python3 benchmarks/student_speed.py --device cuda --neurons 320 4096 16384 --rank 32 --profile 4096 \
    --out "$out/speed_default.json" 2>&1 | tee "$out/speed_default.log" || status=1
python3 benchmarks/student_speed.py --device cuda --neurons 320 4096 16384 --config student_slow \
    --out "$out/speed_slow.json" 2>&1 | tee "$out/speed_slow.log" || status=1
exit $status
