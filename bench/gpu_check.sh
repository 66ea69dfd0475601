#!/usr/bin/env bash
# The prepared GPU check of the CUDA engine (docs/kernels.md, "CUDA"): one script, per-step
# time limits, results written to $OUT as each step ends.
#
# Here, once (CPU): the wheels the GPU image lacks, and digits-ddpm quantized naive W8A8 / W4A8
# (the directories tests/conftest.py's trained_quant_dirs would otherwise make on the GPU):
#   bash bench/gpu_check.sh --prepare
# Then with the device tool, from the repository root:
#   run(command="bash bench/gpu_check.sh", carry=[".whl", ".gpu"], timeout_s=580)
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--prepare" ]]; then
  py=${PYTHON:-.venv/bin/python}
  mkdir -p .whl .gpu
  grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
  grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata
  $py - <<'PY'
from edadm import CalibConfig, QuantConfig, load, quantize, save
for w in (8, 4):  # the settings of tests/conftest.py trained_quant_dirs
    pipe = load("digits-ddpm", device="cpu")
    quantize(pipe, QuantConfig(method="naive", weight_bits=w, act_bits=8, steps=20,
                               calib=CalibConfig(num_samples=64, num_trajectories=64, uniform_steps=10, batch_size=64)),
             progress=False)
    save(pipe, f".gpu/trained-q/w{w}a8")
PY
  du -sh .whl .gpu
  exit 0
fi
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 EDADM_TEST_TRAINED_Q=$PWD/.gpu/trained-q
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
# 1. the CUDA tests of the engine and of the fused attention
timeout 200 python3 -m pytest -q -p no:cacheprovider -s tests/deploy/test_cuda.py tests/deploy/test_attention_triton.py 2>&1 | tee "$OUT/tests.log" | tail -40
# 2. the command that crashed: evaluate with the default engine at odd batch sizes
for s in w8a8 w4a8; do
  timeout 60 python3 -m edadm evaluate .gpu/trained-q/$s --device cuda --num 250 --batch-size 7 --steps 20 \
      --json "$OUT/evaluate_$s.json" --no-progress 2>&1 | tail -5
done
# 3. the speed table (eager variants of both models first, compiled ones after; stops starting new ones at 300 s)
timeout 330 python3 bench/speed.py --device cuda --results "$OUT" --deadline 300 2>&1 | tee "$OUT/speed.log" | grep -v "^ " | tail -40
ls -la "$OUT"
