#!/usr/bin/env bash
# Does pylfm's CUDA build compile and link, on a machine without a GPU? With NVIDIA's CUDA
# 13.0 toolkit from PyPI, for one architecture (sm_90: H100/H200), by the README's command.
#
#   tools/cuda_compile_check.sh [WORKDIR]           # default /tmp/pylfm-cuda-check
#   CHECK_ONLY=1 tools/cuda_compile_check.sh W      # the checks alone, on a build made before
#   TOOLKIT=... VENV=... override W/toolkit and W/venv
#
# 1. toolkit: tools/cuda_toolkit_from_pypi.sh (nvcc, runtime, cuBLAS, a link-time driver stub)
# 2. build (nice 19, logged to W/build.log, timed): in a fresh venv, the README's two steps
#      CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" \
#        pip install --no-cache-dir --force-reinstall llama-cpp-python==0.3.36
#      pip install --no-build-isolation ".[test]"
#    It compiles llama.cpp with ggml-cuda: on 2 shared cores, hours; on 16, minutes.
# 3. links: libggml-cuda.so holds sm_90 device code; every symbol it and pylfm's extension
#    need resolves (ldd -r); pylfm._core loads the venv's CUDA-enabled libllama/libggml.
# 4. without a driver: (a) no libcuda.so.1 at all; (b) a driver stub that reports no
#    device (as a machine whose driver sees no GPU): the backends and devices pylfm reports,
#    device="cuda" -> DeviceError, device="auto" -> CPU, a CPU transcription of the tiny model.
# Prints a summary; exits non-zero if a check fails.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/tmp/pylfm-cuda-check}
mkdir -p "$W"
W=$(cd "$W" && pwd)
TOOLKIT=${TOOLKIT:-$W/toolkit}
VENV=${VENV:-$W/venv}
PY=$VENV/bin/python
fail=0
say() { echo "[cuda-check] $*" >&2; }
check() {  # check DESCRIPTION CMD...
  if "${@:2}"; then say "ok: $1"; else say "FAILED: $1"; fail=1; fi
}

if [[ -z "${CHECK_ONLY:-}" ]]; then
  PIP="${PIP:-pip}" "$ROOT/tools/cuda_toolkit_from_pypi.sh" "$TOOLKIT" || exit 1
  python3 -m venv "$VENV"
  say "building (log: $W/build.log) ..."
  t0=$SECONDS
  (
    cd "$ROOT"
    export CUDAToolkit_ROOT="$TOOLKIT" CUDACXX="$TOOLKIT/bin/nvcc" CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-2}
    # The README's two-step form: llama.cpp is compiled once (with ggml-cuda), then pylfm
    # is built against it without build isolation (the one-line form would compile
    # llama.cpp a second time inside pylfm's isolated build environment).
    "$PY" -m pip install scikit-build-core pybind11 &&
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" nice -n 19 \
      "$PY" -m pip install -v --no-cache-dir --force-reinstall llama-cpp-python==0.3.36 &&
    nice -n 19 "$PY" -m pip install -v --no-build-isolation ".[test]"
  ) > "$W/build.log" 2>&1
  rc=$?
  say "build exit $rc after $(( (SECONDS - t0) / 60 )) min"
  [[ $rc == 0 ]] || { tail -30 "$W/build.log"; exit 1; }
fi

# Found without importing llama_cpp: importing loads libggml-cuda, which needs a driver.
LIB=$("$PY" -c 'import importlib.util, os; s = importlib.util.find_spec("llama_cpp"); print(os.path.join(list(s.submodule_search_locations)[0], "lib"))')
CORE=$(ls "$VENV"/lib/python3*/site-packages/pylfm/_core*.so)
say "llama.cpp libraries: $LIB"
ls -la "$LIB" >&2

# ---- 3. links
check "libggml-cuda.so was built" test -f "$LIB/libggml-cuda.so"
check "libggml.so loads ggml-cuda (NEEDED)" bash -c "readelf -d '$LIB/libggml.so' | grep -q 'libggml-cuda.so'"
check "libggml-cuda.so carries device code (.nv_fatbin)" bash -c "readelf -S '$LIB/libggml-cuda.so' | grep -q nv_fatbin"
check "the device code is sm_90" bash -c \
  "'$TOOLKIT/bin/cuobjdump' --list-elf '$LIB/libggml-cuda.so' | tee '$W/cuobjdump.txt' | grep -q sm_90"
