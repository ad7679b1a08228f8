#!/usr/bin/env python3
"""Window-by-window vs batched decoding of one long recording (audio seconds per wall second).

    python benchmarks/batched_vs_sequential.py --model M.gguf --mmproj mmproj-M.gguf \
        [--minutes 15] [--batch-size 4] [--tokens 64] [--threads 2] [--repeat 1] [--json]

The recording is pylfm.measure.bench.synth_audio's speech-like signal (utterances of tones,
chirps and noise bursts between pauses), so the windows are the same in both runs;
``--tokens`` fixes the tokens generated per window (end of generation ignored) so
random-weight checkpoints give comparable work. "Window by window" is
``transcribe(batch_size=1)`` (one window in the engine at a time); "batched" lets the
scheduler keep ``--batch-size`` windows in the engine's sequence slots at once: each
decode step then reads the weights once for all of them. The report splits the wall
time into audio encoding, prompt prefill, token decoding and the rest (audio checks,
VAD, planning, Python), so it shows where the time goes.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import pylfm
from pylfm.measure.bench import synth_audio

RATE = 16000


def measure(model: pylfm.Model, audio: np.ndarray, batch_size: int, tokens: int, repeat: int) -> dict:
    """Median over ``repeat`` runs after one untimed run on the first minute (the first
    call of a shape pays llama.cpp's buffer allocation)."""
    def run():
        t0 = time.perf_counter()
        r = model.transcribe(audio, sample_rate=RATE, max_new_tokens=tokens, ignore_eos=True, batch_size=batch_size,
                             vad="energy", loop_guard=None)  # energy: the synthetic signal's tones are not speech to Silero
        return time.perf_counter() - t0, r

    warm = audio[: 60 * RATE]  # same window shapes, a fraction of the time
    model.transcribe(warm, sample_rate=RATE, max_new_tokens=tokens, ignore_eos=True, batch_size=batch_size,
                     vad="energy", loop_guard=None)
    walls, r = [], None
    for _ in range(repeat):
        wall, r = run()
        walls.append(wall)
    wall = float(np.median(walls))
    t = r.timings
    stages = {"encode": t.encode_ms / 1e3, "prefill": t.prefill_ms / 1e3, "decode": t.decode_ms / 1e3}
    stages["other"] = max(0.0, walls[-1] - sum(stages.values()))
    return {"batch_size": batch_size, "wall_s": round(wall, 3), "wall_min_max": [round(min(walls), 3), round(max(walls), 3)],
            "windows": r.n_windows, "tokens": r.n_tokens, "audio_s_per_s": round(r.duration / wall, 2),
            "decode_tokens_per_s": round(r.n_tokens / stages["decode"], 1),
            "seconds": {k: round(v, 2) for k, v in stages.items()},
            "shares": {k: round(v / walls[-1], 3) for k, v in stages.items()}}


def prefill_probe(model: pylfm.Model, seconds=(5, 10, 30, 60, 120)) -> list:
    """Would batching prefill (or audio encoding) across sequences pay? One window of each
    length, decoded alone: the encoder's ms per audio second and the prefill's tokens/s,
    with n_audio rows per llama_decode (up to the engine's 512-row batch). If throughput
    grows with rows, putting several sequences' prompts in one llama_decode would raise
    it; if it is flat, the hardware is already saturated by one sequence's prompt."""
    out = []
    for sec in seconds:
        audio = synth_audio(sec, RATE, seed=7)
        kw = dict(sample_rate=RATE, max_new_tokens=1, ignore_eos=True, batch_size=1, vad=None, loop_guard=None,
                  window=max(sec, 30))
        model.transcribe(audio, **kw)  # this shape's buffers
        r = model.transcribe(audio, **kw)
        t = r.timings
        out.append({"seconds": sec, "audio_tokens": r.n_audio_tokens, "prompt_tokens": r.n_prompt_tokens,
                    "encode_ms_per_audio_s": round(t.encode_ms / sec, 1),
                    "prefill_tokens_per_s": round(r.n_prompt_tokens / (t.prefill_ms / 1e3), 1)})
    return out


def decode_probe(model: pylfm.Model, rows=(1, 2, 4), tokens: int = 64) -> list:
    """What one llama_decode step costs with 1, 2, 4 sequences in it (the engine's own step
    counters): batching pays when a step of n rows costs much less than n single steps,
    i.e. when decoding is bound by reading the weights rather than by arithmetic."""
    clips = [synth_audio(5, RATE, seed=11 + i) for i in range(max(rows))]
    kw = dict(sample_rate=RATE, max_new_tokens=tokens, ignore_eos=True, vad=None, loop_guard=None)
    model.transcribe_batch(clips[:1], **kw)  # warm
    out = []
    for n in rows:
        before = model._engine.stats()
        rs = model.transcribe_batch(clips[:n], batch_size=n, **kw)
        after = model._engine.stats()
        steps = after["decode_steps"] - before["decode_steps"]
        decode_ms = sum(r.timings.decode_ms for r in rs)
        out.append({"sequences": n, "steps": steps,
                    "rows_per_step": round((after["decode_rows"] - before["decode_rows"]) / steps, 2),
                    "ms_per_step": round(decode_ms / steps, 1),
                    "tokens_per_s": round(sum(r.n_tokens for r in rs) / (decode_ms / 1e3), 1)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--mmproj", required=True)
    p.add_argument("--minutes", type=float, default=15.0, help="0: only the probes")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64, help="tokens generated per window")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeat", type=int, default=1, help="timed runs per mode (median reported)")
    p.add_argument("--prefill-probe", action="store_true",
                   help="also measure encode/prefill throughput against window length and a decode step's "
                        "cost against the sequences in it")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    model = pylfm.Model(a.model, a.mmproj, device=a.device, n_threads=a.threads, batch_size=a.batch_size)
    audio = synth_audio(a.minutes * 60, RATE) if a.minutes > 0 else None
    out = {"model": a.model, "device": model.device, "threads": model.n_threads, "minutes": a.minutes,
           "tokens_per_window": a.tokens}
    if a.minutes > 0:
        seq = measure(model, audio, 1, a.tokens, a.repeat)
        bat = measure(model, audio, a.batch_size, a.tokens, a.repeat)
        out.update(sequential=seq, batched=bat, speedup=round(bat["audio_s_per_s"] / seq["audio_s_per_s"], 2))
    if a.prefill_probe:
        out["prefill_probe"] = prefill_probe(model)
        out["decode_probe"] = decode_probe(model)
    if a.json:
        print(json.dumps(out, indent=2))
        return
    if a.minutes > 0:
        seq, bat = out["sequential"], out["batched"]
        print(f"{a.minutes:g} min synthetic audio, {seq['windows']} windows, {a.tokens} tokens/window, "
              f"{model.device}, {model.n_threads} threads")
        for name, r in (("window by window", seq), (f"batched x{a.batch_size}", bat)):
            shares = "  ".join(f"{k} {v:.0%}" for k, v in r["shares"].items())
            print(f"  {name:18s} {r['wall_s']:8.2f} s  {r['audio_s_per_s']:8.2f} audio s/s  "
                  f"decode {r['decode_tokens_per_s']:8.1f} tok/s  ({shares})")
        print(f"  speedup: {out['speedup']:.2f}x")
    for row in out.get("decode_probe", []):
        print(f"  {row['sequences']} sequences: {row['rows_per_step']} rows per llama_decode, "
              f"{row['ms_per_step']} ms per step, {row['tokens_per_s']} tok/s")
    for row in out.get("prefill_probe", []):
        print(f"  one {row['seconds']:>4} s window: {row['prompt_tokens']:5d} prompt tokens, encode "
              f"{row['encode_ms_per_audio_s']:6.1f} ms per audio s, prefill {row['prefill_tokens_per_s']:7.1f} tok/s")


if __name__ == "__main__":
    main()
