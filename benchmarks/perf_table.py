#!/usr/bin/env python3
"""Reproduce pylfm's CPU performance table: model type x audio length x threads, plus
pylfm's overhead against a bare llama.cpp C-API loop on the same request.

    python tools/make_tiny_checkpoint.py ckpt --full-size        # random weights, real sizes
    python benchmarks/perf_table.py --model-dir models --checkpoint ckpt --out results.json

With ``--checkpoint`` the GGUFs missing from ``--model-dir`` are made first
(``pylfm.files.convert.convert`` to F16 and Q8_0, ``pylfm.quantize`` of the F16 model to Q4_0,
which is paired with the Q8_0 mmproj: mmproj files are F16 or Q8_0). Without it,
``--model-dir`` must already hold ``<name>-<TYPE>.gguf`` and ``mmproj-<name>-<TYPE>.gguf``.

Every cell runs in a fresh process (so peak RSS is that configuration's own): a
warm-up run, then ``--repeat`` measured runs of ``Model.transcribe`` on the
deterministic synthetic signal of ``pylfm.measure.bench.synth_audio``, generating exactly
``--fixed-tokens`` tokens per 30 s window (random weights would otherwise stop at
arbitrary points). For the overhead rows, ``benchmarks/bare_loop.py --compare`` loads
pylfm and a bare llama.cpp C-API loop (same GGUFs, same context settings) in one
process and runs the same 30 s request through each in turn (interleaved, so a change
in machine load hits both); overhead = pylfm wall time / bare wall time - 1 (median
over rounds, and the ratio of the fastest runs), and the generated token ids are
compared.

Writes ``--out`` (JSON, rewritten after every cell, so an interrupted run keeps what
it measured) and a Markdown table (``--markdown``, default: ``--out`` with ``.md``),
which is also printed. ``--append`` adds rows to an existing ``--out``, to measure
parts of the matrix with different settings (e.g. fewer runs for 5 min audio);
``--render results.json`` only re-renders the Markdown.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
TYPES = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
MMPROJ_FALLBACK = ("Q8_0", "F16", "F32")


# ---------------------------------------------------------------------- model files
def find_pair(model_dir: Path, qtype: str) -> Optional[Tuple[Path, Path]]:
    """(model, mmproj) for ``qtype`` in ``model_dir``: ``<name>-<TYPE>.gguf`` and
    ``mmproj-<name>-<TYPE>.gguf``, or the Q8_0/F16/F32 mmproj for types an mmproj
    cannot have (Q4_0)."""
    tag = TYPES.get(qtype.lower(), qtype.upper())
    models = sorted(p for p in model_dir.glob(f"*-{tag}.gguf") if not p.name.startswith("mmproj-"))
    for m in models:
        name = m.name[: -len(f"-{tag}.gguf")]
        for t in (tag,) + MMPROJ_FALLBACK:
            mm = model_dir / f"mmproj-{name}-{t}.gguf"
            if mm.is_file():
                return m, mm
    return None


def prepare(checkpoint: Path, model_dir: Path, qtypes: List[str], name: Optional[str]) -> None:
    """Converts/quantizes whatever of ``qtypes`` is missing from ``model_dir``."""
    from pylfm.files.convert import convert
    from pylfm.files.quantize import quantize

    model_dir.mkdir(parents=True, exist_ok=True)
    name = name or checkpoint.resolve().name
    need = [q.lower() for q in qtypes if find_pair(model_dir, q) is None]
    if "q4_0" in need:  # made from F16 (text model) + the Q8_0 mmproj
        need += [q for q in ("f16", "q8_0") if q not in need and find_pair(model_dir, q) is None]
    for q in ("f16", "q8_0"):
        if q in need:
            t0 = time.perf_counter()
            _log(f"converting {checkpoint} -> {q} ...")
            convert(checkpoint, model_dir, outtype=q, name=name, progress=False)
            _log(f"  done in {time.perf_counter() - t0:.0f} s")
    if "q4_0" in need:
        src, _ = find_pair(model_dir, "f16")  # type: ignore[misc]
        dst = model_dir / src.name.replace("-F16.gguf", "-Q4_0.gguf")
        t0 = time.perf_counter()
        _log(f"quantizing {src.name} -> {dst.name} ...")
        quantize(src, dst, "Q4_0")
        _log(f"  done in {time.perf_counter() - t0:.0f} s")


# ---------------------------------------------------------------------- one cell, in a subprocess
def worker(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Runs inside the child process: load pylfm, bench, return the report."""
    import pylfm
    from pylfm.measure.bench import run_bench, synth_audio

    t0 = time.perf_counter()
    model = pylfm.Model(cfg["model"], cfg["mmproj"], device="cpu", n_threads=cfg["threads"],
                        batch_size=cfg["batch_size"])
    load_wall_ms = (time.perf_counter() - t0) * 1e3
    audio = synth_audio(cfg["seconds"], 16000, cfg.get("seed", 0))
    r = run_bench(model, audio, sample_rate=16000, repeat=cfg["repeat"], warmup=cfg["warmup"],
                  fixed_tokens=cfg["fixed_tokens"], source=f"synthetic {cfg['seconds']:g} s", keep_tokens=True,
                  vad="energy")  # the synthetic signal's tones are not speech to Silero
    r["load_wall_ms"] = load_wall_ms
    return r


