"""load_audio on containers and codecs libsndfile cannot read (through PyAV): each file is
made here from a numpy signal and must decode to the samples of the WAV made from the
same signal, within the codec's tolerance."""

import io

import av
import numpy as np
import pytest
import soundfile as sf

from media_files import encode, video_only, voice_like
from pylfm.audio import load_audio
from pylfm.errors import AudioError

SR = 16000


def aligned(ref: np.ndarray, y: np.ndarray, max_lag: int = 2048):
    """``y`` shifted to best match ``ref`` (codecs add priming delay), both cut to the
    common length; also the lag in samples."""
    n = min(len(ref), len(y)) - 2 * max_lag
    core = ref[max_lag : max_lag + n]
    lags = np.arange(-max_lag, max_lag + 1)
    scores = [np.dot(core, y[max_lag + k : max_lag + k + n]) for k in lags]
    lag = int(lags[int(np.argmax(scores))])
    return core, y[max_lag + lag : max_lag + lag + n], lag


def snr_db(ref: np.ndarray, y: np.ndarray) -> float:
    # The level may change a little in a lossy codec: compare after the best gain.
    g = np.dot(ref, y) / np.dot(y, y)
    err = ref - g * y
    return float(10 * np.log10(np.dot(ref, ref) / np.dot(err, err)))


