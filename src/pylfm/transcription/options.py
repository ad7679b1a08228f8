"""`TranscribeOptions`: every option of a transcription, validated once, shared by
`Model.transcribe`, `transcribe_segments`, `transcribe_batch`, `submit`, the CLI, the
server, ``bench``, ``eval`` and corpus jobs; `fixed_tokens` for benchmarks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ..audio.load import MAX_WINDOW_S, MIN_SAMPLES_16K, SAMPLE_RATE
from ..engine.prompt import ASR_SYSTEM_PROMPT
from ..vad import DEFAULT_WINDOW_S, VAD_METHODS, VadOptions
from .loop_guard import LoopGuard

#: The shortest ``window`` / ``max_segment``: two encoder frames (0.16 s), the least
#: `pylfm.vad.plan_windows` can cut into pieces of at least one frame (80 ms) each.
MIN_WINDOW_S = 2 * MIN_SAMPLES_16K / SAMPLE_RATE
DEFAULT_MAX_NEW_TOKENS = 512
#: The longest subtitle cue, in seconds: the window limit of the CLI's srt/vtt output
#: (unless --max-segment says otherwise) and of the server's srt/vtt/verbose_json answers.
DEFAULT_CUE_S = 10.0


@dataclass(frozen=True)
class TranscribeOptions:
    """What to ask the model and how to cut the audio.

    Attributes:
        system: the system prompt; LFM2-Audio needs "Perform ASR." for transcription.
        prompt: optional user text after the audio (e.g. a question about it). Both are
            plain text: special-token strings in them are not parsed.
        max_new_tokens: generation limit per window.
        temperature: 0 is greedy and deterministic; otherwise sampled with
            ``top_k``/``top_p``/``seed`` (window k uses seed + k).
        ignore_eos: keep generating past end-of-generation (benchmarks).
        window: the most audio decoded at once, in seconds (0.16 to 300). A recording up
            to this long is decoded whole; a longer one is cut into windows packed from
            whole speech regions (silence between them is not sent).
        max_segment: if set, windows (and so segments and subtitle cues) are at most this
            long, in seconds: 0.16 up to ``window`` (a larger value is an error, not
            clamped; e.g. 10 for subtitles). A recording longer than ``max_segment`` is
            then cut by the speech detector even when it fits in ``window``.
        vad: the speech detector for long recordings: "silero" (default), "energy", None.
        vad_options: a `pylfm.vad.VadOptions`, or None for the defaults (ignored with
            ``vad=None``).
        loop_guard: a `LoopGuard` (default) or None to turn repetition handling off.
        batch_size: how many windows of this recording may decode at once (default: as
            many as the model has free sequence slots).
        max_duration: refuse audio longer than this many seconds (before decoding it
            where the container says its length).
    """

    system: Optional[str] = ASR_SYSTEM_PROMPT
    prompt: Optional[str] = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    ignore_eos: bool = False
    window: float = DEFAULT_WINDOW_S
    max_segment: Optional[float] = None
    vad: Optional[str] = "silero"
    vad_options: Any = None
    loop_guard: Optional[LoopGuard] = field(default_factory=LoopGuard)
    batch_size: Optional[int] = None
    max_duration: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("system", "prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")
        _int(self, "max_new_tokens", 1, _C_INT_MAX)
        _int(self, "top_k", 0, _C_INT_MAX)
        _int(self, "seed", 0, 2**32 - 1)  # llama.cpp's sampler seed is 32-bit
        _number(self, "temperature", 0.0, 2.0, "0 = greedy")
        _number(self, "top_p", 0.0, 1.0, "in (0, 1]")
        if self.top_p == 0:
            raise ValueError("top_p must be in (0, 1], got 0")
        _number(self, "window", MIN_WINDOW_S, MAX_WINDOW_S,
                "seconds: two encoder frames up to the audio encoder's limit for one piece of audio")
        if self.max_segment is not None:
            _number(self, "max_segment", MIN_WINDOW_S, self.window,
                    f"seconds, at most window={self.window:g}; raise window too for longer segments")
        if self.vad not in VAD_METHODS:
            raise ValueError(f"vad must be one of 'silero', 'energy' or None, got {self.vad!r}")
        if self.vad_options is not None:
            if not isinstance(self.vad_options, VadOptions):
                raise TypeError(f"vad_options must be a pylfm.VadOptions or None, got {type(self.vad_options).__name__}")
        if self.loop_guard is not None and not isinstance(self.loop_guard, LoopGuard):
            raise TypeError(f"loop_guard must be a pylfm.LoopGuard or None, got {type(self.loop_guard).__name__}")
        if self.batch_size is not None:
            _int(self, "batch_size", 1)
        if self.max_duration is not None:
            _number(self, "max_duration", 0.0, math.inf, "> 0 seconds")
            if self.max_duration <= 0:
                raise ValueError(f"max_duration must be > 0 seconds, got {self.max_duration}")

    @property
    def segment_limit(self) -> float:
        """The longest window the planner may make."""
        return self.max_segment or self.window


def fixed_tokens(n: int) -> "dict[str, Any]":
    """The options that make every window generate exactly ``n`` tokens, ignoring
    end-of-generation (and the loop guard, which would stop a repetitive one): the same
    work on every run, for benchmarks (``--fixed-tokens N``)."""
    return dict(max_new_tokens=n, ignore_eos=True, loop_guard=None)


_C_INT_MAX = 2**31 - 1  # the engine keeps counts in C ints


def _int(opts: Any, name: str, minimum: Optional[int], maximum: Optional[int] = None) -> None:
    value = getattr(opts, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


def _number(opts: Any, name: str, lo: float, hi: float, hint: str) -> None:
    value = getattr(opts, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) and not (hi == math.inf and value == math.inf):
        raise ValueError(f"{name} must be a finite number ({hint}), got {value}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g} ({hint}), got {value}")
