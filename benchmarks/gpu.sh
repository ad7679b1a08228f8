#!/usr/bin/env bash
# The first run on an NVIDIA GPU machine, in one command, from the repository root:
#
#   bash benchmarks/gpu.sh                      # online: builds from PyPI
#   WHEELS=.gpu-bundle bash benchmarks/gpu.sh   # offline: what tools/gpu_bundle.sh packed
#
# Steps (STEPS="build info test bench" picks some; default all, in this order):
#   build     a venv (.venv-gpu) with llama-cpp-python 0.3.36 compiled with CUDA for this
#             machine's GPU, and pylfm built against it; fails unless pylfm sees a CUDA device
#   info      pylfm info, nvidia-smi, toolkit versions
#   test      the whole test suite on the GPU (pytest --device cuda), then again verbose for
#             the placement proof (tests/test_device.py, marker gpu) and the fidelity test
#             (tests/test_fidelity.py: liquid-audio's greedy tokens on f32/f16/q8_0)
#   bench     full-size random checkpoint -> F16/Q8_0 GGUFs -> benchmarks/gpu_bench.py:
#             30 s and 15 min, batch 1 and batched, RTFx, decode vs the HBM bound, peak GPU
#             memory; and liquid-audio 1.3.0 on the same GPU (if its venv can be made)
#
# Everything lands in OUT (default bench-out/gpu-<date>): logs, JUnit XML, gpu_bench.json/.md.
# Settings (environment):
#   CUDA_ARCH      CMAKE_CUDA_ARCHITECTURES (default "native": the GPUs of this machine)
#   VENV           pylfm's venv (default .venv-gpu; made with --system-site-packages so the
#                  machine's numpy/torch are reused where pip finds them good enough)
#   WHEELS         a folder of wheels + the llama-cpp-python sdist: install offline from it
#   LLAMA_CPP_SRC  llama-cpp-python source to build (sdist file or folder; default: from
#                  WHEELS, else PyPI's llama-cpp-python==0.3.36)
#   CKPT, GGUF     the full-size checkpoint and GGUF folders (default /tmp/pylfm-full{,-gguf})
#   LIQUID_PYTHON  a python with liquid-audio 1.3.0 + torch on CUDA (default: made in .venv-liquid
#                  from the machine's torch + liquid-audio from WHEELS/PyPI; skipped if that fails)
#   QUICK=1        30 s cells only, one repeat (a smoke run of the benchmark)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STEPS=${STEPS:-build info test bench}
OUT=${OUT:-bench-out/gpu-$(date +%Y%m%d-%H%M)}
VENV=${VENV:-.venv-gpu}
CUDA_ARCH=${CUDA_ARCH:-native}
CKPT=${CKPT:-/tmp/pylfm-full}
GGUF=${GGUF:-/tmp/pylfm-full-gguf}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[[ "$VENV" == /* ]] || VENV="$ROOT/$VENV"
PY="$VENV/bin/python"
failed=()

log() { echo "[gpu.sh $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu.log" >&2; }
step() { [[ " $STEPS " == *" $1 "* ]]; }
run() {  # run NAME CMD...: log to OUT/NAME.log, remember failures, go on
  local name=$1; shift
  log "$name: $*"
  local t0=$SECONDS
  "$@" > >(tee "$OUT/$name.log") 2>&1
  local rc=$?
  log "$name: exit $rc after $((SECONDS - t0)) s"
  [[ $rc == 0 ]] || failed+=("$name")
  return $rc
}
pip_install() {  # offline from WHEELS when given
  if [[ -n "${WHEELS:-}" ]]; then "$@" --no-index --find-links "$WHEELS"; else "$@"; fi
}

if step build; then
  src=${LLAMA_CPP_SRC:-}
  if [[ -z "$src" && -n "${WHEELS:-}" ]]; then src=$(ls "$WHEELS"/llama_cpp_python-0.3.36*.tar.gz 2>/dev/null | head -1); fi
  src=${src:-llama-cpp-python==0.3.36}
  command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
  [[ -x "$PY" ]] || python3 -m venv --system-site-packages "$VENV"
  run build-requirements pip_install "$PY" -m pip install scikit-build-core pybind11
  # One CUDA compile of llama.cpp (no cache: pip's wheel cache would hand back a CPU build),
  # then pylfm against exactly those libraries (no build isolation: no second compile).
  export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
  run build-llama pip_install "$PY" -m pip install -v --no-cache-dir --force-reinstall --no-deps "$src"
  unset CMAKE_ARGS
  run build-pylfm pip_install "$PY" -m pip install --no-build-isolation ".[test]"
  "$PY" - <<'EOF' | tee "$OUT/build-check.log"
import pylfm
from pylfm.engine.device import gpu_devices
info = pylfm.system_info()
gpus = [g for g in gpu_devices(info) if g["kind"] == "cuda"]
print("backends:", info["backends"], "| CUDA devices:", [(g["name"], g["description"]) for g in gpus])
raise SystemExit(0 if gpus else "pylfm sees no CUDA device: the build or the driver is wrong (see build-llama.log)")
EOF
  [[ ${PIPESTATUS[0]} == 0 ]] || { log "the CUDA build is not usable; stopping"; exit 1; }
  ldd "$("$PY" -c 'import pylfm._core as c; print(c.__file__)')" > "$OUT/ldd-core.log"
  ldd "$("$PY" -c 'import llama_cpp, os; print(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-cuda.so"))')" \
    > "$OUT/ldd-ggml-cuda.log" 2>&1
fi

if step info; then
  run info-pylfm "$PY" -m pylfm.cli info
  run info-nvidia nvidia-smi
  { nvcc --version; cmake --version; "$PY" -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'; } \
    > "$OUT/info-toolkit.log" 2>&1
fi

if step test; then
  run test "$PY" -m pytest --device cuda -q -rs --junitxml="$OUT/tests.xml"
  run test-placement "$PY" -m pytest --device cuda tests/test_device.py -v -s -k "placement"
  run test-fidelity "$PY" -m pytest --device cuda tests/test_fidelity.py -v -s
fi

liquid_python() {  # a python with liquid-audio on this GPU's torch, or nothing
  if [[ -n "${LIQUID_PYTHON:-}" ]]; then echo "$LIQUID_PYTHON"; return; fi
  local v="$ROOT/.venv-liquid"
  if [[ ! -x "$v/bin/python" ]]; then
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 12))' || { log "liquid-audio needs Python >= 3.12"; return; }
    python3 -m venv --system-site-packages "$v" || return
    pip_install "$v/bin/python" -m pip install --quiet liquid-audio==1.3.0 >> "$OUT/liquid-setup.log" 2>&1 \
      || pip_install "$v/bin/python" -m pip install --quiet --no-deps liquid-audio==1.3.0 transformers accelerate \
           einops sentencepiece regex pyyaml psutil tokenizers safetensors huggingface-hub hf-xet tqdm \
           >> "$OUT/liquid-setup.log" 2>&1
  fi
  "$v/bin/python" -c 'import torch, liquid_audio; assert torch.cuda.is_available()' >> "$OUT/liquid-setup.log" 2>&1 \
    && echo "$v/bin/python" || log "no liquid-audio on CUDA here (see liquid-setup.log): its cells are skipped"
}

if step bench; then
  if [[ ! -f "$CKPT/config.json" ]]; then
    run make-checkpoint "$PY" tools/make_tiny_checkpoint.py "$CKPT" --full-size
  fi
  args=(--model-dir "$GGUF" --checkpoint "$CKPT" --out "$OUT/gpu_bench.json")
  [[ "${QUICK:-}" == 1 ]] && args+=(--seconds 30 --repeat 1)
  lp=$(liquid_python)
  [[ -n "$lp" ]] && args+=(--liquid-python "$lp")
  run bench "$PY" benchmarks/gpu_bench.py "${args[@]}"
fi

log "results in $OUT"
if ((${#failed[@]})); then log "FAILED: ${failed[*]}"; exit 1; fi
log "all steps passed"
