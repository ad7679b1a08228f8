"""Soak test of ``/v1/realtime``: N clients connect, talk, interrupt, hang up and vanish at
random for a few minutes against one ``pylfm serve`` process.

    python benchmarks/realtime_soak.py --clients 4 --minutes 3            # tiny speech model, made here
    python benchmarks/realtime_soak.py --model M.gguf --mmproj P.gguf ...  # any model with speech GGUFs

Each client loops: connect (the server may refuse with 1013 when full: back off and
retry), then a few turns of real speech (the espeak-ng fixture, streamed at 4x real time,
server VAD ends the turn); on a turn it may talk over the reply (barge-in: VAD cancels
it, the client truncates what it "played"), send response.cancel, hang up cleanly, or
vanish (TCP reset, no close frame) mid-reply or between turns. Reported:

- the server's resident memory (VmRSS of its process) sampled every few seconds: it
  should stay flat after warm-up (the slope over the second half is printed);
- the conversation slots held at the end (``/health``): must be 0;
- answers: every turn of a client that did not vanish or cut it short must get a
  ``response.done`` with audio; unexpected ``error`` events and close codes are counted.

The server runs as a child process (``pylfm serve``), so its memory is its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import voice  # noqa: E402  (tests/voice.py: the fixture's utterances)
from serve_child import serve_child  # noqa: E402  (benchmarks/serve_child.py)


def tiny_model(workdir: Path) -> Dict[str, Path]:
    """The tests' lively tiny checkpoint, converted with its speech GGUFs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny", ROOT / "tools" / "make_tiny_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules["tiny"] = tool
    spec.loader.exec_module(tool)
    from pylfm.files.convert import convert

    ckpt = tool.make_checkpoint(workdir / "lively", seed=0, lively=True)
    r = convert(ckpt, outdir=workdir / "gguf", outtype="f32", progress=False)
    return {"model": r.model_path, "mmproj": r.mmproj_path}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Stats:
    def __init__(self) -> None:
        self.c = Counter()
        self.errors: Counter = Counter()
        self.closes: Counter = Counter()


UTTS = voice.utterances()


class Conn:
    """One connection's events, as its reader task sees them."""

    def __init__(self) -> None:
        self.created = 0            # response.created
        self.done: List[str] = []   # response.done statuses, in order
        self.first_audio: Optional[Dict[str, Any]] = None  # the latest reply's first audio delta
        self.closed = False
        self.other: "asyncio.Queue[Dict[str, Any]]" = asyncio.Queue()
        self.changed = asyncio.Event()

    def see(self, e: Dict[str, Any], stats: Stats) -> None:
        t = e["type"]
        if t == "response.created":
            self.created += 1
            self.first_audio = None
        elif t == "response.done":
            self.done.append(e["response"]["status"])
        elif t == "response.output_audio.delta":
            if self.first_audio is None:
                self.first_audio = e
        elif t == "error":
            code = e["error"].get("code")
            if code not in ("response_cancel_not_active",):
                stats.errors[code] += 1
            self.other.put_nowait(e)
        elif not t.endswith(".delta"):
            self.other.put_nowait(e)
        self.changed.set()

    async def until(self, pred, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while not pred():
            if self.closed:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return pred()
        return True

    def quiet(self) -> bool:
        return self.created == len(self.done)


async def client(k: int, url: str, end: float, stats: Stats, rng: random.Random, speed: float,
                 max_turns: int) -> None:
    import websockets.asyncio.client as wsc
    from websockets.exceptions import ConnectionClosed

    while time.monotonic() < end:
        try:
            ws = await wsc.connect(url, max_size=None, open_timeout=30)
        except Exception:  # noqa: BLE001
            stats.c["connect_failed"] += 1
            await asyncio.sleep(1)
            continue
        stats.c["connections"] += 1
        conn = Conn()

        async def reader() -> None:
            try:
                async for m in ws:
                    conn.see(json.loads(m), stats)
            except ConnectionClosed:
                pass
            conn.closed = True
            conn.changed.set()

        rtask = asyncio.create_task(reader())

        async def speak(x: np.ndarray) -> None:
            for chunk in voice.b64_chunks(x):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                await asyncio.sleep(0.1 / speed)

        async def next_other(*types: str) -> Optional[Dict[str, Any]]:
            while True:
                try:
                    e = await asyncio.wait_for(conn.other.get(), 30)
                except asyncio.TimeoutError:
                    return None
                if e["type"] in types:
                    return e

        vanished = False
        try:
            first = await next_other("session.created", "error")
            if first is None or first["type"] != "session.created":
                stats.c["refused"] += 1
                await conn.until(lambda: False, timeout=10)
                stats.closes[ws.close_code] += 1
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                continue
            await ws.send(json.dumps({"type": "session.update", "session": {
                "max_output_tokens": rng.choice([24, 48, 96]),
                "audio": {"input": {"transcription": {"model": "x"},
                                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}}}}}))
            for turn in range(rng.randint(1, max_turns)):
                if time.monotonic() > end:
                    break
                action = rng.choices(["answer", "barge", "cancel", "vanish_reply", "vanish_idle", "hangup"],
                                     [50, 15, 10, 10, 5, 10])[0]
                stats.c[f"turn_{action}"] += 1
                if action == "vanish_idle":
                    vanished = True
                    break
                before = len(conn.done)
                await speak(np.concatenate([UTTS[rng.randrange(3)], voice.silence(0.6)]))
                # the reply starts talking (or is already over)
                await conn.until(lambda: conn.first_audio is not None or len(conn.done) > before)
                if action == "vanish_reply":
                    vanished = True
                    break
                if action == "hangup":
                    await ws.close()
                    break
                if action == "cancel" and conn.first_audio is not None and not conn.quiet():
                    item = conn.first_audio["item_id"]
                    await ws.send(json.dumps({"type": "response.cancel"}))
                    await conn.until(conn.quiet)
                    stats.c["cancelled"] += conn.done[-1] == "cancelled" if conn.done else 0
                    await ws.send(json.dumps({"type": "conversation.item.truncate", "item_id": item,
                                              "content_index": 0, "audio_end_ms": rng.randint(0, 400)}))
                    await next_other("conversation.item.truncated", "error")
                    continue
                if action == "barge" and conn.first_audio is not None and not conn.quiet():
                    item = conn.first_audio["item_id"]
                    n_done = len(conn.done)
                    await speak(np.concatenate([UTTS[2], voice.silence(0.6)]))  # talk over it
                    await conn.until(lambda: len(conn.done) > n_done)
                    if conn.done[n_done:n_done + 1] == ["cancelled"]:
                        stats.c["barged_in"] += 1
                        await ws.send(json.dumps({"type": "conversation.item.truncate", "item_id": item,
                                                  "content_index": 0, "audio_end_ms": 160}))
                # every turn of a client that stays gets its answer: nothing in flight, the last reply whole
                stats.c["answers_expected"] += 1
                ok = await conn.until(lambda: conn.quiet() and len(conn.done) > before
                                      and conn.done[-1] in ("completed", "incomplete"))
                stats.c["answers" if ok else "answers_missing"] += 1
            if vanished:
                sock = ws.transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                ws.transport.abort()
                stats.c["vanished"] += 1
            elif not conn.closed:
                await ws.close()
                stats.closes[ws.close_code] += 1
        except (asyncio.TimeoutError, ConnectionClosed) as e:
            stats.c[f"client_{type(e).__name__}"] += 1
            try:
                await ws.close()
            except Exception:  # noqa: BLE001
                pass
        finally:
            rtask.cancel()
        await asyncio.sleep(rng.uniform(0, 0.5))


