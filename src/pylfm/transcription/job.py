"""`TranscriptionJob`: one recording on its way through the scheduler.

A job holds the recording's planned windows, hands them to the scheduler as engine
requests (at most ``batch_size`` at a time), and assembles what comes back: text pieces
in transcript order for streaming, one `Segment` per window (re-decoding windows the
loop guard rejects), and the final `Transcription`. Every entry point (``transcribe``
plain and streamed, ``transcribe_segments``, ``transcribe_batch``, the server, bench,
eval) consumes a job in one of three ways: `result`, `pieces` or `segments`.

Events arrive on the engine's thread; consumers wait on the job's condition variable
in their own threads. A consumer that stops early (closes the iterator, passes
``cancel=`` or ``timeout=``) cancels the job: its waiting windows are dropped and its
running ones stop at the engine's next step.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .. import _core
from ..engine.prompt import prompt_parts
from ..engine.scheduler import EngineRequest
from ..errors import PylfmError, TranscriptionCancelled, TranscriptionTimeout
from .formats import Segment
from .loop_guard import avg_logprob, best_attempt, compression_ratio
from .options import TranscribeOptions
from .results import Timings, Transcription, TranscriptionInfo, worst_stop

_POLL_S = 0.05  # how often a waiting consumer looks at its cancel event / deadline
_GRACE_S = 60.0  # how long a cancelled job may take to wind down before we stop waiting


class TranscriptionJob:
    """One recording in the scheduler (see the module docstring). Made by `Model.submit`."""

    def __init__(self, pcm: np.ndarray, sample_rate: int, windows: List[Tuple[int, int]], opts: TranscribeOptions,
                 *, device: str, model_name: str, load_ms: float, stream: bool = False) -> None:
        self.options = opts
        self.windows = windows
        self.stream = stream
        self.sample_rate = sample_rate
        self.duration = len(pcm) / sample_rate
        self.cancel_flag = _core.CancelFlag()
        self.timings = Timings(load_ms=load_ms)
        self.info = TranscriptionInfo(duration=self.duration, sample_rate=sample_rate, n_windows=len(windows),
                                      device=device, model=model_name, timings=self.timings)
        #: called (on the engine thread) with each finished window's audio seconds / when all are done
        self.on_progress: Optional[Callable[[float], None]] = None
        self.on_finished: Optional[Callable[["TranscriptionJob"], None]] = None
        self._pcm = pcm
        self._parts = prompt_parts(opts.system, opts.prompt)
        self._cond = threading.Condition()
        self._todo: Deque[Tuple[int, int]] = deque((k, 0) for k in range(len(windows)))  # (window, attempt)
        self._in_flight = 0
        self._attempts: List[List[Dict[str, Any]]] = [[] for _ in windows]
        self._final: List[Optional[Dict[str, Any]]] = [None] * len(windows)
        self._n_final = 0
        self._cancelled = False
        # streaming: pieces of the window being streamed go out at once, later windows' wait
        self._out: Deque[str] = deque()
        self._buffers: List[List[str]] = [[] for _ in windows]
        self._emit_k = 0
        self._started = False  # the streamed window has shown text
        self._held = ""  # its trailing whitespace, sent only if more text follows
        self._emitted_any = False

    # ------------------------------------------------------------------ state
    @property
    def done(self) -> bool:
        return self._n_final == len(self.windows)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Stops the job: waiting windows are dropped, running ones end at the next step."""
        with self._cond:
            if self.done or self._cancelled:
                return
            self._cancelled = True
            self.cancel_flag.set()
            todo, self._todo = self._todo, deque()
            for k, _ in todo:
                self._finalize(k, self._cancelled_record(k))
            self._cond.notify_all()
        self._maybe_finished()

    # ------------------------------------------------------------------ scheduler side
    def has_work(self) -> bool:
        return bool(self._todo) and not self._cancelled

    def next_request(self) -> Optional[EngineRequest]:
        """The next window to decode, or None (nothing left, or batch_size in flight)."""
        with self._cond:
            cap = self.options.batch_size or len(self.windows)
            if self._cancelled or not self._todo or self._in_flight >= cap:
                return None
            k, attempt = self._todo.popleft()
            self._in_flight += 1
        a, b = self.windows[k]
        return EngineRequest((k, attempt), self._parts, [self._pcm[a:b]], self._params(k, attempt))

    def fail(self, message: str) -> None:
        """The engine stopped: every window not yet done ends with this error."""
        with self._cond:
            todo, self._todo = self._todo, deque()
            for k, _ in todo:
                self._finalize(k, self._error_record(message))
            self._cond.notify_all()
        self._maybe_finished()

    def on_piece(self, key: Tuple[int, int], text: str, token: int = -1) -> None:
        k = key[0]
        if not self.stream:
            return  # the window's text comes whole with its result
        with self._cond:
            if k == self._emit_k:
                self._push(text)
                self._cond.notify_all()
            else:
                self._buffers[k].append(text)

    def on_done(self, key: Tuple[int, int], res: Dict[str, Any]) -> bool:
        """A window's attempt ended; True when it was queued again for a fallback."""
        k, attempt = key
        guard = self.options.loop_guard
        with self._cond:
            self._in_flight -= 1
            self.timings.add(res)
            res["temperature"] = self._temperature(attempt)
            self._attempts[k].append(res)
            retry = (guard is not None and not self.stream and not self._cancelled and res["stop_reason"] != "cancelled"
                     and attempt < len(guard.temperatures) and guard.degenerate(res))
            if retry:
                self._todo.appendleft((k, attempt + 1))
            elif self._final[k] is None:
                bad = guard is not None and guard.degenerate(res)
                chosen = best_attempt(guard, self._attempts[k]) if bad and len(self._attempts[k]) > 1 else res
                self._finalize(k, self._record(chosen, stop=res["stop_reason"] if res["stop_reason"] == "cancelled" else None))
            self._cond.notify_all()
        self._maybe_finished()
        return retry

    def on_error(self, key: Tuple[int, int], message: str) -> None:
        k = key[0]
        with self._cond:
            self._in_flight -= 1
            if self._final[k] is None:
                self._finalize(k, self._error_record(message))
            self._cond.notify_all()
        self._maybe_finished()

    @staticmethod
    def _error_record(message: str) -> Dict[str, Any]:
        return {"text": "", "tokens": [], "stop_reason": "error", "error": message, "temperature": 0.0,
                "avg_logprob": None, "compression_ratio": None, "n_prompt_tokens": 0, "n_audio_tokens": 0}

    # ------------------------------------------------------------------ consumers
    def result(self, cancel: Optional[threading.Event] = None, timeout: Optional[float] = None) -> Transcription:
        """Waits for every window and returns the `Transcription`.

        Raises:
            TranscriptionCancelled / TranscriptionTimeout: ``cancel`` was set or
                ``timeout`` seconds passed (``.partial`` holds what was decoded).
            PylfmError: every window failed (the message says why).
        """
        try:
            stopped = self._wait(lambda: self.done, cancel, timeout)
        except BaseException:  # e.g. KeyboardInterrupt: stop the engine work too
            self.cancel()
            raise
        return self._check(self.transcription(), stopped, timeout)

    def pieces(self, cancel: Optional[threading.Event] = None, timeout: Optional[float] = None) -> Iterator[str]:
        """Text pieces in transcript order as they are decoded; they join to the
        `Transcription` text. Closing the iterator early cancels the job."""
        stopped = None
        try:
            while True:
                stopped = self._wait(lambda: bool(self._out) or self.done, cancel, timeout) or stopped
                with self._cond:
                    items = list(self._out)
                    self._out.clear()
                    finished = self.done and not self._out
                yield from items
                if finished:
                    break
            self._check(self.transcription(), stopped, timeout)
        finally:
            self.cancel()  # no-op when done

    def segments(self, cancel: Optional[threading.Event] = None, timeout: Optional[float] = None) -> Iterator[Segment]:
        """One `Segment` per window with text, in order, each as soon as it and the
        windows before it are decoded. Closing the iterator early cancels the job."""
        k, emitted, stopped = 0, 0, None
        try:
            while k < len(self.windows):
                stopped = self._wait(lambda: self._final[k] is not None, cancel, timeout) or stopped
                seg = self._segment(k, emitted)
                k += 1
                if seg is not None:
                    emitted += 1
                    yield seg
            self._check(self.transcription(), stopped, timeout)
        finally:
            self.cancel()

    def transcription(self) -> Transcription:
        """The `Transcription` of the windows finished so far."""
        with self._cond:
            records = [r for r in self._final if r is not None]
            segments = []
            for k in range(len(self.windows)):
                seg = self._segment(k, len(segments))
                if seg is not None:
                    segments.append(seg)
            return Transcription(
                text=" ".join(s.text for s in segments if s.text), tokens=[t for r in records for t in r["tokens"]],
                segments=segments, duration=self.duration, timings=self.timings, device=self.info.device,
                n_prompt_tokens=sum(r["n_prompt_tokens"] for r in records),
                n_audio_tokens=sum(r["n_audio_tokens"] for r in records),
                stop_reason=worst_stop([r["stop_reason"] for r in records]) or "silence", n_windows=len(self.windows))

    # ------------------------------------------------------------------ internals
    def _params(self, k: int, attempt: int) -> "_core.SamplingParams":
        o, guard = self.options, self.options.loop_guard
        p = _core.SamplingParams()
        p.max_new_tokens, p.top_k, p.top_p, p.ignore_eos = o.max_new_tokens, o.top_k, o.top_p, o.ignore_eos
        p.temperature = self._temperature(attempt)
        p.seed = (o.seed + k + 7919 * attempt) & 0xFFFFFFFF  # per window: the same whatever the batching
        if guard is not None:
            guard.engine_params(p)
            if attempt:
                p.repeat_penalty = guard.repeat_penalty
        return p

    def _temperature(self, attempt: int) -> float:
        guard = self.options.loop_guard
        return self.options.temperature if attempt == 0 or guard is None else guard.temperatures[attempt - 1]

    def _record(self, res: Dict[str, Any], stop: Optional[str] = None) -> Dict[str, Any]:
        text = res["text"].strip()
        return {"text": text, "tokens": list(res["tokens"]), "stop_reason": stop or res["stop_reason"], "error": None,
                "temperature": res["temperature"], "avg_logprob": avg_logprob(res) if res["tokens"] else None,
                "compression_ratio": compression_ratio(text) if text else None,
                "n_prompt_tokens": res["n_prompt_tokens"], "n_audio_tokens": res["n_audio_tokens"]}

    def _cancelled_record(self, k: int) -> Dict[str, Any]:
        tried = self._attempts[k]
        if tried:  # a fallback was pending: keep the best attempt so far
            return self._record(best_attempt(self.options.loop_guard, tried), stop="cancelled")
        return {"text": "", "tokens": [], "stop_reason": "cancelled", "error": None, "temperature": 0.0,
                "avg_logprob": None, "compression_ratio": None, "n_prompt_tokens": 0, "n_audio_tokens": 0}

    def _finalize(self, k: int, record: Dict[str, Any]) -> None:
        """Window k is final (lock held): count it, report progress, advance the stream."""
        self._final[k] = record
        self._n_final += 1
        if self.on_progress is not None:
            a, b = self.windows[k]
            self.on_progress((b - a) / self.sample_rate)
        while self._emit_k < len(self.windows) and self._final[self._emit_k] is not None:
            self._started, self._held = False, ""
            self._emit_k += 1
            if self._emit_k < len(self.windows):
                for piece in self._buffers[self._emit_k]:
                    self._push(piece)
                self._buffers[self._emit_k] = []

    def _push(self, piece: str) -> None:
        """Streams a piece of the current window with the transcript's whitespace rule:
        each window's text stripped, windows joined by one space."""
        if not self._started:
            piece = piece.lstrip()
            if not piece:
                return
            self._started = True
            if self._emitted_any:
                self._out.append(" ")
        s = self._held + piece
        body = s.rstrip()
        self._held = s[len(body):]
        if body:
            self._out.append(body)
            self._emitted_any = True

    def _segment(self, k: int, index: int) -> Optional[Segment]:
        r = self._final[k]
        if r is None or (not r["text"] and r["error"] is None):
            return None
        a, b = self.windows[k]
        return Segment(id=index, start=a / self.sample_rate, end=b / self.sample_rate, text=r["text"],
                       tokens=r["tokens"], stop_reason=r["stop_reason"], avg_logprob=r["avg_logprob"],
                       compression_ratio=r["compression_ratio"], temperature=r["temperature"], error=r["error"])

    def _maybe_finished(self) -> None:
        if self.done and self.on_finished is not None:
            callback, self.on_finished = self.on_finished, None
            callback(self)

    def _wait(self, ready: Callable[[], bool], cancel: Optional[threading.Event], timeout: Optional[float]) -> Optional[str]:
        """Waits until ``ready()``; returns "cancelled"/"timeout" if it had to stop the job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        stopped, grace_end = None, None
        with self._cond:
            while not ready():
                if stopped is None:
                    if cancel is not None and cancel.is_set():
                        stopped = "cancelled"
                    elif deadline is not None and time.monotonic() >= deadline:
                        stopped = "timeout"
                    if stopped is not None:
                        self._cond.release()
                        try:
                            self.cancel()
                        finally:
                            self._cond.acquire()
                        grace_end = time.monotonic() + _GRACE_S
                        continue
                elif time.monotonic() >= grace_end:  # pragma: no cover - the engine stopped answering
                    raise PylfmError("the engine did not stop the cancelled request in time")
                self._cond.wait(_POLL_S)  # short waits, whatever else: Ctrl-C (a signal) is seen at once
        return stopped

    def _check(self, t: Transcription, stopped: Optional[str], timeout: Optional[float]) -> Transcription:
        if stopped == "timeout":
            raise TranscriptionTimeout(f"transcription stopped at its timeout of {timeout:g} s", t)
        if stopped == "cancelled" or (self._cancelled and t.stop_reason == "cancelled"):
            raise TranscriptionCancelled("transcription cancelled", t)
        errors = [r["error"] for r in self._final if r is not None and r["error"]]
        if errors and len(errors) == len(self.windows):
            raise PylfmError(f"transcription failed: {errors[0]}")
        return t
