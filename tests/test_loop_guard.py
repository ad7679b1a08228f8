"""The repetition-loop guard on a tiny model that really loops
(tools/make_looping_checkpoint.py), through the real engine."""

import numpy as np
import pytest

import pylfm
import pylfm.transcription.job
from pylfm.transcription.loop_guard import LoopGuard, compression_ratio

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


# The engine's detector set out of reach: a block of 1 token repeated over 32768 tokens
# never happens within MAX_NEW tokens, so only the compression ratio can flag a window.
NO_ENGINE_DETECTOR = dict(max_period=1, min_repeats=2, min_span=32768)


def test_compression_ratio_alone_triggers_a_re_decode(model, clips):
    plain = model.transcribe_batch(clips, sample_rate=RATE, max_new_tokens=MAX_NEW,
                                   loop_guard=LoopGuard(**NO_ENGINE_DETECTOR, compression_ratio_threshold=None))
    # Nothing stops or re-decodes these windows: every one runs to the token limit.
    assert all(r.stop_reason == "length" and r.n_tokens == MAX_NEW for r in plain)
    assert all(r.segments[0].temperature == 0.0 for r in plain)
    # A threshold in the middle of the widest gap between the windows' ratios splits them
    # clearly into text that compresses too well and text that does not.
    ratios = sorted(compression_ratio(r.text) for r in plain)
    gap, threshold = max((b - a, (a + b) / 2) for a, b in zip(ratios, ratios[1:]))
    assert gap > 0.2, ratios
    flagged = {i for i, r in enumerate(plain) if compression_ratio(r.text) > threshold}
    assert 0 < len(flagged) < len(clips), "the windows' texts no longer differ in how well they compress"

    guard = LoopGuard(**NO_ENGINE_DETECTOR, compression_ratio_threshold=threshold)
    guarded = model.transcribe_batch(clips, sample_rate=RATE, max_new_tokens=MAX_NEW, loop_guard=guard)
    assert all(r.stop_reason != "repetition" for r in guarded)  # the engine's detector never fired
    for i, r in enumerate(guarded):
        seg = r.segments[0]
        if i in flagged:
            assert seg.temperature in guard.temperatures, f"clip {i} compresses too well but was not re-decoded"
            assert r.tokens != plain[i].tokens
        else:
            assert seg.temperature == 0.0 and r.tokens == plain[i].tokens
    # A re-decoding that passed is kept as soon as it passes.
    passed = [i for i in flagged if guarded[i].segments[0].compression_ratio <= threshold]
    assert passed, "no re-decoding got below the compression-ratio threshold"


def _expected_choice(attempts):
    """The attempt to keep when none passed, by the documented rule, computed here: those
    that do not loop (all, if every one loops), then the highest mean token log-probability."""
    candidates = [a for a in attempts if a["stop_reason"] != "repetition"] or attempts
    return max(candidates, key=lambda a: a["sum_logprob"] / len(a["tokens"]))


