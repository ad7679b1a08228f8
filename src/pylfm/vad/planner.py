"""`plan_windows`: the one place that decides which spans of a recording go to the model."""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from ..audio.load import min_samples, to_float32
from ..errors import AudioError
from .options import VadOptions
from .regions import Span, cut_long, detect

#: The speech detectors `plan_windows` accepts.
VAD_METHODS = ("silero", "energy", None)
#: The most audio decoded at once unless the caller says otherwise, in seconds.
DEFAULT_WINDOW_S = 30.0


def plan_windows(pcm: np.ndarray, rate: int, *, window: float = DEFAULT_WINDOW_S, vad: Optional[str] = "silero",
                 options: Optional[VadOptions] = None) -> List[Span]:
    """The sample spans ``[start, end)`` of ``pcm`` to decode, in order, non-overlapping,
    each at most ``window`` seconds and at least one encoder frame (80 ms) long.

    * Audio that fits in one window: ``[(0, len(pcm))]``, decoded whole as the reference
      implementation sees it, unless it is silent by the energy detector (then ``[]``;
      with ``vad=None`` even silence is decoded). The speech detector is not asked: a
      miss on a short clip would lose all of its transcript.
    * Longer audio with no speech at all: ``[]`` (silence is never sent to the model).
    * Longer audio: windows packed from whole speech regions, in order, while the window
      stays within ``window`` seconds and the pause before the next region is at most
      ``options.max_gap_s``; the silence between windows is not sent. A region longer
      than ``window`` is cut at its quietest points (lowest speech probability or
      energy); every sample of every region is in exactly one window.
    * ``vad=None``: no detection; audio longer than ``window`` is cut into contiguous
      pieces of at most ``window`` at the quietest points (by energy), nothing dropped.

    Args:
        pcm: 1-D samples (float in [-1, 1], or integer PCM, which is scaled), e.g. the
            output of `pylfm.load_audio`.
        rate: their sample rate in Hz.
        window: the longest window in seconds (>= 0.16: two encoder frames). Subtitle-
            sized windows (e.g. 10 s) work as well as the default 30 s.
        vad: "silero" (Silero VAD v6, default), "energy" (dependency-free fallback) or None.
        options: detector tuning; None = `VadOptions()`.

    Raises:
        ValueError: unknown ``vad``, bad ``window``/``rate``/``options``.
        AudioError: ``pcm`` is not 1-D numeric audio or holds NaN/inf.
        ImportError: ``vad="silero"`` but onnxruntime / the model package is missing.
    """
    x, opts = _inputs(pcm, rate, vad, options)
    if not isinstance(window, (int, float)) or isinstance(window, bool) or not math.isfinite(window):
        raise ValueError(f"window must be a number of seconds, got {window!r}")
    n = len(x)
    min_len = min(min_samples(rate), n)
    max_len = int(window * rate)
    if max_len < 2 * min_samples(rate):
        raise ValueError(f"window={window} s is too short; it must be at least "
                         f"{2 * min_samples(rate) / rate:.2f} s (two encoder frames)")
    if n == 0:
        return []
    if n <= max_len:
        # A clip that fits one window is decoded whole, as the reference implementation
        # sees it, unless it is silent. The speech detector is for cutting long
        # recordings: on a short clip, a miss would lose its whole transcript.
        return [(0, n)] if vad is None or detect(x, rate, "energy", opts).regions else []
    if vad is None:
        return cut_long((0, n), max_len, min_len, detect(x, rate, None, opts))
    det = detect(x, rate, vad, opts)
    if not det.regions:
        return []
    pieces = [p for region in det.regions for p in cut_long(region, max_len, min_len, det)]
    windows = _pack(pieces, max_len, int(opts.max_gap_s * rate))
    return _widen_tiny(windows, n, min_len)


def speech_regions(pcm: np.ndarray, rate: int, *, vad: str = "silero",
                   options: Optional[VadOptions] = None) -> List[Span]:
    """The detector's speech regions ``[start, end)`` in samples (padded and merged as
    ``options`` say; regions over ``options.max_speech_duration_s`` cut at their quietest
    points). For benchmarks and tests; `plan_windows` is what decides what is decoded."""
    if vad is None:
        raise ValueError("speech_regions needs a detector: vad='silero' or vad='energy'")
    x, opts = _inputs(pcm, rate, vad, options)
    if len(x) == 0:
        return []
    det = detect(x, rate, vad, opts)
    if math.isinf(opts.max_speech_duration_s):
        return det.regions
    max_len = max(int(opts.max_speech_duration_s * rate), 2 * min_samples(rate))
    return [p for r in det.regions for p in cut_long(r, max_len, min(min_samples(rate), len(x)), det)]


# ---------------------------------------------------------------------------------


def _inputs(pcm: np.ndarray, rate: float, vad: Optional[str], options: Optional[VadOptions]):
    if vad not in VAD_METHODS:
        raise ValueError(f"vad must be one of 'silero', 'energy' or None, got {vad!r}")
    if options is None:
        options = VadOptions()
    elif not isinstance(options, VadOptions):
        raise TypeError(f"options must be a pylfm.vad.VadOptions or None, got {type(options).__name__}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) \
            or not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"rate must be a positive number of Hz, got {rate!r}")
    x = np.asarray(pcm)
    if x.ndim != 1:
        raise AudioError(f"VAD needs 1-D mono samples, got shape {x.shape}; use load_audio() first")
    if x.dtype.kind not in "iuf":
        raise AudioError(f"VAD needs numeric samples, got dtype {x.dtype}")
    x = to_float32(x)
    if not np.isfinite(x).all():
        raise AudioError("the samples contain NaN or infinite values; clean them first (np.nan_to_num)")
    return x, options


def _pack(pieces: List[Span], max_len: int, max_gap: int) -> List[Span]:
    """Greedily join consecutive pieces into windows of at most ``max_len`` samples,
    never across a pause longer than ``max_gap``."""
    windows: List[Span] = []
    start, end = pieces[0]
    for s, e in pieces[1:]:
        if e - start <= max_len and s - end <= max_gap:
            end = e
        else:
            windows.append((start, end))
            start, end = s, e
    windows.append((start, end))
    return windows


def _widen_tiny(windows: List[Span], n: int, min_len: int) -> List[Span]:
    """Grow windows shorter than ``min_len`` into the free audio around them (after,
    then before), never into a neighbour; failing that, move a shared boundary."""
    out = [list(w) for w in windows]
    for i, w in enumerate(out):
        if w[1] - w[0] >= min_len:
            continue
        nxt = out[i + 1][0] if i + 1 < len(out) else n
        w[1] = min(nxt, w[0] + min_len)
        prv = out[i - 1][1] if i > 0 else 0
        w[0] = max(prv, w[1] - min_len)
        short = min_len - (w[1] - w[0])
        # Only possible when squeezed between windows: borrow from a long neighbour.
        if short > 0 and i + 1 < len(out) and out[i + 1][0] == w[1] and out[i + 1][1] - w[1] - short >= min_len:
            w[1] += short
            out[i + 1][0] = w[1]
        elif short > 0 and i > 0 and out[i - 1][1] == w[0] and w[0] - short - out[i - 1][0] >= min_len:
            w[0] -= short
            out[i - 1][1] = w[0]
    return [(int(s), int(e)) for s, e in out]
