"""pylfm.vad: speech spans on synthetic recordings and the window-splitting guarantees."""

import numpy as np
import pytest

from pylfm.audio import MIN_SAMPLES_16K
from pylfm.vad import frame_levels_db, speech_spans, split_windows

SR = 16000


def _make_bank(count=48, seed=0):
    """Harmonic syllables of 0.1-0.3 s under a Hann envelope (so the level dips
    between syllables, as in speech), made once: generating 15 minutes of fresh
    sines would dominate the test time."""
    rng = np.random.default_rng(seed)
    bank = []
    for _ in range(count):
        m = int(rng.uniform(0.1, 0.3) * SR)
        t = np.arange(m) / SR
        f0t = rng.uniform(90, 250) * (1 + 0.1 * t)  # a little chirp
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
    """Concatenate ("speech"|"pause", seconds) parts over low background noise;
    returns the signal and the ground-truth speech intervals in samples."""
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


def check_windows(windows, n, max_s=30.0):
    assert all(isinstance(v, int) for w in windows for v in w)
    for s, e in windows:
        assert 0 <= s < e <= n
        assert e - s <= max_s * SR
        assert e - s >= MIN_SAMPLES_16K
    for (_, e1), (s2, _) in zip(windows, windows[1:]):
        assert e1 <= s2  # in order, no overlap


def covered(span, windows):
    """Is every sample of span inside some window?"""
    s, e = span
    for ws, we in windows:
        if ws <= s < we:
            s = we
            if s >= e:
                return True
    return False


# --------------------------------------------------------------------------- spans


def test_spans_found_around_speech():
    rng = np.random.default_rng(1)
    layout = [("pause", 1.0), ("speech", 2.0), ("pause", 1.5), ("speech", 0.8),
              ("pause", 2.0), ("speech", 3.0), ("pause", 1.0)]
    x, truth = recording(layout, rng)
    spans = speech_spans(x, SR)
    assert len(spans) == 3
    tol = int(0.1 * SR) + 480 * 2  # the padding plus a frame either way
    for (s, e), (ts, te) in zip(spans, truth):
        assert s <= ts and e >= te  # the whole burst is inside
        assert ts - s <= tol and e - te <= tol


def test_short_pauses_bridged_short_blips_dropped():
    rng = np.random.default_rng(2)
    x, _ = recording([("pause", 0.5), ("speech", 1.0), ("pause", 0.2), ("speech", 1.0),
                      ("pause", 0.6), ("speech", 1.0), ("pause", 0.5)], rng)
    assert len(speech_spans(x, SR)) == 2  # the 0.2 s pause is inside speech
    assert len(speech_spans(x, SR, min_silence_ms=100, pad_ms=30)) == 3
    click = np.zeros(SR * 2, np.float32)
    click[SR : SR + 160] = 0.5  # 10 ms click
    assert speech_spans(click, SR) == []
    assert len(speech_spans(click, SR, min_speech_ms=0)) == 1


def test_silence_and_faint_noise_are_not_speech():
    rng = np.random.default_rng(3)
    assert speech_spans(np.zeros(SR * 5, np.float32), SR) == []
    assert speech_spans(rng.normal(0, 1e-4, SR * 5).astype(np.float32), SR) == []
    assert speech_spans(np.zeros(0, np.float32), SR) == []


def test_all_speech_and_quiet_speech():
    rng = np.random.default_rng(4)
    x = syllables(10.0, rng)
    assert speech_spans(x, SR) == [(0, len(x))]
    quiet, truth = recording([("pause", 1.0), ("speech", 1.0), ("pause", 1.0)], rng, noise=1e-4)
    quiet *= 0.05  # speech around -45 dBFS, noise at -106 dBFS
    spans = speech_spans(quiet, SR)
    assert len(spans) == 1 and covered(truth[0], spans)


def test_explicit_threshold_and_int16_input():
    rng = np.random.default_rng(5)
    x, _ = recording([("pause", 1.0), ("speech", 1.0), ("pause", 1.0)], rng)
    assert speech_spans(x, SR, threshold=0.0) == []  # nothing reaches 0 dBFS
    assert speech_spans(x, SR, threshold=-200.0) == [(0, len(x))]
    pcm = np.round(x * 32767).astype(np.int16)
    assert speech_spans(pcm, SR) == speech_spans(x, SR)


def test_frame_levels():
    x = np.full(1000, 0.5, np.float32)
    lv = frame_levels_db(x, 480)
    assert len(lv) == 3  # the short last frame is measured too
    np.testing.assert_allclose(lv, 20 * np.log10(0.5), atol=1e-6)
    assert frame_levels_db(np.zeros(480, np.float32), 480)[0] == -120.0


