"""The tiny checkpoint loads strictly in the official liquid-audio 1.3.0.

liquid-audio needs Python >= 3.12 and torch, so this runs tools/reference/check_load.py
in its own venv (.venv-ref, made by tools/reference/setup_env.sh, which .ci/run calls).
Without that venv the test is skipped on a developer machine and fails in CI.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = Path(os.environ.get("PYLFM_REF_VENV", ROOT / ".venv-ref")) / "bin" / "python"


def test_tiny_checkpoint_loads_strictly_in_liquid_audio():
    if not PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{PYTHON} missing: .ci/run must run tools/reference/setup_env.sh")
        pytest.skip("no reference venv: run bash tools/reference/setup_env.sh")
    proc = subprocess.run([str(PYTHON), str(ROOT / "tools/reference/check_load.py")],
                          capture_output=True, text=True, timeout=600)
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 2, proc.stderr[-3000:]
    for r in reports:
        assert r["missing"] == [] and r["unexpected"] == [], r
        assert r["shape_mismatch"] == [] and r["value_mismatch"] == [], r
        assert r["torch_load_state_dict_strict"] == "ok", r
        assert r["n_model_keys"] == r["n_file_keys"]
    assert proc.returncode == 0
