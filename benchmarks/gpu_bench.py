#!/usr/bin/env python3
"""pylfm on an NVIDIA GPU, and liquid-audio 1.3.0 on the same GPU and checkpoint, as a ratio.

    python benchmarks/gpu_bench.py --model-dir GGUF_DIR --checkpoint CKPT --out gpu.json \
        [--liquid-python .venv-ref/bin/python]

``--checkpoint`` is a liquid-audio checkpoint with the real LFM2.5-Audio-1.5B sizes and random
weights (``python tools/make_tiny_checkpoint.py CKPT --full-size``); the F16 and Q8_0 GGUFs
missing from ``--model-dir`` are converted from it. Every cell runs in a fresh process whose GPU
memory is sampled with nvidia-smi every 50 ms:

- pylfm, Q8_0 and F16: 30 s at batch 1, and 15 min (windows of <= 30 s cut in pauses) at
  batch 1 and batched (``--batch``, default 32), ``device="cuda"``, flash attention on;
- liquid-audio (``benchmarks/liquid_audio_speed.py`` run by ``--liquid-python``, its own
  default bfloat16 on cuda) on the same audio, windows and checkpoint, one window at a
  time (its ``generate_sequential`` takes one conversation).

Each run generates exactly ``--fixed-tokens`` (64) tokens per window (end-of-generation
ignored: random weights). Reported: RTFx (audio seconds per wall second, model loaded, audio in
memory), decode tok/s, and for batch 1 decode against the HBM bandwidth bound (one decode step
reads every weight of the text model once, so tok/s <= bandwidth / weight bytes), prefill tok/s,
the audio-encode time, and peak GPU memory (the process's, from nvidia-smi; the device's used
memory above its idle level where the container hides process ids). Writes ``--out`` (JSON,
rewritten after every cell) and ``--out`` with ``.md`` (Markdown, also printed).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from perf_table import find_pair, prepare  # noqa: E402  (F16/Q8_0 conversion of the checkpoint)

# Peak memory bandwidth (GB/s) from NVIDIA's data sheets, by a substring of the device name;
# --hbm-gbs overrides. Most specific names first.
HBM_GBS = [("H200", 4800), ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350), ("GH200", 4000),
           ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555), ("L40S", 864), ("L40", 864),
           ("L4", 300), ("A10G", 600), ("A10", 600), ("RTX 4090", 1008), ("RTX 5090", 1792),
           ("RTX 5070 Ti", 896), ("B200", 8000)]


# ---------------------------------------------------------------------- GPU facts
def nvidia_smi(query: str, *, apps: bool = False) -> List[List[str]]:
    flag = "--query-compute-apps" if apps else "--query-gpu"
    try:
        out = subprocess.run(["nvidia-smi", f"{flag}={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [[c.strip() for c in line.split(",")] for line in out.stdout.strip().splitlines() if line.strip()]


def gpu_facts(index: int) -> Dict[str, Any]:
    rows = nvidia_smi("name,memory.total,driver_version,clocks.max.memory")
    if index >= len(rows):
        return {}
    name, total, driver, mem_clock = (rows[index] + ["", "", "", ""])[:4]
    return {"name": name, "memory_total_mib": _num(total), "driver": driver, "max_memory_clock_mhz": _num(mem_clock)}


def hbm_gbs(name: str, override: Optional[float]) -> Optional[float]:
    if override:
        return override
    return next((gbs for key, gbs in HBM_GBS if key.lower() in name.lower()), None)


class GpuMemory:
    """Samples GPU memory while a child process runs: the child's own (compute apps) and
    the device's used memory above what it was before the child started."""

    def __init__(self, index: int):
        self.index = index
        self.idle = self._device_used()
        self.proc_peak = 0.0
        self.device_peak = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.pid: Optional[int] = None

    def _device_used(self) -> float:
        rows = nvidia_smi("memory.used")
        return _num(rows[self.index][0]) if self.index < len(rows) else 0.0

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.device_peak = max(self.device_peak, self._device_used() - self.idle)
            for pid, used in nvidia_smi("pid,used_memory", apps=True):
                if self.pid is not None and pid == str(self.pid):
                    self.proc_peak = max(self.proc_peak, _num(used))

    def start(self, pid: int) -> None:
        self.pid = pid
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> Dict[str, float]:
        self._stop.set()
        if self._thread:
            self._thread.join()
        return {"peak_gpu_mib": self.proc_peak or self.device_peak,
                "peak_gpu_source": "process" if self.proc_peak else "device above idle",
                "device_peak_above_idle_mib": self.device_peak}