def test_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        speech_spans(np.zeros((2, SR), np.float32), SR)
    with pytest.raises(ValueError, match="positive"):
        speech_spans(np.zeros(SR, np.float32), 0)
    with pytest.raises(ValueError, match="too short"):
        split_windows(syllables(1.0, np.random.default_rng(0)), SR, max_window_s=0.1)


# --------------------------------------------------------------------------- windows


def test_fifteen_minutes_split_in_pauses():
    rng = np.random.default_rng(6)
    layout, total = [("pause", 0.7)], 0.7
    while total < 15 * 60:
        # Mostly short pauses (kept inside windows, cut when needed), some long ones
        # (left out).
        speech = rng.uniform(0.3, 8.0)
        pause = rng.uniform(0.5, 1.8) if rng.random() < 0.85 else rng.uniform(2.5, 5.0)
        layout += [("speech", speech), ("pause", pause)]
        total += speech + pause
    x, truth = recording(layout, rng)
    windows = split_windows(x, SR)
    check_windows(windows, len(x))
    assert len(windows) >= 15 * 60 / 30
    # A window cut short of a long pause is close to full: the cut goes in the latest
    # pause before the limit, and bursts are at most 8 s long.
    cut = [w for w, nxt in zip(windows, windows[1:]) if w[1] == nxt[0]]
    assert len(cut) > 10 and all(e - s > 20 * SR for s, e in cut)
    # Every burst lies whole inside one window: no cut fell inside speech.
    for ts, te in truth:
        assert any(s <= ts and te <= e for s, e in windows), (ts / SR, te / SR)
    for span in speech_spans(x, SR):
        assert covered(span, windows)
    # What lies between windows is silence only.
    for (_, e1), (s2, _) in zip(windows, windows[1:]):
        assert not any(ts < s2 and te > e1 for ts, te in truth)


def test_cut_prefers_latest_pause_at_its_quietest_point():
    rng = np.random.default_rng(7)
    x, truth = recording([("speech", 10.0), ("pause", 0.6), ("speech", 10.0), ("pause", 0.6),
                          ("speech", 5.0), ("pause", 1.0), ("speech", 10.0)], rng, noise=1e-3)
    # Make one spot of the last pause quieter than the rest of it.
    quiet = truth[2][1] + int(0.7 * SR)
    x[quiet : quiet + 960] = 0.0
    windows = split_windows(x, SR)
    check_windows(windows, len(x))
    assert len(windows) == 2
    cut = windows[0][1]
    assert windows[1][0] == cut  # a pause kept inside the stretch is split, not dropped
    assert quiet <= cut < quiet + 960
    assert windows[0][0] <= truth[0][0] and windows[1][1] >= truth[3][1]


def test_long_pauses_dropped_and_silence_gives_no_windows():
    rng = np.random.default_rng(8)
    x, truth = recording([("pause", 5.0), ("speech", 3.0), ("pause", 4.0), ("speech", 3.0),
                          ("pause", 5.0)], rng)
    windows = split_windows(x, SR)
    check_windows(windows, len(x))
    assert len(windows) == 2  # the 4 s pause is left out, as are the ends
    assert covered(truth[0], windows[:1]) and covered(truth[1], windows[1:])
    assert windows[0][0] > 4 * SR and windows[1][1] < len(x) - 4 * SR
    assert len(split_windows(x, SR, drop_silence_s=10.0)) == 1
    assert split_windows(np.zeros(60 * SR, np.float32), SR) == []
    noise = rng.normal(0, 1e-4, 60 * SR).astype(np.float32)
    assert split_windows(noise, SR) == []


def test_unbroken_speech_is_cut_at_quiet_frames():
    rng = np.random.default_rng(9)
    x = syllables(70.0, rng)
    windows = split_windows(x, SR)
    check_windows(windows, len(x))
    assert windows[0][0] == 0 and windows[-1][1] == len(x)
    for (_, e1), (s2, _) in zip(windows, windows[1:]):
        assert e1 == s2  # contiguous: nothing lost or duplicated
    levels = frame_levels_db(x, 480)
    for s, e in windows[:-1]:
        assert e - s >= 15 * SR  # forced cuts go in the second half of the limit
        half = levels[(s + 15 * SR) // 480 : (s + 30 * SR) // 480]
        assert levels[e // 480] <= np.percentile(half, 1)


def test_unbroken_speech_leaves_no_tiny_tail():
    rng = np.random.default_rng(10)
    x = syllables(30.05, rng)  # just over one window
    windows = split_windows(x, SR)
    check_windows(windows, len(x))
    assert len(windows) == 2


def test_tiny_window_is_widened():
    x = np.zeros(SR, np.float32)
    x[8000:8320] = 0.5  # 20 ms burst
    windows = split_windows(x, SR, min_speech_ms=0, pad_ms=0)
    assert len(windows) == 1
    s, e = windows[0]
    assert e - s == MIN_SAMPLES_16K and s <= 8000 and e >= 8320
