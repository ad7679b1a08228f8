#!/usr/bin/env python3
"""Load test for ``pylfm serve``: requests/s and latency percentiles at several
levels of concurrency.

Against a running server:

    python benchmarks/load_server.py --url http://127.0.0.1:8080 [--api-key KEY] [--audio a.wav]

Or let it start one (a ``pylfm serve`` subprocess on a free loopback port):

    python benchmarks/load_server.py --model x.gguf --mmproj mmproj-x.gguf [--threads 4] [--max-new-tokens 64]

Each level runs C client threads that each send ``--requests`` transcriptions one
after another (after one warm-up request); with ``--total N`` every level sends the
same N requests, split among its clients, so levels compare the same work served
serialised (1 client) and concurrently. ``speedup`` is each level's requests/s over
the first level's.

The server measurement of the README (4 concurrent clients vs the same requests serialised, 30 s
speech-like clips, 96 tokens forced per request):

    python benchmarks/load_server.py --model lfm-full-Q8_0.gguf --mmproj mmproj-lfm-full-Q8_0.gguf \
        --threads 2 --seconds 30 --fixed-tokens 96 --clients 1,4 --total 8

Latency is per request, from sending the upload to the last byte of the answer (with ``--stream``, also the time to the first
text delta). requests/s = completed requests / wall time of the level. "audio x" is
seconds of audio transcribed per second of wall time. A request answered with anything
but 200 counts as a failure; one whose text differs from the first answer is counted
apart (greedy decoding, but batched and single-row matrix kernels round differently in
F16/quantized models, which can flip near-ties of random weights).

Prints a table, or JSON with ``--json``.
"""

import argparse
import contextlib
import io
import json
import math
import os
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import httpx
from serve_child import serve_child


