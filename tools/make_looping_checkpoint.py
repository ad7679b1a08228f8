#!/usr/bin/env python3
"""Write a tiny LFM2-Audio checkpoint that falls into repetition loops.

    python tools/make_looping_checkpoint.py OUTDIR [--scale 0.6]

It is tools/make_tiny_checkpoint.py's tiny model (seed 0) with the LFM2 backbone's
layer weights scaled down: with weaker layers, greedy decoding drifts into repeating a
few tokens ("such such such ...") on many inputs, the failure the loop guard exists
for, while sampling at a higher temperature often escapes it. The loop guard's tests
and benchmarks/loop_guard.py use it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from safetensors.numpy import load_file, save_file

HERE = Path(__file__).resolve().parent
DEFAULT_SCALE = 0.6


def make_looping_checkpoint(outdir: "str | Path", scale: float = DEFAULT_SCALE) -> Path:
    spec = importlib.util.spec_from_file_location("_make_tiny_checkpoint", HERE / "make_tiny_checkpoint.py")
    tiny = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tiny
    spec.loader.exec_module(tiny)
    out = tiny.make_checkpoint(Path(outdir), seed=0)
    weights = load_file(out / "model.safetensors")
    scaled = {k: v * scale if k.startswith("lfm.layers.") else v for k, v in weights.items()}
    save_file(scaled, out / "model.safetensors", metadata={"format": "pt"})
    return out


def main(argv: "list[str] | None" = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir")
    p.add_argument("--scale", type=float, default=DEFAULT_SCALE, help=f"backbone layer weight scale ({DEFAULT_SCALE})")
    args = p.parse_args(argv)
    print(make_looping_checkpoint(args.outdir, args.scale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