async def monitor(pid: int, base: str, end: float, samples: List[Dict[str, Any]], every: float) -> None:
    import httpx

    t0 = time.monotonic()
    async with httpx.AsyncClient() as h:
        while time.monotonic() < end:
            try:
                rt = (await h.get(base + "/health", timeout=10)).json()["realtime"]
            except Exception:  # noqa: BLE001
                rt = {}
            samples.append({"t": round(time.monotonic() - t0, 1), "rss_mib": round(rss_mib(pid), 1),
                            "connections": rt.get("connections"), "slots_held": rt.get("slots_held")})
            await asyncio.sleep(every)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--mmproj")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=None, help="the server's conversation slots (default: clients)")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed", type=float, default=4.0, help="how much faster than real time speech is sent")
    ap.add_argument("--max-turns", type=int, default=4, help="turns per connection at most")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=float, default=5.0, help="seconds between memory samples")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pylfm-soak-"))
    files = {"model": Path(args.model), "mmproj": Path(args.mmproj)} if args.model else tiny_model(work)
    serve = ["--model", str(files["model"]), "--mmproj", str(files["mmproj"]), "--device", "cpu",
             "--threads", str(args.threads), "--batch-size", "2", "--sessions", str(args.sessions or args.clients),
             "--max-new-tokens", "32", "--max-reply-s", "8", "--realtime-idle-timeout-s", "60"]
    log = work / "server.log"
    print(f"server log: {log}", file=sys.stderr)
    import httpx

    with serve_child(serve, log=log, start_timeout=120) as (server, base):
        stats = Stats()
        samples: List[Dict[str, Any]] = []
        url = base.replace("http", "ws") + "/v1/realtime"
        t0 = time.monotonic()
        end = t0 + 60 * args.minutes

        async def run() -> None:
            rng = random.Random(args.seed)
            tasks = [asyncio.create_task(client(k, url, end, stats, random.Random(rng.random()), args.speed,
                                                args.max_turns)) for k in range(args.clients)]
            mon = asyncio.create_task(monitor(server.pid, base, end + 15, samples, args.every))
            await asyncio.gather(*tasks)
            await mon

        asyncio.run(run())
        final = httpx.get(base + "/health", timeout=10).json()
        rss = [s["rss_mib"] for s in samples]
        half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2]
        slope = float(np.polyfit([s["t"] for s in half], [s["rss_mib"] for s in half], 1)[0] * 60) if len(half) > 2 \
            else float("nan")
        result = {"clients": args.clients, "minutes": args.minutes, "threads": args.threads,
                  "model": files["model"].name, "counts": dict(stats.c), "errors": dict(stats.errors),
                  "closes": {str(k): v for k, v in stats.closes.items()},
                  "rss_mib": {"first": rss[0], "max": max(rss), "last": rss[-1],
                              "slope_second_half_mib_per_min": round(slope, 2)},
                  "end": final["realtime"], "decoding_at_end": final["queue"]["decoding"], "samples": samples}
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
        print("\n  t (s)   RSS (MiB)   connections   slots held")
        for s in samples:
            print(f"{s['t']:7.1f} {s['rss_mib']:11.1f} {s['connections']!s:>13} {s['slots_held']!s:>12}")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        ok = final["realtime"]["slots_held"] == 0 and stats.c["answers_missing"] == 0
        print("\nslots held at the end:", final["realtime"]["slots_held"], "| answers:",
              f"{stats.c['answers']}/{stats.c['answers_expected']}", "| OK" if ok else "| FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
