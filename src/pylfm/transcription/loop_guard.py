"""The guard against repetition loops, the failure that LLM-style recognisers fall into
on noise and silence ("thank you thank you thank you ...": inserted text).

Two detectors, as faster-whisper does it plus an early stop:

- while decoding, the engine stops a sequence whose tokens end in a short block
  repeated back to back (``max_period``, ``min_repeats``, ``min_span``), so a loop
  costs a few dozen tokens rather than ``max_new_tokens``;
- after decoding, a window whose text compresses too well (gzip ratio above
  ``compression_ratio_threshold``) or, optionally, whose average log-probability is
  below ``log_prob_threshold`` counts as degenerate too.

A degenerate window is decoded again at the next temperature of ``temperatures`` with
llama.cpp's repetition penalty; the first attempt that passes is kept, else the best
one (not looping, then highest average log-probability). Streaming cannot take text
back, so with ``stream=True`` a loop is only stopped, not re-decoded.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

#: The largest max_period / min_repeats / min_span: the engine keeps them in C ints and
#: multiplies min_repeats by the period, which must not overflow.
_MAX_TOKENS = 1 << 15


@dataclass(frozen=True)
class LoopGuard:
    """Options of the repetition-loop guard (``loop_guard=None`` turns it off).

    Attributes:
        max_period: the longest repeated block (in tokens) the engine looks for.
        min_repeats: how many times in a row a block must repeat (at least 2) ...
        min_span: ... covering at least this many tokens; the engine stops the window
            then (``stop_reason="repetition"``). ``max_period``, ``min_repeats`` and
            ``min_span`` are integers from 1 to 32768.
        compression_ratio_threshold: a window whose text's gzip compression ratio is
            above this (> 0) is decoded again; None: not checked.
        log_prob_threshold: a window whose average token log-probability is below this
            is decoded again; None (default): not checked.
        temperatures: the temperatures (each in (0, 2]) of the fallback decodings, in
            order; ``()`` only stops loops, never decodes again.
        repeat_penalty: llama.cpp's repetition penalty for the fallback decodings
            (> 0; 1 = none).
    """

    max_period: int = 50
    min_repeats: int = 4
    min_span: int = 20
    compression_ratio_threshold: Optional[float] = 2.4
    log_prob_threshold: Optional[float] = None
    temperatures: Tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
    repeat_penalty: float = 1.1

    def __post_init__(self) -> None:
        for name in ("max_period", "min_repeats", "min_span"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_TOKENS:
                raise ValueError(f"LoopGuard.{name} must be an integer from 1 to {_MAX_TOKENS}, got {value!r}")
        if self.min_repeats < 2:
            raise ValueError(f"LoopGuard.min_repeats must be at least 2, got {self.min_repeats}")
        for name in ("compression_ratio_threshold", "log_prob_threshold"):
            value = getattr(self, name)
            if value is not None and not _finite(value):
                raise ValueError(f"LoopGuard.{name} must be a finite number or None, got {value!r}")
        if self.compression_ratio_threshold is not None and self.compression_ratio_threshold <= 0:
            raise ValueError("LoopGuard.compression_ratio_threshold must be > 0 (faster-whisper uses 2.4) or None, "
                             f"got {self.compression_ratio_threshold!r}")
        if isinstance(self.temperatures, (str, bytes)) or not hasattr(self.temperatures, "__iter__"):
            raise TypeError(f"LoopGuard.temperatures must be a sequence of numbers in (0, 2], e.g. (0.2, 0.4), "
                            f"got {self.temperatures!r}")
        temps = tuple(self.temperatures)
        if not all(_finite(t) and 0 < t <= 2 for t in temps):
            raise ValueError(f"LoopGuard.temperatures must be numbers in (0, 2], got {self.temperatures!r}")
        object.__setattr__(self, "temperatures", tuple(float(t) for t in temps))
        if not _finite(self.repeat_penalty) or self.repeat_penalty <= 0:
            raise ValueError(f"LoopGuard.repeat_penalty must be a positive number (1 = off), got {self.repeat_penalty!r}")

    def engine_params(self, params: Any) -> None:
        """Sets the in-engine detector on a ``_core.SamplingParams``."""
        params.loop_max_period = self.max_period
        params.loop_min_repeats = self.min_repeats
        params.loop_min_span = self.min_span

    def degenerate(self, result: Dict[str, Any]) -> bool:
        """Whether one decoding attempt needs the fallback."""
        if result["stop_reason"] == "repetition":
            return True
        if self.compression_ratio_threshold is not None and compression_ratio(result["text"]) > self.compression_ratio_threshold:
            return True
        return self.log_prob_threshold is not None and avg_logprob(result) < self.log_prob_threshold


def compression_ratio(text: str) -> float:
    """len(text) / len(zlib-compressed text), in UTF-8 bytes (as faster-whisper measures it)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def avg_logprob(result: Dict[str, Any]) -> float:
    """Mean natural-log probability of the generated tokens (0 for none)."""
    n = len(result["tokens"])
    return result["sum_logprob"] / n if n else 0.0


def best_attempt(guard: LoopGuard, attempts: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The attempt to keep when none passed: one that does not loop, then the most probable."""
    return max(attempts, key=lambda r: (r["stop_reason"] != "repetition", avg_logprob(r)))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
