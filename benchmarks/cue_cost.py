"""What subtitle-sized segments cost: one recording decoded in 30 s windows against
10 s cues (``max_segment=10``, the CLI's default for srt/vtt), in one run.

    python benchmarks/cue_cost.py --model M.gguf --mmproj mmproj-M.gguf [--minutes 3] \\
        [--tokens-per-second 3.2] [--threads 2] [--json]

The model has no timestamps, so pylfm gets cue-sized segments by planning shorter
windows (whole speech regions, at most 10 s) and decoding them batched like any others.
The audio is the same in both runs (pylfm.measure.bench.synth_audio's speech-like signal, energy
detector); a real model writes text in proportion to the speech, so each window
generates ``--tokens-per-second`` x its longest allowed length (end of generation
ignored): both runs produce about the same number of text tokens, and the difference
is what shorter windows add: one prompt per window, more encoder calls, smaller
batches at the end.
"""

from __future__ import annotations

import argparse
import json
import time

import pylfm
from pylfm.measure.bench import synth_audio

RATE = 16000


def run(model: pylfm.Model, audio, window: float, max_segment, tokens: int) -> dict:
    def once():
        t0 = time.perf_counter()
        r = model.transcribe(audio, sample_rate=RATE, window=window, max_segment=max_segment, vad="energy",
                             max_new_tokens=tokens, ignore_eos=True, loop_guard=None)
        return time.perf_counter() - t0, r

    once()  # the first call of a shape pays llama.cpp's buffer allocation
    wall, r = once()
    t = r.timings
    return {"windows": r.n_windows, "tokens": r.n_tokens, "wall_s": round(wall, 2),
            "audio_s_per_s": round(r.duration / wall, 2), "encode_s": round(t.encode_ms / 1e3, 2),
            "prefill_s": round(t.prefill_ms / 1e3, 2), "decode_s": round(t.decode_ms / 1e3, 2),
            "longest_segment_s": round(max(s.end - s.start for s in r.segments), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--mmproj", required=True)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--cue", type=float, default=10.0, help="cue limit in seconds (default 10)")
    p.add_argument("--tokens-per-second", type=float, default=3.2, help="text tokens per second of audio (default 3.2)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    model = pylfm.Model(a.model, a.mmproj, device=a.device, n_threads=a.threads)
    audio = synth_audio(a.minutes * 60, RATE)
    windows = run(model, audio, 30.0, None, round(a.tokens_per_second * 30))
    cues = run(model, audio, 30.0, a.cue, round(a.tokens_per_second * a.cue))
    out = {"model": a.model, "device": model.device, "threads": model.n_threads, "minutes": a.minutes,
           "windows_30s": windows, f"cues_{a.cue:g}s": cues,
           "time_ratio": round(cues["wall_s"] / windows["wall_s"], 3)}
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{a.minutes:g} min synthetic audio, {model.device}, {model.n_threads} threads, "
          f"{a.tokens_per_second:g} tokens per audio second")
    print("| segments | windows | tokens | longest segment | encode | prefill | decode | wall | audio s/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in (("30 s windows", windows), (f"{a.cue:g} s cues", cues)):
        print(f"| {name} | {r['windows']} | {r['tokens']} | {r['longest_segment_s']} s | {r['encode_s']} s | "
              f"{r['prefill_s']} s | {r['decode_s']} s | {r['wall_s']} s | {r['audio_s_per_s']} |")
    print(f"cues take {out['time_ratio']:.2f}x the time of 30 s windows")


if __name__ == "__main__":
    main()
