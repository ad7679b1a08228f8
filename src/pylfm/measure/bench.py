"""How fast the model runs on this machine (the library behind ``pylfm bench``).

    pylfm bench --seconds 30 --repeat 5                 # synthetic 30 s test signal
    pylfm bench --audio talk.wav --fixed-tokens 128 --json

    >>> from pylfm.measure.bench import run_bench, synth_audio
    >>> report = run_bench(model, synth_audio(30.0), repeat=3, fixed_tokens=64)
    >>> report["median"]["rtf"], report["median"]["decode_tok_s"]

Measured per run (a run is one ``Model.transcribe`` of the whole clip, after
``warmup`` unmeasured runs): audio-encode time (the conformer), prefill time and
tokens/s (prompt text + audio embeddings through the language model), decode time
and tokens/s (the generation loop), the total wall time and the real-time factor
(wall time / audio duration; below 1 is faster than real time). The report gives the
median, min and max over the runs, plus the model load time, the peak resident memory
of the process, the device and the thread count.

``fixed_tokens=N`` generates exactly N tokens per window, ignoring end-of-generation
(``ignore_eos=True, max_new_tokens=N``): random-weight benchmark checkpoints then
give comparable decode timings, and so do real models across inputs.

The audio is decoded and resampled once, before the runs, so file decoding is not
part of the timings (``audio_load_ms`` reports it).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..transcription.options import DEFAULT_MAX_NEW_TOKENS, fixed_tokens as fixed_tokens_options
from ..vad import DEFAULT_WINDOW_S

__all__ = ["synth_audio", "run_bench", "peak_rss_mb", "format_report"]

#: Per-run values summarised as median/min/max in the report.
METRICS = ("encode_ms", "prefill_ms", "decode_ms", "total_ms", "prefill_tok_s", "decode_tok_s", "rtf")


# ---------------------------------------------------------------------- test signal
def synth_audio(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A deterministic speech-like test signal: float32 mono in [-1, 1].

    "Utterances" of 3-9 s built from 0.15-0.6 s pieces (harmonic tones with a
    90-250 Hz fundamental and vibrato, linear chirps between 150 Hz and 4 kHz, and
    white-noise bursts), all at about -20 dBFS RMS, separated by 0.35-0.7 s pauses of
    faint noise (about -55 dBFS). pylfm's voice-activity splitter therefore sees
    speech with pauses, as in a real recording: a clip up to the window length is one
    request, a longer one is cut in the pauses. The same ``seconds``, ``sample_rate``
    and ``seed`` always give the same samples.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    sr = int(sample_rate)
    n = int(round(seconds * sr))
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.float64)
    pos = 0
    speaking = True
    while pos < n:
        if speaking:
            end = min(n, pos + int(rng.uniform(3.0, 9.0) * sr))
            while pos < end:
                m = min(end - pos, int(rng.uniform(0.15, 0.6) * sr))
                out[pos:pos + m] = _piece(rng, m, sr)
                pos += m
        else:
            m = min(n - pos, int(rng.uniform(0.35, 0.7) * sr))
            out[pos:pos + m] = rng.standard_normal(m) * 10 ** (-55 / 20)
            pos += m
        speaking = not speaking
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _piece(rng: np.random.Generator, m: int, sr: int) -> np.ndarray:
    t = np.arange(m) / sr
    kind = rng.integers(3)
    if kind == 0:  # voiced: harmonic stack with vibrato
        f0 = rng.uniform(90, 250) * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        x = sum(np.sin(k * phase) / k for k in range(1, int(rng.integers(2, 7)) + 1))
    elif kind == 1:  # chirp
        f_a, f_b = rng.uniform(150, 4000, size=2)
        dur = max(m / sr, 1e-3)
        x = np.sin(2 * np.pi * (f_a * t + (f_b - f_a) * t * t / (2 * dur)))
    else:  # fricative-like noise
        x = rng.standard_normal(m)
    x = np.asarray(x, dtype=np.float64)
    rms = float(np.sqrt(np.mean(x * x))) or 1.0
    x *= 0.1 / rms  # -20 dBFS
    fade = min(m // 2, int(0.01 * sr))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        x[:fade] *= ramp
        x[m - fade:] *= ramp[::-1]
    return x


# ---------------------------------------------------------------------- measuring
def peak_rss_mb() -> Optional[float]:
    """Peak resident set size of this process so far, in MiB (None where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil  # type: ignore

            return psutil.Process().memory_info().peak_wset / 2**20
        except Exception:
            return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB elsewhere


def _stats(values: Sequence[float]) -> Dict[str, Optional[float]]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None}
    return {"median": float(statistics.median(vals)), "min": float(min(vals)), "max": float(max(vals))}


