"""Nothing waits forever: probes never wait for a slot, an engine failure ends every
pending request with its reason, dropped engine tasks release what they hold, and waits
honour Ctrl-C. All on the real engine with the tiny F32 model."""

from __future__ import annotations

import _thread
import gc
import threading
import time
import weakref

import numpy as np
import pytest

import pylfm
from pylfm.errors import EngineError, PylfmError

RATE = 16000


def chirp(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)


def fresh(gguf, **kw):
    return pylfm.Model(gguf.model_path, gguf.mmproj_path, device="cpu", n_threads=2, **kw)


LONG = dict(sample_rate=RATE, max_new_tokens=100_000, ignore_eos=True, loop_guard=None)


def test_probes_never_wait_for_a_slot(tiny_gguf_f32):
    with fresh(tiny_gguf_f32, batch_size=1) as model:
        job = model.submit(chirp(), **LONG)  # holds the only slot
        while model.engine_stats()["decode_steps"] < 3:
            time.sleep(0.01)
        done = threading.Event()
        out = {}

        def probe():
            out["logits"] = model.first_logits(chirp(1.0), sample_rate=RATE)
            done.set()

        threading.Thread(target=probe, daemon=True).start()
        assert done.wait(30), "first_logits waited for a slot the engine's own thread holds"
        assert out["logits"].shape == (model.n_vocab,)
        job.cancel()


def test_an_engine_failure_ends_every_request_with_its_reason(tiny_gguf_f32):
    model = fresh(tiny_gguf_f32, batch_size=1)
    try:
        running = model.submit(chirp(), **LONG)
        waiting = model.submit(chirp(), **LONG)  # no slot: still in the scheduler's queue
        while model.engine_stats()["decode_steps"] < 2:
            time.sleep(0.01)
        model.scheduler.inject_failure()
        for job in (running, waiting):
            with pytest.raises(PylfmError, match="engine stopped after an error"):
                job.result(timeout=30)
        deadline = time.monotonic() + 10
        while model.scheduler.failure is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "injected" in model.scheduler.failure
        with pytest.raises(EngineError, match="load the model again"):
            model.transcribe(chirp(), sample_rate=RATE)
        with pytest.raises(EngineError):
            model.first_logits(chirp(), sample_rate=RATE)
    finally:
        model.close()


def test_engine_tasks_dropped_at_shutdown_release_their_references(tiny_gguf_f32):
    model = fresh(tiny_gguf_f32, batch_size=1)

    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    started = threading.Event()
    errors = []

    def slow():
        started.set()
        time.sleep(0.5)

    def queued(p=payload):  # never runs: the engine shuts down first
        return p

    threading.Thread(target=lambda: model.scheduler.call(slow), daemon=True).start()
    started.wait(10)

    def second():
        try:
            model.scheduler.call(queued)
        except EngineError as e:
            errors.append(str(e))  # not the exception: its traceback holds the call's frames

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.1)
    model.close()
    t.join(10)
    assert not t.is_alive() and errors and "shut down" in errors[0]
    del payload, queued
    gc.collect()
    assert ref() is None, "a dropped task kept its Python object alive"


def test_ctrl_c_stops_a_wait_and_its_work(tiny_gguf_f32):
    with fresh(tiny_gguf_f32, batch_size=1) as model:
        timer = threading.Timer(0.5, _thread.interrupt_main)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            model.transcribe(chirp(), **LONG)
        deadline = time.monotonic() + 10
        while model.scheduler.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert model.scheduler.busy == 0, "the interrupted transcription kept its slot"
        assert model.transcribe(chirp(), sample_rate=RATE, max_new_tokens=4).tokens
