"""`VadOptions`: how speech regions are found and how far they may be stretched."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class VadOptions:
    """Tuning of the speech detector, in the spirit of faster-whisper's ``VadOptions``.

    Attributes:
        threshold: Silero speech probability (0-1) at which a speech region starts.
            Higher finds less speech in noise; lower loses fewer soft words.
        neg_threshold: a region continues while the probability stays at or above this
            (hysteresis; it starts back where the probability first rose above it).
            None: ``threshold - 0.15`` (at least 0.01).
        min_speech_duration_ms: detected speech shorter than this, standing alone, is
            dropped (clicks, coughs).
        min_silence_duration_ms: pauses shorter than this are part of the speech around
            them.
        speech_pad_ms: added before and after each region so soft word edges stay in.
        max_speech_duration_s: regions longer than this are cut at their quietest point
            (`speech_regions`; `plan_windows` always cuts at its ``window``).
        max_gap_s: two regions separated by a longer pause never share a window, so the
            pause is not sent to the model; shorter pauses may stay inside a window.
        energy_threshold_db: for ``vad="energy"`` only: the speech level in dBFS; None
            adapts it to the recording (10 dB over its noise floor).
    """

    threshold: float = 0.5
    neg_threshold: Optional[float] = None
    min_speech_duration_ms: float = 250
    min_silence_duration_ms: float = 300
    speech_pad_ms: float = 200
    max_speech_duration_s: float = math.inf
    max_gap_s: float = 2.0
    energy_threshold_db: Optional[float] = None

    def __post_init__(self) -> None:
        _number(self, "threshold", 0.0, 1.0, open_low=True, open_high=True)
        if self.neg_threshold is not None:
            _number(self, "neg_threshold", 0.0, self.threshold, open_low=True,
                    hint=f"above 0 and at most threshold={self.threshold:g}")
        for name in ("min_speech_duration_ms", "min_silence_duration_ms", "speech_pad_ms", "max_gap_s"):
            _number(self, name, 0.0, math.inf, hint="a finite number >= 0")
        _number(self, "max_speech_duration_s", 0.0, math.inf, open_low=True, allow_inf=True,
                hint="a number of seconds > 0 (inf: no limit)")
        if self.energy_threshold_db is not None:
            _number(self, "energy_threshold_db", -200.0, 0.0, hint="in dBFS, e.g. -40")

    @property
    def effective_neg_threshold(self) -> float:
        """The hysteresis threshold actually used."""
        if self.neg_threshold is not None:
            return self.neg_threshold
        return max(self.threshold - 0.15, 0.01)


def _number(opts: VadOptions, name: str, lo: float, hi: float, *, open_low: bool = False,
            open_high: bool = False, allow_inf: bool = False, hint: Optional[str] = None) -> None:
    value = getattr(opts, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"VadOptions.{name} must be a number, got {value!r}")
    below = value <= lo if open_low else value < lo
    above = value >= hi if open_high else value > hi
    if math.isnan(value) or (math.isinf(value) and not allow_inf) or below or above:
        if hint is None:
            left, right = ("(" if open_low else "["), (")" if open_high else "]")
            hint = f"in {left}{lo:g}, {hi:g}{right}"
        raise ValueError(f"VadOptions.{name} must be {hint}, got {value!r}")
