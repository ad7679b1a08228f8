#!/usr/bin/env python3
"""The same single ASR request as `pylfm bench`, run through llama.cpp's C API
directly (llama-cpp-python's low-level ctypes bindings, no pylfm engine): the
baseline for pylfm's wrapper overhead.

    python benchmarks/bare_loop.py --model M.gguf --mmproj mmproj-M.gguf \\
        --seconds 30 --threads 2 --fixed-tokens 64 --repeat 3 --json

    # pylfm's overhead: both in one process, the same request interleaved
    python benchmarks/bare_loop.py --compare --batch-size 4 --model M.gguf --mmproj mmproj-M.gguf \\
        --seconds 30 --threads 2 --fixed-tokens 64 --repeat 4

What it does per run, mirroring pylfm's native core call for call:

1. ``mtmd_bitmap_init_from_audio`` on the float32 16 kHz PCM, ``mtmd_tokenize`` of
   pylfm's exact ASR prompt (``pylfm.engine.prompt.build_prompt("Perform ASR.")``) with
   ``add_special=True, parse_special=True``;
2. ``mtmd_helper_eval_chunks`` (text chunks decoded, the audio chunk encoded by the
   conformer and its embeddings decoded) with logits for the last position;
3. a greedy loop: ``llama_sampler_sample`` (greedy sampler), ``llama_decode`` of a
   one-token ``llama_batch``, until end-of-generation or ``--max-new-tokens``, or
   exactly ``--fixed-tokens`` tokens (end-of-generation ignored);
4. ``llama_memory_seq_rm`` to clear the sequence for the next run.

The model and context are created with the same settings pylfm uses on CPU
(n_gpu_layers 0, n_batch = n_ubatch = 512, one KV stream per sequence, flash attention
off, no op offload, no perf counters; mtmd on CPU without warm-up); ``--n-ctx`` and
``--n-seq-max`` must match pylfm's (its context per sequence x batch size, and the
batch size) for a like-for-like comparison, which ``--compare`` takes care of.
Without ``--compare`` only pure-Python helpers of pylfm are used (the test signal,
audio decoding, the prompt text); pylfm's native module is not loaded.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np


_DISCARD = None  # the C log callback; module-global so it outlives every BareASR


def _quiet_logs(ll: Any, mt: Any) -> None:
    """Send llama.cpp's and mtmd's log nowhere (they are process-wide settings: run
    this script in its own process, as perf_table.py does, not inside a pylfm one)."""
    global _DISCARD
    if _DISCARD is None:
        _DISCARD = ll.llama_log_callback(lambda level, text, user_data: None)
    ll.llama_log_set(_DISCARD, ctypes.c_void_p(0))
    mt.mtmd_log_set(_DISCARD, ctypes.c_void_p(0))
    if hasattr(mt, "mtmd_helper_log_set"):
        mt.mtmd_helper_log_set(_DISCARD, ctypes.c_void_p(0))


def _load_backend_modules(ll) -> None:
    """A portable llama.cpp build (GGML_BACKEND_DL) registers no backend until asked, and
    llama-cpp-python does not ask: load them as pylfm's core does (load_backend_modules in
    src/native/cpu_weights.cpp). Nothing happens for a build that links its backends."""
    lib_dir = Path(ll.__file__).resolve().parent / "lib"
    # by its soname: the copy libllama loaded (a wheel holds libggml.so, .so.0 and .so.0.x.y as
    # three copies, and a second copy would be a second, empty backend registry)
    path = lib_dir / "libggml.so.0"
    if not path.exists():
        return
    ggml = ctypes.CDLL(str(path))
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    cpu = 0  # GGML_BACKEND_DEVICE_TYPE_CPU
    for d in (lib_dir, lib_dir.parent.parent / "bin"):  # the wheel puts the modules in <site-packages>/bin
        if ggml.ggml_backend_dev_by_type(cpu):
            return
        ggml.ggml_backend_load_all_from_path(str(d).encode())


def _has_amx_buffer_type() -> bool:
    """Whether the CPU backend offers the AMX buffer type (asked through pylfm's core,
    which reads ggml's registry; the bare loop itself stays pure llama.cpp)."""
    try:
        from pylfm import _core
    except ImportError:
        return False
    return "AMX" in _core.cpu_facts()["extra_bufts"]


class BareASR:
    """llama.cpp + mtmd through ctypes, set up as pylfm's core sets itself up on CPU."""

    def __init__(self, model: str, mmproj: str, *, n_threads: int, n_ctx: int = 2048, n_batch: int = 512,
                 n_seq_max: int = 1, kv_unified: bool = False, verbose: bool = False) -> None:
        import llama_cpp.llama_cpp as ll
        import llama_cpp.mtmd_cpp as mt

        self.ll, self.mt = ll, mt
        if not verbose:
            _quiet_logs(ll, mt)
        t0 = time.perf_counter()
        _load_backend_modules(ll)
        ll.llama_backend_init()
        mp = ll.llama_model_default_params()
        mp.n_gpu_layers = 0
        if _has_amx_buffer_type():
            # the AMX buffer type's matrix product crashes (see docs/cpus.md): off, as
            # pylfm's auto placement does (minus its CPU_REPACK overrides)
            mp.use_extra_bufts = False
        self.model = ll.llama_model_load_from_file(model.encode(), mp)
        if not self.model:
            raise RuntimeError(f"could not load {model}")
        self.vocab = ll.llama_model_get_vocab(self.model)

        cp = ll.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_batch, n_seq_max
        cp.kv_unified = kv_unified  # pylfm: one KV stream per sequence
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.no_perf = True
        cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.op_offload = False
        self.ctx = ll.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("could not create the llama context")

        mcp = mt.mtmd_context_params_default()
        mcp.use_gpu = False
        mcp.device = None
        mcp.n_threads = n_threads
        mcp.print_timings = False
        mcp.warmup = False
        mcp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.mctx = mt.mtmd_init_from_file(mmproj.encode(), self.model, mcp)
        if not self.mctx:
            raise RuntimeError(f"could not load the mmproj {mmproj}")
        if not mt.mtmd_support_audio(self.mctx):
            raise RuntimeError(f"{mmproj} has no audio encoder")
        self.sample_rate = mt.mtmd_get_audio_sample_rate(self.mctx)
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.n_batch = n_batch
        self.sampler = ll.llama_sampler_init_greedy()
        self.batch = ll.llama_batch_init(1, 0, 1)
        self._piece = ctypes.create_string_buffer(256)

    def close(self) -> None:
        ll, mt = self.ll, self.mt
        ll.llama_batch_free(self.batch)
        ll.llama_sampler_free(self.sampler)
        mt.mtmd_free(self.mctx)
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)

    def run(self, pcm: np.ndarray, prompt: str, *, max_new_tokens: int, ignore_eos: bool) -> Dict[str, Any]:
        """One request; returns tokens, text and the stage timings (ms)."""
        ll, mt = self.ll, self.mt
        pcm = np.ascontiguousarray(pcm, dtype=np.float32)
        t_start = time.perf_counter()
        bitmap = mt.mtmd_bitmap_init_from_audio(len(pcm), pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        chunks = mt.mtmd_input_chunks_init()
        try:
            raw = prompt.encode("utf-8")
            text = mt.mtmd_input_text(raw, len(raw), True, True)
            bitmaps = (mt.mtmd_bitmap_p_ctypes * 1)(bitmap)
            if mt.mtmd_tokenize(self.mctx, chunks, ctypes.byref(text), bitmaps, 1) != 0:
                raise RuntimeError("mtmd_tokenize failed")
            n_prompt = mt.mtmd_helper_get_n_tokens(chunks)
            n_audio = sum(mt.mtmd_input_chunk_get_n_tokens(mt.mtmd_input_chunks_get(chunks, i))
                          for i in range(mt.mtmd_input_chunks_size(chunks))
                          if mt.mtmd_input_chunk_get_type(mt.mtmd_input_chunks_get(chunks, i))
                          == mt.MTMD_INPUT_CHUNK_TYPE_AUDIO)
            n_past = ll.llama_pos(0)
            t_eval = time.perf_counter()
            if mt.mtmd_helper_eval_chunks(self.mctx, self.ctx, chunks, 0, 0, self.n_batch, True,
                                          ctypes.byref(n_past)) != 0:
                raise RuntimeError("mtmd_helper_eval_chunks failed")
            eval_ms = (time.perf_counter() - t_eval) * 1e3
        finally:
            mt.mtmd_input_chunks_free(chunks)
            mt.mtmd_bitmap_free(bitmap)

        tokens: List[int] = []
        pieces = bytearray()
        pos = n_past.value
        batch = self.batch
        nxt = ll.llama_sampler_sample(self.sampler, self.ctx, -1)
        t_dec = time.perf_counter()
        try:
            while True:
                if not ignore_eos and ll.llama_vocab_is_eog(self.vocab, nxt):
                    break
                tokens.append(nxt)
                n = ll.llama_token_to_piece(self.vocab, nxt, self._piece, 256, 0, False)
                if n > 0:
                    pieces += self._piece.raw[:n]
                if len(tokens) >= max_new_tokens:
                    break
                batch.n_tokens = 1
                batch.token[0] = nxt
                batch.pos[0] = pos
                batch.n_seq_id[0] = 1
                batch.seq_id[0][0] = 0
                batch.logits[0] = 1
                pos += 1
                if ll.llama_decode(self.ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                nxt = ll.llama_sampler_sample(self.sampler, self.ctx, 0)
            decode_ms = (time.perf_counter() - t_dec) * 1e3
        finally:
            ll.llama_memory_seq_rm(ll.llama_get_memory(self.ctx), 0, -1, -1)
            ll.llama_sampler_reset(self.sampler)
        total_ms = (time.perf_counter() - t_start) * 1e3
        return {"tokens": tokens, "text": pieces.decode("utf-8", "replace"), "n_prompt_tokens": int(n_prompt),
                "n_audio_tokens": int(n_audio), "eval_ms": eval_ms, "decode_ms": decode_ms, "total_ms": total_ms}


def _stats(values: List[float]) -> Dict[str, float]:
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


def bare_bench(model: str, mmproj: str, pcm: np.ndarray, *, n_threads: int, repeat: int = 3, warmup: int = 1,
               fixed_tokens: Optional[int] = None, max_new_tokens: int = 512, n_ctx: int = 2048,
               n_seq_max: int = 1, verbose: bool = False) -> Dict[str, Any]:
    """Loads the model through ctypes and times ``repeat`` runs after ``warmup``."""
    from pylfm.engine.prompt import build_prompt
    from pylfm.measure.bench import peak_rss_mb

    asr = BareASR(model, mmproj, n_threads=n_threads, n_ctx=n_ctx, n_seq_max=n_seq_max, verbose=verbose)
    try:
        prompt = build_prompt(system="Perform ASR.", user=None)
        kw = dict(max_new_tokens=fixed_tokens or max_new_tokens, ignore_eos=fixed_tokens is not None)
        for _ in range(warmup):
            asr.run(pcm, prompt, **kw)
        runs = []
        for _ in range(repeat):
            r = asr.run(pcm, prompt, **kw)
            n = len(r["tokens"])
            runs.append({**r, "decode_tok_s": n / (r["decode_ms"] / 1e3) if r["decode_ms"] > 0 and n else None,
                         "rtf": r["total_ms"] / 1e3 / (len(pcm) / asr.sample_rate)})
        last = runs[-1]
        out: Dict[str, Any] = {
            "model": Path(model).name, "mmproj": Path(mmproj).name, "threads": n_threads, "n_ctx": n_ctx,
            "n_seq_max": n_seq_max, "audio_seconds": len(pcm) / asr.sample_rate, "repeat": repeat,
            "warmup": warmup, "fixed_tokens": fixed_tokens, "load_ms": asr.load_ms,
            "n_prompt_tokens": last["n_prompt_tokens"], "n_audio_tokens": last["n_audio_tokens"],
            "n_tokens": len(last["tokens"]), "tokens": last["tokens"], "text": last["text"],
            "median": {}, "min": {}, "max": {},
            "runs": [{k: v for k, v in r.items() if k not in ("tokens", "text")} for r in runs],
        }
        for k in ("eval_ms", "decode_ms", "total_ms", "decode_tok_s", "rtf"):
            vals = [r[k] for r in runs if r[k] is not None]
            if vals:
                s = _stats(vals)
                for w in ("median", "min", "max"):
                    out[w][k] = s[w]
        out["peak_rss_mb"] = peak_rss_mb()
        return out
    finally:
        asr.close()


def compare(model: str, mmproj: str, pcm: np.ndarray, *, n_threads: int, repeat: int = 3, warmup: int = 1,
            fixed_tokens: Optional[int] = None, max_new_tokens: int = 512, batch_size: int = 1) -> Dict[str, Any]:
    """pylfm and the bare loop in one process, runs interleaved: pylfm's wrapper overhead.

    Both hold the same GGUFs with the same settings (pylfm ``Model(device="cpu",
    batch_size=...)``; the bare context with pylfm's context per sequence x batch_size
    and that many sequences). After ``warmup`` runs of each, ``repeat`` rounds each time one request
    through both (alternating which goes first), so that a change in machine load hits
    both alike. pylfm's time is the wall time of ``Model.transcribe`` on the 16 kHz
    array (its audio checks, window split, prompt, engine call and result building);
    the bare loop's is tokenize -> eval chunks -> greedy loop, run on pylfm's engine
    thread (one computing thread per process, as pylfm itself keeps it). Overhead per round =
    pylfm / bare - 1; the report gives the median of the rounds and the ratio of the
    minima.
    """
    import logging

    import pylfm
    from pylfm.engine.prompt import build_prompt
    from pylfm.measure.bench import peak_rss_mb

    logging.getLogger("pylfm.llama").setLevel(logging.ERROR)  # llama.cpp's load-time chatter
    lfm = pylfm.Model(model, mmproj, device="cpu", n_threads=n_threads, batch_size=batch_size)
    # the same context as pylfm's engine: its context per sequence x its sequences, one KV stream each
    asr = BareASR(model, mmproj, n_threads=n_threads, n_ctx=lfm._engine.n_ctx_seq * batch_size, n_seq_max=batch_size)
    try:
        prompt = build_prompt(system="Perform ASR.", user=None)
        n = fixed_tokens or max_new_tokens
        ignore_eos = fixed_tokens is not None

        def run_pylfm() -> Any:
            t0 = time.perf_counter()
            r = lfm.transcribe(pcm, sample_rate=16000, max_new_tokens=n, ignore_eos=ignore_eos)
            return r, (time.perf_counter() - t0) * 1e3

        def run_bare() -> Dict[str, Any]:
            # On pylfm's engine thread, so that one thread of this process computes: with
            # two, libgomp stops spinning in both worker pools and slows both down.
            return lfm.scheduler.call(lambda: asr.run(pcm, prompt, max_new_tokens=n, ignore_eos=ignore_eos))

        for _ in range(warmup):
            run_pylfm()
            run_bare()
        rounds = []
        for i in range(repeat):
            if i % 2 == 0:
                (res, wall), b = run_pylfm(), run_bare()
            else:
                b = run_bare()
                res, wall = run_pylfm()
            t = res.timings
            rounds.append({
                "pylfm_total_ms": wall, "bare_total_ms": b["total_ms"],
                "pylfm_prompt_ms": t.encode_ms + t.prefill_ms, "bare_prompt_ms": b["eval_ms"],
                "pylfm_decode_ms": t.decode_ms, "bare_decode_ms": b["decode_ms"],
                "overhead": wall / b["total_ms"] - 1,
                "same_tokens": list(res.tokens) == b["tokens"],
                "n_tokens": len(res.tokens),
            })
        med = lambda k: float(statistics.median(r[k] for r in rounds))  # noqa: E731
        low = lambda k: float(min(r[k] for r in rounds))  # noqa: E731
        n_tok = rounds[-1]["n_tokens"]
        return {
            "model": Path(model).name, "mmproj": Path(mmproj).name, "threads": n_threads, "batch_size": batch_size,
            "audio_seconds": len(pcm) / 16000, "repeat": repeat, "warmup": warmup, "fixed_tokens": fixed_tokens,
            "n_tokens": n_tok, "rounds": rounds,
            "same_tokens": all(r["same_tokens"] for r in rounds),
            "overhead_median": float(statistics.median(r["overhead"] for r in rounds)),
            "overhead_min": low("pylfm_total_ms") / low("bare_total_ms") - 1,
            "pylfm_total_ms": {"median": med("pylfm_total_ms"), "min": low("pylfm_total_ms")},
            "bare_total_ms": {"median": med("bare_total_ms"), "min": low("bare_total_ms")},
            "pylfm_decode_tok_s": n_tok / (med("pylfm_decode_ms") / 1e3) if n_tok else None,
            "bare_decode_tok_s": n_tok / (med("bare_decode_ms") / 1e3) if n_tok else None,
            "peak_rss_mb": peak_rss_mb(),
        }
    finally:
        asr.close()


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="text-model GGUF")
    p.add_argument("--mmproj", required=True, help="mmproj GGUF")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--audio", help="audio file (decoded and resampled with pylfm.audio.load_audio)")
    src.add_argument("--seconds", type=float, default=None, help="synthetic signal length (pylfm.measure.bench.synth_audio; default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", "-t", type=int, default=2)
    p.add_argument("--repeat", "-r", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--fixed-tokens", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--n-ctx", type=int, default=2048, help="context size (pylfm: 2048 x batch size)")
    p.add_argument("--n-seq-max", type=int, default=1, help="parallel sequences (pylfm: its batch size)")
    p.add_argument("--compare", action="store_true",
                   help="also load pylfm in this process and interleave its runs with the bare loop's: "
                        "prints pylfm's overhead (uses --batch-size, not --n-ctx/--n-seq-max)")
    p.add_argument("--batch-size", type=int, default=1, help="pylfm batch size for --compare (default 1)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verbose", "-v", action="store_true")
    args = p.parse_args(argv)

    if args.audio:
        from pylfm.audio import load_audio

        pcm = load_audio(args.audio, target_rate=16000)
    else:
        from pylfm.measure.bench import synth_audio

        pcm = synth_audio(30.0 if args.seconds is None else args.seconds, 16000, args.seed)
    if args.compare:
        c = compare(args.model, args.mmproj, pcm, n_threads=args.threads, repeat=args.repeat, warmup=args.warmup,
                    fixed_tokens=args.fixed_tokens, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        if args.json:
            print(json.dumps(c, indent=2))
        else:
            print(f"{c['model']}, {c['threads']} threads, {c['audio_seconds']:.1f} s audio, {c['n_tokens']} tokens, "
                  f"{c['repeat']} interleaved rounds: pylfm {c['pylfm_total_ms']['median']:.1f} ms vs bare "
                  f"{c['bare_total_ms']['median']:.1f} ms (median); overhead {100 * c['overhead_median']:+.2f}% "
                  f"(median of rounds), {100 * c['overhead_min']:+.2f}% (minima); same tokens: {c['same_tokens']}")
        return 0
    r = bare_bench(args.model, args.mmproj, pcm, n_threads=args.threads, repeat=args.repeat, warmup=args.warmup,
                   fixed_tokens=args.fixed_tokens, max_new_tokens=args.max_new_tokens, n_ctx=args.n_ctx,
                   n_seq_max=args.n_seq_max, verbose=args.verbose)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        m = r["median"]
        print(f"bare loop: {r['model']} + {r['mmproj']}, {r['threads']} threads, {r['audio_seconds']:.1f} s audio, "
              f"{r['n_prompt_tokens']} prompt tokens ({r['n_audio_tokens']} audio), {r['n_tokens']} generated")
        print(f"load {r['load_ms']:.0f} ms; median of {r['repeat']}: prompt eval {m['eval_ms']:.1f} ms, "
              f"decode {m['decode_ms']:.1f} ms ({m.get('decode_tok_s') or 0:.2f} tok/s), total {m['total_ms']:.1f} ms, "
              f"RTF {m['rtf']:.4f}; peak RSS {r['peak_rss_mb']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
