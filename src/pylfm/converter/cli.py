"""``pylfm convert CHECKPOINT_DIR [--outtype f16] [--outdir D] [--name N] [--force]``"""

from __future__ import annotations

import argparse

from . import OUTTYPES, convert, plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory (config.json, model.safetensors, tokenizer.json)")
    parser.add_argument("--outtype", default="f16", choices=list(OUTTYPES), help="tensor type (default f16)")
    parser.add_argument("--outdir", "-o", help="output directory (default: the checkpoint directory)")
    parser.add_argument("--name", help="model name in the file names (default: the checkpoint directory's name)")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--plan", action="store_true", help="only list what happens to each tensor")


def main(args: argparse.Namespace) -> int:
    if args.plan:
        for d in plan(args.checkpoint, args.outtype):
            print(f"{d.action:7} {d.source}: {d.reason}")
        return 0
    result = convert(args.checkpoint, outdir=args.outdir, outtype=args.outtype, name=args.name,
                     force=args.force, progress=not args.quiet)
    print(result.model_path)
    print(result.mmproj_path)
    return 0
