#!/usr/bin/env python3
"""Window-by-window vs batched decoding of one long recording (audio seconds per wall second).

    python benchmarks/batched_vs_sequential.py --model M.gguf --mmproj mmproj-M.gguf \
        [--minutes 5] [--batch-size 4] [--tokens 32] [--threads 2] [--repeat 3] [--json]

The recording is synthetic (tone/chirp utterances between pauses) so the windows are
the same in both runs; ``--tokens`` fixes the tokens generated per window (end of
generation ignored) so random-weight checkpoints give comparable work. Batched
decoding runs the windows as parallel sequences in one llama.cpp context: the
per-token weight reads are shared by the whole batch.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import pylfm

RATE = 16000


def recording(minutes: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * RATE)
    audio = (rng.standard_normal(total) * 1e-4).astype(np.float32)
    pos = int(0.5 * RATE)
    while pos < total - 7 * RATE:
        n = int(rng.uniform(1.0, 6.0) * RATE)
        t = np.arange(n) / RATE
        audio[pos:pos + n] += (0.25 * np.sin(2 * np.pi * rng.uniform(150, 900) * t * (1 + t))).astype(np.float32)
        pos += n + int(rng.uniform(0.6, 2.0) * RATE)
    return audio


def measure(model: pylfm.Model, audio: np.ndarray, batch_size: int, tokens: int, repeat: int) -> dict:
    """Median over ``repeat`` runs after one untimed run of the same call (the first call
    of a shape pays llama.cpp's buffer allocation)."""
    def run():
        t0 = time.perf_counter()
        r = model.transcribe(audio, sample_rate=RATE, max_new_tokens=tokens, ignore_eos=True, batch_size=batch_size)
        return time.perf_counter() - t0, r

    run()
    walls, r = [], None
    for _ in range(repeat):
        wall, r = run()
        walls.append(wall)
    wall = float(np.median(walls))
    return {"batch_size": batch_size, "wall_s": round(wall, 3), "wall_min_max": [round(min(walls), 3), round(max(walls), 3)],
            "windows": r.n_tokens // tokens, "tokens": r.n_tokens, "audio_s_per_s": round(r.duration / wall, 2),
            "decode_tokens_per_s": round(r.n_tokens / wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--mmproj", required=True)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tokens", type=int, default=32, help="tokens generated per window")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per mode (median reported)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    model = pylfm.Model(a.model, a.mmproj, device=a.device, n_threads=a.threads, batch_size=a.batch_size)
    audio = recording(a.minutes)
    seq = measure(model, audio, 1, a.tokens, a.repeat)
    bat = measure(model, audio, a.batch_size, a.tokens, a.repeat)
    out = {"model": a.model, "device": model.device, "threads": model.n_threads, "minutes": a.minutes,
           "sequential": seq, "batched": bat, "speedup": round(bat["audio_s_per_s"] / seq["audio_s_per_s"], 2)}
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{a.minutes:g} min synthetic audio, {seq['windows']} windows, {a.tokens} tokens/window, "
          f"{model.device}, {model.n_threads} threads")
    for name, r in (("window by window", seq), (f"batched x{a.batch_size}", bat)):
        print(f"  {name:18s} {r['wall_s']:8.2f} s  {r['audio_s_per_s']:8.2f} audio s/s  "
              f"{r['decode_tokens_per_s']:8.1f} tok/s")
    print(f"  speedup: {out['speedup']:.2f}x")


if __name__ == "__main__":
    main()
