#!/usr/bin/env bash
# Create (or refresh) the reference environment .venv-ref: Python 3.12 + liquid-audio 1.3.0 +
# torch/torchaudio 2.9.1, all pinned in tools/reference/requirements.txt.
#
#   bash tools/reference/setup_env.sh          # from anywhere; idempotent
#   VENV=/some/where bash tools/reference/setup_env.sh
#   PYTHON312=/path/to/python3.12 bash tools/reference/setup_env.sh
#
# Equivalent by hand (what was run to make requirements.txt):
#   /root/.pyenv/versions/3.12.1/bin/python3.12 -m venv .venv-ref
#   .venv-ref/bin/python -m pip install --upgrade pip
#   .venv-ref/bin/python -m pip install 'torch==2.9.1' 'torchaudio==2.9.1' 'liquid-audio==1.3.0'
#
# Cost measured on the 2-core dev machine (PyPI reachable, empty pip cache): ~4 minutes,
# 7.6 GB in the venv (torch from PyPI on x86_64 is the CUDA build: ~5 GB of nvidia-* wheels,
# unused here; everything runs on the CPU). A second run with the venv in place only checks it
# (a few seconds). Only make_fixture.py needs this; the test suite does not.
#
# Why torch 2.9.1: liquid-audio 1.3.0 asks for torch>=2.8 and torchaudio>=2.8 (matching
# versions); 2.9.1/2.9.1 is a pair known to install and work on this machine. The machine's pip
# constraint file (/etc/xdg/pip, torch<=2.14.1) does not get in the way of 2.9.1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv-ref}"
REQ="$HERE/requirements.txt"

find_python312() {
    if [[ -n "${PYTHON312:-}" ]]; then echo "$PYTHON312"; return; fi
    for c in /root/.pyenv/versions/3.12.*/bin/python3.12 "$(command -v python3.12 || true)"; do
        if [[ -n "$c" && -x "$c" ]]; then echo "$c"; return; fi
    done
    echo "setup_env.sh: no python3.12 found (set PYTHON312=...)" >&2
    exit 1
}

stamp="$VENV/.pylfm-ref-stamp"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
    && "$VENV/bin/python" -c "import liquid_audio, torch, torchaudio" >/dev/null 2>&1; then
    echo "setup_env.sh: $VENV is up to date"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    py="$(find_python312)"
    echo "setup_env.sh: creating $VENV with $py"
    "$py" -m venv "$VENV"
fi

start=$SECONDS
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r "$REQ"
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch, torchaudio, liquid_audio  # noqa: F401
print("setup_env.sh: liquid-audio", md.version("liquid-audio"), "torch", torch.__version__,
      "torchaudio", torchaudio.__version__, "transformers", md.version("transformers"))
EOF
echo "$want" > "$stamp"
echo "setup_env.sh: done in $((SECONDS - start)) s; $(du -sh "$VENV" | cut -f1) in $VENV"
