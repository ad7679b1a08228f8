"""Energy-based voice activity detection and window splitting for long recordings.

LFM2-Audio transcribes one window of audio per request, so long recordings are cut
into windows of at most ``max_window_s`` seconds (30 s by default):

    >>> x = load_audio("meeting.flac")
    >>> for start, end in split_windows(x, 16000):
    ...     text = engine(x[start:end])          # times offset by start / 16000

Detection is deliberately simple: the signal is cut into frames (30 ms), each frame's
RMS level is measured in dBFS, and frames above a threshold are speech. Unless given,
the threshold adapts to the recording: 10 dB above its noise floor (the 10th
percentile of the frame levels), but never more than 10 dB below its loudest frame
(so a recording that is speech throughout still counts as speech), and never below
-60 dBFS (so digital silence and very low noise are silence). Short pauses inside
speech are bridged (``min_silence_ms``), short blips dropped (``min_speech_ms``) and
each span padded (``pad_ms``) so soft word edges stay inside it. An energy detector
cannot tell speech from loud steady noise; it errs on keeping audio, which costs
compute, rather than dropping it, which would lose words.

Boundary guarantee of :func:`split_windows`: windows are in order, never overlap, and
together cover every speech span. A window boundary only ever falls in a pause between
speech spans (at the pause's quietest frame) or, when speech runs on without any pause
for longer than ``max_window_s``, at the quietest frame of that stretch; the
samples on either side of a cut go to exactly one window each, so nothing is lost or
duplicated. In the second case a word can be split between two windows; we accept
that rather than exceeding the window length. What windows leave out is silence only:
the audio before the first and after the last speech span, and pauses of at least
``drop_silence_s`` between spans.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from .audio import _to_float32, min_samples
from .errors import AudioError

__all__ = ["speech_spans", "split_windows", "frame_levels_db", "auto_threshold_db"]

Span = Tuple[int, int]

#: Frames at or below this level (dBFS) are always silence.
ABS_FLOOR_DB = -60.0
#: Speech must be this much above the noise floor (10th percentile of frame levels) ...
NOISE_MARGIN_DB = 10.0
#: ... but a frame within this much of the loudest frame is always speech.
LOUD_MARGIN_DB = 10.0
#: Percentile of frame levels taken as the noise floor.
NOISE_PERCENTILE = 10.0

_SILENT_DB = -120.0  # level reported for digital silence (avoids log(0))


def frame_levels_db(audio: np.ndarray, frame_len: int) -> np.ndarray:
    """RMS level in dBFS of consecutive, non-overlapping frames of ``frame_len`` samples.

    The last frame may be shorter; its level is measured over the samples it has.
    """
    x = _mono_float(audio)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    n_full = n // frame_len
    full = x[: n_full * frame_len].reshape(n_full, frame_len)
    power = np.einsum("ij,ij->i", full, full, dtype=np.float64) / frame_len
    if n % frame_len:
        tail = x[n_full * frame_len :].astype(np.float64)
        power = np.append(power, np.mean(tail * tail))
    return 10.0 * np.log10(np.maximum(power, 10.0 ** (_SILENT_DB / 10.0)))


def auto_threshold_db(levels: np.ndarray) -> float:
    """The adaptive speech threshold (dBFS) for frame levels (see the module docstring)."""
    if len(levels) == 0:
        return ABS_FLOOR_DB
    noise = float(np.percentile(levels, NOISE_PERCENTILE))
    loud = float(np.max(levels))
    return max(ABS_FLOOR_DB, min(noise + NOISE_MARGIN_DB, loud - LOUD_MARGIN_DB))


def speech_spans(
    audio: np.ndarray,
    rate: float,
    *,
    frame_ms: float = 30,
    threshold: Optional[float] = None,
    min_silence_ms: float = 300,
    min_speech_ms: float = 100,
    pad_ms: float = 100,
) -> List[Span]:
    """Sample-index spans ``[start, end)`` of non-silence in ``audio``, in order.

    Args:
        audio: 1-D samples (float in [-1, 1], or integer PCM, which is scaled).
        rate: sample rate of ``audio`` in Hz.
        frame_ms: analysis frame length.
        threshold: speech level in dBFS (a full-scale sine is -3 dBFS); adaptive if None.
        min_silence_ms: pauses shorter than this are part of the surrounding speech.
        min_speech_ms: speech shorter than this (after bridging pauses) is dropped.
        pad_ms: added before and after each span (clipped to the audio; spans that
            then touch or overlap are merged).
    """
    spans, _, _ = _analyse(audio, rate, frame_ms, threshold, min_silence_ms, min_speech_ms, pad_ms)
    return spans


def split_windows(
    audio: np.ndarray,
    rate: float,
    *,
    max_window_s: float = 30.0,
    drop_silence_s: float = 2.0,
    frame_ms: float = 30,
    threshold: Optional[float] = None,
    min_silence_ms: float = 300,
    min_speech_ms: float = 100,
    pad_ms: float = 100,
) -> List[Span]:
    """Cut ``audio`` into windows ``[start, end)`` (sample indices) of speech, each at
    most ``max_window_s`` long, cutting only inside pauses (see the module docstring).

    Consecutive speech spans share a window while it stays within ``max_window_s`` and
    the pause between them (measured between the padded spans) is shorter than
    ``drop_silence_s`` and than half of ``max_window_s``; a longer pause ends the
    window and is left out. When a window must be cut, the cut goes at the quietest
    frame of the latest pause that keeps it within the limit; if there is no such
    pause, at the quietest frame in the second half of the allowed length. A window is
    never shorter than one encoder frame (:data:`pylfm.audio.MIN_SAMPLES_16K` at 16 kHz)
    unless the whole audio is; a tiny one is widened into the silence around it.
    Silent audio gives no windows. Other keyword arguments are :func:`speech_spans`'s.
    """
    if not max_window_s > 0 or not drop_silence_s > 0:
        raise ValueError("max_window_s and drop_silence_s must be positive")
    audio = _mono_float(audio)
    spans, levels, frame_len = _analyse(
        audio, rate, frame_ms, threshold, min_silence_ms, min_speech_ms, pad_ms
    )
    if not spans:
        return []
    n = len(audio)
    max_len = int(max_window_s * rate)
    min_len = min(min_samples(rate), n)
    if max_len < 2 * min_len:
        raise ValueError(
            f"max_window_s={max_window_s} is too short; it must be at least "
            f"{2 * min_len / rate:.2f} s (two encoder frames)"
        )
    # A pause kept inside a window must be short next to the window, or a cut in it
    # could leave a window of mostly silence.
    drop_len = min(drop_silence_s * rate, max_len / 2)

    # Stretches: runs of spans whose pauses are shorter than drop_silence_s.
    stretches: List[List[Span]] = [[spans[0]]]
    for s, e in spans[1:]:
        if s - stretches[-1][-1][1] < drop_len:
            stretches[-1].append((s, e))
        else:
            stretches.append([(s, e)])

    windows: List[Span] = []
    for stretch in stretches:
        end = stretch[-1][1]
        gaps = [(a[1], b[0]) for a, b in zip(stretch, stretch[1:])]
        start = stretch[0][0]
        while end - start > max_len:
            cut = _cut_in_pause(gaps, start, start + max_len, min_len, levels, frame_len)
            if cut is None:
                # No pause within reach: cut mid-speech at the quietest frame, in the
                # second half so windows stay long, leaving the rest >= min_len.
                lo, hi = start + max_len // 2, min(start + max_len, end - min_len)
                cut = _quietest(lo, hi, levels, frame_len)
            windows.append((start, cut))
            start = cut
        windows.append((start, end))
    return _widen_tiny(windows, n, min_len)


# ---------------------------------------------------------------------------------


def _mono_float(audio: np.ndarray) -> np.ndarray:
    x = np.asarray(audio)
    if x.ndim != 1:
        raise AudioError(f"VAD needs 1-D mono samples, got shape {x.shape}; use load_audio() first")
    if x.dtype.kind not in "iuf":
        raise AudioError(f"VAD needs numeric samples, got dtype {x.dtype}")
    return _to_float32(x)


def _analyse(
    audio: np.ndarray,
    rate: float,
    frame_ms: float,
    threshold: Optional[float],
    min_silence_ms: float,
    min_speech_ms: float,
    pad_ms: float,
) -> "tuple[List[Span], np.ndarray, int]":
    """-> (speech spans in samples, frame levels in dBFS, frame length in samples)."""
    if not rate > 0 or not frame_ms > 0:
        raise ValueError(f"rate and frame_ms must be positive, got rate={rate}, frame_ms={frame_ms}")
    if min(min_silence_ms, min_speech_ms, pad_ms) < 0:
        raise ValueError("min_silence_ms, min_speech_ms and pad_ms must be >= 0")
    frame_len = max(1, int(round(rate * frame_ms / 1000)))
    levels = frame_levels_db(audio, frame_len)
    n = len(audio)
    thr = auto_threshold_db(levels) if threshold is None else float(threshold)

    runs = _runs(levels > thr)
    # Bridge short pauses first (a stop consonant is a short "silence" inside a word),
    # then drop what is still too short to be speech (clicks).
    bridged: List[List[int]] = []
    for k0, k1 in runs:
        if bridged and (k0 - bridged[-1][1]) * frame_len < min_silence_ms * rate / 1000:
            bridged[-1][1] = k1
        else:
            bridged.append([k0, k1])
    pad = int(round(pad_ms * rate / 1000))
    spans: List[Span] = []
    for k0, k1 in bridged:
        s, e = k0 * frame_len, min(k1 * frame_len, n)
        if (e - s) < min_speech_ms * rate / 1000:
            continue
        s, e = max(0, s - pad), min(n, e + pad)
        if spans and s <= spans[-1][1]:
            spans[-1] = (spans[-1][0], e)
        else:
            spans.append((s, e))
    return spans, levels, frame_len


def _runs(mask: np.ndarray) -> List[Span]:
    """[start, end) index runs where ``mask`` is True."""
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def _quietest(lo: int, hi: int, levels: np.ndarray, frame_len: int) -> int:
    """Sample position in [lo, hi] at the centre of the quietest frame centred there
    (the latest one on ties); the middle of the range if no frame centre falls in it."""
    half = frame_len // 2
    k0 = max(0, -(-(lo - half) // frame_len))  # ceil
    k1 = min(len(levels) - 1, (hi - half) // frame_len)
    if k1 < k0:
        return (lo + hi) // 2
    seg = levels[k0 : k1 + 1]
    k = k0 + len(seg) - 1 - int(np.argmin(seg[::-1]))
    return min(max(k * frame_len + half, lo), hi)


def _cut_in_pause(
    gaps: List[Span], start: int, limit: int, min_len: int, levels: np.ndarray, frame_len: int
) -> Optional[int]:
    """Cut at the quietest point of the latest pause after ``start`` that keeps the
    window [start, cut) between ``min_len`` and ``limit - start`` samples."""
    for gs, ge in reversed(gaps):
        if gs < start:  # pauses before start were already used or lie in an earlier window
            break
        lo, hi = max(gs, start + min_len), min(ge, limit)
        if lo <= hi:
            return _quietest(lo, hi, levels, frame_len)
    return None


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


def plan_windows(pcm: np.ndarray, rate: float, *, window: float = 30.0, vad: Optional[str] = "energy",
                 options: object = None) -> List[Span]:
    """The windows to decode: the whole clip when it fits one window (unless it has no
    speech), else windows cut at pauses. Silence yields no window."""
    spans = split_windows(pcm, rate, max_window_s=window)
    if not spans:
        return []
    if len(pcm) <= window * rate:
        return [(0, len(pcm))]
    return spans