def make_audio(seconds: float, rate: int = 16000) -> bytes:
    """pylfm.measure.bench.synth_audio's speech-like signal as a WAV file."""
    import soundfile as sf
    from pylfm.measure.bench import synth_audio

    buf = io.BytesIO()
    sf.write(buf, synth_audio(seconds, rate), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def audio_seconds(data: bytes) -> float:
    import soundfile as sf

    info = sf.info(io.BytesIO(data))
    return info.frames / info.samplerate


def percentile(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


class Target:
    def __init__(self, url: str, api_key: Optional[str], audio: bytes, fmt: str, stream: bool, timeout: float):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.audio, self.fmt, self.stream, self.timeout = audio, fmt, stream, timeout

    def request(self, client: httpx.Client) -> Dict[str, Any]:
        """One transcription: {"ok", "status", "latency", "ttft", "text"}."""
        files = {"file": ("audio.wav", self.audio, "audio/wav")}
        data = {"model": "lfm2-audio", "response_format": self.fmt}
        t0 = time.perf_counter()
        ttft = None
        try:
            if self.stream:
                data["stream"] = "true"
                parts = []
                with client.stream("POST", self.url + "/v1/audio/transcriptions", files=files, data=data,
                                   headers=self.headers, timeout=self.timeout) as r:
                    status = r.status_code
                    for line in r.iter_lines():
                        if not line.startswith("data:"):
                            continue
                        event = json.loads(line[5:])
                        if event.get("type") == "transcript.text.delta":
                            if ttft is None:
                                ttft = time.perf_counter() - t0
                            parts.append(event["delta"])
                        elif event.get("type") == "error":
                            status = 500
                text = "".join(parts)
            else:
                r = client.post(self.url + "/v1/audio/transcriptions", files=files, data=data,
                                headers=self.headers, timeout=self.timeout)
                status = r.status_code
                text = r.json().get("text", "") if self.fmt in ("json", "verbose_json") and status == 200 else r.text
        except httpx.HTTPError as e:
            return {"ok": False, "status": type(e).__name__, "latency": time.perf_counter() - t0, "ttft": None,
                    "text": None}
        return {"ok": status == 200, "status": status, "latency": time.perf_counter() - t0, "ttft": ttft,
                "text": text}


def run_level(target: Target, clients: int, requests: int, expected: Optional[str]) -> Dict[str, Any]:
    results: List[Dict[str, Any]] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client_loop() -> None:
        with httpx.Client() as client:
            start.wait()
            for _ in range(requests):
                r = target.request(client)
                # Same audio, greedy: a different text is counted (not a failure). Batched and
                # single-row matrix kernels round differently in F16/quantized models, which can
                # flip a near-tie of random weights; F32 gives the same tokens (tests).
                r["differs"] = r["ok"] and expected is not None and r["text"] != expected
                with lock:
                    results.append(r)

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    lat = [r["latency"] * 1000 for r in ok]
    ttft = [r["ttft"] * 1000 for r in ok if r["ttft"] is not None]
    failures: Dict[str, int] = {}
    for r in results:
        if not r["ok"]:
            failures[str(r["status"])] = failures.get(str(r["status"]), 0) + 1
    return {
        "clients": clients,
        "requests": len(results),
        "failures": len(results) - len(ok),
        "failure_kinds": failures,
        "texts_differing_from_serial": sum(bool(r.get("differs")) for r in results),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(ok) / wall, 3) if wall > 0 else None,
        "p50_ms": round(percentile(lat, 50), 1),
        "p95_ms": round(percentile(lat, 95), 1),
        "mean_ms": round(sum(lat) / len(lat), 1) if lat else None,
        "ttft_p50_ms": round(percentile(ttft, 50), 1) if ttft else None,
    }


def serve_args(args: argparse.Namespace) -> List[str]:
    """``pylfm serve``'s arguments for the server this benchmark starts."""
    cmd = ["--model", args.model, "--queue", str(max(64, max(args.clients) * 2)),
           "--max-new-tokens", str(args.max_new_tokens)]
    if args.mmproj:
        cmd += ["--mmproj", args.mmproj]
    if args.device:
        cmd += ["--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.api_key:
        cmd += ["--api-key", args.api_key]
    if args.fixed_tokens:
        cmd += ["--fixed-tokens", str(args.fixed_tokens)]
    return cmd


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("server (one of)")
    g.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080")
    g.add_argument("--model", help="start `pylfm serve` with this model GGUF")
    g.add_argument("--mmproj", help="... and this mmproj GGUF")
    g.add_argument("--device", default=None, help="device for the started server (default auto)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for the started server")
    g.add_argument("--max-new-tokens", type=int, default=128, help="generation limit of the started server")
    g.add_argument("--fixed-tokens", type=int, default=None,
                   help="the started server generates exactly this many tokens per window (pylfm serve --fixed-tokens)")
    g.add_argument("--start-timeout", type=float, default=300, help="seconds to wait for the started server")
    p.add_argument("--api-key", default=os.environ.get("PYLFM_API_KEY"), help="bearer key (default $PYLFM_API_KEY)")
    p.add_argument("--audio", help="audio file to send (default: a generated chirp of --seconds)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of the generated chirp (default 3)")
    p.add_argument("--clients", default="1,4,8", help="concurrency levels, comma-separated (default 1,4,8)")
    p.add_argument("--requests", type=int, default=5, help="requests per client per level (default 5)")
    p.add_argument("--total", type=int, default=None,
                   help="requests per level, split among its clients (the same work at every level)")
    p.add_argument("--response-format", default="json", choices=["json", "text", "verbose_json", "srt", "vtt"])
    p.add_argument("--stream", action="store_true", help="stream (SSE) and report time to the first delta")
    p.add_argument("--timeout", type=float, default=600, help="per-request timeout in seconds")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--verbose", action="store_true", help="show the started server's log")
    args = p.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if bool(args.url) == bool(args.model):
        p.error("give either --url (a running server) or --model [--mmproj] (start one)")
    if args.stream and args.response_format not in ("json", "text"):
        p.error("--stream works with --response-format json or text")

    audio = open(args.audio, "rb").read() if args.audio else make_audio(args.seconds)
    seconds = audio_seconds(audio)
    with contextlib.ExitStack() as stack:
        url = args.url
        if args.model:
            headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
            _, url = stack.enter_context(serve_child(serve_args(args), echo=args.verbose,
                                                     start_timeout=args.start_timeout, headers=headers))
        target = Target(url, args.api_key, audio, args.response_format, args.stream, args.timeout)
        with httpx.Client() as c:
            warm = target.request(c)  # loads caches, and gives the answer every request must match
        if not warm["ok"]:
            raise SystemExit(f"the warm-up request failed with {warm['status']}")
        expected = warm["text"]
        with httpx.Client() as c:
            health = c.get(url + "/health", headers=target.headers).json()
        levels = []
        for n in args.clients:
            per_client = args.requests if args.total is None else -(-args.total // n)
            level = run_level(target, n, per_client, expected)
            level["audio_x"] = round(level["requests_per_s"] * seconds, 2) if level["requests_per_s"] else None
            if levels and levels[0]["requests_per_s"] and level["requests_per_s"]:
                level["speedup"] = round(level["requests_per_s"] / levels[0]["requests_per_s"], 2)
            levels.append(level)

    report = {"url": url, "audio_seconds": round(seconds, 3), "response_format": args.response_format,
              "stream": args.stream, "requests_per_client": args.requests, "device": health.get("device"),
              "model": health.get("model"), "levels": levels}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if all(l["failures"] == 0 for l in levels) else 1
    print(f"{url}  model {report['model']} on {report['device']}  audio {seconds:.2f} s  "
          f"format {args.response_format}{' (stream)' if args.stream else ''}  {args.requests} requests/client")
    head = f"{'clients':>7} {'requests':>8} {'failed':>6} {'req/s':>8} {'p50 ms':>9} {'p95 ms':>9} {'audio x':>8} {'speedup':>8}"
    if args.stream:
        head += f" {'ttft p50':>9}"
    print(head)
    for l in levels:
        row = (f"{l['clients']:>7} {l['requests']:>8} {l['failures']:>6} {l['requests_per_s']:>8.2f} "
               f"{l['p50_ms']:>9.1f} {l['p95_ms']:>9.1f} {l['audio_x'] or 0:>8.2f} {l.get('speedup', 1.0):>8.2f}")
        if args.stream:
            row += f" {l['ttft_p50_ms'] or float('nan'):>9.1f}"
        print(row)
        if l["failure_kinds"]:
            print(f"{'':>7} failures: {l['failure_kinds']}")
    return 0 if all(l["failures"] == 0 for l in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