def run_bench(model: Any, audio: Any, *, sample_rate: Optional[int] = None, repeat: int = 3, warmup: int = 1,
              fixed_tokens: Optional[int] = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
              window: float = DEFAULT_WINDOW_S,
              batch_size: Optional[int] = None, source: Optional[str] = None, vad: Optional[str] = "silero",
              keep_tokens: bool = False) -> Dict[str, Any]:
    """Times ``model.transcribe(audio)`` ``repeat`` times after ``warmup`` runs.

    Args:
        model: a loaded `pylfm.Model`.
        audio: anything `Model.transcribe` takes (path, bytes, array + ``sample_rate``).
        repeat: measured runs (>= 1); the report has their median, min and max.
        warmup: unmeasured runs first (caches, lazy allocations, CPU clocks).
        fixed_tokens: generate exactly this many tokens per window, ignoring
            end-of-generation; None stops at end-of-generation or ``max_new_tokens``.
        window, batch_size, vad: as in `Model.transcribe` (use vad="energy" for
            `synth_audio`: Silero rightly hears no speech in its tones).
        source: how to name the audio in the report (default: the path, or "array").
        keep_tokens: add the last run's generated token ids (``tokens``) and text.

    Returns:
        A dict: ``median``/``min``/``max`` (each ``{metric: value}`` for encode_ms,
        prefill_ms, decode_ms, total_ms, prefill_tok_s, decode_tok_s, rtf), ``runs``
        (per-run values), ``load_ms``, ``audio_seconds``, ``n_windows``,
        ``n_audio_tokens``, ``n_prompt_tokens``, ``n_tokens`` (generated, per run),
        ``peak_rss_mb``, ``device``, ``threads``, ``batch_size`` and the settings.
    """
    from ..audio.load import load_audio

    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if fixed_tokens is not None and fixed_tokens < 1:
        raise ValueError(f"fixed_tokens must be >= 1, got {fixed_tokens}")
    if source is None:
        source = os.fspath(audio) if isinstance(audio, (str, os.PathLike)) else "array"

    t0 = time.perf_counter()
    pcm = load_audio(audio, sample_rate=sample_rate, target_rate=model.sample_rate)
    audio_load_ms = (time.perf_counter() - t0) * 1e3
    seconds = len(pcm) / model.sample_rate

    kwargs: Dict[str, Any] = dict(sample_rate=model.sample_rate, window=window, batch_size=batch_size, vad=vad)
    if fixed_tokens is not None:
        kwargs.update(fixed_tokens_options(int(fixed_tokens)))  # the same work every run
    else:
        kwargs.update(max_new_tokens=int(max_new_tokens))

    for _ in range(warmup):
        model.transcribe(pcm, **kwargs)
    runs: List[Dict[str, Any]] = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = model.transcribe(pcm, **kwargs)
        wall_ms = (time.perf_counter() - t0) * 1e3
        runs.append(_run_metrics(result, wall_ms, seconds))
    assert result is not None

    report: Dict[str, Any] = {
        "model": Path(str(getattr(model, "model_path", ""))).name,
        "mmproj": Path(str(getattr(model, "mmproj_path", ""))).name,
        "device": getattr(model, "device", None),
        "threads": getattr(model, "n_threads", None),
        "batch_size": batch_size or getattr(model, "batch_size", None),
        "audio": source,
        "audio_seconds": seconds,
        "audio_load_ms": audio_load_ms,
        "repeat": repeat,
        "warmup": warmup,
        "fixed_tokens": fixed_tokens,
        "window": window,
        "load_ms": float(getattr(model, "load_ms", 0.0)),
        "n_windows": result.n_windows,
        "n_audio_tokens": result.n_audio_tokens,
        "n_prompt_tokens": result.n_prompt_tokens,
        "n_tokens": result.n_tokens,
        "median": {}, "min": {}, "max": {},
        "runs": runs,
        "peak_rss_mb": peak_rss_mb(),
        "system": _system(),
    }
    if keep_tokens:
        report["tokens"] = list(result.tokens)
        report["text"] = result.text
    for k in METRICS:
        s = _stats([r[k] for r in runs])
        for which in ("median", "min", "max"):
            report[which][k] = s[which]
    return report


