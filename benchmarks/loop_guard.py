#!/usr/bin/env python3
"""The repetition-loop guard on a model that loops: what it catches, recovers and costs.

    python benchmarks/loop_guard.py [--clips 24] [--seconds 4] [--max-new-tokens 512] \
        [--repeat 3] [--threads 2] [--model M.gguf --mmproj mmproj-M.gguf] [--json out.json]

Without ``--model`` it builds tools/make_looping_checkpoint.py's tiny random model (its
backbone scaled down so that greedy decoding drifts into "such such such ...") and
converts it (F32) with pylfm's converter in a temporary directory, as the tests'
``looping_gguf`` fixture does. ``--clips`` short clips (noise, harmonic tones and
pylfm.measure.bench.synth_audio's speech-like signal, fixed seed; one window each) are
transcribed together twice in one process, same ``max_new_tokens``: loop guard off
(``loop_guard=None``) and on (the default `LoopGuard`), after one untimed warm-up,
``--repeat`` times alternated (the median wall time is reported).

A window "looped" when its first decoding fails the guard's own checks: the in-engine
rule (a block of at most ``max_period`` tokens repeated back to back over
``max(min_span, min_repeats * period)`` tokens, re-checked here in Python on the
unguarded output, where the engine does not stop it) or the gzip compression ratio
above ``compression_ratio_threshold``. The rule is checked over the whole token
sequence, so it also flags a loop the engine let through. "Recovered": a looped window whose kept result
passes those checks (with the guard off nothing is re-decoded, so none is). Tokens
count every decoding, re-decodes included; they are read from the job's per-attempt
records (``TranscriptionJob._attempts``), since the result keeps only the chosen one.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import pylfm
from pylfm.measure.bench import synth_audio
from pylfm.transcription.loop_guard import LoopGuard, compression_ratio
from pylfm.transcription.options import DEFAULT_MAX_NEW_TOKENS

RATE = 16000
ROOT = Path(__file__).resolve().parent.parent
KINDS = ("noise", "tone", "speechlike")


def build_model(workdir: Path) -> "tuple[str, str]":
    """The looping tiny checkpoint, converted to F32 GGUFs (what conftest's looping_gguf does)."""
    from pylfm.files.convert import convert

    spec = importlib.util.spec_from_file_location("_make_looping_checkpoint", ROOT / "tools" / "make_looping_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tool
    spec.loader.exec_module(tool)
    ckpt = tool.make_looping_checkpoint(workdir / "looping")
    res = convert(ckpt, outdir=workdir / "gguf", outtype="f32", progress=False, with_speech=False)
    return str(res.model_path), str(res.mmproj_path)


def make_clips(n: int, seconds: float, seed: int) -> "list[tuple[str, np.ndarray]]":
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    clips = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        if kind == "noise":
            x = rng.standard_normal(len(t)) * rng.uniform(0.01, 0.3)
        elif kind == "tone":
            f0 = rng.uniform(90, 400)
            x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 5)) * rng.uniform(0.05, 0.3)
        else:
            x = synth_audio(seconds, RATE, seed=seed + i)
        clips.append((kind, np.clip(x, -1, 1).astype(np.float32)))
    return clips


def loops(tokens: "list[int]", g: LoopGuard) -> bool:
    """The engine's in-decoding rule, anywhere in ``tokens``: a run of equal pairs
    (i, i + p) of length max(min_span, min_repeats * p) - p, for some period p."""
    t = np.asarray(tokens)
    for p in range(1, g.max_period + 1):
        need = max(g.min_span, g.min_repeats * p) - p
        if need + p > len(t):
            break
        same = np.concatenate(([0], (t[p:] == t[:-p]).astype(np.int8), [0]))
        edges = np.flatnonzero(np.diff(same))
        if len(edges) and (edges[1::2] - edges[::2]).max() >= need:
            return True
    return False


def degenerate(text: str, tokens: "list[int]", stop_reason: str, g: LoopGuard) -> bool:
    """Whether a decoding fails the guard's checks (the in-engine rule and the gzip ratio)."""
    thr = g.compression_ratio_threshold
    return stop_reason == "repetition" or loops(tokens, g) or (thr is not None and compression_ratio(text.strip()) > thr)


