#!/usr/bin/env python3
"""liquid-audio 1.3.0 (the official PyTorch implementation) timed on a live turn: time from
the call to the first audio of the reply, with a history of earlier turns, the way its
voice demo (liquid_audio/demo/chat.py) answers: ``generate_interleaved`` over the whole
ChatState (every earlier turn is run through the model again), the first audio frame
detokenized. Run it with the reference venv's python (tools/reference/setup_env.sh), on
the CPU; benchmarks/live_latency.py writes the history file and calls it:

    .venv-ref/bin/python benchmarks/liquid_audio_live.py --checkpoint CKPT --history H.npz \\
        --turns 0 9 --threads 2 --repeat 3 --json

``--history`` (.npz): ``user_<i>`` float32 16 kHz utterances and ``items_<i>`` the
assistant's reply i as rows [kind, 8 values] (kind 0: a text token in column 1; kind 1:
an audio frame), i = 0..n-1; ``probe`` is the utterance the timed turn answers. For each
``--turns k`` the ChatState holds turns 0..k-1 (user audio, the recorded reply) before
the probe. Prints the median/min/max time to first audio per k (``--json``: one line).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

SYSTEM = "Respond with interleaved text and audio."


def main() -> int:
    p = argparse.ArgumentParser(description="liquid-audio's time to first audio in a conversation")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--history", type=Path, required=True)
    p.add_argument("--turns", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import torch
    from liquid_audio import ChatState, LFM2AudioModel, LFM2AudioProcessor, LFMModality

    torch.set_num_threads(args.threads)
    model = LFM2AudioModel.from_pretrained(args.checkpoint, device="cpu", dtype=torch.float32).eval()
    proc = LFM2AudioProcessor.from_pretrained(args.checkpoint, device="cpu").eval()
    detok = cpu_detokenizer(args.checkpoint / "audio_detokenizer")
    h = np.load(args.history)

    def chat_for(k: int) -> "ChatState":
        chat = ChatState(proc, dtype=torch.float32)
        chat.new_turn("system")
        chat.add_text(SYSTEM)
        chat.end_turn()
        for i in range(k):
            chat.new_turn("user")
            chat.add_audio(torch.from_numpy(h[f"user_{i}"])[None, :], 16000)
            chat.end_turn()
            chat.new_turn("assistant")
            rows = h[f"items_{i}"]
            text = [int(r[1]) for r in rows if r[0] == 0]
            audio = [r[1:] for r in rows if r[0] == 1]
            flags = [LFMModality.TEXT if r[0] == 0 else LFMModality.AUDIO_OUT for r in rows]
            chat.append(text=torch.tensor(text, dtype=torch.long)[None, :],
                        audio_out=torch.tensor(np.array(audio, np.int64).T.reshape(8, -1), dtype=torch.long),
                        modality_flag=torch.tensor([int(f) for f in flags]))
            chat.end_turn()
        chat.new_turn("user")
        chat.add_audio(torch.from_numpy(h["probe"])[None, :], 16000)
        chat.end_turn()
        chat.new_turn("assistant")
        return chat

    def first_audio(k: int) -> float:
        chat = chat_for(k)
        t0 = time.perf_counter()
        with torch.no_grad():
            for t in model.generate_interleaved(**chat, max_new_tokens=64, audio_temperature=1.0, audio_top_k=4):
                if t.numel() == 8:
                    if int(t[0]) == 2048:
                        continue
                    detok(t.reshape(1, 8, 1))  # the demo turns each frame into audio at once
                    return time.perf_counter() - t0
        return float("nan")

    first_audio(0)  # warm-up
    out = {}
    for k in args.turns:
        runs = [first_audio(k) for _ in range(args.repeat)]
        out[str(k)] = {"median_s": statistics.median(runs), "min_s": min(runs), "max_s": max(runs)}
    if args.json:
        print(json.dumps({"liquid_audio_first_audio": out, "threads": args.threads}))
    else:
        for k, v in out.items():
            print(f"history of {k} turns: first audio after {v['median_s']:.3f} s (min {v['min_s']:.3f}, max {v['max_s']:.3f})")
    return 0


def cpu_detokenizer(folder: Path):
    """liquid-audio's LFM2 audio detokenizer on the CPU, loaded as its processor loads it
    (LFM2AudioProcessor.audio_detokenizer hard-codes .cuda() in 1.3.0)."""
    from liquid_audio.detokenizer import LFM2AudioDetokenizer
    from safetensors.torch import load_file
    from transformers import Lfm2Config

    cfg = Lfm2Config.from_pretrained(folder / "config.json")
    cfg.layer_types = ["full_attention" if t == "sliding_attention" else t for t in cfg.layer_types]
    det = LFM2AudioDetokenizer(cfg).eval()
    det.load_state_dict(load_file(str(folder / "model.safetensors")))
    return det


if __name__ == "__main__":
    raise SystemExit(main())
