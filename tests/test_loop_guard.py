"""The repetition-loop guard on a tiny model that really loops
(tools/make_looping_checkpoint.py), through the real engine."""

import numpy as np
import pytest

import pylfm
from pylfm.loop_guard import LoopGuard, compression_ratio

RATE = 16000
MAX_NEW = 200


def loops(tokens, max_period=50, min_repeats=4, min_span=20):
    """The engine's rule, independently: somewhere in the tokens, a block of at most
    max_period tokens repeated back to back over max(min_span, min_repeats * period)."""
    t = np.asarray(tokens)
    for p in range(1, max_period + 1):
        need = max(min_span, min_repeats * p) - p  # equal pairs (i, i + p) in a row
        if need + p > len(t):
            break
        same = np.concatenate(([0], (t[p:] == t[:-p]).astype(np.int8), [0]))
        edges = np.flatnonzero(np.diff(same))
        if len(edges) and (edges[1::2] - edges[::2]).max() >= need:
            return True
    return False


@pytest.fixture(scope="module")
def model(looping_gguf):
    return pylfm.Model(looping_gguf.model_path, looping_gguf.mmproj_path, device="cpu", n_threads=2, batch_size=4)


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(3 * RATE) * rng.uniform(0.01, 0.3)).astype(np.float32) for _ in range(8)]


def test_loops_are_detected_and_re_decoded(model, clips):
    unguarded = model.transcribe_batch(clips, sample_rate=RATE, max_new_tokens=MAX_NEW, loop_guard=None)
    looped = [i for i, r in enumerate(unguarded) if loops(r.tokens)]
    assert looped, "the looping model did not loop: the test lost its teeth"
    assert all(unguarded[i].n_tokens == MAX_NEW for i in looped)  # unguarded, a loop runs to the limit

    guarded = model.transcribe_batch(clips, sample_rate=RATE, max_new_tokens=MAX_NEW)
    for i in looped:
        seg = guarded[i].segments[0]
        assert seg.temperature > 0, f"clip {i} looped but was not re-decoded"
        assert seg.avg_logprob is not None and seg.avg_logprob <= 0
        assert seg.compression_ratio == pytest.approx(compression_ratio(seg.text))
    recovered = [i for i in looped if guarded[i].stop_reason != "repetition"]
    assert recovered, "no fallback decoding got out of the loop"
    assert all(not loops(guarded[i].tokens) for i in recovered)
    for i in set(range(len(clips))) - set(looped):  # windows that did not loop are untouched
        assert guarded[i].tokens == unguarded[i].tokens and guarded[i].segments[0].temperature == 0.0


def test_detection_only_and_streaming_stop_the_loop_early(model, clips):
    first = next(i for i, c in enumerate(clips)
                 if loops(model.transcribe(c, sample_rate=RATE, max_new_tokens=MAX_NEW, loop_guard=None).tokens))
    stopped = model.transcribe(clips[first], sample_rate=RATE, max_new_tokens=MAX_NEW,
                               loop_guard=LoopGuard(temperatures=()))
    assert stopped.stop_reason == "repetition" and stopped.n_tokens < MAX_NEW and loops(stopped.tokens)
    pieces = list(model.transcribe(clips[first], sample_rate=RATE, max_new_tokens=MAX_NEW, stream=True))
    assert "".join(pieces) == stopped.text  # streamed: cut where the loop is found, never re-decoded


def test_loop_guard_options_are_validated():
    for bad in (dict(max_period=0), dict(min_repeats=1), dict(min_span=-3), dict(compression_ratio_threshold=float("nan")),
                dict(temperatures=(0.2, 5.0)), dict(temperatures=(0.0,)), dict(repeat_penalty=0), dict(max_period=2.5)):
        with pytest.raises(ValueError, match="LoopGuard"):
            LoopGuard(**bad)
    with pytest.raises(TypeError, match="loop_guard"):
        pylfm.TranscribeOptions(loop_guard={"max_period": 3})