say "RUNPATH of libggml-cuda.so: $(readelf -d "$LIB/libggml-cuda.so" | grep -oP '(RUNPATH|RPATH).*\[\K[^]]*')"
say "RUNPATH of pylfm._core:    $(readelf -d "$CORE" | grep -oP '(RUNPATH|RPATH).*\[\K[^]]*')"
NODRIVER="$W/driver-stub"  # libcuda.so.1 = the stub: a driver that sees no device
mkdir -p "$NODRIVER"
ln -sf "$TOOLKIT/lib/stubs/libcuda.so" "$NODRIVER/libcuda.so.1"
STUB_PATH="$NODRIVER:$TOOLKIT/lib"
unresolved() {  # unresolved FILE: libraries or symbols ldd -r cannot find (Python's own API,
  # which the interpreter provides to an extension module, does not count)
  [[ -f "$1" ]] || { echo "missing: $1"; return 0; }
  LD_LIBRARY_PATH=$STUB_PATH ldd -r "$1" > "$W/ldd-$(basename "$1").txt" 2>&1
  grep -E 'undefined symbol|not found' "$W/ldd-$(basename "$1").txt" | grep -vE 'undefined symbol: _?Py'
}
for so in "$LIB/libggml-cuda.so" "$CORE"; do
  bad=$(unresolved "$so")
  check "every library and symbol $(basename "$so") needs resolves" test -z "$bad"
  [[ -z "$bad" ]] || echo "$bad" | head -5 >&2
done
loaded_from() {  # loaded_from LDD_TXT LIBNAME: the real folder ldd found LIBNAME in
  local p
  p=$(grep -oP "^\s*$2\S* => \K\S+" "$1" | head -1)
  [[ -n "$p" ]] && dirname "$(realpath "$p")"
}
lib_real=$(realpath "$LIB")
check "pylfm._core uses the venv's libllama and libggml" bash -c \
  "[[ '$(loaded_from "$W/ldd-$(basename "$CORE").txt" libllama.so)' == '$lib_real' &&
     '$(loaded_from "$W/ldd-$(basename "$CORE").txt" libggml.so)' == '$lib_real' ]]"
check "the runtime libraries come from the PyPI toolkit" bash -c \
  "grep -E 'lib(cudart|cublas)\.so' '$W/ldd-libggml-cuda.so.txt' | grep -q '$TOOLKIT'"

# ---- 4. behaviour without a driver
cd "$W"
say "(a) no libcuda.so.1 anywhere:"
LD_LIBRARY_PATH="$TOOLKIT/lib" "$PY" -c 'import pylfm._core' > "$W/import-no-driver.txt" 2>&1
cat "$W/import-no-driver.txt" >&2
LD_LIBRARY_PATH="$TOOLKIT/lib" "$PY" -c 'import pylfm
try:
    pylfm.Model
    print("imported")
except ImportError as e:
    print("ImportError:", e)' > "$W/model-no-driver.txt" 2>&1
cat "$W/model-no-driver.txt" >&2

say "(b) a driver that sees no device (the stub):"
LD_LIBRARY_PATH=$STUB_PATH "$PY" - "$ROOT" > "$W/stub-driver.txt" 2>&1 <<'EOF'
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(sys.argv[1]) / "tools"))
import pylfm
from pylfm.engine.device import select_device, resolve_defaults
from pylfm.errors import DeviceError

info = pylfm.system_info()
print("backends:", info["backends"])
print("devices:", [(d["name"], d["type"]) for d in info["devices"]])
assert "CUDA" in info["backends"], "the CUDA backend is not compiled in"
assert not any(d["type"] == "gpu" for d in info["devices"]), "a GPU device with a stub driver?"
try:
    select_device("cuda")
    raise SystemExit("device='cuda' did not raise")
except DeviceError as e:
    print("device='cuda' ->", type(e).__name__ + ":", e)
print("device='auto' ->", resolve_defaults("auto"))

from make_tiny_checkpoint import make_checkpoint
from pylfm.files.convert import convert
import tempfile
tmp = Path(tempfile.mkdtemp())
g = convert(make_checkpoint(tmp / "tiny", seed=0), outdir=tmp / "gguf", outtype="f32", progress=False)
try:
    pylfm.Model(g.model_path, g.mmproj_path, device="cuda")
    raise SystemExit("Model(device='cuda') did not raise")
except DeviceError as e:
    print("Model(device='cuda') ->", type(e).__name__ + ":", str(e).splitlines()[0])
m = pylfm.Model(g.model_path, g.mmproj_path, device="auto", n_threads=2)
t = np.arange(3 * 16000) / 16000
r = m.transcribe((0.3 * np.sin(2 * np.pi * (200 * t + 266 * t * t))).astype(np.float32), sample_rate=16000,
                 max_new_tokens=8)
print(f"Model(device='auto') runs on {m.device}: {len(r.tokens)} tokens")
assert m.device == "CPU" and len(r.tokens) > 0
print("STUB-DRIVER CHECKS PASSED")
EOF
cat "$W/stub-driver.txt" >&2
check "with a driver that sees no GPU: CUDA compiled in, DeviceError for cuda, auto on the CPU" \
  grep -q "STUB-DRIVER CHECKS PASSED" "$W/stub-driver.txt"

[[ $fail == 0 ]] && say "all checks passed" || say "some checks FAILED"
exit $fail
