"""Transcription of audio as it arrives.

    t = model.transcriber()                         # Silero turn detection, 16 kHz input
    for chunk in microphone():                      # any chunk size; other rates: sample_rate=
        t.push(chunk)
    t.close()                                       # the utterance in progress is transcribed too
    for ev in t.events():                           # or on_event=callback, called as they happen
        if ev.type == "delta": print(ev.text, end="")
        if ev.type == "completed": print(f"\\n[{ev.start:.2f}-{ev.end:.2f}] {ev.text}")

Each utterance the turn detector finishes (or `commit` ends by hand) goes to the model's
scheduler at once, batched with everything else the model is doing; its text comes back as
``delta`` events while it decodes, then ``completed``. With ``interim=True`` the utterance in
progress is transcribed every ``interim_interval`` seconds and ``interim`` events carry the
hypothesis and its ``stable`` part: the words two consecutive hypotheses agree on (the
LocalAgreement rule of whisper_streaming), which later hypotheses rarely change.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional

import numpy as np

from .turns import RATE, SpeechDetector, SpeechDropped, SpeechStarted, TurnDetection, Utterance, float_chunk

_DEFAULT = TurnDetection()

if TYPE_CHECKING:  # pragma: no cover
    from ..transcription.results import Transcription


@dataclass
class TranscriberEvent:
    """What happened on the stream.

    ``type``: ``speech_started`` (``start``), ``speech_stopped`` (``end``: the utterance is
    committed and being transcribed), ``dropped`` (too short to be speech), ``delta``
    (``text``: the next piece of the utterance's transcript), ``interim`` (``text``: the
    current hypothesis, ``stable``: its agreed prefix), ``completed`` (``text``, ``start``,
    ``end``, ``transcription``) or ``error`` (``text``: the message). ``utterance``
    numbers the utterances from 0; times are seconds since the stream began."""

    type: str
    utterance: int
    text: str = ""
    start: float = 0.0
    end: float = 0.0
    stable: str = ""
    transcription: Optional["Transcription"] = None


class Transcriber:
    """Live transcription (see the module docstring); made by `Model.transcriber`.

    Args:
        model: the loaded model.
        sample_rate: the rate of the pushed audio (resampled to 16 kHz as a stream).
        turn_detection: `TurnDetection` options, or None: no turn detection, utterances
            end only at `commit` (manual turn taking).
        interim: also transcribe the utterance in progress now and then.
        interim_interval: seconds of new speech between interim hypotheses.
        on_event: called with each `TranscriberEvent` (from pylfm's threads); without it,
            read them from `events`.
        **options: `TranscribeOptions` fields for each utterance (system, prompt,
            max_new_tokens, temperature, ...).
    """

    def __init__(self, model: Any, *, sample_rate: int = RATE, turn_detection: Optional[TurnDetection] = _DEFAULT,
                 interim: bool = False, interim_interval: float = 1.0,
                 on_event: Optional[Callable[[TranscriberEvent], None]] = None, **options: Any) -> None:
        from ..transcription.options import TranscribeOptions

        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not 1000 <= sample_rate <= 1_000_000:
            raise ValueError(f"sample_rate must be an integer in [1000, 1000000], got {sample_rate!r}")
        if not isinstance(interim_interval, (int, float)) or not 0.2 <= interim_interval <= 60:
            raise ValueError(f"interim_interval must be between 0.2 and 60 seconds, got {interim_interval!r}")
        self._model = model
        self._options = TranscribeOptions(**options)
        self.sample_rate = sample_rate
        self.detector = SpeechDetector(turn_detection) if turn_detection is not None else None
        self._buffer: List[np.ndarray] = []  # manual turn taking: the audio since the last commit
        self._buffer_start = 0.0
        self._position = 0.0
        self.interim = interim
        self.interim_interval = float(interim_interval)
        self._on_event = on_event
        self._events: "queue.Queue[Optional[TranscriberEvent]]" = queue.Queue()
        self._resampler: Any = None
        if sample_rate != RATE:
            import soxr

            self._resampler = soxr.ResampleStream(sample_rate, RATE, 1, dtype="float32")
        self._lock = threading.Lock()
        self._n = 0          # utterances so far
        self._current = 0    # the number the utterance in progress will get
        self._work: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._worker = threading.Thread(target=self._deliver, name="pylfm-transcriber", daemon=True)
        self._worker.start()
        self._closed = False
        self._interim_job: Any = None
        self._interim_at = 0.0
        self._hypotheses: List[str] = []

    # ------------------------------------------------------------------ input
    def push(self, chunk: np.ndarray) -> None:
        """Adds PCM (float in [-1, 1] or int16, mono) at the transcriber's sample rate."""
        if self._closed:
            raise ValueError("this transcriber is closed")
        pcm = float_chunk(chunk)
        if self._resampler is not None:
            pcm = self._resampler.resample_chunk(pcm)
        with self._lock:
            self._position += len(pcm) / RATE
            if self.detector is None:
                self._buffer.append(pcm)
                return
            for ev in self.detector.push(pcm):
                self._turn_event(ev)
            if self.interim and self.detector.in_speech:
                self._maybe_interim()

    def commit(self) -> Optional[int]:
        """Ends the utterance in progress now and transcribes it (manual turn taking);
        returns its number, or None when there was no audio."""
        with self._lock:
            utt = self._take()
            return None if utt is None else self._utterance(utt)

    def clear(self) -> None:
        """Drops the audio not yet committed."""
        with self._lock:
            if self.detector is not None:
                self.detector.clear()
            self._buffer, self._buffer_start = [], self._position
            self._hypotheses = []

    def _take(self) -> Optional[Utterance]:
        """The uncommitted audio as an utterance (lock held)."""
        if self.detector is not None:
            return self.detector.commit()
        pcm = np.concatenate(self._buffer) if self._buffer else np.zeros(0, np.float32)
        start, self._buffer, self._buffer_start = self._buffer_start, [], self._position
        return Utterance(pcm, start, self._position, self._position) if len(pcm) else None

    # ------------------------------------------------------------------ output
    def events(self, timeout: Optional[float] = None) -> Iterator[TranscriberEvent]:
        """The events in order, until the transcriber is closed and everything committed
        is transcribed (or ``timeout`` seconds pass without one)."""
        while True:
            try:
                ev = self._events.get(timeout=timeout)
            except queue.Empty:
                return
            if ev is None:
                return
            yield ev

    def close(self, wait: bool = True) -> None:
        """Ends the stream: the utterance in progress is committed (with turn detection,
        only if it is speech) and transcribed; ``wait`` waits for every transcript."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.detector is None or self.detector.in_speech:
                utt = self._take()
                if utt is not None:
                    self._utterance(utt)
        self._work.put(None)
        if wait:
            self._worker.join()

    def __enter__(self) -> "Transcriber":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _emit(self, ev: TranscriberEvent) -> None:
        if self._on_event is not None:
            try:
                self._on_event(ev)
            except Exception:  # noqa: BLE001 - the caller's callback must not stop the stream
                import logging

                logging.getLogger("pylfm").exception("pylfm: a transcriber's on_event callback failed")
        else:
            self._events.put(ev)

    def _turn_event(self, ev: Any) -> None:
        if isinstance(ev, SpeechStarted):
            self._hypotheses = []
            self._interim_at = ev.start
            self._emit(TranscriberEvent("speech_started", self._n, start=ev.start))
        elif isinstance(ev, SpeechDropped):
            self._emit(TranscriberEvent("dropped", self._n, start=ev.start))
        elif isinstance(ev, Utterance):
            self._utterance(ev)

    def _utterance(self, utt: Utterance) -> int:
        """Submits a finished utterance (lock held)."""
        k = self._n
        self._n += 1
        self._hypotheses = []
        self._emit(TranscriberEvent("speech_stopped", k, start=utt.start, end=utt.end))
        try:
            job = self._model.submit(utt.pcm, sample_rate=RATE, stream=True, **self._option_fields())
        except Exception as e:  # noqa: BLE001 - reported as this utterance's error
            self._work.put((k, None, utt, e))
            return k
        self._work.put((k, job, utt, None))
        return k

    def _option_fields(self) -> dict:
        from dataclasses import fields

        return {f.name: getattr(self._options, f.name) for f in fields(self._options)}

    def _deliver(self) -> None:
        """Emits each utterance's deltas and result, in order (the worker thread)."""
        while True:
            item = self._work.get()
            if item is None:
                break
            k, job, utt, error = item
            if error is not None:
                self._emit(TranscriberEvent("error", k, text=str(error), start=utt.start, end=utt.end))
                continue
            try:
                for piece in job.pieces():
                    self._emit(TranscriberEvent("delta", k, text=piece, start=utt.start, end=utt.end))
                result = job.transcription()
                self._emit(TranscriberEvent("completed", k, text=result.text, start=utt.start, end=utt.end,
                                            transcription=result))
            except Exception as e:  # noqa: BLE001
                self._emit(TranscriberEvent("error", k, text=str(e), start=utt.start, end=utt.end))
        self._events.put(None)

    def _maybe_interim(self) -> None:
        """Transcribes the utterance in progress when enough new speech came (lock held)."""
        now = self.detector.position
        if now - self._interim_at < self.interim_interval:
            return
        if self._interim_job is not None and not self._interim_job.done:
            return  # one hypothesis at a time
        pcm = self.detector.current()
        if pcm is None or len(pcm) < RATE // 4:
            return
        self._interim_at = now
        k = self._n
        job = self._model.submit(pcm, sample_rate=RATE, stream=False, **self._option_fields())
        self._interim_job = job

        def finished(j: Any, k: int = k) -> None:
            try:
                text = j.transcription().text
            except Exception:  # noqa: BLE001 - an interim that fails is just skipped
                return
            with self._lock:
                if k != self._n:
                    return  # the utterance ended meanwhile: its final transcript follows
                self._hypotheses.append(text)
                stable = _agreed(self._hypotheses[-2:]) if len(self._hypotheses) >= 2 else ""
            self._emit(TranscriberEvent("interim", k, text=text, stable=stable))

        job.on_finished = finished
        if job.done:
            finished(job)


def _agreed(hypotheses: List[str]) -> str:
    """The longest common word prefix of the hypotheses (LocalAgreement)."""
    words = [h.split() for h in hypotheses]
    out = []
    for group in zip(*words):
        if any(w != group[0] for w in group):
            break
        out.append(group[0])
    return " ".join(out)
