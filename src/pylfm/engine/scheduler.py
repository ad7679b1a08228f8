"""The one scheduler: everything that transcribes goes through here.

It owns the engine's loop (a thread running ``_core.Engine.run``) and decides what
the engine runs next. Jobs queue first come, first served; whenever the engine has
fewer requests than sequence slots, the oldest job that has a window ready hands it
over (a job capped by its ``batch_size`` lets later jobs use the slot). The engine
admits each request into a slot as soon as one frees and advances all slots with one
llama_decode per step (continuous batching), so windows of one long recording,
several files of a batch, threads sharing a `Model` and concurrent server requests
all decode together. Events (text pieces, results, errors) come back once per engine
step and are routed to their jobs here.

The scheduler knows no job type: a job is any object with ``next_request()``,
``has_work()``, ``on_piece(k, text)``, ``on_done(k, attempt, result)``,
``on_error(k, message)``, ``cancel()`` and ``cancel_flag`` (a ``_core.CancelFlag``).
`pylfm.transcription.job.TranscriptionJob` is the one there is.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Tuple

from .. import _core
from .log import drain_llama_log

log = logging.getLogger("pylfm")

_PIECE, _DONE, _ERROR = 0, 1, 2
_live: "weakref.WeakSet[Scheduler]" = weakref.WeakSet()


class Scheduler:
    """Feeds jobs' windows to one engine and routes the engine's events back."""

    def __init__(self, engine: "_core.Engine") -> None:
        self._engine = engine
        self._slots = engine.n_seq_max
        self._lock = threading.RLock()  # job callbacks may submit from the engine thread
        self._jobs: Deque[Any] = deque()  # jobs with windows still to hand over, oldest first
        self._running: Dict[int, Tuple[Any, int, int]] = {}  # request id -> (job, window, attempt)
        self._ids = itertools.count(1)
        self._thread: "threading.Thread | None" = None
        self._closed = False
        _live.add(self)

    def submit(self, job: Any) -> None:
        """Queues a job; its windows start as slots free."""
        with self._lock:
            self._start()
            self._jobs.append(job)
            self._feed()

    def call(self, fn: Callable[[], Any], cancel: Any = None) -> Any:
        """Runs ``fn()`` on the engine's thread between steps and returns its result (or
        raises its exception). Every other native computation (speech generation, the
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
        self._engine.call(task, cancel)
        if "error" in out:
            raise out["error"]
        return out.get("value")

    def _start(self) -> None:
        """Starts the engine's thread on first use (lock held)."""
        if self._closed:
            raise RuntimeError("this model has been closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._engine.run, args=(self._on_events,),
                                            name="pylfm-engine", daemon=True)
            self._thread.start()

    @property
    def busy(self) -> int:
        """Requests in the engine now."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Jobs with windows not yet handed to the engine."""
        return len(self._jobs)

    def close(self) -> None:
        """Stops the engine loop; running and waiting requests end as cancelled."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._engine.shutdown()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # ------------------------------------------------------------------ internals
    def _feed(self) -> None:
        """Hands ready windows to the engine while it has free slots (lock held)."""
        i = 0
        while len(self._running) < self._slots and i < len(self._jobs):
            job = self._jobs[i]
            request = job.next_request()
            if request is None:
                if job.has_work():
                    i += 1  # capped by its batch_size: a later job may use the slot
                else:
                    del self._jobs[i]
                continue
            k, attempt, parts, audio, params = request
            rid = next(self._ids)
            self._running[rid] = (job, k, attempt)
            self._engine.submit(rid, parts, audio, params, job.cancel_flag)

    def _on_events(self, events: List[Tuple[int, int, Any]]) -> None:
        """Called by the engine thread once per step with [(kind, request id, payload)]."""
        with self._lock:
            for kind, rid, payload in events:
                entry = self._running.get(rid) if kind == _PIECE else self._running.pop(rid, None)
                if entry is None:
                    continue
                job, k, attempt = entry
                try:
                    if kind == _PIECE:
                        job.on_piece(k, payload)
                    elif kind == _DONE:
                        if job.on_done(k, attempt, payload) and job not in self._jobs:
                            self._jobs.appendleft(job)  # a fallback re-decode goes ahead of new work
                    else:
                        job.on_error(k, payload)
                except Exception:  # a bug in a job must not stop the engine for everyone
                    log.exception("pylfm: handling an engine event failed; the request is cancelled")
                    job.cancel()
            if not self._closed:
                self._feed()
        if any(kind != _PIECE for kind, _, _ in events):
            drain_llama_log()


@atexit.register
def _close_all() -> None:
    # The engine thread must not outlive the interpreter's state it calls back into.
    for scheduler in list(_live):
        scheduler.close()
