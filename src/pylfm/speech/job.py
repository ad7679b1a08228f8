"""`SpeechJob`: one speech request (speak, chat, a conversation's reply) in the model's
scheduler.

The engine's events arrive on its thread: text pieces, and audio frames whose
spectrogram rows the streaming inverse STFT turns into samples there, so consumers only
take finished chunks (`chunks`, `run`, `speech`).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np

from .. import _core
from ..engine.scheduler import EngineRequest
from ..errors import PylfmError, SpeechError
from .istft import SAMPLE_RATE, StreamingISTFT
from .result import Speech, SpeechChunk


class SpeechJob:
    """One speech request (speak, chat, a conversation's reply) in the model's scheduler.

    The engine's events arrive on its thread: text pieces, and audio frames whose
    spectrogram rows the streaming inverse STFT turns into samples there (the consumer only
    takes finished chunks). Consumers take the answer whole (`result`) or as it decodes
    (`chunks`); closing the stream, Ctrl-C or `cancel` stops the request at the engine's
    next step.
    """

    def __init__(self, parts: list, audio: list, params: Any, *, session: int = -1,
                 on_text: Optional[Callable[[str], None]] = None) -> None:
        self.session = session
        self.parts, self.audio, self.params = parts, audio, params
        self.cancel_flag = _core.CancelFlag()
        self.on_text = on_text  # called on the engine thread with each text piece
        self.on_event: Optional[Callable[[SpeechChunk], None]] = None  # called there with every chunk
        self.istft = StreamingISTFT()
        self.istft_ms = 0.0
        self.t0 = time.perf_counter()
        self.first_audio_ms: Optional[float] = None
        self.result_dict: Optional[Dict[str, Any]] = None
        self.error: Optional[BaseException] = None
        self.bar: Any = None  # a tqdm bar over seconds of speech, when asked for
        self._submitted = False
        self._cond = threading.Condition()
        self._queue: "queue.Queue[Optional[SpeechChunk]]" = queue.Queue()
        self._chunks: List[SpeechChunk] = []
        self.items: List[Any] = []  # what was generated, in order: token ids and (8,) frames (end of audio included)
        self.item_texts: List[str] = []  # the text each item added ("" for frames)
        self._done = False
        self._cancelled = False

    # ------------------------------------------------------------------ scheduler side
    def has_work(self) -> bool:
        return not self._submitted and not self._cancelled

    def next_request(self) -> Optional[EngineRequest]:
        if self._submitted or self._cancelled:
            return None
        self._submitted = True
        return EngineRequest(0, self.parts, self.audio, _core.SamplingParams(), self.params, self.session)

    def on_piece(self, key: Any, text: str, token: int) -> None:
        if token >= 0:
            self.items.append(int(token))
            self.item_texts.append(text)
        elif self.item_texts:
            self.item_texts[-1] += text  # the flushed end of a character
        if text and self.on_text is not None:
            self.on_text(text)
        self._put(SpeechChunk(text=text, token=token))

    def on_audio(self, key: Any, codes: np.ndarray, spectrum: Optional[np.ndarray], end: bool) -> None:
        audio = np.zeros(0, np.float32)
        if spectrum is not None:
            t = time.perf_counter()
            audio = self.istft.push(spectrum)
            self.istft_ms += (time.perf_counter() - t) * 1000
            if self.first_audio_ms is None and len(audio):
                self.first_audio_ms = (time.perf_counter() - self.t0) * 1000
            if self.bar is not None:
                self.bar.update(round(len(audio) / SAMPLE_RATE, 2))
        self.items.append(np.asarray(codes, np.int32))
        self.item_texts.append("")
        self._put(SpeechChunk(audio=audio, codes=codes, end_of_audio=end))

    def on_done(self, key: Any, result: Dict[str, Any]) -> bool:
        tail = self.istft.finish()
        if len(tail):
            self._put(SpeechChunk(audio=tail))
        self._end(result, None)
        return False

    def on_error(self, key: Any, message: str) -> None:
        lowered = message.lower()
        bad_input = any(w in lowered for w in ("longer than", "does not fit", "needs", "must", "empty", "missing"))
        self._end(None, SpeechError(message) if bad_input else PylfmError(f"speech generation failed: {message}"))

    def fail(self, message: str) -> None:
        self._end(None, PylfmError(message))

    def cancel(self) -> None:
        """Stops the request at the engine's next step (or before it starts)."""
        self.cancel_flag.set()
        with self._cond:
            if self._submitted or self._done:
                return
            self._cancelled = True  # never handed over: it ends here
        self._end({"stop_reason": "cancelled"}, None)

    def _put(self, chunk: SpeechChunk) -> None:
        self._chunks.append(chunk)
        self._queue.put(chunk)
        if self.on_event is not None:
            self.on_event(chunk)

    def _end(self, result: Optional[Dict[str, Any]], error: Optional[BaseException]) -> None:
        with self._cond:
            if self._done:
                return
            self.result_dict, self.error, self._done = result, error, True
            self._cond.notify_all()
        self._queue.put(None)
        if self.on_event is not None:
            self.on_event(None)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ consumers
    @property
    def done(self) -> bool:
        return self._done

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until the request has ended (True) or ``timeout`` seconds passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._done:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.1 if left is None else min(0.1, left))  # short waits: Ctrl-C gets through
        return True

    def chunks(self) -> Iterator[SpeechChunk]:
        """The answer as it decodes; closing the iterator cancels the request."""
        try:
            while True:
                try:
                    item = self._queue.get(timeout=0.1)  # short waits: Ctrl-C gets through
                except queue.Empty:
                    continue
                if item is None:
                    break
                yield item
            if self.error is not None:
                raise self.error
        finally:
            if not self._done:
                self.cancel()
                self.wait()

    def run(self) -> List[SpeechChunk]:
        """Waits for the whole answer (Ctrl-C cancels it)."""
        try:
            self.wait()
        except BaseException:
            self.cancel()
            self.wait()
            raise
        if self.error is not None:
            raise self.error
        return list(self._chunks)

    def show_progress(self, total_seconds: float) -> None:
        """A progress bar on stderr over seconds of speech generated (the end is where the
        model ends the audio, or ``total_seconds``)."""
        from tqdm import tqdm

        self.bar = tqdm(total=round(total_seconds, 2), unit="s", dynamic_ncols=True, leave=False,
                        bar_format="speech {n:.1f} s [{elapsed}, {rate_fmt}]")

    def speech(self, chunks: Optional[List[SpeechChunk]] = None) -> Speech:
        """The `Speech` of the finished request."""
        if chunks is None:
            chunks = self.run()
        if self.bar is not None:
            self.bar.close()
        r = self.result_dict or {}
        audio = [c.audio for c in chunks if len(c.audio)]
        timings = {"encode": float(r.get("encode_ms", 0.0)), "prefill": float(r.get("prefill_ms", 0.0)),
                   "backbone": float(r.get("decode_ms", 0.0)), "depthformer": float(r.get("depth_ms", 0.0)),
                   "detokenizer": float(r.get("detok_ms", 0.0)), "istft": self.istft_ms,
                   "total": (time.perf_counter() - self.t0) * 1000}
        if self.first_audio_ms is not None:
            timings["first_audio"] = self.first_audio_ms
        return Speech(audio=np.concatenate(audio) if audio else np.zeros(0, np.float32),
                      text=str(r.get("text", "")), codes=np.asarray(r.get("codes", np.zeros((0, 8))), np.int32),
                      tokens=list(r.get("tokens", [])), stop_reason=str(r.get("stop_reason", "")), timings=timings)


def item_parts(items: List[Any]) -> List[np.ndarray]:
    """A reply's items (`SpeechJob.items`: token ids and (8,) frames, in order) as the
    engine's prompt parts: runs of token ids (int32) and runs of frames ((n, 8) int32),
    alternating as they came; how an answer goes back into a history."""
    parts: List[np.ndarray] = []
    run: List[Any] = []
    for it in items:
        if run and isinstance(run[0], np.ndarray) != isinstance(it, np.ndarray):
            parts.append(_run_part(run))
            run = []
        run.append(it)
    if run:
        parts.append(_run_part(run))
    return parts


def _run_part(run: List[Any]) -> np.ndarray:
    if isinstance(run[0], np.ndarray):
        return np.stack(run).astype(np.int32).reshape(-1, 8)
    return np.asarray(run, np.int32)
