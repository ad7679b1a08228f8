#!/usr/bin/env bash
# Pack what benchmarks/gpu.sh needs on a GPU machine without internet into one folder:
#
#   tools/gpu_bundle.sh [DIR] [PYTHON_VERSION]     # default bench-out/gpu-bundle, 3.11
#   # on the GPU machine:  WHEELS=DIR bash benchmarks/gpu.sh
#
# - llama-cpp-python 0.3.36's sdist without what the build never reads (a .git history,
#   llama.cpp's docs, vocab test models, tests, examples, server web UI): 76 MB -> ~10 MB;
# - wheels of the build requirements and of pylfm's runtime and test dependencies for that
#   Python on manylinux x86_64, except numpy (WITH_NUMPY=1 keeps it);
# - liquid-audio 1.3.0 and the pure-Python packages its ASR path imports (torch and
#   torchaudio are the GPU machine's own).
# PYTHON_VERSION must be the GPU machine's (python3 --version there). The folder's size is
# printed: a transfer limit (64 MiB) leaves room for this and the repository.
set -euo pipefail
dir=${1:-bench-out/gpu-bundle}
pyver=${2:-3.11}
pip=${PIP:-pip}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "llama-cpp-python sdist, trimmed ..." >&2
"$pip" download --quiet --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$work"
tar -xzf "$work"/llama_cpp_python-0.3.36.tar.gz -C "$work"
src="$work/llama_cpp_python-0.3.36"
for d in docs models tests benches examples media gguf-py/tests .devops tools/ui tools/server; do
  rm -rf "$src/vendor/llama.cpp/$d"
done
rm -rf "$src/.git" "$src/docs" "$src/examples" "$src/tests"  # .git: a 38 MB pack of llama.cpp's history
# llama.cpp's CMakeLists adds examples, tests and tools (server, web UI) only when it is the
# top-level project; llama-cpp-python adds tools/mtmd itself.
tar -czf "$dir/llama_cpp_python-0.3.36.tar.gz" -C "$work" llama_cpp_python-0.3.36

echo "wheels for Python $pyver ..." >&2
plat=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
      --platform linux_x86_64 --implementation cp --only-binary :all:)
"$pip" download --quiet -d "$dir" "${plat[@]}" --python-version "$pyver" scikit-build-core pybind11 \
  "numpy>=1.22" "soundfile>=0.12" "soxr>=0.3" gguf==0.19.0 "huggingface-hub>=0.23" "safetensors>=0.4" "tqdm>=4.60" \
  "pytest>=7" "tokenizers>=0.15" "jiwer>=3.0" "openai>=1.30" httpx "fastapi>=0.110" "uvicorn>=0.29" \
  "python-multipart>=0.0.18" typing-extensions diskcache jinja2
echo "liquid-audio 1.3.0 (Python >= 3.12 only) ..." >&2
"$pip" download --quiet -d "$dir" --no-deps "${plat[@]}" --python-version 3.12 liquid-audio==1.3.0 transformers accelerate \
  einops sentencepiece regex pyyaml psutil || echo "  (liquid-audio part skipped)" >&2
# A machine with PyTorch has numpy; its wheel (17 MB) would not fit the transfer limit.
[[ -n "${WITH_NUMPY:-}" ]] || rm -f "$dir"/numpy-*.whl
du -sh "$dir" >&2
