"""Voice reply latency over the wire: end of the user's speech (client side) -> first byte
of reply audio, through ``/v1/realtime`` and ``/v1/chat/completions``, for 1, 2 and 4
concurrent sessions, against a one-session-at-a-time baseline in the same run.

    python benchmarks/realtime_latency.py --model G/ckpt-Q4_0.gguf --mmproj G/mmproj-ckpt-F16.gguf \\
        --threads 2 --json latency.json

The server is a child ``pylfm serve`` (``--sessions 4 --batch-size 4``), speech GGUFs
next to the model. Each session speaks the same sentence (the espeak-ng fixture, 3.1 s).

- realtime: the user's audio is streamed (appends) before the turn ends; the turn ends
  with ``input_audio_buffer.commit`` + ``response.create`` (manual turns: with server VAD
  add its ``silence_duration_ms``, 500 ms by default); measured to the first
  ``response.output_audio.delta``.
- chat: the end of speech is when the request (the WAV in an ``input_audio`` part) is
  sent; measured to the first SSE chunk with ``delta.audio.data``.

N sessions end their turns at the same moment each round (the worst case for a shared
engine). "batched" is pylfm as it is: all N replies decode together. "one at a time" is
the same N users with the turns served one after another (a client-side lock: the next
turn is sent when the previous reply is done), as a server that handles one request at a
time (e.g. llama-liquid-audio-server) would; each latency still counts from that user's
own end of speech. Replies are bounded to ``--reply-steps`` steps (text tokens + audio
frames) so every round does the same work on a random-weight model.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import voice  # noqa: E402  (tests/voice.py)
from serve_child import serve_child  # noqa: E402  (benchmarks/serve_child.py)


def pct(xs: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


async def realtime_turns(url: str, n: int, rounds: int, steps: int, serial: bool, audio_b64: List[str],
                         out: List[Dict[str, Any]]) -> None:
    import websockets.asyncio.client as wsc

    lock = asyncio.Lock()
    start = [asyncio.Event() for _ in range(rounds)]
    ready = [0] * rounds

    async def session(k: int) -> None:
        async with wsc.connect(url, max_size=None, open_timeout=60) as ws:
            async def until(t: str) -> Dict[str, Any]:
                while True:
                    e = json.loads(await asyncio.wait_for(ws.recv(), 600))
                    if e["type"] == "error":
                        raise RuntimeError(f"session {k}: {e['error']}")
                    if e["type"] == t:
                        return e

            await until("session.created")
            await ws.send(json.dumps({"type": "session.update", "session": {
                "max_output_tokens": steps, "audio": {"input": {"turn_detection": None, "transcription": None}}}}))
            await until("session.updated")
            for r in range(rounds):
                for chunk in audio_b64:  # the user's speech, streamed before the turn ends
                    await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                ready[r] += 1
                if ready[r] == n:
                    start[r].set()
                await start[r].wait()
                t_end = time.perf_counter()  # every user stops talking now
                if serial:
                    await lock.acquire()
                try:
                    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                    await ws.send(json.dumps({"type": "response.create"}))
                    first = await until("response.output_audio.delta")
                    t_first = time.perf_counter()
                    done = await until("response.done")
                finally:
                    if serial:
                        lock.release()
                u = done["response"].get("usage") or {}
                out.append({"round": r, "session": k, "latency_s": t_first - t_end, "status": done["response"]["status"],
                            "steps": u.get("output_tokens"), "first_item": first["item_id"] is not None})

    await asyncio.gather(*(session(k) for k in range(n)))


async def chat_turns(base: str, n: int, rounds: int, steps: int, serial: bool, wav_b64: str,
                     out: List[Dict[str, Any]]) -> None:
    import httpx

    lock = asyncio.Lock()
    body = {"model": "lfm2-audio", "stream": True, "modalities": ["text", "audio"], "max_tokens": steps,
            "messages": [{"role": "system", "content": "Respond with interleaved text and audio."},
                         {"role": "user", "content": [{"type": "input_audio",
                                                       "input_audio": {"data": wav_b64, "format": "wav"}}]}]}

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=n + 2)) as h:
        for r in range(rounds):
            async def one(k: int) -> None:
                t_end = time.perf_counter()
                if serial:
                    await lock.acquire()
                try:
                    t_first = None
                    finish = None
                    async with h.stream("POST", base + "/v1/chat/completions", json=body) as resp:
                        resp.raise_for_status()
                        async for line in resp.aiter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            ev = json.loads(line[6:])
                            if "error" in ev:
                                raise RuntimeError(ev["error"])
                            c = ev["choices"][0] if ev.get("choices") else {}
                            if t_first is None and (c.get("delta", {}).get("audio") or {}).get("data"):
                                t_first = time.perf_counter()
                            finish = c.get("finish_reason") or finish
                finally:
                    if serial:
                        lock.release()
                out.append({"round": r, "session": k, "latency_s": (t_first or float("nan")) - t_end,
                            "status": finish})

            await asyncio.gather(*(one(k) for k in range(n)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--mmproj", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reply-steps", type=int, default=24,
                    help="steps per reply (interleaved: 6 text tokens, then 12 audio frames, ...)")
    ap.add_argument("--paths", nargs="+", default=["realtime", "chat"])
    ap.add_argument("--json")
    args = ap.parse_args()

    most = max(args.sessions)
    serve = ["--model", args.model, "--mmproj", args.mmproj, "--device", "cpu", "--threads", str(args.threads),
             "--sessions", str(most), "--batch-size", str(most), "--queue", str(4 * most),
             "--realtime-idle-timeout-s", "900"]
    u = voice.utterances()[0]
    audio_b64 = list(voice.b64_chunks(u))
    wav_b64 = base64.b64encode(voice.wav_bytes(voice.utterances(16000)[0], 16000)).decode()
    results: Dict[str, Any] = {"machine": {"cpu": _cpu(), "threads": args.threads, "loadavg_before": os.getloadavg()},
                               "model": Path(args.model).name, "mmproj": Path(args.mmproj).name,
                               "speech_s": round(len(u) / 24000, 2), "reply_steps": args.reply_steps, "runs": []}
    log = Path(tempfile.mkdtemp(prefix="pylfm-latency-")) / "server.log"
    print(f"server log: {log}", file=sys.stderr)
    with serve_child(serve, log=log, start_timeout=600) as (_, base):
        url = base.replace("http", "ws") + "/v1/realtime"
        # warm-up: speech GGUFs loaded, graphs built, one turn each way
        asyncio.run(realtime_turns(url, 1, 1, args.reply_steps, False, audio_b64, []))
        asyncio.run(chat_turns(base, 1, 1, args.reply_steps, False, wav_b64, []))
        print(f"{'path':9} {'sessions':>8} {'serving':>13} {'p50 s':>7} {'p95 s':>7} {'mean s':>7} {'n':>4}", flush=True)
        for path in args.paths:
            for n in args.sessions:
                for serial in ([False, True] if n > 1 else [False]):
                    out: List[Dict[str, Any]] = []
                    t0 = time.monotonic()
                    if path == "realtime":
                        asyncio.run(realtime_turns(url, n, args.rounds, args.reply_steps, serial, audio_b64, out))
                    else:
                        asyncio.run(chat_turns(base, n, args.rounds, args.reply_steps, serial, wav_b64, out))
                    lat = [o["latency_s"] for o in out]
                    run = {"path": path, "sessions": n, "serving": "one at a time" if serial else "batched",
                           "p50_s": round(pct(lat, 50), 3), "p95_s": round(pct(lat, 95), 3),
                           "mean_s": round(float(np.mean(lat)), 3), "n": len(lat),
                           "wall_s": round(time.monotonic() - t0, 1),
                           "statuses": sorted({str(o["status"]) for o in out}), "turns": out}
                    results["runs"].append(run)
                    print(f"{path:9} {n:>8} {run['serving']:>13} {run['p50_s']:>7.2f} {run['p95_s']:>7.2f} "
                          f"{run['mean_s']:>7.2f} {run['n']:>4}", flush=True)
        results["machine"]["loadavg_after"] = os.getloadavg()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        print("\n| path | sessions | batched p50 / p95 (s) | one at a time p50 / p95 (s) |")
        print("|---|---|---|---|")
        for path in args.paths:
            for n in args.sessions:
                b = next(r for r in results["runs"] if r["path"] == path and r["sessions"] == n
                         and r["serving"] == "batched")
                s = next((r for r in results["runs"] if r["path"] == path and r["sessions"] == n
                          and r["serving"] == "one at a time"), b)
                print(f"| {path} | {n} | {b['p50_s']:.2f} / {b['p95_s']:.2f} | {s['p50_s']:.2f} / {s['p95_s']:.2f} |")
        print(f"\nload average before {results['machine']['loadavg_before']}, after {results['machine']['loadavg_after']}")
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
