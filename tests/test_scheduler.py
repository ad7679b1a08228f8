"""The one pipeline: continuous batching, cancellation, context sizing and stop reasons,
on the real engine with the tiny model. Synthetic tone recordings are cut with the
energy detector (Silero hears no speech in tones)."""

import threading
import time

import numpy as np
import pytest

import pylfm
from pylfm import _core

RATE = 16000


def chirp(seconds=3.0, f0=200.0, f1=1800.0, amp=0.3):
    t = np.arange(int(seconds * RATE)) / RATE
    return (amp * np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / seconds * t * t))).astype(np.float32)


def recording(seconds, seed=0):
    """Tone 'utterances' of 2-5 s separated by 0.8 s pauses."""
    rng = np.random.default_rng(seed)
    out, pos = np.zeros(int(seconds * RATE), np.float32), int(0.3 * RATE)
    while pos < len(out) - 3 * RATE:
        n = min(int(rng.uniform(2, 5) * RATE), len(out) - pos)
        out[pos:pos + n] = chirp(n / RATE, rng.uniform(150, 900), rng.uniform(300, 2500), 0.25)
        pos += n + int(0.8 * RATE)
    return out


class Batching:
    """What the engine's generation loop did while a block ran: llama_decode steps and
    the sequence rows they advanced (rows per step is 1.0 when nothing decoded together)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self._before = self.model._engine.stats()
        return self

    def __exit__(self, *exc):
        after = self.model._engine.stats()
        self.steps = after["decode_steps"] - self._before["decode_steps"]
        self.rows = after["decode_rows"] - self._before["decode_rows"]

    @property
    def rows_per_step(self):
        return self.rows / max(self.steps, 1)


@pytest.fixture(scope="module")
def model(tiny_gguf_f32):
    return pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=2, batch_size=4)


def test_a_window_gives_the_same_tokens_alone_batched_streamed_and_in_a_batch_call(model):
    clips = [chirp(3.0), chirp(2.0, 900, 300), recording(12, seed=1)[: 6 * RATE], chirp(4.0, 150, 2500)]
    kw = dict(sample_rate=RATE, max_new_tokens=40)
    alone = [model.transcribe(c, batch_size=1, **kw) for c in clips]
    assert all(r.n_tokens > 5 for r in alone)
    batch = model.transcribe_batch(clips, **kw)
    assert [r.tokens for r in batch] == [r.tokens for r in alone]
    streamed = ["".join(model.transcribe(c, stream=True, **kw)) for c in clips]
    assert streamed == [r.text for r in alone]
    # four threads sharing the model decode together, and each gets its own answer
    out = [None] * len(clips)
    with Batching(model) as b:
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, model.transcribe(clips[i], **kw)))
                   for i in range(len(clips))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [r.tokens for r in out] == [r.tokens for r in alone]
    assert b.rows_per_step > 1.5, "threads sharing a Model were not batched together"


def test_long_recording_streams_in_order_with_windows_in_flight_together(model):
    audio = recording(100, seed=2)
    kw = dict(sample_rate=RATE, max_new_tokens=24, window=10.0, vad="energy")
    whole = model.transcribe(audio, **kw)
    assert whole.n_windows >= 8 and len(whole.segments) >= 8
    with Batching(model) as b:
        pieces = list(model.transcribe(audio, stream=True, **kw))
    assert "".join(pieces) == whole.text
    assert b.rows_per_step > 2, "a streamed long recording was decoded window by window"
    with Batching(model) as b:
        one_by_one = model.transcribe(audio, batch_size=1, **kw)
    assert b.rows_per_step == 1.0 and one_by_one.tokens == whole.tokens


def _tokens_until_piece(model, tokens, n_pieces):
    """How many tokens the engine had accepted when it emitted its n-th text piece."""
    pending, seen = b"", 0
    for i, t in enumerate(tokens):
        pending += model._engine.token_piece(int(t), False)
        text, pending = _core.sanitize_utf8(pending, False)
        seen += bool(text)
        if seen == n_pieces:
            return i + 1
    raise AssertionError("the reference run emitted fewer pieces")


def test_cancel_stops_within_one_step_and_frees_the_slot(model):
    kw = dict(sample_rate=RATE, ignore_eos=True, loop_guard=None)
    reference = model.transcribe(chirp(), max_new_tokens=200, **kw)
    at_cancel = _tokens_until_piece(model, reference.tokens, 30)
    opts = pylfm.TranscribeOptions(max_new_tokens=100_000, ignore_eos=True, loop_guard=None)
    job = model._job(chirp(), RATE, opts, False)
    pieces = 0
    on_piece = job.on_piece

    def count_and_cancel(key, text, token):  # runs on the engine thread, as every event does
        nonlocal pieces
        on_piece(key, text, token)
        pieces += 1
        if pieces == 30:
            job.cancel()

    job.on_piece = count_and_cancel
    model.scheduler.submit(job)
    with pytest.raises(pylfm.TranscriptionCancelled) as e:
        job.result(timeout=30)
    partial = e.value.partial
    assert partial.stop_reason == "cancelled" and partial.segments[0].stop_reason == "cancelled"
    assert at_cancel <= partial.n_tokens <= at_cancel + 1, "decoding went on after the cancel"
    assert partial.tokens == reference.tokens[:partial.n_tokens]
    assert model.scheduler.busy == 0
    # the slot is reused, from a clean KV sequence: the same tokens as the reference
    assert model.transcribe(chirp(), max_new_tokens=8, **kw).tokens == reference.tokens[:8]


def _watched_job(model, opts):
    """A job whose text pieces are counted on the engine thread, and which records how
    many pieces it had when its cancel flag was set."""
    job = model._job(chirp(), RATE, opts, True)
    job.pieces_seen, job.pieces_at_cancel, job.cancelled_at = 0, None, None
    on_piece, cancel = job.on_piece, job.cancel

    def count(key, text, token):
        on_piece(key, text, token)
        job.pieces_seen += 1

    def record_cancel():
        if job.pieces_at_cancel is None:
            job.pieces_at_cancel, job.cancelled_at = job.pieces_seen, time.monotonic()
        cancel()

    job.on_piece, job.cancel = count, record_cancel
    return job


def test_cancel_event_timeout_and_closed_stream_stop_the_engine_within_a_step(model):
    """cancel=, timeout= and closing a stream all reach the engine's flag; after it is
    set the engine emits at most two more pieces: the step in flight and the flushed tail
    of an incomplete character."""
    opts = pylfm.TranscribeOptions(ignore_eos=True, loop_guard=None, max_new_tokens=100_000)

    stop, set_at = threading.Event(), []
    job = _watched_job(model, opts)
    model.scheduler.submit(job)
    threading.Timer(0.3, lambda: (set_at.append(time.monotonic()), stop.set())).start()
    with pytest.raises(pylfm.TranscriptionCancelled) as e:
        job.result(cancel=stop)
    assert job.cancelled_at - set_at[0] < 0.2  # the consumer polls the event every 50 ms
    assert 0 < e.value.partial.n_tokens < 100_000
    assert job.pieces_at_cancel <= job.pieces_seen <= job.pieces_at_cancel + 2

    job = _watched_job(model, opts)
    model.scheduler.submit(job)
    t0 = time.monotonic()
    with pytest.raises(pylfm.TranscriptionTimeout) as e:
        job.result(timeout=0.3)
    assert isinstance(e.value, TimeoutError) and e.value.partial.stop_reason == "cancelled"
    assert 0.3 <= job.cancelled_at - t0 < 0.5
    assert job.pieces_at_cancel <= job.pieces_seen <= job.pieces_at_cancel + 2

    job = _watched_job(model, opts)
    model.scheduler.submit(job)
    it = job.pieces()
    next(it)
    it.close()  # closing a stream cancels its job
    deadline = time.monotonic() + 10
    while not job.done:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert job.pieces_at_cancel <= job.pieces_seen <= job.pieces_at_cancel + 2
    assert model.scheduler.busy == 0


@pytest.mark.parametrize("seconds", [200, 300])
def test_long_windows_get_the_context_they_need(model, seconds):
    audio = np.concatenate([chirp(5.0, 200 + 40 * i, 1800 - 30 * i) for i in range(seconds // 5)])
    r = model.transcribe(audio, sample_rate=RATE, window=300, max_new_tokens=16, ignore_eos=True)
    assert r.n_windows == 1 and r.n_audio_tokens == pytest.approx(seconds / 0.08, abs=2)
    assert r.n_tokens == 16 and r.stop_reason == "length"
    assert model._engine.n_ctx_seq >= r.n_prompt_tokens + 16


def test_stop_reasons_are_kept_per_segment(model):
    audio = recording(40, seed=3)
    r = model.transcribe(audio, sample_rate=RATE, window=10.0, max_new_tokens=6, ignore_eos=True, loop_guard=None,
                         vad="energy")
    assert len(r.segments) >= 3 and all(s.stop_reason == "length" for s in r.segments)
    assert r.stop_reason == "length"
    fixed = pylfm.Model(model.model_path, model.mmproj_path, device="cpu", n_threads=2, batch_size=2, n_ctx=96)
    c = fixed.transcribe(chirp(2.0), sample_rate=RATE, max_new_tokens=500, ignore_eos=True, loop_guard=None)
    assert c.stop_reason == "context" and c.segments[0].stop_reason == "context"
    assert c.n_prompt_tokens + c.n_tokens <= fixed._engine.n_ctx_seq < 500  # llama.cpp rounds n_ctx up to 256
    with pytest.raises(pylfm.PylfmError, match="prompt tokens"):
        fixed.transcribe(chirp(20.0), sample_rate=RATE)
    fixed.close()


def test_one_failed_window_does_not_lose_the_others(model):
    ok = recording(30, seed=4)
    # a window the engine refuses: its prompt cannot fit a context of 200 tokens
    tight = pylfm.Model(model.model_path, model.mmproj_path, device="cpu", n_threads=2, batch_size=2, n_ctx=200)
    # the failing window first: the transcription's stop reason is its worst window's,
    # not the last one's
    audio = np.concatenate([chirp(19.5), np.zeros(3 * RATE, np.float32), ok[: 8 * RATE]])
    r = tight.transcribe(audio, sample_rate=RATE, window=20.0, max_new_tokens=4, vad="energy")
    stops = [s.stop_reason for s in r.segments]
    assert stops[0] == "error" and stops[-1] != "error"
    failed = [s for s in r.segments if s.stop_reason == "error"]
    assert failed[0].error and "prompt tokens" in failed[0].error and failed[0].text == ""
    assert r.stop_reason == "error" and r.text == " ".join(s.text for s in r.segments if s.text)
    tight.close()
