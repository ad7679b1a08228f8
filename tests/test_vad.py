"""pylfm.vad: plan_windows' guarantees, the energy fallback and VadOptions, on synthetic
speech-like bursts (exact ground truth, fast); Silero on real speech is test_silero.py."""

import math

import numpy as np
import pytest

from pylfm.audio import MIN_SAMPLES_16K
from pylfm.errors import AudioError
from pylfm.vad import VadOptions, plan_windows, speech_regions

SR = 16000


def _make_bank(count=48, seed=0):
    """Harmonic syllables of 0.1-0.3 s under a Hann envelope (so the level dips
    between syllables, as in speech), made once."""
    rng = np.random.default_rng(seed)
    bank = []
    for _ in range(count):
        m = int(rng.uniform(0.1, 0.3) * SR)
        t = np.arange(m) / SR
        f0t = rng.uniform(90, 250) * (1 + 0.1 * t)
        wave = sum(np.sin(2 * np.pi * k * f0t * t) / k for k in (1, 2, 3))
        bank.append((np.hanning(m) * wave).astype(np.float32))
    return bank


BANK = _make_bank()


def syllables(seconds, rng, amp=0.2):
    """Speech-like sound without pauses, ``seconds`` long."""
    n = int(seconds * SR)
    picks, total = [], 0
    while total < n:
        picks.append(BANK[rng.integers(len(BANK))] * np.float32(amp * rng.uniform(0.5, 1.5)))
        total += len(picks[-1])
    return np.concatenate(picks)[:n]


def recording(layout, rng, noise=3e-4):
    """("speech"|"pause", seconds) parts over low background noise -> (signal, speech
    intervals in samples)."""
    parts, truth, pos = [], [], 0
    for kind, secs in layout:
        n = int(secs * SR)
        if kind == "speech":
            parts.append(syllables(secs, rng)[:n])
            truth.append((pos, pos + n))
        else:
            parts.append(np.zeros(n, np.float32))
        pos += n
    x = np.concatenate(parts)
    x += np.float32(noise) * rng.standard_normal(len(x), dtype=np.float32)
    return x, truth


def check_windows(windows, n, max_s):
    """The guarantees every plan has."""
    assert all(isinstance(v, int) for w in windows for v in w)
    for s, e in windows:
        assert 0 <= s < e <= n
        assert e - s <= max_s * SR
        assert e - s >= MIN_SAMPLES_16K
    for (_, e1), (s2, _) in zip(windows, windows[1:]):
        assert e1 <= s2  # in order, no overlap


def inside_one(span, windows):
    return any(s <= span[0] and span[1] <= e for s, e in windows)


def covered(span, windows):
    """Is every sample of ``span`` in some window?"""
    s, e = span
    for ws, we in windows:
        if ws <= s < we:
            s = we
            if s >= e:
                return True
    return False


# --------------------------------------------------------------------------- the plan


def test_short_clip_is_decoded_whole_and_silence_not_at_all():
    rng = np.random.default_rng(1)
    x, _ = recording([("pause", 3.0), ("speech", 2.0), ("pause", 5.0)], rng)
    for vad in ("energy", "silero"):
        assert plan_windows(np.zeros(20 * SR, np.float32), SR, vad=vad) == []
        assert plan_windows(np.zeros(40 * SR, np.float32), SR, vad=vad) == []
    assert plan_windows(x, SR, vad="energy") == [(0, len(x))]  # 10 s < 30 s: whole
    # No detector: the clip as it is, silence included.
    assert plan_windows(np.zeros(20 * SR, np.float32), SR, vad=None) == [(0, 20 * SR)]
    assert plan_windows(np.zeros(0, np.float32), SR, vad=None) == []