def band_levels(x: np.ndarray, bands: int = 64) -> np.ndarray:
    s = np.abs(np.fft.rfft(x))
    return np.log(np.add.reduceat(s, np.arange(0, len(s), len(s) // bands)) + 1e-9)


# fmt, codec, rate, channels, with video, bit rate, min SNR (dB) against the WAV
CASES = [
    ("ipod", "aac", 44100, 2, False, 128000, 20.0),  # .m4a voice memo
    ("mp4", "aac", 48000, 2, True, 128000, 20.0),  # phone video
    ("webm", "libopus", 48000, 1, False, 64000, 12.0),  # messaging apps
    ("matroska", "flac", 22050, 2, True, None, 60.0),  # lossless in mkv with video
    ("mov", "alac", 96000, 1, True, None, 60.0),  # lossless in QuickTime with video
    ("asf", "wmav2", 32000, 2, False, 128000, 12.0),  # .wma
    ("amr", "libopencore_amrnb", 8000, 1, False, 12200, 0.0),  # phone call recorder
]


@pytest.mark.parametrize("fmt,codec,rate,channels,video,bit_rate,min_snr", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_container_decodes_like_the_wav(fmt, codec, rate, channels, video, bit_rate, min_snr):
    x = voice_like(3.0, rate)
    # The channels differ (a quieter right channel) so that a wrong downmix shows.
    pcm = x[:, None] if channels == 1 else np.stack([x, 0.5 * x], 1)
    wav = io.BytesIO()
    sf.write(wav, pcm, rate, format="WAV", subtype="FLOAT")
    want = load_audio(wav.getvalue())
    data = encode(pcm, rate, fmt, codec, video=video, bit_rate=bit_rate)
    with pytest.raises(sf.LibsndfileError):  # this is PyAV's work, not libsndfile's
        sf.info(io.BytesIO(data))
    got = load_audio(data)
    assert got.dtype == np.float32 and got.ndim == 1
    # Length: the same but for the codec's frame padding / priming (< 100 ms).
    assert abs(len(got) - len(want)) < 0.1 * SR
    ref, y, lag = aligned(want, got)
    assert abs(lag) < 0.1 * SR  # codec delay not trimmed by the container (WMA: 64 ms)
    if codec.startswith("libopencore"):
        # A narrow-band speech codec keeps the spectrum's shape, not the waveform.
        assert np.corrcoef(band_levels(ref), band_levels(y))[0, 1] > 0.98
        return
    assert np.corrcoef(ref, y)[0, 1] > 0.99 and snr_db(ref, y) >= min_snr
    # The level is kept (a mono downmix is the channels' mean).
    assert abs(np.std(y) / np.std(ref) - 1) < 0.1


def test_path_bytes_and_file_object_alike(tmp_path):
    pcm = np.stack([voice_like(2.0, 44100), voice_like(2.0, 44100, seed=1)], 1)
    data = encode(pcm, 44100, "ipod", "aac", bit_rate=96000)
    path = tmp_path / "memo.m4a"
    path.write_bytes(data)
    want = load_audio(path)
    np.testing.assert_array_equal(load_audio(str(path)), want)
    np.testing.assert_array_equal(load_audio(data), want)
    np.testing.assert_array_equal(load_audio(bytearray(data)), want)
    np.testing.assert_array_equal(load_audio(io.BytesIO(data)), want)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(load_audio(f), want)


def test_first_audio_stream_of_a_video_is_used():
    # Two audio streams: the first (a tone at 440 Hz) is the one transcribed.
    rate = 48000
    t = np.arange(rate * 2) / rate
    first = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    second = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        v = out.add_stream("mpeg4", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        streams = [out.add_stream("flac", rate=rate, layout="mono") for _ in range(2)]
        for s, sig in zip(streams, (first, second)):
            for i in range(0, len(sig), 4608):
                fr = av.AudioFrame.from_ndarray(np.round(sig[None, i : i + 4608] * 32767).astype(np.int16),
                                                format="s16", layout="mono")
                fr.sample_rate, fr.pts = rate, i
                for p in s.encode(fr):
                    out.mux(p)
            for p in s.encode(None):
                out.mux(p)
        vf = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
        vf.pts = 0
        for p in list(v.encode(vf)) + list(v.encode(None)):
            out.mux(p)
    y = load_audio(buf.getvalue())
    spectrum = np.abs(np.fft.rfft(y))
    peak_hz = np.argmax(spectrum) * SR / len(y)
    assert abs(peak_hz - 440) < 5


def test_video_without_audio_is_a_clear_error():
    with pytest.raises(AudioError, match="no audio stream") as e:
        load_audio(video_only())
    assert "video" in str(e.value)


def test_corrupt_and_truncated_containers(caplog):
    pcm = voice_like(3.0, 48000)[:, None]
    data = encode(pcm, 48000, "mp4", "aac", bit_rate=96000)  # index (moov) at the end
    with pytest.raises(AudioError, match="could not decode"):
        load_audio(data[: len(data) // 2])  # the index is gone
    with pytest.raises(AudioError, match="could not decode <bytes>"):
        load_audio(data[:64] + bytes(range(256)) * 40)
    # An MKV damaged or cut off in the middle keeps the audio before the damage, as
    # FFmpeg's tools do: exactly the intact file's samples up to there. (FFmpeg's Matroska
    # demuxer ends there as at the end of the file, with no error: pylfm warns that the
    # audio is shorter than the header says.)
    mkv = encode(pcm, 48000, "matroska", "libopus", bit_rate=64000)
    full = load_audio(mkv)
    assert len(full) == 3 * SR
    damaged = bytearray(mkv)
    rng = np.random.default_rng(0)
    damaged[len(mkv) // 2 : len(mkv) // 2 + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    for label, broken in (("damaged", bytes(damaged)), ("truncated", mkv[: len(mkv) // 2])):
        caplog.clear()
        with caplog.at_level("WARNING", logger="pylfm"):
            y = load_audio(broken)
        assert any("header states" in r.getMessage() for r in caplog.records), label
        assert 1.0 * SR < len(y) < 2.0 * SR, label  # up to the middle, not beyond
        keep = len(y) - SR // 20  # all but the resampler's last 50 ms, cut short by the damage
        np.testing.assert_allclose(y[:keep], full[:keep], atol=1e-6, err_msg=label)


def test_nested_inputs_are_never_opened(tmp_path):
    """An uploaded ffconcat list (or HLS playlist) must not make FFmpeg read local files."""
    secret = tmp_path / "secret.wav"
    sf.write(secret, voice_like(1.0, 16000), 16000)
    for listing in (f"ffconcat version 1.0\nfile {secret}\n", "ffconcat version 1.0\nfile secret.wav\n",
                    f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{secret}\n#EXT-X-ENDLIST\n"):
        lst = tmp_path / "list.txt"
        lst.write_text(listing)
        with pytest.raises(AudioError):
            load_audio(lst)
        with pytest.raises(AudioError):
            load_audio(listing.encode())


def test_integer_and_planar_sample_formats():
    # FLAC in MKV decodes to s16/s32 (24-bit) frames, MP2 to s16, AC-3 to float planar:
    # each scaled to [-1, 1) like libsndfile's output.
    x = voice_like(2.0, 48000)
    wav = io.BytesIO()
    sf.write(wav, x, 48000, format="WAV", subtype="FLOAT")
    want = load_audio(wav.getvalue())
    for fmt, codec, bit_rate in (("matroska", "flac", None), ("mp2", "mp2", 192000), ("ac3", "ac3", 192000)):
        got = load_audio(encode(x[:, None], 48000, fmt, codec, bit_rate=bit_rate))
        ref, y, _ = aligned(want, got)
        assert np.corrcoef(ref, y)[0, 1] > 0.99, codec
        assert abs(np.std(y) / np.std(ref) - 1) < 0.05, codec
