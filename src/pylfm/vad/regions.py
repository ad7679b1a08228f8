"""From a detector's per-frame output to speech regions, and where to cut inside them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import soxr

from . import energy, silero
from .options import VadOptions

Span = Tuple[int, int]

#: A cut inside speech goes where the cut score, averaged over this long, is lowest:
#: a pause between sentences rather than a short gap inside a word or at a comma.
CUT_SMOOTHING_S = 0.32


@dataclass
class Detection:
    """What a detector found in ``n`` samples at ``rate``.

    ``cut_score`` has one value per frame of ``hop`` input samples, lower = a better
    place to cut; ``regions`` are the padded, merged speech regions in samples.
    """

    n: int
    rate: float
    hop: float
    cut_score: np.ndarray
    regions: List[Span] = field(default_factory=list)

    def quietest(self, lo: int, hi: int) -> int:
        """The sample position in [lo, hi] at the centre of the frame with the lowest
        cut score (the middle of the range if no frame centre falls in it)."""
        k0 = max(0, math.ceil(lo / self.hop - 0.5))
        k1 = min(len(self.cut_score) - 1, math.floor(hi / self.hop - 0.5))
        if k1 < k0:
            return (lo + hi) // 2
        k = k0 + int(np.argmin(self.cut_score[k0 : k1 + 1]))
        return min(max(int(round((k + 0.5) * self.hop)), lo), hi)


def detect(pcm: np.ndarray, rate: float, vad: Optional[str], opts: VadOptions) -> Detection:
    """Run detector ``vad`` ("silero", "energy", or None for cut scores only) on float32
    mono ``pcm``.

    The cut score is the frame level scaled to the recording (0 at its 10th percentile,
    1 at its 90th), plus Silero's speech probability when Silero runs, both averaged
    over `CUT_SMOOTHING_S`. On espeak-ng speech in noise the sum put fewer cuts inside
    sentences than either alone (energy misleads in music, Silero's probability stays
    high through short pauses in noise).
    """
    n = len(pcm)
    if vad == "silero":
        x = pcm if rate == silero.RATE else soxr.resample(pcm, rate, silero.RATE, quality="HQ")
        x = np.ascontiguousarray(x, np.float32)
        probs = silero.speech_probabilities(x)
        hop = silero.FRAME * rate / silero.RATE
        levels = energy.frame_levels_db(x, silero.FRAME)[: len(probs)]
        score = _smooth(_scaled(levels), hop, rate) + _smooth(probs, hop, rate)
        active = hysteresis(probs, opts.threshold, opts.effective_neg_threshold)
    else:
        frame = energy.frame_len(rate)
        hop = float(frame)
        levels = energy.frame_levels_db(pcm, frame)
        score = _smooth(_scaled(levels), hop, rate)
        thr = opts.energy_threshold_db
        active = levels > (energy.auto_threshold_db(levels) if thr is None else thr)
    det = Detection(n, rate, hop, score)
    if vad is not None:
        det.regions = regions_from_activity(active, hop, n, rate, opts)
    return det


def _scaled(levels: np.ndarray) -> np.ndarray:
    levels = np.maximum(levels, -90.0)  # digital silence is no quieter than very quiet
    lo, hi = np.percentile(levels, [10, 90]) if len(levels) else (0.0, 1.0)
    return (levels - lo) / max(hi - lo, 1.0)


def _smooth(x: np.ndarray, hop: float, rate: float) -> np.ndarray:
    w = max(1, int(round(CUT_SMOOTHING_S * rate / hop)))
    return np.convolve(x, np.full(w, 1.0 / w), mode="same") if w > 1 and len(x) else x.astype(np.float64)


def hysteresis(probs: np.ndarray, threshold: float, neg_threshold: float) -> np.ndarray:
    """Frames in runs of ``probs >= neg_threshold`` that reach ``threshold`` somewhere:
    speech starts where the probability first rose above the lower threshold, so a
    soft onset is kept."""
    low = probs >= neg_threshold
    out = np.zeros(len(probs), bool)
    for k0, k1 in runs(low):
        if probs[k0:k1].max() >= threshold:
            out[k0:k1] = True
    return out


def regions_from_activity(active: np.ndarray, hop: float, n: int, rate: float, opts: VadOptions) -> List[Span]:
    """Speech regions in samples: runs of active frames, pauses shorter than
    min_silence bridged, then what is shorter than min_speech dropped, then padded
    (clipped to the audio) and merged where padding makes them touch."""
    ms = rate / 1000.0
    bridged: List[List[int]] = []
    for k0, k1 in runs(active):
        if bridged and (k0 - bridged[-1][1]) * hop < opts.min_silence_duration_ms * ms:
            bridged[-1][1] = k1
        else:
            bridged.append([k0, k1])
    pad = int(round(opts.speech_pad_ms * ms))
    spans: List[Span] = []
    for k0, k1 in bridged:
        s, e = int(round(k0 * hop)), min(int(round(k1 * hop)), n)
        if e - s < opts.min_speech_duration_ms * ms or e <= s:
            continue
        s, e = max(0, s - pad), min(n, e + pad)
        if spans and s <= spans[-1][1]:
            spans[-1] = (spans[-1][0], e)
        else:
            spans.append((s, e))
    return spans


def cut_long(span: Span, max_len: int, min_len: int, det: Detection) -> List[Span]:
    """Cut ``span`` into contiguous pieces of at most ``max_len`` samples at the quietest
    points. Each cut is looked for in the second half of the allowed length, or wider
    where the rest still fits in as few pieces; no piece is shorter than ``min_len``."""
    s, e = span
    pieces: List[Span] = []
    while e - s > max_len:
        needed = math.ceil((e - s) / max_len)
        lo = max(s + min_len, min(e - (needed - 1) * max_len, s + max_len // 2))
        hi = min(s + max_len, e - min_len)
        cut = det.quietest(lo, hi)
        pieces.append((s, cut))
        s = cut
    pieces.append((s, e))
    return pieces


def runs(mask: np.ndarray) -> List[Span]:
    """[start, end) index runs where ``mask`` is True."""
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))