@pytest.mark.parametrize("window", [30.0, 10.0])
def test_fifteen_minutes_packed_from_whole_regions(window):
    rng = np.random.default_rng(6)
    layout, total = [("pause", 0.7)], 0.7
    while total < 15 * 60:
        speech = rng.uniform(0.3, min(8.0, window - 1))
        pause = rng.uniform(0.5, 1.8) if rng.random() < 0.85 else rng.uniform(2.5, 5.0)
        layout += [("speech", speech), ("pause", pause)]
        total += speech + pause
    x, truth = recording(layout, rng)
    windows = plan_windows(x, SR, window=window, vad="energy")
    check_windows(windows, len(x), window)
    assert len(windows) >= 15 * 60 / window
    # Every burst lies whole inside one window: no edge fell inside speech ...
    for span in truth:
        assert inside_one(span, windows), (span[0] / SR, span[1] / SR)
    # ... windows are well filled: a window ends early only where the next burst would
    # not fit or a long pause follows ...
    opts = VadOptions()
    for (s1, e1), (s2, e2) in zip(windows, windows[1:]):
        assert e2 - s1 > window * SR or s2 - e1 > opts.max_gap_s * SR
    # ... and pauses longer than max_gap_s are not sent.
    for (_, e1), (s2, _) in zip(windows, windows[1:]):
        assert not any(ts < s2 and te > e1 for ts, te in truth)
    long_pauses = [(a[1], b[0]) for a, b in zip(truth, truth[1:]) if b[0] - a[1] > 2.5 * SR]
    assert long_pauses and all(
        not any(ws <= ps + SR // 2 and pe - SR // 2 <= we for ws, we in windows) for ps, pe in long_pauses)


def test_max_gap_controls_which_pauses_are_sent():
    rng = np.random.default_rng(8)
    x, truth = recording([("pause", 5.0), ("speech", 3.0), ("pause", 1.5), ("speech", 3.0),
                          ("pause", 4.0), ("speech", 3.0), ("pause", 5.0)] * 2, rng)
    windows = plan_windows(x, SR, vad="energy")
    check_windows(windows, len(x), 30)
    assert len(windows) == 4  # the 1.5 s pauses stay inside, the 4-5 s ones are left out
    assert plan_windows(x, SR, vad="energy", options=VadOptions(max_gap_s=1.0)).__len__() == 6
    assert len(plan_windows(x, SR, vad="energy", options=VadOptions(max_gap_s=10.0))) == 2
    for span in truth:
        assert inside_one(span, windows)


def test_region_longer_than_the_window_is_cut_at_its_quietest_point():
    rng = np.random.default_rng(7)
    x, truth = recording([("speech", 10.0), ("pause", 0.25), ("speech", 12.0), ("pause", 0.25),
                          ("speech", 11.0)], rng, noise=1e-3)
    # One region (the pauses are shorter than min_silence), 33.5 s > 30 s.
    assert len(speech_regions(x, SR, vad="energy")) == 1
    windows = plan_windows(x, SR, vad="energy")
    check_windows(windows, len(x), 30)
    assert len(windows) == 2
    cut = windows[0][1]
    assert windows[1][0] == cut  # nothing lost or duplicated
    assert windows[0][0] == 0 and windows[1][1] == len(x)
    # The cut is in one of the two pauses (the quietest places), not in speech.
    assert any(te <= cut <= ts for (_, te), (ts, _) in zip(truth, truth[1:]))


def test_unbroken_speech_is_cut_contiguously_into_small_windows():
    rng = np.random.default_rng(9)
    x = syllables(70.0, rng)
    for window in (30.0, 10.0, 2.0, 0.2):
        windows = plan_windows(x, SR, window=window, vad="energy")
        check_windows(windows, len(x), window)
        assert windows[0][0] == 0 and windows[-1][1] == len(x)
        assert all(e1 == s2 for (_, e1), (s2, _) in zip(windows, windows[1:]))
        # As few windows as the second-half rule allows.
        assert len(windows) <= math.ceil(70.0 / (window / 2)) + 1
    # A stretch of softer speech is where the cut goes.
    x[int(47.0 * SR) : int(47.6 * SR)] *= 0.1
    windows = plan_windows(x, SR, window=30.0, vad="energy")
    assert len(windows) == 3 and 47.0 * SR <= windows[1][1] <= 47.6 * SR


def test_no_vad_cuts_long_audio_into_contiguous_pieces():
    rng = np.random.default_rng(11)
    x, truth = recording([("speech", 20.0), ("pause", 1.0), ("speech", 25.0), ("pause", 8.0),
                          ("speech", 6.0)], rng)
    windows = plan_windows(x, SR, vad=None)
    check_windows(windows, len(x), 30)
    assert windows[0][0] == 0 and windows[-1][1] == len(x)
    assert all(e1 == s2 for (_, e1), (s2, _) in zip(windows, windows[1:]))  # nothing dropped
    for _, e in windows[:-1]:  # the cuts are in the pauses
        assert any(te <= e <= ts for (_, te), (ts, _) in zip(truth, truth[1:]))
    assert plan_windows(x[: 29 * SR], SR, vad=None) == [(0, 29 * SR)]


def test_tiny_speech_gets_a_window_of_one_encoder_frame():
    x = np.zeros(60 * SR, np.float32)
    x[30 * SR : 30 * SR + 320] = 0.5  # a 20 ms burst in a minute of silence
    opts = VadOptions(min_speech_duration_ms=0, speech_pad_ms=0)
    windows = plan_windows(x, SR, vad="energy", options=opts)
    assert len(windows) == 1
    s, e = windows[0]
    assert e - s == MIN_SAMPLES_16K and s <= 30 * SR and e >= 30 * SR + 320


def test_other_rates_and_integer_samples():
    rng = np.random.default_rng(12)
    x, truth = recording([("pause", 3.0), ("speech", 4.0), ("pause", 30.0), ("speech", 4.0),
                          ("pause", 3.0)], rng)
    w16 = plan_windows(x, SR, vad="energy")
    assert len(w16) == 2
    pcm = np.round(x * 32767).astype(np.int16)
    assert plan_windows(pcm, SR, vad="energy") == w16
    x8 = x[::2].copy()  # 8 kHz: spans in 8 kHz samples, the same times
    w8 = plan_windows(x8, 8000, vad="energy")
    assert len(w8) == 2
    for (a, b), (c, d) in zip(w8, w16):
        assert abs(2 * a - c) <= 0.05 * SR and abs(2 * b - d) <= 0.05 * SR


# --------------------------------------------------------------------------- the energy detector


def test_energy_regions_around_speech():
    rng = np.random.default_rng(1)
    x, truth = recording([("pause", 1.0), ("speech", 2.0), ("pause", 1.5), ("speech", 0.8),
                          ("pause", 2.0), ("speech", 3.0), ("pause", 1.0)], rng)
    regions = speech_regions(x, SR, vad="energy")
    assert len(regions) == 3
    pad = int(VadOptions().speech_pad_ms * SR / 1000)
    for (s, e), (ts, te) in zip(regions, truth):
        assert s <= ts and e >= te  # the whole burst is inside
        assert ts - s <= pad + 960 and e - te <= pad + 960  # padding plus two frames


def test_energy_bridges_short_pauses_and_drops_clicks():
    rng = np.random.default_rng(2)
    x, _ = recording([("pause", 0.5), ("speech", 1.0), ("pause", 0.2), ("speech", 1.0),
                      ("pause", 0.8), ("speech", 1.0), ("pause", 0.5)], rng)
    assert len(speech_regions(x, SR, vad="energy")) == 2  # 0.2 s is inside speech
    fine = VadOptions(min_silence_duration_ms=100, speech_pad_ms=30)
    assert len(speech_regions(x, SR, vad="energy", options=fine)) == 3
    click = np.zeros(SR * 2, np.float32)
    click[SR : SR + 160] = 0.5  # 10 ms
    assert speech_regions(click, SR, vad="energy") == []
    assert len(speech_regions(click, SR, vad="energy", options=VadOptions(min_speech_duration_ms=0))) == 1


def test_energy_threshold_option():
    rng = np.random.default_rng(5)
    x, _ = recording([("pause", 1.0), ("speech", 1.0), ("pause", 1.0)], rng)
    assert speech_regions(x, SR, vad="energy", options=VadOptions(energy_threshold_db=-1.0)) == []
    assert speech_regions(x, SR, vad="energy", options=VadOptions(energy_threshold_db=-200.0)) == [(0, len(x))]
    assert speech_regions(np.zeros(SR * 5, np.float32), SR, vad="energy") == []
    quiet, truth = recording([("pause", 1.0), ("speech", 1.0), ("pause", 1.0)], rng, noise=1e-4)
    quiet *= 0.05  # speech around -45 dBFS, noise at -106 dBFS
    assert covered(truth[0], speech_regions(quiet, SR, vad="energy"))


def test_max_speech_duration_cuts_regions():
    rng = np.random.default_rng(4)
    x = syllables(25.0, rng)
    assert speech_regions(x, SR, vad="energy") == [(0, len(x))]
    pieces = speech_regions(x, SR, vad="energy", options=VadOptions(max_speech_duration_s=10))
    assert len(pieces) == 3 and pieces[0][0] == 0 and pieces[-1][1] == len(x)
    assert all(e - s <= 10 * SR for s, e in pieces)
    assert all(e1 == s2 for (_, e1), (s2, _) in zip(pieces, pieces[1:]))


def test_energy_windows_of_synthetic_bursts():
    """The energy detector finds these synthetic bursts (bench's synthetic audio is cut
    with it); Silero, the default, does not take them for speech."""
    rng = np.random.default_rng(3)
    x, truth = recording([("speech", 20.0), ("pause", 3.0), ("speech", 20.0)], rng)
    assert sum(e - s for s, e in plan_windows(x, SR)) < 0.2 * len(x)
    for max_s, least in ((30.0, 2), (10.0, 6)):
        windows = plan_windows(x, SR, window=max_s, vad="energy")
        check_windows(windows, len(x), max_s)
        assert len(windows) >= least
        for span in truth:
            assert covered(span, windows)
        # The 3 s pause is longer than max_gap_s: its middle is not sent.
        assert not any(s < int(22.5 * SR) and e > int(20.5 * SR) for s, e in windows)


# --------------------------------------------------------------------------- errors


def test_bad_arguments():
    x = np.zeros(SR, np.float32)
    with pytest.raises(ValueError, match="'silero', 'energy' or None"):
        plan_windows(x, SR, vad="webrtc")
    with pytest.raises(ValueError, match="needs a detector"):
        speech_regions(x, SR, vad=None)
    with pytest.raises(TypeError, match="VadOptions"):
        plan_windows(x, SR, options={"threshold": 0.3})
    with pytest.raises(ValueError, match="too short"):
        plan_windows(x, SR, window=0.15)
    for bad in (float("nan"), "30", None):
        with pytest.raises(ValueError, match="window"):
            plan_windows(x, SR, window=bad)
    for rate in (0, -16000, float("inf"), "16000"):
        with pytest.raises(ValueError, match="rate"):
            plan_windows(x, rate)
    with pytest.raises(AudioError, match="1-D"):
        plan_windows(np.zeros((2, SR), np.float32), SR)
    with pytest.raises(AudioError, match="numeric"):
        plan_windows(np.array(["a"] * 100), SR)
    y = x.copy()
    y[5] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        plan_windows(y, SR)


@pytest.mark.parametrize("field,value,exc", [
    ("threshold", 0.0, ValueError), ("threshold", 1.0, ValueError), ("threshold", float("nan"), ValueError),
    ("threshold", "0.5", TypeError), ("threshold", True, TypeError),
    ("neg_threshold", 0.6, ValueError), ("neg_threshold", 0.0, ValueError),
    ("min_speech_duration_ms", -1, ValueError), ("min_silence_duration_ms", float("inf"), ValueError),
    ("speech_pad_ms", -5, ValueError), ("max_speech_duration_s", 0, ValueError),
    ("max_gap_s", -0.1, ValueError), ("energy_threshold_db", 3.0, ValueError),
    ("threshold", 1.5, ValueError), ("threshold", -0.1, ValueError), ("neg_threshold", float("nan"), ValueError),
    ("min_speech_duration_ms", float("nan"), ValueError), ("min_silence_duration_ms", -300, ValueError),
    ("speech_pad_ms", float("nan"), ValueError), ("max_speech_duration_s", -1.0, ValueError),
    ("max_speech_duration_s", float("nan"), ValueError), ("max_gap_s", float("inf"), ValueError),
    ("max_gap_s", float("nan"), ValueError), ("energy_threshold_db", float("nan"), ValueError),
    ("energy_threshold_db", -300.0, ValueError), ("max_gap_s", "2", TypeError), ("speech_pad_ms", None, TypeError),
])
def test_options_validated(field, value, exc):
    with pytest.raises(exc, match=f"VadOptions.{field}"):
        VadOptions(**{field: value})


def test_options_defaults_and_hysteresis():
    assert VadOptions().effective_neg_threshold == pytest.approx(0.35)
    assert VadOptions(threshold=0.1).effective_neg_threshold == pytest.approx(0.01)
    assert VadOptions(threshold=0.6, neg_threshold=0.2).effective_neg_threshold == 0.2
    VadOptions(max_speech_duration_s=math.inf, max_gap_s=0, speech_pad_ms=0)  # all valid


# --------------------------------------------------------------------------- TranscribeOptions


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("kw,exc,match", [
    (dict(vad="bogus"), ValueError, "vad must be one of 'silero', 'energy' or None, got 'bogus'"),
    (dict(vad="Silero"), ValueError, "vad must be one of"),
    (dict(vad="none"), ValueError, "vad must be one of"),  # the CLI's spelling; the library's is None
    (dict(vad=False), ValueError, "vad must be one of"),
    (dict(vad_options={"threshold": 0.3}), TypeError, "vad_options must be a pylfm.VadOptions or None, got dict"),
    (dict(vad_options=0.5), TypeError, "vad_options must be"),
    (dict(max_segment=0), ValueError, "max_segment must be between 0.16 and 30"),
    (dict(max_segment=-10), ValueError, "max_segment must be between"),
    (dict(max_segment=0.1), ValueError, "max_segment must be between"),
    (dict(max_segment=NAN), ValueError, "max_segment must be a finite number"),
    (dict(max_segment=INF), ValueError, "max_segment must be a finite number"),
    (dict(max_segment="10"), TypeError, "max_segment must be a number"),
    # Larger than the window: an error, not clamped (the CLI and server clamp their defaults).
    (dict(max_segment=30.5), ValueError, "max_segment must be between 0.16 and 30 .*at most window=30"),
    (dict(window=8, max_segment=10), ValueError, "max_segment must be between 0.16 and 8 .*at most window=8"),
    (dict(window=0.15), ValueError, "window must be between 0.16 and 300"),
    (dict(window=0), ValueError, "window must be between"),
    (dict(window=-30), ValueError, "window must be between"),
    (dict(window=301), ValueError, "window must be between 0.16 and 300"),
    (dict(window=NAN), ValueError, "window must be a finite number"),
    (dict(window=INF), ValueError, "window must be a finite number"),
    (dict(window=True), TypeError, "window must be a number"),
    (dict(loop_guard=True), TypeError, "loop_guard must be a pylfm.LoopGuard or None"),
    # integers the engine keeps in C ints / a 32-bit seed
    (dict(top_k=2**40), ValueError, "top_k must be <= 2147483647"),
    (dict(max_new_tokens=2**31), ValueError, "max_new_tokens must be <= 2147483647"),
    (dict(seed=-1), ValueError, "seed must be >= 0"),
    (dict(seed=2**32), ValueError, "seed must be <= 4294967295"),
])
def test_transcribe_options_reject_bad_values(kw, exc, match):
    from pylfm import TranscribeOptions

    with pytest.raises(exc, match=match):
        TranscribeOptions(**kw)


def test_transcribe_options_window_limits_are_the_planners():
    """The shortest window TranscribeOptions accepts is the shortest plan_windows can cut
    (two encoder frames), and it works; max_segment up to the window is accepted."""
    from pylfm import TranscribeOptions
    from pylfm.transcription.options import MIN_WINDOW_S

    rng = np.random.default_rng(13)
    x = syllables(1.0, rng)
    opts = TranscribeOptions(window=MIN_WINDOW_S, max_segment=MIN_WINDOW_S)
    windows = plan_windows(x, SR, window=opts.segment_limit, vad="energy")
    check_windows(windows, len(x), MIN_WINDOW_S)
    assert windows[0][0] == 0 and windows[-1][1] == len(x) and len(windows) >= 1.0 / MIN_WINDOW_S
    below = np.nextafter(MIN_WINDOW_S, 0)
    with pytest.raises(ValueError, match="window must be between"):
        TranscribeOptions(window=below)
    with pytest.raises(ValueError, match="too short"):
        plan_windows(x, SR, window=below, vad="energy")
    assert TranscribeOptions(window=300, max_segment=300).segment_limit == 300
    assert TranscribeOptions(window=10).segment_limit == 10  # max_segment defaults to the window
    assert TranscribeOptions(max_segment=10, vad=None, vad_options=VadOptions(threshold=0.3)).segment_limit == 10
