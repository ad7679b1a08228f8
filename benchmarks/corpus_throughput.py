#!/usr/bin/env python3
"""Files per second of `pylfm corpus` (Ray Data, local cluster) against
`Model.transcribe_batch` in one process, on the same files, in the same run.

    python benchmarks/corpus_throughput.py [--full /work/models/lfm-full-gguf] [--json]

Always measures the tiny generated model (made in a temporary folder with the
project's generator and converter); with ``--full`` also a folder holding the
full-size random-weight GGUFs (see benchmarks/README.md). Each model runs on N and on
2N generated clips, both ways, with the same threads, batch size and a fixed number of
generated tokens per file (end-of-generation ignored and no loop guard, so both do the
same work); each measurement is the fastest of ``--repeat`` runs:

* in-process: one `pylfm.Model` (loaded before the clock starts), ``transcribe_batch(paths)``;
* Ray: ``transcribe_corpus(paths, out)`` on a local cluster started once (not timed):
  decode tasks, one actor that loads the model, Parquet written by Ray Data.

Every row carries the engine time spent on its file (encode + prefill + decode; files
decoded together share each step, so the sum is the time the engine was busy). What
a run spends outside the engine is wall - busy: for the Ray job that is actor start,
model load, pipeline start (fixed per job) plus a cost per file. From the two sizes:
Ray's cost per file = ((wall - busy)(2N) - (wall - busy)(N)) / N, its fixed cost =
(wall - busy)(N) - N x that. Other load on the machine slows the engine (busy) but not
these differences as much; still, the cost of starting a process varies with the load,
so on a busy machine the two derived numbers can come out negative: then read the
per-run ``ray_outside_engine_s`` (an upper bound for the whole job's Ray cost).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000


def make_clips(folder: Path, n: int, seconds: float, seed: int) -> List[str]:
    """``n`` distinct clips of ``seconds`` (chirps + noise), 16 kHz WAV."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    t = np.arange(int(seconds * RATE)) / RATE
    for i in range(n):
        f0, f1 = rng.uniform(100, 800), rng.uniform(900, 3500)
        x = 0.25 * np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / seconds * t * t)) + 0.01 * rng.standard_normal(len(t))
        path = folder / f"clip{i:04d}.wav"
        sf.write(path, x.astype(np.float32), RATE)
        paths.append(str(path))
    return paths


