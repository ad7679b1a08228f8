"""pylfm.audio: decoding, conversion, downmix, resampling and the errors users hit."""

import io
import os
import sys
import types

import numpy as np
import pytest
import soundfile as sf

from pylfm.audio import MIN_SAMPLES_16K, duration, load_audio, min_samples
from pylfm.errors import AudioError

SR = 16000


def tone(seconds=1.0, rate=SR, freq=440.0, amp=0.5):
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def corr(a, b, trim=400):
    m = min(len(a), len(b))
    return float(np.corrcoef(a[trim : m - trim], b[trim : m - trim])[0, 1])


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def assert_output(y, n=None):
    assert y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
    if n is not None:
        assert len(y) == n


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    "ext,fmt,subtype,exact",
    [
        ("wav", "WAV", "PCM_16", True),
        ("wav", "WAV", "FLOAT", True),
        ("flac", "FLAC", "PCM_24", True),
        ("ogg", "OGG", "VORBIS", False),
        ("mp3", "MP3", "MPEG_LAYER_III", False),
    ],
)
def test_file_round_trip(tmp_path, ext, fmt, subtype, exact):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} has no {fmt}")
    x = tone()
    path = tmp_path / f"a.{ext}"
    sf.write(path, x, SR, format=fmt, subtype=subtype)
    for src in (path, str(path)):
        y = load_audio(src)
        assert_output(y, len(x))
        if exact:
            np.testing.assert_allclose(y, x, atol=1 / 32768)
        else:  # lossy codecs: same signal, same level
            assert corr(x, y) > 0.99
            assert abs(rms(y) - rms(x)) < 0.02


def test_bytes_fileobj_and_stdin(tmp_path, monkeypatch):
    x = tone()
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="FLAC")
    data = buf.getvalue()
    want = load_audio(data)
    np.testing.assert_allclose(want, x, atol=1e-4)
    for src in (bytearray(data), memoryview(data), io.BytesIO(data)):
        np.testing.assert_array_equal(load_audio(src), want)
    path = tmp_path / "a.flac"
    path.write_bytes(data)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(load_audio(f), want)
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(data)))
    np.testing.assert_array_equal(load_audio("-"), want)


def test_stereo_44k_int16_file_matches_mono_16k():
    mono16 = tone(2.0, SR)
    st = np.stack([tone(2.0, 44100), tone(2.0, 44100)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, st, 44100, format="WAV", subtype="PCM_16")
    y = load_audio(buf.getvalue())
    assert abs(len(y) - len(mono16)) <= 1
    assert corr(mono16, y) > 0.999
    assert abs(rms(y) - rms(mono16)) < 0.005


def test_file_rate_is_read_from_header_and_checked(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(1.0, 8000), 8000)
    assert len(load_audio(path)) == SR
    assert len(load_audio(path, sample_rate=8000)) == SR  # agreeing rate is fine
    with pytest.raises(AudioError, match="8000 Hz according to its header"):
        load_audio(path, sample_rate=16000)


# --------------------------------------------------------------------------- arrays


def test_int16_stereo_44k_array_matches_float_mono_16k():
    ref = load_audio(tone(2.0, SR), sample_rate=SR)
    x44 = tone(2.0, 44100)
    pcm = np.round(x44 * 32767).astype(np.int16)
    for arr in (np.stack([pcm, pcm], 1), np.stack([pcm, pcm], 0)):  # both layouts
        y = load_audio(arr, sample_rate=44100)
        assert_output(y)
        assert abs(len(y) - len(ref)) <= 1
        assert corr(ref, y) > 0.999
        assert abs(rms(y) - rms(ref)) < 0.005


def test_channel_layouts_and_mean_downmix():
    left, right = tone(1.0, freq=300), tone(1.0, freq=700, amp=0.2)
    want = (left + right) / 2
    np.testing.assert_allclose(load_audio(np.stack([left, right], 1), sample_rate=SR), want, atol=1e-7)
    np.testing.assert_allclose(load_audio(np.stack([left, right], 0), sample_rate=SR), want, atol=1e-7)
    np.testing.assert_allclose(load_audio(left[:, None], sample_rate=SR), left)
    np.testing.assert_allclose(load_audio(left[None, :], sample_rate=SR), left)
    six = np.tile(left[:, None], (1, 6))
    np.testing.assert_allclose(load_audio(six, sample_rate=SR), left, atol=1e-7)
    np.testing.assert_allclose(load_audio(six.T.copy(), sample_rate=SR), left, atol=1e-7)


def test_ambiguous_layout_needs_channel_axis():
    x = np.tile(tone(0.5)[None, :2000], (16, 1))  # 16 channels: too many to guess
    with pytest.raises(AudioError, match="channel_axis=0"):
        load_audio(x, sample_rate=SR)
    y = load_audio(x, sample_rate=SR, channel_axis=0)
    np.testing.assert_allclose(y, x[0], atol=1e-7)
    np.testing.assert_allclose(load_audio(x.T, sample_rate=SR, channel_axis=1), y)


@pytest.mark.parametrize(
    "dtype,values,expected",
    [
        (np.int8, [-128, 0, 64, 127], [-1.0, 0.0, 0.5, 127 / 128]),
        (np.int16, [-32768, 0, 16384, 32767], [-1.0, 0.0, 0.5, 32767 / 32768]),
        (np.int32, [-(2**31), 0, 2**30, 2**31 - 1], [-1.0, 0.0, 0.5, 1.0]),
        (np.uint8, [0, 128, 192, 255], [-1.0, 0.0, 0.5, 127 / 128]),
        (np.float16, [-1, 0, 0.5, 1], [-1.0, 0.0, 0.5, 1.0]),
        (np.float64, [-1, 0, 0.5, 1], [-1.0, 0.0, 0.5, 1.0]),
    ],
)
def test_dtype_scaling(dtype, values, expected):
    x = np.resize(np.array(values, dtype=dtype), MIN_SAMPLES_16K)
    y = load_audio(x, sample_rate=SR)
    assert_output(y, MIN_SAMPLES_16K)
    np.testing.assert_allclose(y[:4], expected, atol=1e-7)


def test_resampling_and_lists():
    y = load_audio(tone(1.0, 8000, freq=200), sample_rate=8000)
    assert len(y) == SR
    assert corr(y, tone(1.0, SR, freq=200)) > 0.999
    assert len(load_audio(tone(1.0), sample_rate=SR, target_rate=24000)) == 24000
    assert len(load_audio(tone(1.0).tolist(), sample_rate=SR)) == SR


def test_float32_mono_16k_is_passed_through():
    x = tone()
    y = load_audio(x, sample_rate=SR)
    np.testing.assert_array_equal(y, x)


def test_helpers():
    assert min_samples(16000) == 1280 and min_samples(44100) == 3528
    assert duration(np.zeros(8000), 16000) == 0.5 and duration(16000, 8000) == 2.0


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(FileNotFoundError) as e:
        load_audio(path)
    assert "nope.wav" in str(e.value) and "check the path" in str(e.value)
    assert e.value.filename == str(path)


def test_directory(tmp_path):
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)


