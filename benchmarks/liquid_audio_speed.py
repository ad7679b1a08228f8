#!/usr/bin/env python3
"""liquid-audio 1.3.0 (the official PyTorch implementation) timed on the same work as pylfm's
GPU benchmark: ASR of the same audio, cut into the same windows, a fixed number of greedy
tokens per window. Run it with the reference venv's python (tools/reference/setup_env.sh):

    .venv-ref/bin/python benchmarks/liquid_audio_speed.py --checkpoint CKPT \
        --audio audio.npy --windows windows.json --fixed-tokens 64 --json

``--audio`` is float32 mono 16 kHz samples (.npy) and ``--windows`` a JSON list of
[start, end] sample spans, both written by benchmarks/gpu_bench.py from pylfm's own
synthetic signal and window planner; without them ``--seconds`` of a plain chirp are one
window. The model is loaded the way liquid-audio's README does
(``LFM2AudioModel.from_pretrained(CKPT, device="cuda")``: bfloat16, flash-attention 2 when
installed, else SDPA) and each window runs liquid-audio's own ``generate_sequential``
recurrence (``_prefill`` with the ChatState ASR prompt, then ``lfm`` forward steps with its
cache, greedy argmax over the tied embedding) for exactly ``--fixed-tokens`` steps, without its
stops at <|im_end|>/<|audio_start|> (random weights would stop anywhere). liquid-audio takes
one conversation at a time (``_prefill`` asserts a batch of 1), so windows run one by one.

Prints (``--json``: one JSON line, the form benchmarks/gpu_bench.py reads) the median, min and
max over ``--repeat`` runs after one warm-up window: wall time, encode+prefill time, decode
time and tokens/s, RTF (wall / audio seconds), and torch's peak allocated GPU memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

RATE = 16000
SYSTEM_PROMPT = "Perform ASR."


def main() -> int:
    p = argparse.ArgumentParser(description="liquid-audio speed on the GPU (see the module docstring)")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--audio", type=Path, help="float32 16 kHz mono .npy")
    p.add_argument("--windows", type=Path, help="JSON [[start, end], ...] sample spans")
    p.add_argument("--seconds", type=float, default=30.0, help="without --audio: a chirp this long")
    p.add_argument("--fixed-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import torch
    from liquid_audio import ChatState, LFM2AudioModel, LFM2AudioProcessor

    if args.threads:
        torch.set_num_threads(args.threads)

    if args.audio:
        pcm = np.load(args.audio).astype(np.float32)
    else:
        t = np.arange(int(args.seconds * RATE)) / RATE
        pcm = (0.3 * np.sin(2 * np.pi * (200 * t + 400 * t * t / args.seconds))).astype(np.float32)
    spans = json.loads(args.windows.read_text()) if args.windows else [[0, len(pcm)]]
    seconds = len(pcm) / RATE
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    model = LFM2AudioModel.from_pretrained(args.checkpoint, device=device, dtype=dtype).eval()
    proc = LFM2AudioProcessor.from_pretrained(args.checkpoint, device=device).eval()
    sync()
    load_ms = (time.perf_counter() - t0) * 1e3
    embed = model.lfm.embed_tokens

    @torch.no_grad()
    def window(wave: np.ndarray):
        """One ASR request: returns (encode+prefill ms, decode ms, tokens)."""
        t_start = time.perf_counter()
        chat = ChatState(proc, dtype=dtype)
        chat.new_turn("system")
        chat.add_text(SYSTEM_PROMPT)
        chat.end_turn()
        chat.new_turn("user")
        chat.add_audio(torch.from_numpy(wave)[None, :], RATE)
        chat.end_turn()
        chat.new_turn("assistant")
        x = model._prefill(text=chat.text, audio_in=chat.audio_in, audio_in_lens=chat.audio_in_lens,
                           audio_out=chat.audio_out, modality_flag=chat.modality_flag)
        cache = None
        # the first forward pass over the prompt is the prefill
        out = model.lfm(inputs_embeds=x, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        nxt = torch.nn.functional.linear(out.last_hidden_state[0, -1], embed.weight).argmax(keepdim=True)
        sync()
        t_prefill = time.perf_counter()
        tokens = [nxt]
        for _ in range(args.fixed_tokens - 1):
            out = model.lfm(inputs_embeds=embed(nxt)[None, :], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            nxt = torch.nn.functional.linear(out.last_hidden_state[0, -1], embed.weight).argmax(keepdim=True)
            tokens.append(nxt)
        ids = [int(t) for t in tokens]  # synchronizes
        t_end = time.perf_counter()
        return (t_prefill - t_start) * 1e3, (t_end - t_prefill) * 1e3, ids

    window(pcm[spans[0][0]:spans[0][1]])  # warm-up: kernels, allocator, cuDNN/cuBLAS plans
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    runs = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        prefill_ms = decode_ms = 0.0
        n_tokens = 0
        for a, b in spans:
            pm, dm, ids = window(pcm[a:b])
            prefill_ms += pm
            decode_ms += dm
            n_tokens += len(ids)
        wall_ms = (time.perf_counter() - t0) * 1e3
        runs.append({"total_ms": wall_ms, "encode_prefill_ms": prefill_ms, "decode_ms": decode_ms,
                     "decode_tok_s": (n_tokens - len(spans)) / (decode_ms / 1e3) if decode_ms > 0 else None,
                     "rtf": wall_ms / 1e3 / seconds, "n_tokens": n_tokens})

    def stats(key: str):
        vals = [r[key] for r in runs if r[key] is not None]
        return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)} if vals else {}

    keys = ("total_ms", "encode_prefill_ms", "decode_ms", "decode_tok_s", "rtf")
    report = {
        "engine": "liquid-audio", "device": torch.cuda.get_device_name(device) if on_gpu else "cpu", "dtype": args.dtype,
        "attn": model.lfm.config._attn_implementation, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "audio_seconds": seconds, "n_windows": len(spans), "fixed_tokens": args.fixed_tokens,
        "repeat": args.repeat, "load_ms": load_ms, "runs": runs,
        "median": {k: stats(k).get("median") for k in keys},
        "min": {k: stats(k).get("min") for k in keys},
        "max": {k: stats(k).get("max") for k in keys},
        "torch_peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20 if on_gpu else None,
    }
    if args.json:
        print(json.dumps(report))
    else:
        m = report["median"]
        print(f"liquid-audio {args.dtype} on {report['device']}: {seconds:.0f} s audio, {len(spans)} window(s): "
              f"RTF {m['rtf']:.4f} (RTFx {1 / m['rtf']:.1f}), decode {m['decode_tok_s']:.0f} tok/s, "
              f"peak allocated {report['torch_peak_allocated_mib'] or 0:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
