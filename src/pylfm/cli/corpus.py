"""`pylfm corpus`: transcribe many files with Ray Data (extra: ``pip install "pylfm[ray]"``).

    pylfm corpus calls/ --out transcripts/ --model M.gguf --mmproj mmproj-M.gguf
    pylfm corpus manifest.csv --out s3://bucket/transcripts --address auto --resume

Prints a JSON summary on stdout; Ray Data's progress on stderr (off with --quiet).
"""

from __future__ import annotations

import argparse
import json

import ray  # noqa: F401 - imported here so that a missing extra is reported by `pylfm corpus`

from ..corpus import DEFAULT_MAX_DURATION_S, FORMATS, transcribe_corpus
from .errors import CommandError
from .options import (BATCH_SIZE, DEVICE, FIXED_TOKENS, MAX_DURATION, MAX_NEW_TOKENS, MMPROJ, MODEL, PROMPT, QUIET,
                      SYSTEM, THREADS, fixed_tokens_options)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio files, globs, folders, or manifests (.csv/.tsv/.jsonl/.parquet with a path column); "
                        "local paths or fsspec URLs (s3://, gs://, ...)")
    p.add_argument("--out", required=True, help="output folder (local or URL); one row per input")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="parquet or jsonl (default: from --out's suffix, else parquet)")
    p.add_argument("--resume", action="store_true", help="skip inputs that already have a row in --out")
    p.add_argument("--path-column", default=None, help="manifest column with the paths (default: path or audio)")
    MAX_DURATION.add(p, default=DEFAULT_MAX_DURATION_S,
                     help=f"longer files become error rows (seconds, default {DEFAULT_MAX_DURATION_S:g}; 0 = no limit)")
    m = p.add_argument_group("model")
    MODEL.add(m, help="text-model GGUF, a folder with both GGUFs, or a hub repo id; every worker must reach it "
                      "(shared path or hub cache)")
    MMPROJ.add(m, help="audio encoder mmproj GGUF (default: next to --model)")
    DEVICE.add(m, default=None, help="model device (default: auto with GPUs, else cpu)")
    BATCH_SIZE.add(m, help="sequences each model decodes at once (default: 4 on the CPU, 32 on a GPU)")
    MAX_NEW_TOKENS.add(m)
    SYSTEM.add(m)
    PROMPT.add(m)
    FIXED_TOKENS.add(m)
    r = p.add_argument_group("ray")
    r.add_argument("--address", default=None,
                   help="Ray cluster to join: auto, ray://HOST:10001 (default: $RAY_ADDRESS, else a local cluster)")
    r.add_argument("--num-cpus", type=int, default=None, help="CPUs of a new local cluster (default: all)")
    r.add_argument("--actors", type=int, default=None, help="model copies (default: one per GPU, or per node)")
    r.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per actor (default 1 if the cluster has GPUs)")
    r.add_argument("--cpus-per-actor", type=float, default=None,
                   help="CPUs per actor (default 1 with GPUs, else all of a node's)")
    THREADS.add(r, help="llama.cpp threads per actor (default: its CPUs)")
    r.add_argument("--files-per-call", type=int, default=None,
                   help="files per actor call and per output file (default 4 x --batch-size)")
    QUIET.add(p, help="no progress or Ray log on stderr")


def main(args: argparse.Namespace) -> int:
    options = dict(system=args.system, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                   **fixed_tokens_options(args.fixed_tokens))
    try:
        summary = transcribe_corpus(
            args.inputs, args.out, model=args.model, mmproj=args.mmproj, fmt=args.format, resume=args.resume,
            actors=args.actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
            threads=args.threads, device=args.device, batch_size=args.batch_size,
            files_per_call=args.files_per_call, max_duration=args.max_duration or None,
            path_column=args.path_column, address=args.address, num_cpus=args.num_cpus,
            progress=not args.quiet, **options)
    except (FileExistsError, RuntimeError, ImportError) as e:  # an existing --out, a failed Ray job
        raise CommandError(str(e)) from None
    print(json.dumps(summary.to_dict()))
    return 0
