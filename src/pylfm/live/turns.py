"""Turn detection on live audio: where a speaker's utterance starts and ends.

`SpeechDetector` runs Silero VAD v6 on audio pushed in chunks of any size, frame by
frame with the model's state carried along (the probabilities equal those of the whole
recording run at once), and reports when speech starts and when an utterance has ended:
after ``silence_duration_ms`` of silence, as OpenAI's ``server_vad`` turn detection does.
The utterance comes with ``prefix_padding_ms`` of the audio before the speech began.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Union

import numpy as np

from ..vad import silero

RATE = silero.RATE  # 16 kHz: what Silero and the model's encoder take
_FRAME_MS = silero.FRAME * 1000 / RATE  # 32 ms


@dataclass(frozen=True)
class TurnDetection:
    """When an utterance starts and ends (OpenAI Realtime's ``server_vad`` options, plus
    two bounds of our own).

    Attributes:
        threshold: Silero speech probability (0-1) at which speech starts; it continues
            while the probability stays above ``threshold - 0.15``.
        prefix_padding_ms: audio kept before the detected start of speech.
        silence_duration_ms: this much silence ends the utterance (shorter: quicker
            replies, more risk of cutting a speaker who pauses).
        min_speech_ms: shorter bursts of speech (a click, a cough) are dropped.
        max_utterance_s: an utterance this long is ended even while speech goes on.
    """

    threshold: float = 0.5
    prefix_padding_ms: float = 300
    silence_duration_ms: float = 500
    min_speech_ms: float = 100
    max_utterance_s: float = 30.0

    def __post_init__(self) -> None:
        checks = (("threshold", 0.0, 1.0), ("prefix_padding_ms", 0.0, 10_000.0),
                  ("silence_duration_ms", 0.0, 10_000.0), ("min_speech_ms", 0.0, 10_000.0),
                  ("max_utterance_s", 0.5, 300.0))
        for name, lo, hi in checks:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or not lo <= v <= hi:
                raise ValueError(f"TurnDetection.{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"TurnDetection.threshold must be between 0 and 1 (exclusive), got {self.threshold!r}")


@dataclass
class SpeechStarted:
    """Speech began at ``start`` seconds of the stream (prefix padding included)."""

    start: float


@dataclass
class Utterance:
    """A finished utterance: its 16 kHz samples and where it lies in the stream (s).
    ``speech_end`` is where the speaker fell silent; ``end`` includes a little of the
    silence after it."""

    pcm: np.ndarray
    start: float
    end: float
    speech_end: float


@dataclass
class SpeechPaused:
    """The speaker paused: if the pause lasts to ``silence_duration_ms``, the utterance
    will be exactly ``pcm`` (same ``start`` and ``end``), so a client may start reading it
    into the model now (`Conversation.prefill`)."""

    pcm: np.ndarray
    start: float
    end: float


@dataclass
class SpeechResumed:
    """Speech went on after a `SpeechPaused`: the paused utterance is not the turn."""

    at: float


@dataclass
class SpeechDropped:
    """What started as speech was too short to be an utterance (``min_speech_ms``)."""

    start: float


TurnEvent = Union[SpeechStarted, SpeechPaused, SpeechResumed, Utterance, SpeechDropped]


def float_chunk(chunk: Any) -> np.ndarray:
    """A chunk of live audio as float32 mono: float samples as they are, integer PCM
    scaled to [-1, 1); ValueError for anything else (stereo, NaN/inf)."""
    a = np.asarray(chunk)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise ValueError(f"audio chunks must be mono (1-D), got shape {a.shape}")
    if a.dtype.kind in "iu":
        return a.astype(np.float32) / float(np.iinfo(a.dtype).max + 1)
    if a.dtype.kind != "f":
        raise ValueError(f"audio chunks must hold numbers, got dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError("an audio chunk holds NaN or inf")
    return a


class SpeechDetector:
    """Silero VAD over a live 16 kHz stream (see the module docstring).

    `push` takes float32 mono chunks of any size and returns the events they complete:
    `SpeechStarted`, then `Utterance` (or `SpeechDropped`); in between, `SpeechPaused`
    when the speaker stops for a moment (the utterance so far, exactly as `Utterance` will
    carry it if the pause lasts) and `SpeechResumed` if they go on. `commit` ends the utterance
    in progress now (manual turn taking); `clear` forgets the audio so far.
    """

    def __init__(self, options: Optional[TurnDetection] = None) -> None:
        self.options = options or TurnDetection()
        self._session = silero.session()
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(silero.CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)  # samples not yet a whole frame
        self._kept = np.zeros(0, np.float32)     # the audio that may still belong to an utterance
        self._kept_start = 0                     # stream position (samples) of _kept[0]
        self._pos = 0                            # stream position of the next frame
        self._in_speech = False
        self._speech_start = 0                   # where the utterance starts (padding included)
        self._speech_first = 0                   # its first speech frame
        self._last_speech_end = 0                # end of its latest frame above the threshold
        self._speech_samples = 0
        self._paused = False
        self.probabilities: List[float] = []     # every frame's probability (kept short: see _trim)

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def position(self) -> float:
        """Seconds of audio processed so far."""
        return self._pos / RATE

    def push(self, pcm: np.ndarray) -> List[TurnEvent]:
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        events: List[TurnEvent] = []
        self._pending = np.concatenate([self._pending, pcm]) if len(self._pending) else pcm.copy()
        n = len(self._pending) // silero.FRAME
        for i in range(n):
            frame = self._pending[i * silero.FRAME:(i + 1) * silero.FRAME]
            self._frame(frame, events)
        self._pending = self._pending[n * silero.FRAME:]
        return events

    def current(self) -> Optional[np.ndarray]:
        """The utterance in progress so far (None when no speech is going on)."""
        if not self._in_speech:
            return None
        return self._kept[max(0, self._speech_start - self._kept_start):].copy()

    def commit(self) -> Optional[Utterance]:
        """Ends the current utterance now (everything since speech started, or all the
        audio kept when no speech was detected); None when there is no audio."""
        end = self._pos + len(self._pending)
        audio = np.concatenate([self._kept, self._pending])
        start = self._speech_start if self._in_speech else self._kept_start
        pcm = audio[max(0, start - self._kept_start):]
        self._reset_after(end)
        self._kept, self._kept_start = np.zeros(0, np.float32), end
        self._pos, self._pending = end, np.zeros(0, np.float32)
        if not len(pcm):
            return None
        return Utterance(pcm, start / RATE, end / RATE, end / RATE)

    def clear(self) -> None:
        """Forgets the audio pushed so far (an utterance in progress is dropped)."""
        end = self._pos + len(self._pending)
        self._reset_after(end)
        self._kept, self._kept_start = np.zeros(0, np.float32), end
        self._pos, self._pending = end, np.zeros(0, np.float32)

    # ------------------------------------------------------------------ internals
    def _frame(self, frame: np.ndarray, events: List[TurnEvent]) -> None:
        o = self.options
        x = np.concatenate([self._context, frame])[None, :]
        prob, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": np.array(RATE, np.int64)})
        p = float(prob[0, 0])
        self._context = frame[-silero.CONTEXT:].copy()
        self.probabilities.append(p)
        start, end = self._pos, self._pos + silero.FRAME
        self._kept = np.concatenate([self._kept, frame])
        self._pos = end
        neg = max(o.threshold - 0.15, 0.01)
        if not self._in_speech:
            if p >= o.threshold:
                self._in_speech = True
                self._speech_first = start
                self._speech_start = max(self._kept_start, start - int(o.prefix_padding_ms * RATE / 1000))
                self._last_speech_end = end
                self._speech_samples = silero.FRAME
                events.append(SpeechStarted(self._speech_start / RATE))
            else:  # keep only what a future utterance's prefix padding may need
                self._trim(end - int(o.prefix_padding_ms * RATE / 1000))
            return
        if p >= neg:
            if self._paused:
                events.append(SpeechResumed(start / RATE))
                self._paused = False
            self._last_speech_end = end
            self._speech_samples += silero.FRAME
        silence = end - self._last_speech_end
        tail = self._tail()
        too_long = end - self._speech_start >= o.max_utterance_s * RATE
        long_enough = self._speech_samples >= o.min_speech_ms * RATE / 1000
        if not self._paused and silence >= tail and long_enough and not too_long:
            self._paused = True
            a, b = self._speech_start - self._kept_start, self._last_speech_end + tail - self._kept_start
            events.append(SpeechPaused(self._kept[a:b].copy(), self._speech_start / RATE,
                                       (self._last_speech_end + tail) / RATE))
        if silence >= o.silence_duration_ms * RATE / 1000 or too_long:
            if not long_enough:
                events.append(SpeechDropped(self._speech_start / RATE))
            else:
                last = min(end, self._last_speech_end + tail)  # a little silence after the last word
                a, b = self._speech_start - self._kept_start, last - self._kept_start
                events.append(Utterance(self._kept[a:b].copy(), self._speech_start / RATE, last / RATE,
                                        self._last_speech_end / RATE))
            self._reset_after(end)
            self._trim(end - int(o.prefix_padding_ms * RATE / 1000))

    def _tail(self) -> int:
        """Samples of silence an utterance keeps after its last word (at most 200 ms, and
        at most half the silence that ends it, so a pause is seen before the end)."""
        return int(min(0.2, self.options.silence_duration_ms / 2000) * RATE)

    def _reset_after(self, pos: int) -> None:
        self._in_speech = False
        self._paused = False
        self._speech_samples = 0
        self._speech_start = self._last_speech_end = pos
        if len(self.probabilities) > 4096:
            del self.probabilities[:-1024]

    def _trim(self, keep_from: int) -> None:
        drop = keep_from - self._kept_start
        if drop > 0:
            self._kept = self._kept[drop:]
            self._kept_start += drop
