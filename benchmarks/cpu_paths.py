#!/usr/bin/env python3
"""What each CPU weight placement costs (issue 21), against liquid-audio on the same CPU.

    python tools/make_tiny_checkpoint.py /tmp/lfm-full --full-size --no-detokenizer
    python benchmarks/cpu_paths.py --checkpoint /tmp/lfm-full --model-dir /tmp/lfm-gguf \
        --threads 2 --out cpu_paths.json

For each text-model type (Q4_0, Q8_0, F16) and each placement mode pylfm can load it
with (``Model(cpu_repack=...)``: ``on`` = llama.cpp's own placement, ``no-amx`` = extra
buffer types off + matrix weights overridden to CPU_REPACK, ``off`` = plain weights;
``auto`` is one of these per machine and is not run twice), one fresh process loads the
model and times ``Model.transcribe`` of one 30 s window of ``pylfm.measure.bench.synth_audio``
(no VAD: exactly one window), exactly ``--fixed-tokens`` greedy tokens: first-token time
(audio encode + prefill, the engine's own timings), prefill tok/s, decode tok/s, the
weight buffers llama.cpp reports (``model.cpu_weights``). A placement that crashes (the
AMX path on Sapphire Rapids) is reported as the signal that ended its process.

liquid-audio 1.3.0 (float32, PyTorch on the CPU, the same audio, ``--threads`` torch
threads) runs through ``benchmarks/liquid_audio_speed.py`` in the reference venv
(``--ref-python``, default .venv-ref/bin/python; ``--no-ref`` skips it): its
encode+prefill time is its first-token time.

GGUFs missing from ``--model-dir`` are made from ``--checkpoint`` as perf_table.py does
(convert to F16 and Q8_0, quantize F16 -> Q4_0, paired with the Q8_0 mmproj). Prints a
Markdown table and writes ``--out`` (JSON: the machine, its load average before and after,
every run). Run it on an otherwise idle machine: the load average is in the report. On a
shared one, ``--rounds N`` runs every cell (and liquid-audio) N times, interleaved, and
reports medians over all runs, so a change in load hits every cell alike.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QTYPES = ("q4_0", "q8_0", "f16")
MODES = ("on", "no-amx", "off")


def _perf_table():
    spec = importlib.util.spec_from_file_location("_pylfm_perf_table", HERE / "perf_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- one pylfm cell (child process)
def worker(cfg: Dict[str, Any]) -> Dict[str, Any]:
    import pylfm
    from pylfm.measure.bench import run_bench, synth_audio

    t0 = time.perf_counter()
    model = pylfm.Model(cfg["model"], cfg["mmproj"], device="cpu", n_threads=cfg["threads"], batch_size=1,
                        cpu_repack=cfg["policy"])
    load_wall_ms = (time.perf_counter() - t0) * 1e3
    audio = synth_audio(cfg["seconds"], 16000, 0)
    r = run_bench(model, audio, sample_rate=16000, repeat=cfg["repeat"], warmup=1, fixed_tokens=cfg["fixed_tokens"],
                  window=cfg["seconds"], vad=None, source=f"synthetic {cfg['seconds']:g} s")
    assert r["n_windows"] == 1, r["n_windows"]
    first = sorted(run["encode_ms"] + run["prefill_ms"] for run in r["runs"])
    r["first_token_ms"] = {"median": first[len(first) // 2], "min": first[0], "max": first[-1]}
    r["load_wall_ms"] = load_wall_ms
    r["cpu_weights"] = {k: v for k, v in model.cpu_weights.items() if k != "overrides"}
    model.close()
    return r


def run_cell(cfg: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode < 0:
        return {"error": f"crashed: {signal.Signals(-p.returncode).name}", "stderr_tail": p.stderr[-800:]}
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: " + ((p.stderr or p.stdout).strip().splitlines() or [""])[-1][:160],
                "stderr_tail": p.stderr[-800:]}
    out = json.loads(p.stdout)
    out["process_wall_s"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------- liquid-audio
def run_reference(ref_python: Path, checkpoint: Path, seconds: float, fixed_tokens: int, repeat: int, threads: int,
                  timeout: float) -> Dict[str, Any]:
    from pylfm.measure.bench import synth_audio
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "audio.npy"
        np.save(audio, synth_audio(seconds, 16000, 0))
        cmd = [str(ref_python), str(HERE / "liquid_audio_speed.py"), "--checkpoint", str(checkpoint), "--audio",
               str(audio), "--fixed-tokens", str(fixed_tokens), "--repeat", str(repeat), "--device", "cpu",
               "--dtype", "float32", "--threads", str(threads), "--json"]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: " + ((p.stderr or p.stdout).strip().splitlines() or [""])[-1][:160],
                "stderr_tail": p.stderr[-800:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- rounds
def _median(vals: List[float]) -> Optional[float]:
    vals = sorted(v for v in vals if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def merge_rounds(results: List[Dict[str, Any]], keys: List[str], first_token: bool) -> Dict[str, Any]:
    """One cell's rounds as one result: the medians over every measured run of every round
    (rounds interleave the cells, so a change in the machine's load spreads over all of them)."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return dict(results[-1], rounds=len(results))
    runs = [run for r in ok for run in r["runs"]]
    out = dict(ok[0], runs=runs, rounds=len(results), failed_rounds=len(results) - len(ok))
    out["median"] = {k: _median([run.get(k) for run in runs]) for k in keys}
    out["min"] = {k: min((run[k] for run in runs if run.get(k) is not None), default=None) for k in keys}
    out["max"] = {k: max((run[k] for run in runs if run.get(k) is not None), default=None) for k in keys}
    if first_token:
        firsts = [run["encode_ms"] + run["prefill_ms"] for run in runs]
        out["first_token_ms"] = {"median": _median(firsts), "min": min(firsts), "max": max(firsts)}
    return out


# ---------------------------------------------------------------------- report
def _f(x: Any, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def render(report: Dict[str, Any]) -> str:
    ref = report.get("liquid_audio") or {}
    ref_first = (ref.get("median") or {}).get("encode_prefill_ms")
    auto_mode = report["machine"]["cpu"].get("mode")
    lines = [f"{report['machine']['cpu']['description']} ({'AMX' if report['machine']['cpu']['amx'] else 'no AMX'}; "
             f"extra buffer types: {', '.join(report['machine']['cpu']['extra_bufts']) or 'none'}), "
             f"{report['threads']} threads, 30 s window, {report['fixed_tokens']} tokens, median of "
             f"{report['repeat']} runs x {report.get('rounds', 1)} interleaved rounds; 1-minute load average "
             f"{report['loadavg_before'][0]:.2f} before, {report['loadavg_after'][0]:.2f} after"
             + (f" (at each round's start: {', '.join(f'{x:.2f}' for x in report['loadavg_rounds'])})"
                if report.get("loadavg_rounds") else ""), "",
             "| text model | placement (policies) | repacked weights | first token | encode | prefill tok/s | "
             "decode tok/s | first token / liquid-audio's |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        policies = row["mode"] + (" = auto" if row["mode"] == auto_mode else "")
        r = row["result"]
        if "error" in r:
            lines.append(f"| {row['qtype'].upper()} | {policies} | | {r['error']} | | | | |")
            continue
        med = r["median"]
        first = r["first_token_ms"]["median"]
        repack = r["cpu_weights"]["buffers_mib"].get("CPU_REPACK")
        lines.append(f"| {row['qtype'].upper()} | {policies} | {_f(repack, '.0f' if repack >= 10 else '.2f') + ' MiB' if repack else '–'} | "
                     f"{first / 1e3:.2f} s | {med['encode_ms'] / 1e3:.2f} s | {_f(med['prefill_tok_s'], '.0f')} | "
                     f"{_f(med['decode_tok_s'], '.1f')} | {_f(first / ref_first if ref_first else None, '.2f')} |")
    if ref:
        if "error" in ref:
            lines.append(f"| liquid-audio 1.3.0 (f32) | | | {ref['error']} | | | | |")
        else:
            m = ref["median"]
            lines.append(f"| liquid-audio 1.3.0 (f32, torch {ref.get('torch')}) | PyTorch | | "
                         f"{m['encode_prefill_ms'] / 1e3:.2f} s | | | {_f(m['decode_tok_s'], '.1f')} | 1.00 |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description="cost of each CPU weight placement (see the module docstring)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", type=Path, help="full-size checkpoint (GGUFs are made from it; liquid-audio loads it)")
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/lfm-gguf"))
    p.add_argument("--quants", default=",".join(QTYPES))
    p.add_argument("--modes", default=",".join(MODES), help="placements to run (on, no-amx, off)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--fixed-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3, help="measured runs per process (after one warm-up)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every cell (and liquid-audio) this many times, interleaved; medians over all runs")
    p.add_argument("--ref-python", type=Path, default=ROOT / ".venv-ref" / "bin" / "python")
    p.add_argument("--no-ref", action="store_true", help="skip liquid-audio")
    p.add_argument("--timeout", type=float, default=900.0, help="per process, seconds")
    p.add_argument("--out", type=Path, default=Path("cpu_paths.json"))
    p.add_argument("--render", type=Path, help="only print the table of an earlier --out")
    args = p.parse_args()

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0

    from pylfm.engine.cpu_weights import cpu_info

    qtypes = [q.strip().lower() for q in args.quants.split(",") if q.strip()]
    modes = [m.strip().lower() for m in args.modes.split(",") if m.strip()]
    pt = _perf_table()
    if args.checkpoint:
        pt.prepare(args.checkpoint, args.model_dir, qtypes, None)
    report: Dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
        "machine": {"cpu": cpu_info("auto"), "platform": platform.platform(), "cpus": os.cpu_count()},
        "threads": args.threads, "seconds": args.seconds, "fixed_tokens": args.fixed_tokens, "repeat": args.repeat,
        "loadavg_before": os.getloadavg(), "rounds": args.rounds, "loadavg_rounds": [], "rows": [],
    }
    cells = []
    for q in qtypes:
        pair = pt.find_pair(args.model_dir, q)
        if pair is None:
            _log(f"no {q} GGUF in {args.model_dir}: pass --checkpoint to make it")
            return 2
        for mode in modes:
            cells.append({"qtype": q, "mode": mode, "model": pair[0].name, "mmproj": pair[1].name, "results": [],
                          "cfg": {"model": str(pair[0]), "mmproj": str(pair[1]), "policy": mode,
                                  "threads": args.threads, "seconds": args.seconds,
                                  "fixed_tokens": args.fixed_tokens, "repeat": args.repeat}})
    run_ref = not args.no_ref
    if run_ref and not args.checkpoint:
        _log("liquid-audio needs --checkpoint; skipped")
        run_ref = False
    elif run_ref and not args.ref_python.exists():
        _log(f"{args.ref_python} not found (tools/reference/setup_env.sh makes it); liquid-audio skipped")
        run_ref = False
    ref_results: List[Dict[str, Any]] = []
    pylfm_keys = ["encode_ms", "prefill_ms", "decode_ms", "prefill_tok_s", "decode_tok_s", "rtf"]
    ref_keys = ["encode_prefill_ms", "decode_ms", "decode_tok_s", "total_ms", "rtf"]
    for rnd in range(args.rounds):
        report["loadavg_rounds"].append(os.getloadavg()[0])
        for cell in cells:
            _log(f"round {rnd + 1}/{args.rounds}: {cell['model']} under {cell['mode']} ...")
            r = run_cell(cell["cfg"], args.timeout)
            _log("  " + (r["error"] if "error" in r else
                         f"first token {r['first_token_ms']['median'] / 1e3:.2f} s, "
                         f"decode {r['median']['decode_tok_s']:.1f} tok/s; {r['cpu_weights']['summary']}"))
            cell["results"].append(r)
            report["rows"] = [{k: v for k, v in c.items() if k not in ("cfg", "results")}
                              | {"result": merge_rounds(c["results"], pylfm_keys, True)}
                              for c in cells if c["results"]]
            args.out.write_text(json.dumps(report, indent=1))
        if run_ref:
            _log(f"round {rnd + 1}/{args.rounds}: liquid-audio 1.3.0 ...")
            ref_results.append(run_reference(args.ref_python, args.checkpoint, args.seconds, args.fixed_tokens,
                                             args.repeat, args.threads, args.timeout))
            r = ref_results[-1]
            _log("  " + (r["error"] if "error" in r else
                         f"first token {r['median']['encode_prefill_ms'] / 1e3:.2f} s, "
                         f"decode {r['median']['decode_tok_s']:.1f} tok/s"))
            report["liquid_audio"] = merge_rounds(ref_results, ref_keys, False)
            args.out.write_text(json.dumps(report, indent=1))
    report["loadavg_after"] = os.getloadavg()
    args.out.write_text(json.dumps(report, indent=1))
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