def run_mode(model: pylfm.Model, clips, guard, max_new: int, g: LoopGuard) -> dict:
    t0 = time.perf_counter()
    jobs = [model.submit(x, sample_rate=RATE, max_new_tokens=max_new, loop_guard=guard) for _, x in clips]
    results = [j.result() for j in jobs]
    wall = time.perf_counter() - t0
    per_clip, looped, recovered, to_limit = [], 0, 0, 0
    for (kind, _), job, r in zip(clips, jobs, results):
        tries = [a for window in job._attempts for a in window]  # one window per clip
        first = tries[0] if tries else None
        bad_first = first is not None and degenerate(first["text"], first["tokens"], first["stop_reason"], g)
        bad_final = degenerate(r.text, r.tokens, r.stop_reason, g) if first is not None else False
        looped += bad_first
        recovered += bad_first and not bad_final
        to_limit += first is not None and len(first["tokens"]) >= max_new
        seg = r.segments[0] if r.segments else None
        per_clip.append({"kind": kind, "windows": r.n_windows, "decodes": len(tries), "looped": bool(bad_first),
                         "recovered": bool(bad_first and not bad_final),
                         "first_stop": first and first["stop_reason"], "first_tokens": first and len(first["tokens"]),
                         "final_stop": r.stop_reason, "final_tokens": r.n_tokens,
                         "final_temperature": seg.temperature if seg else None,
                         "final_compression_ratio": seg.compression_ratio if seg else None,
                         "tokens_generated": sum(len(a["tokens"]) for a in tries), "text": r.text[:120]})
    windows = sum(c["windows"] for c in per_clip)
    return {"wall_s": round(wall, 3), "windows": windows, "looped": looped, "recovered": recovered,
            "still_degenerate": sum(degenerate(r.text, r.tokens, r.stop_reason, g) for r in results if r.n_windows),
            "first_decode_to_limit": to_limit, "decodes": sum(c["decodes"] for c in per_clip),
            "tokens_generated": sum(c["tokens_generated"] for c in per_clip),
            "final_tokens": sum(r.n_tokens for r in results), "output_chars": sum(len(r.text) for r in results),
            "clips": per_clip}


def median_run(runs: "list[dict]") -> dict:
    """The last run's counts (the same in every run: greedy, and seeded sampling) with the median wall time."""
    walls = [r["wall_s"] for r in runs]
    return runs[-1] | {"wall_s": round(float(np.median(walls)), 3), "walls_s": walls,
                       "same_tokens_every_run": len({r["tokens_generated"] for r in runs}) == 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="GGUF text model (default: build the looping tiny model)")
    p.add_argument("--mmproj", help="its mmproj GGUF (with --model)")
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--seconds", type=float, default=4.0, help="length of each clip (one window: at most 30)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per mode, alternated (median wall time)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="PATH", help="write every number and per-clip detail here")
    a = p.parse_args()
    if bool(a.model) != bool(a.mmproj):
        p.error("--model and --mmproj go together")
    if not 0 < a.seconds <= 30:
        p.error("--seconds must be in (0, 30]: each clip is one window")
    g = LoopGuard()
    with tempfile.TemporaryDirectory(prefix="pylfm-loop-") as tmp:
        if a.model:
            model_path, mmproj_path = a.model, a.mmproj
        else:
            print("building the looping tiny model ...", file=sys.stderr)
            model_path, mmproj_path = build_model(Path(tmp))
        model = pylfm.Model(model_path, mmproj_path, device=a.device, n_threads=a.threads, batch_size=a.batch_size)
        clips = make_clips(a.clips, a.seconds, a.seed)
        model.transcribe(clips[0][1], sample_rate=RATE, max_new_tokens=16)  # warm-up: buffer allocation
        runs = {"off": [], "on": []}
        for _ in range(a.repeat):  # alternated, so that a change in machine load hits both
            runs["off"].append(run_mode(model, clips, None, a.max_new_tokens, g))
            runs["on"].append(run_mode(model, clips, g, a.max_new_tokens, g))
        off, on = (median_run(runs[m]) for m in ("off", "on"))
        device, threads = model.device, model.n_threads
        model.close()
    out = {"model": a.model or "tools/make_looping_checkpoint.py (F32)", "device": device, "threads": threads,
           "batch_size": a.batch_size, "clips": a.clips, "seconds": a.seconds, "seed": a.seed,
           "max_new_tokens": a.max_new_tokens, "guard": dataclasses.asdict(g),
           "off": off, "on": on, "time_ratio_on_off": round(on["wall_s"] / off["wall_s"], 3),
           "tokens_ratio_on_off": round(on["tokens_generated"] / max(1, off["tokens_generated"]), 3)}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{a.clips} clips x {a.seconds:g} s ({', '.join(KINDS)}), max_new_tokens {a.max_new_tokens}, "
          f"{device}, {threads} threads, batch {a.batch_size}\n")
    print("| loop guard | windows | looped | recovered | still degenerate | 1st decode hit limit | decodes "
          "| tokens generated | output chars | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in (("off", off), ("on (default)", on)):
        print(f"| {name} | {r['windows']} | {r['looped']} | {r['recovered']} | {r['still_degenerate']} "
              f"| {r['first_decode_to_limit']} | {r['decodes']} | {r['tokens_generated']} | {r['output_chars']} "
              f"| {r['wall_s']:.2f} |")
    print(f"\nguard on / off: time x{out['time_ratio_on_off']:.2f}, tokens x{out['tokens_ratio_on_off']:.2f}; "
          f"{on['recovered']} of {on['looped']} looped windows recovered, output {off['output_chars']} -> "
          f"{on['output_chars']} characters")


if __name__ == "__main__":
    main()