def _num(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0


# ---------------------------------------------------------------------- cells
def pylfm_worker(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """In the child: load pylfm on the GPU and time it."""
    import pylfm
    from pylfm.measure.bench import run_bench, synth_audio

    t0 = time.perf_counter()
    model = pylfm.Model(cfg["model"], cfg["mmproj"], device=cfg["device"], batch_size=cfg["batch"],
                        flash_attn=True)
    load_wall_ms = (time.perf_counter() - t0) * 1e3
    if cfg["warmup"]:  # warm-up on 30 s whatever the length: CUDA kernels, graphs, allocations
        run_bench(model, synth_audio(30.0, 16000, 1), sample_rate=16000, repeat=1, warmup=0,
                  fixed_tokens=cfg["fixed_tokens"])
    r = run_bench(model, synth_audio(cfg["seconds"], 16000, 0), sample_rate=16000, repeat=cfg["repeat"], warmup=0,
                  fixed_tokens=cfg["fixed_tokens"], batch_size=cfg["batch"], source=f"synthetic {cfg['seconds']:g} s")
    r["load_wall_ms"] = load_wall_ms
    return r


def run_child(cmd: List[str], gpu: int, timeout: float) -> Dict[str, Any]:
    mem = GpuMemory(gpu)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mem.start(p.pid)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return {"error": f"timed out after {timeout:.0f} s", **mem.stop()}
    memory = mem.stop()
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: " + " | ".join((err or out).strip().splitlines()[-8:]), **memory}
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": "no JSON from the child: " + (out or err)[-500:], **memory}
    return {**r, **memory, "process_wall_s": time.perf_counter() - t0}


def same_work(seconds: float, folder: Path):
    """pylfm's benchmark audio and its windows, as files liquid_audio_speed.py reads."""
    import numpy as np
    from pylfm.measure.bench import synth_audio
    from pylfm.vad import plan_windows

    pcm = synth_audio(seconds, 16000, 0)
    audio, windows = folder / f"bench-audio-{seconds:g}s.npy", folder / f"bench-windows-{seconds:g}s.json"
    np.save(audio, pcm)
    windows.write_text(json.dumps([[int(a), int(b)] for a, b in plan_windows(pcm, 16000, window=30.0)]))
    return audio, windows


def weight_bytes(model_path: str) -> int:
    """Bytes of every tensor in the text-model GGUF: what one decode step reads (the tied
    output matrix is read in place of the token-embedding table, which is looked up by row)."""
    from gguf import GGUFReader

    return int(sum(int(t.n_bytes) for t in GGUFReader(model_path).tensors))


# ---------------------------------------------------------------------- report
def _f(x: Any, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _audio(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


def markdown(res: Dict[str, Any]) -> str:
    env, cfg = res["environment"], res["config"]
    gpu = env.get("gpu", {})
    bw = cfg.get("hbm_gbs")
    lines = [
        f"# pylfm on {gpu.get('name', 'a GPU')} ({env['date']})", "",
        f"GPU: {gpu.get('name')} ({_f(gpu.get('memory_total_mib'), '.0f')} MiB, driver {gpu.get('driver')}); "
        f"HBM bound {_f(bw, '.0f')} GB/s; CPU {env['cpu']}. Random weights at the real LFM2.5-Audio-1.5B sizes; "
        f"{cfg['fixed_tokens']} tokens generated per window (end-of-generation ignored); synthetic speech-like "
        f"audio cut into windows of <= 30 s in its pauses. RTFx = audio seconds / wall second (model loaded, "
        f"audio in memory; higher is faster), the median of the runs.", "",
        "| engine | weights | audio | batch | windows | RTFx | decode tok/s | bound tok/s | of bound | "
        "encode + prefill ms | peak GPU MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in res["rows"]:
        head = f"| {row['engine']} | {row['weights']} | {_audio(row['seconds'])} | {row['batch']} |"
        if "error" in row:
            lines.append(f"{head} | error: {row['error'][:100]} | | | | | |")
            continue
        m = row["median"]
        rtfx = 1.0 / m["rtf"] if m.get("rtf") else None
        bound = bw * 1e9 / row["weight_bytes"] if bw and row.get("weight_bytes") and row["batch"] == 1 else None
        frac = m["decode_tok_s"] / bound if bound and m.get("decode_tok_s") else None
        front = m.get("encode_prefill_ms") or (m.get("encode_ms") or 0) + (m.get("prefill_ms") or 0)
        lines.append(
            f"{head} {row.get('n_windows', '–')} | {_f(rtfx, '.1f')} | {_f(m.get('decode_tok_s'), '.0f')} | "
            f"{_f(bound, '.0f')} | {_f(frac and 100 * frac, '.0f')}{'%' if frac else ''} | "
            f"{_f(front, '.0f')} | {_f(row.get('peak_gpu_mib'), '.0f')} |")
    liquid = next((r for r in res["rows"] if r["engine"] == "liquid-audio" and "error" not in r), None)
    if liquid:
        lines += ["", f"liquid-audio {liquid.get('dtype')} with torch {liquid.get('torch')}, attention "
                      f"{liquid.get('attn')}, one window at a time (its API takes one conversation)."]
    ratios = ratio_lines(res["rows"])
    if ratios:
        lines += ["", "pylfm RTFx / liquid-audio RTFx on the same audio and GPU:", ""] + ratios
    return "\n".join(lines) + "\n"


def ratio_lines(rows: List[Dict[str, Any]]) -> List[str]:
    def rtfx(r):
        return 1.0 / r["median"]["rtf"] if "error" not in r and r["median"].get("rtf") else None

    ref = {r["seconds"]: rtfx(r) for r in rows if r["engine"] == "liquid-audio"}
    out = []
    for r in rows:
        x = rtfx(r)
        if r["engine"] == "pylfm" and x and ref.get(r["seconds"]):
            out.append(f"- {r['weights']} {_audio(r['seconds'])} batch {r['batch']}: "
                       f"{x / ref[r['seconds']]:.1f}x")
    return out


# ---------------------------------------------------------------------- driver
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, help="folder with <name>-F16.gguf, <name>-Q8_0.gguf and their mmproj")
    p.add_argument("--checkpoint", type=Path, help="full-size checkpoint: convert what --model-dir lacks, and "
                                                   "what liquid-audio loads")
    p.add_argument("--quants", default="q8_0,f16")
    p.add_argument("--seconds", default="30,900", help="audio lengths (default 30,900)")
    p.add_argument("--batch", type=int, default=32, help="the batched cells' batch size (default 32)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--long-repeat", type=int, default=1, help="measured runs of audio > 60 s (default 1)")
    p.add_argument("--fixed-tokens", type=int, default=64)
    p.add_argument("--device", default="cuda", help="pylfm device (default cuda); the GPU index follows it")
    p.add_argument("--hbm-gbs", type=float, help="peak memory bandwidth, GB/s (default: from the GPU's name)")
    p.add_argument("--liquid-python", help="python of the liquid-audio venv (tools/reference/setup_env.sh); "
                                           "omitted: no liquid-audio cells")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out", type=Path, default=Path("gpu_bench.json"))
    p.add_argument("--render", type=Path, help="only print the Markdown of a results JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(pylfm_worker(json.loads(args.worker))))
        return 0
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return 0
    if not args.model_dir:
        p.error("--model-dir is required")
    quants = [q.strip().lower() for q in args.quants.split(",") if q.strip()]
    if args.checkpoint:
        prepare(args.checkpoint, args.model_dir, quants, None)
    gpu_index = int(args.device.partition(":")[2] or 0)
    facts = gpu_facts(gpu_index)
    from pylfm.measure.bench import _cpu_name

    res: Dict[str, Any] = {
        "environment": {"date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "gpu": facts, "cpu": _cpu_name()},
        "config": {"fixed_tokens": args.fixed_tokens, "batch": args.batch, "hbm_gbs": hbm_gbs(facts.get("name", ""),
                                                                                            args.hbm_gbs)},
        "rows": [],
    }
    md = args.out.with_suffix(".md")

    def save(row: Dict[str, Any]) -> None:
        res["rows"].append(row)
        args.out.write_text(json.dumps(res, indent=2))
        md.write_text(markdown(res))
        m = row.get("median") or {}
        what = row.get("error") or "RTFx %.1f, decode %.0f tok/s" % (1 / m["rtf"], m.get("decode_tok_s") or 0)
        print(f"  -> {what}, peak GPU {row.get('peak_gpu_mib', 0):.0f} MiB", file=sys.stderr, flush=True)

    seconds = [float(s) for s in args.seconds.split(",") if s.strip()]
    for q in quants:
        pair = find_pair(args.model_dir, q)
        if pair is None:
            p.error(f"no {q} GGUF pair in {args.model_dir} (pass --checkpoint)")
        wb = weight_bytes(str(pair[0]))
        for s in seconds:
            for batch in ([1] if s <= 30 else [1, args.batch]):
                cfg = {"model": str(pair[0]), "mmproj": str(pair[1]), "device": args.device, "batch": batch,
                       "seconds": s, "fixed_tokens": args.fixed_tokens, "warmup": 1,
                       "repeat": args.repeat if s <= 60 else args.long_repeat}
                print(f"pylfm {q} {_audio(s)} batch {batch} ...", file=sys.stderr, flush=True)
                r = run_child([sys.executable, __file__, "--worker", json.dumps(cfg)], gpu_index, args.timeout)
                save({"engine": "pylfm", "weights": q.upper(), "seconds": s, "batch": batch, "weight_bytes": wb, **r})
    if args.liquid_python:
        if not args.checkpoint:
            p.error("--liquid-python needs --checkpoint (liquid-audio loads the checkpoint itself)")
        for s in seconds:
            print(f"liquid-audio bf16 {_audio(s)} ...", file=sys.stderr, flush=True)
            audio, windows = same_work(s, args.out.parent)
            cmd = [args.liquid_python, str(HERE / "liquid_audio_speed.py"), "--checkpoint", str(args.checkpoint),
                   "--audio", str(audio), "--windows", str(windows), "--fixed-tokens", str(args.fixed_tokens),
                   "--device", args.device,
                   "--repeat", str(args.repeat if s <= 60 else args.long_repeat), "--json"]
            r = run_child(cmd, gpu_index, args.timeout)
            save({"engine": "liquid-audio", "weights": "BF16", "seconds": s, "batch": 1, **r})
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
