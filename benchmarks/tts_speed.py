#!/usr/bin/env python3
"""Text-to-speech speed: pylfm (Q8_0, Q4_0) against liquid-audio 1.3.0 on the same CPU.

    python benchmarks/tts_speed.py --checkpoint /work/models/lfm-full-speech \\
        --gguf-dir /work/models/lfm-full-speech-gguf --name lfm-full --threads 1 2 --frames 100 \\
        --ref-python /work/main/.venv-ref/bin/python --json tts_speed.json

Random weights with the real LFM2.5-Audio-1.5B dimensions (tools/make_tiny_checkpoint.py
--full-size; its audio detokenizer with --detokenizer-only): the compute is the real
model's. Every run makes the same work: the TTS prompt ends with <|audio_start|> and
exactly --frames audio frames are generated (the end-of-audio code is ignored), sampled
as liquid-audio's README does (temperature 0.8, top-k 64), each frame detokenized.

Each engine runs in a fresh process (so its peak RSS is its own): one warm-up
generation, then --repeat timed ones; the medians are reported.
- pylfm: ``Model.speak(..., stream=True)`` with the model, vocoder and detokenizer GGUFs
  of one quantization; first chunk = time from the call to the first audio chunk.
- liquid-audio: ``LFM2AudioModel`` (float32 on the CPU, torch threads = --threads; bf16
  is slower on CPUs without bf16 arithmetic) with generate_sequential's audio recurrence,
  then ``LFM2AudioDetokenizer`` over all frames (its README's flow: audio only at the
  end). Its "first chunk" is what a streaming use would wait for: prompt + first frame
  + detokenizing that frame.
Real-time factor = seconds of audio per second of wall time (above 1: faster than real
time). The parent takes no lock itself; run it under ``flock /work/notes/bench.lock``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TEXT = ("The quick brown fox jumps over the lazy dog, and then it runs back into the forest "
        "to tell the other animals about the day.")
VOICE_PROMPT = "Perform TTS. Use the US female voice."
TEMPERATURE, TOP_K = 0.8, 64
FRAME_S = 0.08


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ---------------------------------------------------------------------- children
def child_pylfm(args: argparse.Namespace) -> dict:
    import numpy as np

    import pylfm

    g, q = Path(args.gguf_dir), args.quant
    t0 = time.perf_counter()
    model = pylfm.Model(g / f"{args.name}-{q}.gguf", g / f"mmproj-{args.name}-{args.mmproj_quant}.gguf",
                        device="cpu", n_threads=args.threads, batch_size=1)
    model.load_speech(g / f"vocoder-{args.name}-{q}.gguf", g / f"tokenizer-{args.name}-{q}.gguf")
    load_s = time.perf_counter() - t0
    duration = args.frames * FRAME_S
    model.speak(TEXT, seed=0, max_duration=4 * FRAME_S, ignore_audio_end=True)  # warm-up
    runs = []
    for r in range(args.repeat):
        t0 = time.perf_counter()
        first = None
        n = 0
        for chunk in model.speak(TEXT, temperature=TEMPERATURE, top_k=TOP_K, seed=r + 1, max_duration=duration,
                                 ignore_audio_end=True, stream=True):
            if first is None:
                first = time.perf_counter() - t0
            n += len(chunk)
        wall = time.perf_counter() - t0
        runs.append({"wall_s": wall, "audio_s": n / 24000, "first_chunk_s": first})
    model.close()
    return {"engine": f"pylfm {q}", "load_s": load_s, "runs": runs, "peak_rss_mb": peak_rss_mb(),
            "threads": args.threads, "numpy": np.__version__}


def child_liquid(args: argparse.Namespace) -> dict:
    import torch
    from safetensors.torch import load_file
    from transformers import Lfm2Config

    from liquid_audio import ChatState, LFM2AudioModel, LFM2AudioProcessor
    from liquid_audio.detokenizer import LFM2AudioDetokenizer

    torch.set_num_threads(args.threads)
    ckpt = Path(args.checkpoint)
    t0 = time.perf_counter()
    model = LFM2AudioModel.from_pretrained(ckpt, device="cpu", dtype=torch.float32).eval()
    proc = LFM2AudioProcessor.from_pretrained(ckpt, device="cpu").eval()
    cfg = Lfm2Config.from_pretrained(ckpt / "audio_detokenizer" / "config.json")
    cfg.layer_types = ["full_attention" if t == "sliding_attention" else t for t in cfg.layer_types]
    detok = LFM2AudioDetokenizer(cfg).eval()  # as LFM2AudioProcessor.audio_detokenizer, without .cuda()
    detok.load_state_dict(load_file(str(ckpt / "audio_detokenizer" / "model.safetensors")))
    load_s = time.perf_counter() - t0

    chat = ChatState(proc, dtype=torch.float32)
    chat.new_turn("system")
    chat.add_text(VOICE_PROMPT)
    chat.end_turn()
    chat.new_turn("user")
    chat.add_text(TEXT)
    chat.end_turn()
    chat.new_turn("assistant")
    chat.add_text("<|audio_start|>")

    def generate(n_frames: int, seed: int):
        torch.manual_seed(seed)
        t_start = time.perf_counter()
        first = None
        with torch.no_grad():
            x = model._prefill(**{k: chat[k] for k in chat})
            cache, frames = None, []
            for f in range(n_frames):
                out = model.lfm(inputs_embeds=x, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                frame = model._sample_audio_frame(out.last_hidden_state[0, -1], temperature=TEMPERATURE, top_k=TOP_K)
                frames.append(frame)
                if f == 0:  # what a streaming use would wait for; this extra decode is not in the total
                    t1 = time.perf_counter()
                    detok(frame.clamp(max=2047)[None, :, None])
                    spent = time.perf_counter() - t1
                    first = t1 - t_start + spent
                    t_start += spent
                x = model.audio_embedding(frame + model.codebook_offsets).sum(0)[None, None, :]
            codes = torch.stack(frames, 1)[None].clamp(max=2047)  # end-of-audio is ignored, as in pylfm's runs
            wave = detok(codes)[0]
        return time.perf_counter() - t_start, wave.shape[0] / 24000, first

    generate(4, 0)  # warm-up
    runs = []
    for r in range(args.repeat):
        wall, audio_s, first = generate(args.frames, r + 1)
        runs.append({"wall_s": wall, "audio_s": audio_s, "first_chunk_s": first})
    return {"engine": "liquid-audio f32", "load_s": load_s, "runs": runs, "peak_rss_mb": peak_rss_mb(),
            "threads": args.threads, "torch": torch.__version__}


# ---------------------------------------------------------------------- parent
def run_child(python: str, mode: str, args: argparse.Namespace, threads: int, extra: list) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--child", mode, "--frames", str(args.frames), "--threads",
           str(threads), "--repeat", str(args.repeat), "--checkpoint", str(args.checkpoint), "--gguf-dir",
           str(args.gguf_dir), "--name", args.name, "--mmproj-quant", args.mmproj_quant] + extra
    print(f"[tts_speed] {mode} {' '.join(extra)} threads={threads}", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def summarize(result: dict) -> dict:
    runs = result["runs"]
    wall = statistics.median(r["wall_s"] for r in runs)
    audio = statistics.median(r["audio_s"] for r in runs)
    first = statistics.median(r["first_chunk_s"] for r in runs)
    return {"engine": result["engine"], "threads": result["threads"], "rtf": audio / wall, "wall_s": wall,
            "audio_s": audio, "first_chunk_s": first, "load_s": result["load_s"], "peak_rss_mb": result["peak_rss_mb"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("/work/models/lfm-full-speech"))
    ap.add_argument("--gguf-dir", type=Path, default=Path("/work/models/lfm-full-speech-gguf"))
    ap.add_argument("--name", default="lfm-full", help="model name in the GGUF file names")
    ap.add_argument("--quants", nargs="+", default=["Q8_0", "Q4_0"])
    ap.add_argument("--mmproj-quant", default="Q8_0", help="the mmproj file to load (unused by TTS)")
    ap.add_argument("--frames", type=int, default=100, help="audio frames per run (80 ms each)")
    ap.add_argument("--threads", type=int, nargs="+", default=[2], help="thread counts to measure (default 2)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ref-python", default=None, help="python of a venv with liquid-audio 1.3.0 (the baseline)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--child", choices=["pylfm", "liquid"], help=argparse.SUPPRESS)
    ap.add_argument("--quant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.threads = args.threads[0]
        result = child_pylfm(args) if args.child == "pylfm" else child_liquid(args)
        print(json.dumps(result))
        return 0

    results = []
    for threads in args.threads:
        results += [run_child(sys.executable, "pylfm", args, threads, ["--quant", q]) for q in args.quants]
        if args.ref_python:
            results.append(run_child(args.ref_python, "liquid", args, threads, []))
    rows = [summarize(r) for r in results]
    print(f"\nTTS, {args.frames} frames ({args.frames * FRAME_S:.1f} s of audio), median of {args.repeat}; "
          "real-time factor = audio s / wall s (above 1: faster than real time)")
    print("| engine | threads | real-time factor | vs liquid-audio | first chunk (s) | wall (s) | load (s) | peak RSS (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        base = next((b for b in rows if b["engine"].startswith("liquid") and b["threads"] == r["threads"]), None)
        ratio = f"{r['rtf'] / base['rtf']:.1f}x" if base else "-"
        print(f"| {r['engine']} | {r['threads']} | {r['rtf']:.2f} | {ratio} | {r['first_chunk_s']:.2f} | "
              f"{r['wall_s']:.1f} | {r['load_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         "raw": results, "cpu": os.cpu_count()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
