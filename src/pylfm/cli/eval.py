"""``pylfm eval MANIFEST``: word and character error rates over a JSONL manifest
(`pylfm.measure.evaluate`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict

from ..measure.evaluate import NORMALIZATION, evaluate, format_table
from .options import JSON, MAX_NEW_TOKENS, WINDOW, add_model_arguments, load_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Transcribe every entry of a JSONL manifest (lines of {\"audio\": PATH, \"text\": REFERENCE}; "
        "relative paths are read from the manifest's folder) and report word and character error rates "
        "per file and overall (corpus-level: total edits / total reference words), plus the real-time "
        "factor. Normalisation before scoring (default on): " + NORMALIZATION + ". A line that fails "
        "(bad JSON, missing or unreadable audio) is reported and the run goes on; the exit status is 1 "
        "if any line failed.")
    p.add_argument("manifest", help="JSONL file: one {\"audio\": path, \"text\": reference} per line")
    add_model_arguments(p)
    p.add_argument("--normalize", dest="normalize", action="store_true", default=True,
                   help="score after normalising both texts: " + NORMALIZATION + " (default)")
    p.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="score the texts as they are (only whitespace is collapsed)")
    MAX_NEW_TOKENS.add(p)
    WINDOW.add(p)
    JSON.add(p, help="print the report as JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    manifest = Path(args.manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest}")
    model = load_model(args)

    def on_item(entry: Dict[str, Any]) -> None:
        if "error" in entry:
            print(f"pylfm eval: line {entry['line']}: {entry['error']}", file=sys.stderr)

    report = evaluate(model, manifest, normalize=args.normalize, on_item=on_item,
                      max_new_tokens=args.max_new_tokens, window=args.window)
    report["model"] = str(getattr(model, "model_path", ""))
    report["device"] = getattr(model, "device", None)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(format_table(report))
    return 1 if report["n_failed"] else 0