def tiny_model(work: Path) -> Tuple[str, str]:
    import importlib.util

    from pylfm.files.convert import convert

    spec = importlib.util.spec_from_file_location("make_tiny_checkpoint", ROOT / "tools" / "make_tiny_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules["make_tiny_checkpoint"] = tool
    spec.loader.exec_module(tool)
    ckpt = tool.make_checkpoint(work / "tiny-lfm2-audio", seed=0)
    res = convert(ckpt, outdir=work / "tiny-gguf", outtype="f32", progress=False)
    return str(res.model_path), str(res.mmproj_path)


def model_pair(folder: str) -> Tuple[str, str]:
    ggufs = sorted(Path(folder).glob("*.gguf"))
    mmproj = [p for p in ggufs if p.name.startswith("mmproj")]
    text = [p for p in ggufs if not p.name.startswith("mmproj")]
    if len(mmproj) != 1 or len(text) != 1:
        sys.exit(f"{folder} must hold one text-model GGUF and one mmproj-*.gguf")
    return str(text[0]), str(mmproj[0])


def in_process(model: Any, paths: List[str], tokens: int) -> Tuple[float, float]:
    """(wall seconds, engine-busy seconds) of one transcribe_batch over ``paths``."""
    t0 = time.perf_counter()
    results = model.transcribe_batch(paths, max_new_tokens=tokens, ignore_eos=True, loop_guard=None)
    wall = time.perf_counter() - t0
    bad = [r for r in results if isinstance(r, Exception)]
    if bad:
        raise RuntimeError(f"in-process run failed: {bad[0]}")
    return wall, sum(r.timings.encode_ms + r.timings.prefill_ms + r.timings.decode_ms for r in results) / 1000


def with_ray(model: str, mmproj: str, paths: List[str], out: Path, args: argparse.Namespace) -> Tuple[float, float]:
    """(wall seconds, engine-busy seconds) of one corpus job over ``paths``."""
    import pyarrow.parquet as pq

    from pylfm.corpus import transcribe_corpus

    shutil.rmtree(out, ignore_errors=True)
    s = transcribe_corpus(paths, str(out), model=model, mmproj=mmproj, actors=1, cpus_per_actor=args.threads,
                          threads=args.threads, batch_size=args.batch_size, files_per_call=2 * args.batch_size,
                          max_new_tokens=args.tokens, ignore_eos=True, loop_guard=None, progress=False)
    if s.written != len(paths) or s.errors:
        raise RuntimeError(f"Ray run incomplete: {s}")
    timings = pq.read_table(out, columns=["timings"]).column("timings").to_pylist()
    return s.seconds, sum(t["encode_ms"] + t["prefill_ms"] + t["decode_ms"] for t in timings) / 1000


def best(repeat: int, fn: Any, *a: Any) -> Tuple[float, float]:
    """The fastest of ``repeat`` runs: other work on the machine only ever adds time."""
    return min((fn(*a) for _ in range(repeat)), key=lambda wall_busy: wall_busy[0])


def decode_cost(paths: List[str]) -> float:
    """CPU milliseconds per file of the decode task (read + decode + resample check)."""
    import pyarrow as pa

    from pylfm.corpus.pipeline import decode_batch

    table = pa.table({"path": paths})
    t0 = time.process_time()
    decode_batch(table, max_duration=None)
    return 1000 * (time.process_time() - t0) / len(paths)


def measure(name: str, model: str, mmproj: str, n: int, seconds: float, work: Path,
            args: argparse.Namespace) -> Dict[str, Any]:
    import pylfm

    small = make_clips(work / f"{name}-a", n, seconds, seed=1)
    large = small + make_clips(work / f"{name}-b", n, seconds, seed=2)
    log(f"{name}: {n} and {2 * n} clips of {seconds:g} s, {args.tokens} tokens each, "
        f"{args.threads} threads, batch {args.batch_size}")
    with pylfm.Model(model, mmproj, device="cpu", n_threads=args.threads, batch_size=args.batch_size) as m:
        load_s = m.load_ms / 1000
        in_process(m, small[:2], args.tokens)  # warm-up: first calls allocate llama.cpp buffers
        t_in = {k: best(args.repeat, in_process, m, files, args.tokens) for k, files in ((n, small), (2 * n, large))}
    log(f"  in-process: wall {t_in[n][0]:.1f} s / {t_in[2 * n][0]:.1f} s, engine busy {t_in[n][1]:.1f} / {t_in[2 * n][1]:.1f} s")
    t_ray = {k: best(args.repeat, with_ray, model, mmproj, files, work / "out", args)
             for k, files in ((n, small), (2 * n, large))}
    log(f"  ray:        wall {t_ray[n][0]:.1f} s / {t_ray[2 * n][0]:.1f} s, engine busy {t_ray[n][1]:.1f} / {t_ray[2 * n][1]:.1f} s")
    outside = {k: wall - busy for k, (wall, busy) in t_ray.items()}
    per_file = (outside[2 * n] - outside[n]) / n
    engine_per_file = t_ray[2 * n][1] / (2 * n)
    return {
        "model": Path(model).name, "files": [n, 2 * n], "clip_seconds": seconds, "tokens_per_file": args.tokens,
        "threads": args.threads, "batch_size": args.batch_size, "repeat": args.repeat, "model_load_s": round(load_s, 3),
        "in_process_wall_s": [round(t_in[n][0], 2), round(t_in[2 * n][0], 2)],
        "in_process_busy_s": [round(t_in[n][1], 2), round(t_in[2 * n][1], 2)],
        "ray_wall_s": [round(t_ray[n][0], 2), round(t_ray[2 * n][0], 2)],
        "ray_busy_s": [round(t_ray[n][1], 2), round(t_ray[2 * n][1], 2)],
        "files_per_s_in_process": round(2 * n / t_in[2 * n][0], 3),
        "files_per_s_ray": round(2 * n / t_ray[2 * n][0], 3),
        "ratio_ray_vs_in_process": round(t_in[2 * n][0] / t_ray[2 * n][0], 3),
        "engine_s_per_file": round(engine_per_file, 3),
        "ray_outside_engine_s": [round(outside[n], 2), round(outside[2 * n], 2)],
        "ray_overhead_per_file_ms": round(1000 * per_file, 1),
        "ray_fixed_cost_per_job_s": round(outside[n] - n * per_file, 2),
        "per_actor_files_per_s_steady": round(1 / (engine_per_file + per_file), 3),
        "decode_cpu_ms_per_file": round(decode_cost(small), 2),
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", default=None, help="folder with the full-size text GGUF and mmproj (optional)")
    p.add_argument("--tiny-files", type=int, default=32, help="N for the tiny model (default 32)")
    p.add_argument("--full-files", type=int, default=8, help="N for the full-size model (default 8)")
    p.add_argument("--seconds", type=float, default=5.0, help="clip length (default 5 s)")
    p.add_argument("--tokens", type=int, default=32, help="tokens generated per file (default 32)")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads, both ways (default 2)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences decoded at once (default 4)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster (default 2)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each measurement; the fastest counts (default 2)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = p.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="pylfm-corpus-bench-"))
    try:
        t0 = time.perf_counter()
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        results: Dict[str, Any] = {"ray_version": ray.__version__, "ray_init_s": round(time.perf_counter() - t0, 2),
                                   "runs": []}
        model, mmproj = tiny_model(work)
        results["runs"].append(measure("tiny", model, mmproj, args.tiny_files, args.seconds, work, args))
        if args.full:
            model, mmproj = model_pair(args.full)
            results["runs"].append(measure("full", model, mmproj, args.full_files, args.seconds, work, args))
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    for r in results["runs"]:
        log(f"{r['model']}: in-process {r['files_per_s_in_process']} files/s, Ray {r['files_per_s_ray']} files/s "
            f"(x{r['ratio_ray_vs_in_process']}); engine {r['engine_s_per_file']} s/file, Ray outside the engine "
            f"{r['ray_overhead_per_file_ms']} ms/file + {r['ray_fixed_cost_per_job_s']} s/job; per actor at steady "
            f"state {r['per_actor_files_per_s_steady']} files/s; decode {r['decode_cpu_ms_per_file']} ms CPU/file")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
