"""``pylfm bench``: how fast the model runs on this machine (`pylfm.measure.bench`)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

from ..measure.bench import format_report, run_bench, synth_audio
from .options import FIXED_TOKENS, JSON, MAX_NEW_TOKENS, SEED, VAD, WINDOW, add_model_arguments, load_model, vad_method


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Measure load time, audio-encode time, prefill and decode tokens/s, real-time factor and peak "
                     "memory: the median (and min/max) over --repeat runs after --warmup unmeasured ones.")
    add_model_arguments(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--audio", help="audio file to transcribe (default: a synthetic signal, see --seconds)")
    src.add_argument("--seconds", type=float, default=None,
                     help="length of the deterministic synthetic test signal (tones, chirps, noise; default 30)")
    SEED.add(p, help="seed of the synthetic signal (default 0)")
    p.add_argument("--repeat", "-r", type=int, default=3, help="measured runs (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default 1)")
    FIXED_TOKENS.add(p)
    MAX_NEW_TOKENS.add(p, help="generation limit per window without --fixed-tokens (default 512)")
    WINDOW.add(p)
    VAD.add(p, default=None, help="speech detector for long audio (default: silero for --audio, energy for the "
                                  "synthetic signal, whose tones Silero does not count as speech)")
    JSON.add(p, help="print the report as JSON")


def _vad(args: argparse.Namespace) -> Optional[str]:
    if args.vad is None:
        return "silero" if args.audio is not None else "energy"
    return vad_method(args.vad)


def main(args: argparse.Namespace) -> int:
    if args.audio is not None:
        if not Path(args.audio).is_file():
            raise FileNotFoundError(f"audio file not found: {args.audio}")
        audio: Any = args.audio
        sample_rate = None
        source = args.audio
    else:
        seconds = 30.0 if args.seconds is None else args.seconds
        audio, sample_rate = synth_audio(seconds, 16000, args.seed), 16000
        source = f"synthetic {seconds:g} s (seed {args.seed})"
    t0 = time.perf_counter()
    model = load_model(args)
    load_wall_ms = (time.perf_counter() - t0) * 1e3
    report = run_bench(model, audio, sample_rate=sample_rate, repeat=args.repeat, warmup=args.warmup,
                       fixed_tokens=args.fixed_tokens, max_new_tokens=args.max_new_tokens, window=args.window,
                       source=source, vad=_vad(args))
    report["load_wall_ms"] = load_wall_ms
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0
