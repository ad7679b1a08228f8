"""Does liquid-audio 1.3.0 load the tiny checkpoint strictly? Run under .venv-ref:

    .venv-ref/bin/python tools/reference/check_load.py

Builds tools/make_tiny_checkpoint.make_checkpoint(dir, seed=0) (float32, and a bf16
sharded copy), loads each with LFM2AudioModel.from_pretrained(dir, device="cpu",
dtype=torch.float32), and prints one JSON report per checkpoint. Exits 1 unless every
load is strict: no missing or unexpected key, equal shapes and values, and torch's
load_state_dict(strict=True) accepts the file (liquid-audio's own loader does not
check this). tests/test_reference_load.py runs it in CI.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tools"))

from make_fixture import _strict_load_report  # noqa: E402
from make_tiny_checkpoint import make_checkpoint  # noqa: E402


def main() -> int:
    import torch
    from liquid_audio import LFM2AudioModel

    ok = True
    with tempfile.TemporaryDirectory(prefix="pylfm-load-") as tmp:
        variants = {"float32": {}, "bfloat16-sharded": {"dtype": "bfloat16", "shard_bytes": 8 << 20}}
        for name, kwargs in variants.items():
            ckpt = make_checkpoint(Path(tmp) / name, seed=0, **kwargs)
            model = LFM2AudioModel.from_pretrained(ckpt, device="cpu", dtype=torch.float32)
            report = _strict_load_report(model, ckpt)
            report["variant"] = name
            print(json.dumps(report))
            ok &= report["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
