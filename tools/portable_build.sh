#!/usr/bin/env bash
# A portable CPU build of pylfm: one build that runs on any x86-64 CPU (a Docker image
# made in CI and deployed on other machines), checked by running the test suite on it.
#
#   tools/portable_build.sh [WORKDIR]        # default /tmp/pylfm-portable
#   STAGE=pylfm tools/portable_build.sh W    # keep W's llama.cpp build, rebuild pylfm + test
#   STAGE=test  tools/portable_build.sh W    # only the checks and the suite
#   PYTEST_ARGS="-q -x tests/test_model.py" tools/portable_build.sh W
#   STOP_AFTER_LLAMA=1 tools/portable_build.sh W   # only step 1
#
# The default `pip install` compiles llama.cpp with GGML_NATIVE (-march=native): fast on
# the machine that compiled it, SIGILL on an older one. The portable form compiles ggml's
# CPU backend once per instruction-set level (x64, sse42, sandybridge, haswell, skylakex,
# icelake, zen4, sapphirerapids, ...) as loadable modules, libggml-cpu-<variant>.so
# (llama-cpp-python's wheel installs them in <site-packages>/bin, not next to libggml.so);
# at run time ggml scores each against the CPU and loads the best. pylfm's core loads them
# (load_backend_modules in src/native/cpu_weights.cpp, called by ensure_backend) when
# nothing has registered a CPU backend.
#
# 1. llama (nice 19, W/llama.log, minutes to tens of minutes): a fresh venv W/venv,
#      CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON" \
#        pip install --no-cache-dir llama-cpp-python==0.3.36
#    (--no-cache-dir: never reuse a native wheel from pip's cache).
# 2. pylfm (W/pylfm.log): pip install --no-build-isolation ".[test]", so pylfm's core is
#    compiled against that llama.cpp instead of a second, native one in an isolated env
#    (and pip keeps the installed llama-cpp-python).
# 3. checks: the variant modules are installed where the core looks, no libggml-cpu.so
#    is linked in, the core registers a CPU backend, which variant ggml picked here, and
#    the test suite (W/pytest.log).
# Prints a summary; exits non-zero if a step fails.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/tmp/pylfm-portable}
mkdir -p "$W"
W=$(cd "$W" && pwd)
VENV=${VENV:-$W/venv}
PY=$VENV/bin/python
STAGE=${STAGE:-llama}
JOBS=${JOBS:-$(nproc)}
PORTABLE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON"
fail=0
say() { echo "[portable] $*" >&2; }
check() {  # check DESCRIPTION CMD...
  if "${@:2}"; then say "ok: $1"; else say "FAILED: $1"; fail=1; fi
}

if [[ $STAGE == llama ]]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  say "building llama-cpp-python 0.3.36 with $PORTABLE_ARGS (log: $W/llama.log) ..."
  t0=$SECONDS
  CMAKE_ARGS="$PORTABLE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$JOBS nice -n 19 \
    "$PY" -m pip install -v --no-cache-dir llama-cpp-python==0.3.36 > "$W/llama.log" 2>&1
  rc=$?
  say "llama-cpp-python build exit $rc after $(( (SECONDS - t0) / 60 )) min"
  [[ $rc == 0 ]] || { tail -30 "$W/llama.log"; exit 1; }
  [[ -z "${STOP_AFTER_LLAMA:-}" ]] || exit 0
  STAGE=pylfm
fi

if [[ $STAGE == pylfm ]]; then
  say "building pylfm against it (log: $W/pylfm.log) ..."
  t0=$SECONDS
  (
    cd "$ROOT" &&
    "$PY" -m pip install scikit-build-core pybind11 &&
    # llama-cpp-python==0.3.36 is installed (step 1), so pip keeps it; pylfm is compiled
    # against it, and the test extras come along
    CMAKE_BUILD_PARALLEL_LEVEL=$JOBS nice -n 19 "$PY" -m pip install -v --no-build-isolation ".[test]"
  ) > "$W/pylfm.log" 2>&1
  rc=$?
  say "pylfm build exit $rc after $(( (SECONDS - t0) / 60 )) min"
  [[ $rc == 0 ]] || { tail -30 "$W/pylfm.log"; exit 1; }
fi

# ---- checks. Paths found without importing llama_cpp.
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
LIB=$SITE/llama_cpp/lib
CORE=$(ls "$SITE"/pylfm/_core*.so)
say "llama.cpp libraries: $LIB"
ls "$LIB" >&2
variants=$(cd "$SITE" && ls llama_cpp/lib/libggml-cpu-*.so bin/libggml-cpu-*.so 2>/dev/null | tr '\n' ' ')
check "CPU variant modules installed ($variants)" test -n "$variants"
check "libggml.so does not link a CPU backend (it loads one at run time)" \
  bash -c "! readelf -d '$LIB/libggml.so' | grep -q 'libggml-cpu'"
check "pylfm._core does not link a CPU backend" bash -c "! ldd '$CORE' | grep -q 'libggml-cpu'"

cd "$W"
"$PY" - > "$W/system_info.txt" 2>&1 <<'EOF'
import json, pylfm
info = pylfm.system_info()
print(json.dumps({k: info.get(k) for k in ("backends", "cpu")}, indent=1))
cpu = info.get("cpu") or {}
assert "CPU" in info["backends"], "no CPU backend registered"
assert "libggml-cpu-" in cpu["library"], cpu["library"]  # a variant module, not a linked-in backend
print("CPU VARIANT:", cpu["library"])
EOF
cat "$W/system_info.txt" >&2
check "pylfm registers a CPU backend" grep -q "CPU VARIANT" "$W/system_info.txt"

say "running the test suite (log: $W/pytest.log) ..."
t0=$SECONDS
(cd "$ROOT" && "$PY" -m pytest ${PYTEST_ARGS:--q} -p no:cacheprovider) > "$W/pytest.log" 2>&1
rc=$?
say "pytest exit $rc after $(( (SECONDS - t0) / 60 )) min: $(tail -1 "$W/pytest.log")"
check "the test suite passes on the portable build" test $rc == 0

[[ $fail == 0 ]] && say "all checks passed" || say "some checks FAILED"
exit $fail
