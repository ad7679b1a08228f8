#!/usr/bin/env python3
"""Live-use latency and throughput of pylfm's conversations (issue: "Live"), in one run:

1. **End of user speech -> first audio of the reply** for utterances of 2-6 s: the
   utterance is streamed in 20 ms chunks through turn detection (Silero, ``--silence-ms``
   of silence ends the turn; the silence is pushed in real time), then the reply is
   streamed until its first audio samples. Reported p50/p95 with where the time goes:
   turn-detection hangover, audio encoding, prefill, and the rest (the first text tokens
   and the first frame through the depthformer and detokenizer).
2. **Turn latency across a conversation**: ``--turns`` turns in one conversation (history
   in the engine); turn N's latency against turn 1's.
3. **liquid-audio** (optional, ``--ref-python``): its ``generate_interleaved`` on the CPU
   with the same history and utterance (benchmarks/liquid_audio_live.py), time to first
   audio for turn 1 and turn N, as its voice demo runs it.
4. **Concurrency**: K speech replies generated at once (K = 1, 2, 4): each one's real-time
   factor and the total speech throughput against one alone.
5. **A transcription submitted while speech generates**: its time to first token against
   the same transcription on an idle engine (it joins the running steps; it does not wait
   for the reply to end).

    python benchmarks/live_latency.py --model G/lfm-full-Q4_0.gguf --mmproj G/mmproj-lfm-full-F16.gguf \\
        --vocoder G/vocoder-lfm-full-Q4_0.gguf --detokenizer G/tokenizer-lfm-full-Q4_0.gguf \\
        --threads 2 --checkpoint CKPT --ref-python .venv-ref/bin/python --json out.json

Utterances are espeak-ng speech when it is installed (else speech-like harmonics). Run on
an idle machine: llama.cpp's threads spin while they wait, so other load distorts it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

RATE = 16000
CHUNK = 320  # 20 ms
SENTENCES = [
    "Could you tell me what the weather will be like tomorrow morning?",
    "I would like to book a table for two people at eight.",
    "What is the capital of Australia?",
    "Please remind me to call my sister after lunch.",
    "How long does it take to boil an egg?",
    "Tell me a short story about a brave little fox who lived in the forest.",
    "Can you recommend a good book?",
    "What time is it in Tokyo right now?",
    "I need help writing an email to my landlord about the broken heater.",
    "Why is the sky blue?",
    "Turn on the lights in the kitchen.",
    "Explain how a rainbow forms after the rain.",
]


def utterances(n: int, lo: float = 2.0, hi: float = 6.0) -> List[np.ndarray]:
    out: List[np.ndarray] = []
    if shutil.which("espeak-ng"):
        import io

        import soundfile as sf
        import soxr

        for i in range(n * 3):
            s = SENTENCES[i % len(SENTENCES)]
            wav = subprocess.run(["espeak-ng", "-s", str(140 + 15 * (i % 4)), "--stdout", s], check=True,
                                 capture_output=True).stdout
            data, rate = sf.read(io.BytesIO(wav), dtype="float32")
            x = soxr.resample(data, rate, RATE).astype(np.float32)
            nz = np.flatnonzero(np.abs(x) > 1e-3)
            x = x[nz[0]:nz[-1] + 1] if len(nz) else x
            if lo <= len(x) / RATE <= hi:
                out.append(x)
            if len(out) == n:
                return out
    rng = np.random.default_rng(0)
    while len(out) < n:  # speech-like: harmonics with a syllable rhythm
        sec = rng.uniform(lo, hi)
        t = np.arange(int(sec * RATE)) / RATE
        f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t + len(out))
        ph = 2 * np.pi * np.cumsum(f0) / RATE
        out.append((0.1 * sum(np.sin(k * ph) / k for k in range(1, 12)) * (0.5 * (1 + np.sin(2 * np.pi * 4 * t))) ** 2)
                   .astype(np.float32))
    return out


def pct(xs: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def one_turn(model: Any, conv: Any, utt: np.ndarray, silence_ms: float, read_ahead: bool) -> Dict[str, float]:
    """Streams ``utt`` through turn detection, then the reply to its first audio. With
    ``read_ahead`` the turn is read into the model when the speaker pauses
    (`Conversation.prefill`), as `pylfm.live.voice.VoiceChat` does."""
    from pylfm.live import SpeechDetector, SpeechPaused, SpeechResumed, TurnDetection, Utterance

    det = SpeechDetector(TurnDetection(silence_duration_ms=silence_ms, prefix_padding_ms=300))
    audio = np.concatenate([np.zeros(RATE // 4, np.float32), utt])
    found, ahead = None, None

    def handle(events: list) -> None:
        nonlocal found, ahead
        for ev in events:
            if isinstance(ev, SpeechPaused) and read_ahead:
                conv.add_audio(ev.pcm, sample_rate=RATE)
                conv.prefill()
                ahead = (ev.start, ev.end)
            elif isinstance(ev, SpeechResumed) and ahead is not None:
                conv.discard_turn()
                ahead = None
            elif isinstance(ev, Utterance):
                found = ev

    t0 = time.perf_counter()
    for i in range(0, len(audio), CHUNK):  # the speech itself, in real time (a microphone)
        time.sleep(max(0.0, t0 + i / RATE - time.perf_counter()))
        handle(det.push(audio[i:i + CHUNK]))
    t_end = time.perf_counter()  # the user stopped speaking
    k = 0
    while found is None:  # the silence after it, in real time
        k += 1
        time.sleep(max(0.0, t_end + k * CHUNK / RATE - time.perf_counter()))
        handle(det.push(np.zeros(CHUNK, np.float32)))
        if k > 500:
            raise RuntimeError("turn detection never ended the utterance")
    t_vad = time.perf_counter()
    if ahead != (found.start, found.end):
        if ahead is not None:
            conv.discard_turn()
        conv.add_audio(found.pcm, sample_rate=RATE)
    stream = conv.reply(stream=True)
    t_audio = None
    for chunk in stream:
        if len(chunk.audio):
            t_audio = time.perf_counter()
            break
    stream.close()  # the rest of the reply is not measured here
    timings = conv.last_reply.timings if conv.last_reply is not None else {}
    total = (t_audio or float("nan")) - t_end
    encode, prefill = timings.get("encode", 0.0) / 1000, timings.get("prefill", 0.0) / 1000
    return {"total_s": total, "vad_s": t_vad - t_end, "encode_s": encode, "prefill_s": prefill,
            "first_steps_s": total - (t_vad - t_end) - encode - prefill, "utterance_s": len(utt) / RATE}


def conversation_turns(model: Any, utts: List[np.ndarray], turns: int, reply_s: float) -> Dict[str, Any]:
    """One conversation of ``turns`` turns; latency of each from the end of the user's
    audio (handed over whole) to the first audio, and the items of each full reply."""
    lat, items = [], []
    with model.conversation(max_duration=reply_s, max_new_tokens=200, seed=0) as conv:
        for i in range(turns):
            conv.add_audio(utts[i % len(utts)], sample_rate=RATE)
            t0 = time.perf_counter()
            first = None
            for chunk in conv.reply(stream=True):
                if first is None and len(chunk.audio):
                    first = time.perf_counter() - t0
            lat.append(first)
            items.append(conv.last_reply.items)
        n_past = conv.n_past
    return {"latency_s": lat, "items": items, "n_past": n_past}


def concurrency(model: Any, k: int, frames: int) -> Dict[str, float]:
    from pylfm.engine.prompt import prompt_parts
    from pylfm.speech.generate import speech_params
    from pylfm.speech.job import SpeechJob

    jobs = []
    parts = prompt_parts("Respond with interleaved text and audio.", "Tell me about the sea.", n_audio=0)
    t0 = time.perf_counter()
    for i in range(k):
        params = speech_params(interleaved=True, ignore_audio_end=True, max_new_tokens=3 * frames,
                               max_audio_frames=frames, audio_temperature=1.0, audio_top_k=4, seed=i)
        jobs.append(model.speech_runtime.submit(SpeechJob(parts, [], params)))
    done_at = []
    for j in jobs:
        j.run()
        done_at.append(time.perf_counter() - t0)
    audio_s = [len(j.speech().audio) / 24000 for j in jobs]
    wall = max(done_at)
    return {"sessions": k, "wall_s": wall, "audio_s_each": audio_s, "rtf_each": [a / w for a, w in zip(audio_s, done_at)],
            "throughput": sum(audio_s) / wall}


def transcription_during_speech(model: Any) -> Dict[str, Any]:
    """A 16-token transcription submitted while a long speech reply generates: the time to
    its first token (submit -> encode -> prefill, which the engine slices between speech
    steps), against the same transcription on an idle engine; the speech reply is still
    generating when the transcription's first token comes. The first token's time is the job's wall time less its decode time
    (a random model's tokens often print nothing, so no text event marks it)."""
    from pylfm.speech.job import SpeechJob
    from pylfm.engine.prompt import prompt_parts
    from pylfm.speech.generate import speech_params
    from pylfm.speech.voices import tts_system_prompt

    audio = utterances(1)[0]

    def first_token_s() -> tuple:
        t0 = time.perf_counter()
        r = model.transcribe(audio, sample_rate=RATE, max_new_tokens=16, ignore_eos=True, loop_guard=None)
        return t0, time.perf_counter() - r.timings.decode_ms / 1000 - t0

    first_token_s()  # warm
    _, alone = first_token_s()
    frames: List[float] = []
    parts = prompt_parts(tts_system_prompt("US female"), "A long sentence to speak.", n_audio=0) + [("<|audio_start|>", True)]
    params = speech_params(start_audio=True, ignore_audio_end=True, max_new_tokens=600, max_audio_frames=500,
                           audio_temperature=0.8, audio_top_k=64, seed=0)
    speak = SpeechJob(parts, [], params)
    speak.on_event = lambda c: frames.extend([time.perf_counter()] * len(c.codes)) \
        if c is not None and c.codes is not None else None
    model.speech_runtime.submit(speak)
    while len(frames) < 10:
        time.sleep(0.005)
    t0, during = first_token_s()
    still_speaking = not speak.done
    speak.cancel()
    speak.wait()
    # the reply had hundreds of frames left: the transcription did not wait for it
    return {"first_token_alone_s": alone, "first_token_during_speech_s": during,
            "speech_still_generating": still_speaking, "speech_frames_before": len([t for t in frames if t <= t0])}


def main() -> int:
    p = argparse.ArgumentParser(description="live latency (see the module docstring)")
    p.add_argument("--model", required=True)
    p.add_argument("--mmproj", required=True)
    p.add_argument("--vocoder")
    p.add_argument("--detokenizer")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--utterances", type=int, default=12)
    p.add_argument("--silence-ms", type=float, default=300.0, help="turn detection's silence_duration_ms")
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--reply-s", type=float, default=3.0, help="seconds of speech per reply in the conversation")
    p.add_argument("--frames", type=int, default=50, help="audio frames per reply in the concurrency test")
    p.add_argument("--checkpoint", type=Path, help="the checkpoint, for liquid-audio")
    p.add_argument("--ref-python", help="the reference venv's python (liquid-audio)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    import pylfm

    model = pylfm.Model(args.model, args.mmproj, device="cpu", n_threads=args.threads, batch_size=4, sessions=4)
    model.load_speech(args.vocoder, args.detokenizer)
    utts = utterances(args.utterances)
    out: Dict[str, Any] = {"threads": args.threads, "silence_ms": args.silence_ms, "cpu": _cpu(),
                           "model": Path(args.model).name}

    with model.conversation(max_new_tokens=32, seed=0) as warm:  # warm-up
        warm.add_audio(utts[0], sample_rate=RATE)
        warm.reply(max_new_tokens=20)

    for read_ahead in (False, True):
        rows = []
        for u in utts:
            with model.conversation(seed=0) as conv:
                rows.append(one_turn(model, conv, u, args.silence_ms, read_ahead))
        key = "first_audio_read_ahead" if read_ahead else "first_audio"
        out[key] = {k: {"p50": pct([r[k] for r in rows], 50), "p95": pct([r[k] for r in rows], 95)} for k in rows[0]}
        print(f"end of speech -> first audio{' (turn read ahead)' if read_ahead else ''}: "
              f"p50 {out[key]['total_s']['p50']:.3f} s, p95 {out[key]['total_s']['p95']:.3f} s", file=sys.stderr)

    conv_res = conversation_turns(model, utts, args.turns, args.reply_s)
    lat = conv_res["latency_s"]
    out["turns"] = {"latency_s": lat, "turn1_s": lat[0], "turnN_s": lat[-1], "ratio": lat[-1] / lat[0],
                    "history_positions": conv_res["n_past"]}
    print(f"turn 1 {lat[0]:.3f} s, turn {args.turns} {lat[-1]:.3f} s ({lat[-1] / lat[0]:.2f}x)", file=sys.stderr)

    if args.ref_python and args.checkpoint:
        with tempfile.TemporaryDirectory() as tmp:
            hist = Path(tmp) / "history.npz"
            arrays = {"probe": utts[(args.turns - 1) % len(utts)]}
            for i, items in enumerate(conv_res["items"][:args.turns - 1]):
                arrays[f"user_{i}"] = utts[i % len(utts)]
                arrays[f"items_{i}"] = np.array([[1, *it] if isinstance(it, np.ndarray) else [0, int(it)] + [0] * 7
                                                 for it in items], np.int64).reshape(-1, 9)
            np.savez(hist, **arrays)
            ref = subprocess.run([args.ref_python, str(Path(__file__).with_name("liquid_audio_live.py")),
                                  "--checkpoint", str(args.checkpoint), "--history", str(hist), "--turns", "0",
                                  str(args.turns - 1), "--threads", str(args.threads), "--json"],
                                 capture_output=True, text=True)
            if ref.returncode != 0:
                print(ref.stderr[-2000:], file=sys.stderr)
            else:
                out["liquid_audio"] = json.loads(ref.stdout.strip().splitlines()[-1])
                la = out["liquid_audio"]["liquid_audio_first_audio"]
                t1, tn = la["0"]["median_s"], la[str(args.turns - 1)]["median_s"]
                out["liquid_audio"]["ratio_pylfm_turn1"] = out["first_audio_read_ahead"]["total_s"]["p50"] / t1
                print(f"liquid-audio first audio: turn 1 {t1:.3f} s, turn {args.turns} {tn:.3f} s", file=sys.stderr)

    for k in (1, 2, 4):  # warm-up: the audio head builds its graphs for each batch size once
        concurrency(model, k, 4)
    out["concurrency"] = [concurrency(model, k, args.frames) for k in (1, 2, 4)]
    base = out["concurrency"][0]["throughput"]
    for c in out["concurrency"]:
        c["throughput_vs_one"] = c["throughput"] / base
        print(f"{c['sessions']} at once: RTF each {', '.join(f'{r:.2f}' for r in c['rtf_each'])}; "
              f"throughput {c['throughput_vs_one']:.2f}x one", file=sys.stderr)
    out["transcription_during_speech"] = transcription_during_speech(model)
    print(json.dumps(out["transcription_during_speech"]), file=sys.stderr)
    model.close()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float))
    print(json.dumps(out, default=float))
    return 0


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