def _run_metrics(result: Any, wall_ms: float, seconds: float) -> Dict[str, Any]:
    t = result.timings
    encode_ms, prefill_ms, decode_ms = float(t.encode_ms), float(t.prefill_ms), float(t.decode_ms)
    n_tokens = int(result.n_tokens)
    return {
        "encode_ms": encode_ms,
        "prefill_ms": prefill_ms,
        "decode_ms": decode_ms,
        "total_ms": wall_ms,
        "prefill_tok_s": result.n_prompt_tokens / (prefill_ms / 1e3) if prefill_ms > 0 else None,
        "decode_tok_s": n_tokens / (decode_ms / 1e3) if decode_ms > 0 and n_tokens else None,
        "rtf": (wall_ms / 1e3) / seconds if seconds > 0 else None,
        "n_tokens": n_tokens,
    }


def _system() -> Dict[str, Any]:
    from .. import __version__

    return {"pylfm": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "processor": _cpu_name(), "cpu_count": os.cpu_count()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


# ---------------------------------------------------------------------- output
def _f(x: Optional[float], fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_report(r: Dict[str, Any]) -> str:
    """The readable form of a `run_bench` report."""
    fixed = f"{r['fixed_tokens']} per window, end-of-generation ignored" if r["fixed_tokens"] else "until end-of-generation"
    lines = [
        f"model:   {r['model']} + {r['mmproj']}",
        f"device:  {r['device']}, {r['threads']} threads, batch size {r['batch_size']}",
        f"audio:   {r['audio']}: {r['audio_seconds']:.1f} s, {r['n_windows']} window(s), "
        f"{r['n_audio_tokens']} audio tokens, {r['n_prompt_tokens']} prompt tokens",
        f"runs:    {r['repeat']} measured after {r['warmup']} warm-up; {r['n_tokens']} tokens generated per run ({fixed})",
        f"load:    {r['load_ms']:.0f} ms",
        "",
        f"{'':16}{'median':>12}{'min':>12}{'max':>12}",
    ]
    rows = [("audio encode", "encode_ms", "ms", ".1f"), ("prefill", "prefill_ms", "ms", ".1f"),
            ("prefill", "prefill_tok_s", "tok/s", ".1f"), ("decode", "decode_ms", "ms", ".1f"),
            ("decode", "decode_tok_s", "tok/s", ".2f"), ("total", "total_ms", "ms", ".1f"),
            ("real-time factor", "rtf", "", ".4f")]
    for label, key, unit, fmt in rows:
        name = f"{label} {unit}".strip() if unit else label
        lines.append(f"{name:16}" + "".join(f"{_f(r[w][key], fmt):>12}" for w in ("median", "min", "max")))
    rss = r["peak_rss_mb"]
    lines += ["", f"peak RSS: {_f(rss, '.0f')} MiB"]
    return "\n".join(lines)