def test_text_file_and_garbage_bytes(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError) as e:
        load_audio(path)
    msg = str(e.value)
    assert "could not decode" in msg and "notes.wav" in msg
    assert "Supported formats" in msg and "WAV" in msg and "ffmpeg" in msg
    with pytest.raises(AudioError, match="could not decode <bytes>"):
        load_audio(b"\x00\x01garbage" * 100)
    with pytest.raises(AudioError, match="empty"):
        load_audio(b"")


def test_empty_audio(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), SR)
    with pytest.raises(AudioError, match="0 samples"):
        load_audio(path)
    for x in (np.zeros(0, np.float32), np.zeros((0, 2), np.int16)):
        with pytest.raises(AudioError, match="no samples"):
            load_audio(x, sample_rate=SR)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(bad):
    x = tone()
    x[100] = bad
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(x, sample_rate=SR)


def test_non_finite_in_file(tmp_path):
    x = tone()
    x[5] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)


@pytest.mark.parametrize(
    "x",
    [
        np.zeros(2000, dtype=bool),
        np.zeros(2000, dtype=np.complex64),
        np.array([0.0] * 2000, dtype=object),
        np.array(["a"] * 2000),
    ],
)
def test_bad_dtypes(x):
    with pytest.raises(AudioError, match="unsupported sample dtype"):
        load_audio(x, sample_rate=SR)


def test_bad_shapes():
    with pytest.raises(AudioError, match="shape"):
        load_audio(np.zeros((2, 2, 2000), np.float32), sample_rate=SR)
    with pytest.raises(AudioError, match="shape"):
        load_audio(np.float32(0.5), sample_rate=SR)


def test_sample_rate_required_and_valid():
    with pytest.raises(AudioError, match="sample_rate="):
        load_audio(tone())
    for bad in (0, -16000, float("nan"), True, "16000"):
        with pytest.raises(AudioError, match="sample_rate"):
            load_audio(tone(), sample_rate=bad)
    with pytest.raises(AudioError, match="target_rate"):
        load_audio(tone(), sample_rate=SR, target_rate=0)


def test_too_short():
    assert len(load_audio(np.zeros(MIN_SAMPLES_16K, np.float32), sample_rate=SR)) == MIN_SAMPLES_16K
    with pytest.raises(AudioError) as e:
        load_audio(np.zeros(MIN_SAMPLES_16K - 1, np.float32), sample_rate=SR)
    msg = str(e.value)
    assert "too short" in msg and "79.9 ms" in msg and "80 ms" in msg and "1280" in msg
    with pytest.raises(AudioError, match="too short"):  # 50 ms at 44.1 kHz
        load_audio(np.zeros(2205, np.int16), sample_rate=44100)


def test_unsupported_types():
    with pytest.raises(TypeError, match="cannot load audio from int"):
        load_audio(42)
    with pytest.raises(TypeError, match="binary mode|'rb'"):
        load_audio(io.StringIO("RIFF...."))


def test_pathlike_subclass(tmp_path):
    class P(os.PathLike):
        def __fspath__(self):
            return str(tmp_path / "a.wav")

    sf.write(tmp_path / "a.wav", tone(), SR)
    assert len(load_audio(P())) == SR
