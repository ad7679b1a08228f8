"""``pylfm quantize SRC DST TYPE``: a smaller copy of a model or mmproj GGUF."""

from __future__ import annotations

import argparse

from ..files.quantize import MMPROJ_TYPES, MODEL_TYPES, quantize
from .options import FORCE, THREADS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="input GGUF (text model or mmproj)")
    p.add_argument("dst", help="output GGUF")
    p.add_argument("type", help=f"model: {', '.join(MODEL_TYPES)}; mmproj: {', '.join(MMPROJ_TYPES)}")
    THREADS.add(p, default=0, help="threads (default: all)")
    FORCE.add(p, help="overwrite dst")


def main(args: argparse.Namespace) -> int:
    out = quantize(args.src, args.dst, args.type, n_threads=args.threads, force=args.force)
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB, {args.type.upper()})")
    return 0
