"""``pylfm inspect FILE...``: what GGUF files hold (exit status 1 if one is truncated)."""

from __future__ import annotations

import argparse
import json

from ..files.inspect import format_info, inspect_gguf
from .options import JSON


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="GGUF files (text model or mmproj)")
    JSON.add(p)


def main(args: argparse.Namespace) -> int:
    infos = [inspect_gguf(f) for f in args.files]
    if args.json:
        print(json.dumps(infos[0] if len(infos) == 1 else infos, indent=2))
    else:
        print("\n\n".join(format_info(i) for i in infos))
    return 0 if all(i.get("complete", True) for i in infos) else 1
