"""The one scheduler: everything that runs on the model goes through here.

It owns the engine's loop (a thread running ``_core.Engine.run``) and decides what the
engine runs next. Jobs queue first come, first served: transcription jobs (their
windows), speech jobs (speak, chat) and the replies of live conversations. Whenever the
engine has fewer transient requests than ``batch_size``, the oldest job that has a
request ready hands it over (a job capped by its own ``batch_size`` lets later jobs use
the slot); a conversation's reply runs in the sequence its session owns. The engine
takes each request in as soon as it can and advances everything with one llama_decode
per step (continuous batching), so windows of one long recording, several files of a
batch, speech and transcription of threads sharing a `Model`, and concurrent server
requests all decode together. Events (text pieces, audio frames, results, errors) come
back once per engine turn and are routed to their jobs here.

A job is duck-typed: ``next_request() -> EngineRequest | None``, ``has_work()``,
``cancel_flag``, ``cancel()``, ``fail(message)``, and the event handlers ``on_piece(key,
text, token)``, ``on_audio(key, codes, spectrum, end)`` (speech), ``on_done(key, result) ->
bool`` (True: it queued more work, e.g. a fallback re-decode) and ``on_error(key, message)``.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Tuple

from .. import _core
from ..errors import EngineError
from .log import drain_llama_log

log = logging.getLogger("pylfm")

_PIECE, _DONE, _ERROR, _AUDIO = 0, 1, 2, 3
_live: "weakref.WeakSet[Scheduler]" = weakref.WeakSet()


class EngineRequest(NamedTuple):
    """One request for the engine: a prompt and how to generate after it."""

    key: Any  #: handed back to the job with each of the request's events
    parts: list
    audio: list
    params: "_core.SamplingParams"
    speech: Optional["_core.SpeechParams"] = None  #: generate speech (text and audio frames)
    session: int = -1  #: run in this session's sequence, after its history (it owns a slot)


class Scheduler:
    """Feeds jobs' requests to one engine and routes the engine's events back."""

    def __init__(self, engine: "_core.Engine", batch_size: int) -> None:
        self._engine = engine
        self._slots = batch_size  # transient requests in flight; sessions own the other slots
        self._lock = threading.RLock()  # job callbacks may submit from the engine thread
        self._jobs: Deque[Any] = deque()  # jobs with requests still to hand over, oldest first
        self._running: Dict[int, Tuple[Any, Any, bool]] = {}  # request id -> (job, key, transient)
        self._transient = 0
        self._ids = itertools.count(1)
        self._thread: "threading.Thread | None" = None
        self._closed = False
        self._failure: Optional[str] = None
        _live.add(self)

    def submit(self, job: Any) -> None:
        """Queues a job; its requests start as slots free."""
        with self._lock:
            self._start()
            self._jobs.append(job)
            self._feed()

    def call(self, fn: Callable[[], Any], cancel: Any = None) -> Any:
        """Runs ``fn()`` on the engine's thread between steps and returns its result (or
        raises its exception). Every other native computation (session operations, the
        engine probes) goes through here: ggml's OpenMP threads lose their spinning, and
        half their speed on a small machine, once a second thread computes. Ctrl-C while
        waiting sets ``cancel`` (a ``_core.CancelFlag``) and is raised when ``fn`` ends."""
        out: Dict[str, Any] = {}

        def task() -> None:
            try:
                out["value"] = fn()
            except BaseException as e:  # handed back to the caller's thread
                out["error"] = e

        with self._lock:
            self._start()
        try:
            self._engine.call(task, cancel)
        except RuntimeError as e:
            raise EngineError(str(e)) from None
        if "error" in out:
            raise out["error"]
        return out.get("value")

    def _start(self) -> None:
        """Starts the engine's thread on first use (lock held)."""
        if self._closed:
            raise EngineError("this model has been closed")
        if self._failure is not None:
            raise EngineError(f"the engine stopped after an error ({self._failure}); load the model again")
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="pylfm-engine", daemon=True)
            self._thread.start()

    @property
    def busy(self) -> int:
        """Requests in the engine now."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Jobs with requests not yet handed to the engine."""
        return len(self._jobs)

    @property
    def failure(self) -> Optional[str]:
        """Why the engine stopped, if it failed (every job then fails with it)."""
        return self._failure

    def inject_failure(self) -> None:
        """Tests: the engine loop fails at its next turn as an internal error would."""
        with self._lock:
            self._start()
        self._engine.inject_failure()

    def close(self) -> None:
        """Stops the engine loop; running and waiting requests end as cancelled."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            jobs, self._jobs = list(self._jobs), deque()
        self._engine.shutdown()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        for job in jobs:  # never handed over: they end as cancelled
            job.cancel()

    # ------------------------------------------------------------------ internals
    def _loop(self) -> None:
        try:
            self._engine.run(self._on_events)
            failure = self._engine.failure
        except BaseException as e:  # noqa: BLE001 - whatever ends the loop ends every job
            failure = f"{type(e).__name__}: {e}"
        if not failure:
            return
        log.error("pylfm: the engine stopped after an error: %s", failure)
        with self._lock:
            self._failure = failure
            jobs, self._jobs = list(self._jobs), deque()
            running, self._running = list(self._running.values()), {}
        message = f"the engine stopped after an error: {failure}"
        for job, key, _ in running:
            _guarded(job.on_error, key, message)
        for job in jobs:
            _guarded(job.fail, message)

    def _feed(self) -> None:
        """Hands ready requests to the engine while it has free slots (lock held)."""
        i = 0
        while i < len(self._jobs):
            job = self._jobs[i]
            session_job = getattr(job, "session", -1) >= 0
            if not session_job and self._transient >= self._slots:
                i += 1  # a session's reply may still go ahead: it has its own slot
                continue
            request = job.next_request()
            if request is None:
                if job.has_work():
                    i += 1  # capped by its batch_size: a later job may use the slot
                else:
                    del self._jobs[i]
                continue
            rid = next(self._ids)
            transient = request.session < 0
            self._running[rid] = (job, request.key, transient)
            self._transient += transient
            try:
                self._engine.submit(rid, request.parts, request.audio, request.params, job.cancel_flag,
                                    request.speech, request.session)
            except RuntimeError as e:  # the engine stopped
                self._running.pop(rid, None)
                self._transient -= transient
                _guarded(job.on_error, request.key, str(e))

    def _on_events(self, events: List[Tuple[int, int, Any]]) -> None:
        """Called by the engine thread once per turn with [(kind, request id, payload)]."""
        with self._lock:
            for kind, rid, payload in events:
                entry = self._running.get(rid) if kind in (_PIECE, _AUDIO) else self._running.pop(rid, None)
                if entry is None:
                    continue
                job, key, transient = entry
                if kind in (_DONE, _ERROR):
                    self._transient -= transient
                try:
                    if kind == _PIECE:
                        job.on_piece(key, *payload)
                    elif kind == _AUDIO:
                        job.on_audio(key, *payload)
                    elif kind == _DONE:
                        if job.on_done(key, payload) and job not in self._jobs:
                            self._jobs.appendleft(job)  # a fallback re-decode goes ahead of new work
                    else:
                        job.on_error(key, payload)
                except Exception:  # a bug in a job must not stop the engine for everyone
                    log.exception("pylfm: handling an engine event failed; the request is cancelled")
                    job.cancel()
            if not self._closed:
                self._feed()
        if any(kind in (_DONE, _ERROR) for kind, _, _ in events):
            drain_llama_log()


def _guarded(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001
        log.exception("pylfm: a job failed to take its error")


@atexit.register
def _close_all() -> None:
    # The engine thread must not outlive the interpreter's state it calls back into.
    for scheduler in list(_live):
        scheduler.close()
