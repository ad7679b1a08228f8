"""What a transcription returns: `Transcription`, `TranscriptionInfo`, `Timings`
(`Segment` lives in `pylfm.transcription.formats` with the writers that render it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from .formats import Segment

# Most severe first: a transcription's stop_reason is its worst window's.
STOP_SEVERITY = ("error", "cancelled", "repetition", "context", "length", "stop")


@dataclass
class Timings:
    """Milliseconds of engine time spent in each stage, summed over windows (and over
    re-decodes of the loop guard). Sequences decoded together share each decode step;
    each is given an equal share of the step, so totals count that time once."""

    load_ms: float = 0.0
    encode_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.encode_ms + self.prefill_ms + self.decode_ms

    def add(self, r: dict) -> None:
        self.encode_ms += r["encode_ms"]
        self.prefill_ms += r["prefill_ms"]
        self.decode_ms += r["decode_ms"]


@dataclass
class Transcription:
    """What `Model.transcribe` returns. ``str(result)`` is the text, which is always the
    segments' texts joined by single spaces (and what ``stream=True`` yields)."""

    text: str
    tokens: List[int]
    segments: List[Segment]
    duration: float
    timings: Timings
    device: str
    n_prompt_tokens: int = 0
    n_audio_tokens: int = 0
    stop_reason: str = "stop"  # the most severe of the windows' (see Segment.stop_reason); "silence": none
    n_windows: int = 0

    def __str__(self) -> str:
        return self.text

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


@dataclass
class TranscriptionInfo:
    """Facts about a run, known before its segments are decoded (timings fill in as the
    lazy segment iterator advances)."""

    duration: float
    sample_rate: int
    n_windows: int
    device: str
    model: str
    timings: Timings = field(default_factory=Timings)


def worst_stop(reasons: List[str]) -> Optional[str]:
    """The most severe stop reason of several windows' (None for none)."""
    known = [r for r in reasons if r in STOP_SEVERITY]
    return min(known, key=STOP_SEVERITY.index) if known else None
