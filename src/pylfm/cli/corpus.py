"""`pylfm corpus`: transcribe many files with Ray Data (extra: ``pip install "pylfm[ray]"``).

    pylfm corpus calls/ --out transcripts/ --model M.gguf --mmproj mmproj-M.gguf
    pylfm corpus manifest.csv --out s3://bucket/transcripts --address auto --resume

Prints a JSON summary on stdout; Ray Data's progress on stderr (off with --quiet).
"""

from __future__ import annotations

import argparse
import json
import sys

import ray  # noqa: F401 - imported here so that a missing extra is reported by `pylfm corpus`

from . import FORMATS, transcribe_corpus

__all__ = ["add_arguments", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio files, globs, folders, or manifests (.csv/.tsv/.jsonl/.parquet with a path column); "
                        "local paths or fsspec URLs (s3://, gs://, ...)")
    p.add_argument("--out", required=True, help="output folder (local or URL); one row per input")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="parquet or jsonl (default: from --out's suffix, else parquet)")
    p.add_argument("--resume", action="store_true", help="skip inputs that already have a row in --out")
    p.add_argument("--path-column", default=None, help="manifest column with the paths (default: path or audio)")
    p.add_argument("--max-duration", type=float, default=4 * 3600.0,
                   help="longer files become error rows (seconds, default 14400; 0 = no limit)")
    m = p.add_argument_group("model")
    m.add_argument("--model", "-m", help="text-model GGUF, a folder with both GGUFs, or a hub repo id; "
                                         "every worker must reach it (shared path or hub cache)")
    m.add_argument("--mmproj", help="audio encoder mmproj GGUF (default: next to --model)")
    m.add_argument("--device", default=None, help="model device (default: auto with GPUs, else cpu)")
    m.add_argument("--batch-size", type=int, default=4, help="sequences each model decodes at once (default 4)")
    m.add_argument("--max-new-tokens", type=int, default=512, help="generation limit per window (default 512)")
    m.add_argument("--system", default="Perform ASR.", help="system prompt (default: 'Perform ASR.')")
    m.add_argument("--prompt", default=None, help="user text after the audio")
    m.add_argument("--fixed-tokens", type=int, default=None,
                   help="generate exactly N tokens per window, ignoring end-of-generation (benchmarks)")
    r = p.add_argument_group("ray")
    r.add_argument("--address", default=None,
                   help="Ray cluster to join: auto, ray://HOST:10001 (default: $RAY_ADDRESS, else a local cluster)")
    r.add_argument("--num-cpus", type=int, default=None, help="CPUs of a new local cluster (default: all)")
    r.add_argument("--actors", type=int, default=None, help="model copies (default: one per GPU, or per node)")
    r.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per actor (default 1 if the cluster has GPUs)")
    r.add_argument("--cpus-per-actor", type=float, default=None,
                   help="CPUs per actor (default 1 with GPUs, else all of a node's)")
    r.add_argument("--threads", "-t", type=int, default=None, help="llama.cpp threads per actor (default: its CPUs)")
    r.add_argument("--files-per-call", type=int, default=None,
                   help="files per actor call and per output file (default 4 x --batch-size)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or Ray log on stderr")


def main(args: argparse.Namespace) -> int:
    options = dict(system=args.system, prompt=args.prompt, max_new_tokens=args.max_new_tokens)
    if args.fixed_tokens is not None:
        options.update(max_new_tokens=args.fixed_tokens, ignore_eos=True, loop_guard=None)
    try:
        summary = transcribe_corpus(
            args.inputs, args.out, model=args.model, mmproj=args.mmproj, fmt=args.format, resume=args.resume,
            actors=args.actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
            threads=args.threads, device=args.device, batch_size=args.batch_size,
            files_per_call=args.files_per_call, max_duration=args.max_duration or None,
            path_column=args.path_column, address=args.address, num_cpus=args.num_cpus,
            progress=not args.quiet, **options)
    except (FileExistsError, RuntimeError, ImportError) as e:
        print(f"pylfm corpus: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict()))
    return 0