def test_when_no_attempt_passes_the_best_one_is_kept(model, clips, monkeypatch):
    calls = []
    real = pylfm.transcription.job.best_attempt

    def recorded(guard, attempts):  # the real choice, with what it chose from
        chosen = real(guard, attempts)
        calls.append((list(attempts), chosen))
        return chosen

    monkeypatch.setattr(pylfm.transcription.job, "best_attempt", recorded)
    preferred_non_looping = all_looped = earlier_kept = 0
    clips = clips[:4]
    for temperatures in ((0.2, 0.4, 0.6, 0.8, 1.0), (0.2,)):
        # Every non-empty text compresses "too well": no attempt can pass.
        guard = LoopGuard(compression_ratio_threshold=1e-6, temperatures=temperatures)
        calls.clear()
        results = model.transcribe_batch(clips, sample_rate=RATE, max_new_tokens=MAX_NEW, loop_guard=guard)
        assert len(calls) == len(clips)  # every window went through every fallback
        for r in results:
            seg = r.segments[0]
            attempts, chosen = next(c for c in calls if c[1]["tokens"] == r.tokens)
            assert [a["temperature"] for a in attempts] == [0.0, *temperatures]
            want = _expected_choice(attempts)
            assert chosen is want
            # The segment reports the kept attempt, not the last one.
            assert (seg.temperature, seg.stop_reason) == (want["temperature"], want["stop_reason"])
            assert seg.tokens == want["tokens"]
            earlier_kept += seg.temperature != temperatures[-1]
            assert seg.avg_logprob == pytest.approx(want["sum_logprob"] / len(want["tokens"]))
            assert seg.compression_ratio == pytest.approx(compression_ratio(seg.text))
            looped = [a for a in attempts if a["stop_reason"] == "repetition"]
            if looped and seg.stop_reason != "repetition":
                assert loops(looped[0]["tokens"]) and not loops(seg.tokens)
                if max(a["sum_logprob"] / len(a["tokens"]) for a in looped) > seg.avg_logprob:
                    preferred_non_looping += 1  # a more probable attempt was rejected because it loops
            if len(looped) == len(attempts):
                assert seg.stop_reason == "repetition"
                all_looped += 1
    # The rule's two parts were both exercised, and not only the last attempt was kept.
    assert earlier_kept
    assert preferred_non_looping, "no window had a probable looping attempt and a less probable clean one"
    assert all_looped, "no window looped in every attempt"


def test_avg_logprob_is_the_tokens_log_probability(model, clips):
    """avg_logprob recomputed from the model's own logits: the log-softmax of the first
    logits at the generated token, greedy and sampled (always under the raw logits)."""
    checked = 0
    for k, clip in enumerate(clips[:4]):
        logits = model.first_logits(clip, sample_rate=RATE).astype(np.float64)
        logp = logits - logits.max()
        logp -= np.log(np.exp(logp).sum())
        for temperature in (0.0, 1.0):
            r = model.transcribe(clip, sample_rate=RATE, max_new_tokens=1, temperature=temperature, seed=k,
                                 loop_guard=None)
            (token,) = r.tokens
            if temperature == 0.0:
                assert token == int(np.argmax(logits))
            if r.segments:  # a token that is only whitespace makes no segment
                assert r.segments[0].avg_logprob == pytest.approx(logp[token], abs=2e-4)
                checked += 1
    assert checked >= 4


@pytest.mark.parametrize("bad", [
    dict(max_period=0), dict(min_repeats=1), dict(min_span=-3), dict(max_period=2.5), dict(min_span=True),
    dict(min_span=1 << 40), dict(max_period=40000),  # the engine's C ints
    dict(compression_ratio_threshold=float("nan")), dict(compression_ratio_threshold=0),
    dict(compression_ratio_threshold=-2.4), dict(log_prob_threshold=float("-inf")),
    dict(temperatures=(0.2, 5.0)), dict(temperatures=(0.0,)), dict(temperatures=(0.2, float("nan"))),
    dict(temperatures=("0.2",)), dict(temperatures=(True,)),
    dict(repeat_penalty=0), dict(repeat_penalty=float("inf")),
])
def test_loop_guard_values_are_validated(bad):
    (name,) = bad
    with pytest.raises(ValueError, match=f"LoopGuard.{name}"):
        LoopGuard(**bad)


@pytest.mark.parametrize("bad", [0.5, "0.2", None])
def test_loop_guard_temperatures_must_be_a_sequence(bad):
    with pytest.raises(TypeError, match="LoopGuard.temperatures must be a sequence"):
        LoopGuard(temperatures=bad)


def test_loop_guard_accepts_what_it_documents():
    g = LoopGuard(max_period=32768, min_repeats=2, min_span=1, compression_ratio_threshold=None,
                  log_prob_threshold=-1.0, temperatures=[0.5, 2], repeat_penalty=1.0)
    assert g.temperatures == (0.5, 2.0)  # a list is stored as a tuple of floats
    assert LoopGuard(temperatures=()).temperatures == ()
    with pytest.raises(TypeError, match="loop_guard"):
        pylfm.TranscribeOptions(loop_guard={"max_period": 3})