def _run_child(cmd: List[str], timeout: float) -> Dict[str, Any]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-8:]
        return {"error": f"exit {p.returncode}: " + " | ".join(tail)}
    try:
        out = json.loads(p.stdout)
    except json.JSONDecodeError:
        return {"error": "no JSON from the child: " + p.stdout[-500:]}
    out["process_wall_s"] = time.perf_counter() - t0
    return out


def run_pylfm(cfg: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    return _run_child([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)], timeout)


def run_compare(cfg: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    """pylfm and the bare loop interleaved in one process (bare_loop.py --compare)."""
    cmd = [sys.executable, str(HERE / "bare_loop.py"), "--compare", "--model", cfg["model"], "--mmproj", cfg["mmproj"],
           "--seconds", str(cfg["seconds"]), "--seed", str(cfg.get("seed", 0)), "--threads", str(cfg["threads"]),
           "--repeat", str(cfg["repeat"]), "--warmup", str(cfg["warmup"]), "--fixed-tokens", str(cfg["fixed_tokens"]),
           "--batch-size", str(cfg["batch_size"]), "--json"]
    return _run_child(cmd, timeout)


# ---------------------------------------------------------------------- tables
def _f(x: Any, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _audio_label(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


def _sentence(note: Optional[str]) -> str:
    note = (note or "").strip()
    return note + " " if note else ""


def markdown(results: Dict[str, Any]) -> str:
    env = results["environment"]
    cfg = results["config"]
    out = [
        f"# pylfm CPU performance ({env['date']})",
        "",
        f"Machine: {env['cpu']} ({env['cpu_count']} CPUs), {env['platform']}; pylfm {env['pylfm']}, "
        f"llama-cpp-python {env['llama_cpp_python']}. {_sentence(cfg.get('note'))}Synthetic speech-like audio "
        f"(`pylfm.measure.bench.synth_audio`), a fixed number of tokens generated per 30 s window (end-of-generation "
        f"ignored), batch size {cfg['batch_size']}, `device=\"cpu\"`. Times are medians over the runs shown "
        f"(after the warm-up runs); RTF = wall time / audio duration (lower is faster); peak RSS is the "
        f"process's.",
        "",
        "| model | audio | threads | tokens/window | runs (+warm-up) | load s | encode ms | prefill tok/s | "
        "decode tok/s | total s | RTF (min–max) | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        head = f"| {row['qtype']} | {_audio_label(row['seconds'])} | {row['threads']} |"
        if "error" in row:
            out.append(f"{head} | | error: {row['error'][:80]} | | | | | | |")
            continue
        m = row["median"]
        out.append(
            f"{head} {row['fixed_tokens']} | {row['repeat']} (+{row['warmup']}) | {row['load_ms'] / 1e3:.2f} | "
            f"{m['encode_ms']:.0f} | {_f(m['prefill_tok_s'], '.1f')} | {_f(m['decode_tok_s'], '.2f')} | "
            f"{m['total_ms'] / 1e3:.2f} | {m['rtf']:.3f} ({row['min']['rtf']:.3f}–{row['max']['rtf']:.3f}) | "
            f"{_f(row['peak_rss_mb'], '.0f')} |")
    if results.get("overhead"):
        out += ["", "Wrapper overhead: one request through `pylfm.Model.transcribe` and through a bare llama.cpp "
                    "C-API loop (llama-cpp-python ctypes: `mtmd_tokenize`, `mtmd_helper_eval_chunks`, greedy "
                    "`llama_decode`; `benchmarks/bare_loop.py --compare`), same GGUFs and context settings, in one "
                    "process with the runs interleaved. Overhead = pylfm wall time / bare wall time - 1: the median "
                    "over rounds, and the ratio of the fastest runs.", "",
                "| model | audio | threads | rounds | pylfm s (median / min) | bare s (median / min) | "
                "overhead median | overhead min | decode tok/s pylfm / bare | same tokens |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for o in results["overhead"]:
            head = f"| {o['qtype']} | {_audio_label(o.get('seconds', 30.0))} | {o['threads']} |"
            if "error" in o:
                out.append(f"{head} | error: {o['error'][:80]} | | | | | |")
                continue
            out.append(
                f"{head} {o['repeat']} | {o['pylfm_total_ms']['median'] / 1e3:.2f} / "
                f"{o['pylfm_total_ms']['min'] / 1e3:.2f} | {o['bare_total_ms']['median'] / 1e3:.2f} / "
                f"{o['bare_total_ms']['min'] / 1e3:.2f} | {100 * o['overhead_median']:+.2f}% | "
                f"{100 * o['overhead_min']:+.2f}% | {_f(o['pylfm_decode_tok_s'], '.2f')} / "
                f"{_f(o['bare_decode_tok_s'], '.2f')} | {'yes' if o['same_tokens'] else 'NO'} |")
    loads = env.get("loadavg") or []
    if loads:
        out += ["", "1-minute load average when each cell started (other processes on the machine inflate times): "
                + ", ".join(f"{x:.2f}" for x in loads)]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- driver
def _environment() -> Dict[str, Any]:
    import importlib.metadata as md

    from pylfm.measure.bench import _cpu_name

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "?"

    return {"date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "pylfm": version("pylfm"),
            "llama_cpp_python": version("llama-cpp-python"), "loadavg": []}


def _loadavg() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _csv(text: str, cast=str) -> List[Any]:
    return [cast(x) for x in text.split(",") if x.strip()]


def _save(results: Dict[str, Any], out: Path, md_path: Path) -> None:
    out.write_text(json.dumps(results, indent=2))
    md_path.write_text(markdown(results))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="pylfm performance table (see the module docstring)")
    p.add_argument("--model-dir", type=Path, help="folder with <name>-<TYPE>.gguf + mmproj-<name>-<TYPE>.gguf")
    p.add_argument("--checkpoint", type=Path, help="liquid-audio checkpoint to convert when GGUFs are missing")
    p.add_argument("--name", help="base name of the converted GGUFs (default: the checkpoint folder's name)")
    p.add_argument("--quants", default="f16,q8_0,q4_0", help="model types (default f16,q8_0,q4_0)")
    p.add_argument("--seconds", default="30,300", help="audio lengths in seconds (default 30,300)")
    p.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    p.add_argument("--repeat", type=int, default=3, help="measured runs per cell (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs per cell (default 1)")
    p.add_argument("--fixed-tokens", type=int, default=64, help="tokens generated per 30 s window (default 64)")
    p.add_argument("--batch-size", type=int, default=4, help="pylfm batch size (default 4, pylfm's default)")
    p.add_argument("--bare", dest="bare", action="store_true", default=True,
                   help="after each --bare-seconds cell, measure pylfm against the bare C-API loop (default)")
    p.add_argument("--no-bare", dest="bare", action="store_false", help="skip the bare-loop comparison")
    p.add_argument("--bare-seconds", type=float, default=30.0, help="audio length of the overhead comparison")
    p.add_argument("--bare-repeat", type=int, default=None, help="interleaved rounds (default: --repeat)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per cell (default 3600)")
    p.add_argument("--out", type=Path, default=Path("results.json"), help="JSON results (default results.json)")
    p.add_argument("--append", action="store_true",
                   help="add to the rows of an existing --out (run parts of the matrix with different settings)")
    p.add_argument("--markdown", type=Path, default=None, help="Markdown table (default: --out with .md)")
    p.add_argument("--note", default="Random weights at the real LFM2.5-Audio-1.5B sizes.",
                   help="sentence about the models for the table's header")
    p.add_argument("--render", type=Path, metavar="RESULTS_JSON", help="only render the Markdown of a results file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.render:
        text = markdown(json.loads(args.render.read_text()))
        if args.markdown:
            args.markdown.write_text(text)
        print(text)
        return 0
    if args.model_dir is None:
        p.error("--model-dir is required")

    quants = [q.lower() for q in _csv(args.quants)]
    if args.checkpoint:
        prepare(args.checkpoint, args.model_dir, quants, args.name)
    pairs = {}
    for q in quants:
        pair = find_pair(args.model_dir, q)
        if pair is None:
            p.error(f"no {TYPES.get(q, q.upper())} model + mmproj in {args.model_dir} (pass --checkpoint to make them)")
        pairs[q] = pair

    md_path = args.markdown or args.out.with_suffix(".md")
    if args.append and args.out.is_file():
        results = json.loads(args.out.read_text())
        results["config"].setdefault("models", {}).update({q: [str(m), str(mm)] for q, (m, mm) in pairs.items()})
    else:
        results = {
            "environment": _environment(),
            "config": {"batch_size": args.batch_size, "note": args.note,
                       "models": {q: [str(m), str(mm)] for q, (m, mm) in pairs.items()}},
            "rows": [], "overhead": [],
        }
    if results["config"]["batch_size"] != args.batch_size:
        p.error(f"{args.out} was measured with batch size {results['config']['batch_size']}")
    for q in quants:
        model, mmproj = pairs[q]
        for seconds in _csv(args.seconds, float):
            for threads in _csv(args.threads, int):
                cfg = {"model": str(model), "mmproj": str(mmproj), "threads": threads, "seconds": seconds,
                       "repeat": args.repeat, "warmup": args.warmup, "fixed_tokens": args.fixed_tokens,
                       "batch_size": args.batch_size}
                results["environment"]["loadavg"].append(_loadavg())
                _log(f"pylfm {q} {_audio_label(seconds)} {threads} thread(s) ...")
                r = run_pylfm(cfg, args.timeout)
                results["rows"].append({"qtype": q, "seconds": seconds, "threads": threads, **r})
                if "error" in r:
                    _log(f"  error: {r['error']}")
                else:
                    _log(f"  RTF {r['median']['rtf']:.3f}, decode {r['median']['decode_tok_s']:.2f} tok/s, "
                         f"peak RSS {r['peak_rss_mb']:.0f} MiB ({r['process_wall_s']:.0f} s)")
                _save(results, args.out, md_path)
                if args.bare and seconds == args.bare_seconds:
                    _log(f"pylfm vs bare loop, interleaved: {q} {_audio_label(seconds)} {threads} thread(s) ...")
                    c = run_compare({**cfg, "repeat": args.bare_repeat or args.repeat}, args.timeout)
                    results["overhead"].append({"qtype": q, "seconds": seconds, "threads": threads, **c})
                    if "error" in c:
                        _log(f"  error: {c['error']}")
                    else:
                        _log(f"  overhead {100 * c['overhead_median']:+.2f}% (median of rounds), "
                             f"{100 * c['overhead_min']:+.2f}% (minima); same tokens: {c['same_tokens']} "
                             f"({c['process_wall_s']:.0f} s)")
                    _save(results, args.out, md_path)
    _save(results, args.out, md_path)
    print(markdown(results))
    _log(f"wrote {args.out} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
