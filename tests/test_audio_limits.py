"""What decoding may cost: max_duration (from the header before decoding, else while
decoding), implausible sample rates, and decompression bombs refused cheaply."""

import fractions
import io
import os
import struct
import threading
import time
import tracemalloc

import av
import numpy as np
import pytest
import soundfile as sf

from media_files import encode, silent_flac, voice_like
from pylfm.audio import load_audio
from pylfm.errors import AudioError, AudioTooLongError

SR = 16000


def measured(fn):
    """Run ``fn`` -> (its exception or result, seconds, peak Python-tracked MB)."""
    tracemalloc.start()
    t = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - returned for the test to check
        out = e
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, seconds, peak


@pytest.fixture(scope="module")
def flac_12h() -> bytes:
    data = silent_flac(12 * 3600)
    assert 2.0e6 < len(data) < 2.4e6  # the 2.2 MB that decodes to 12 h
    return data


def test_header_length_over_the_limit_is_refused_before_decoding(flac_12h):
    err, seconds, peak = measured(lambda: load_audio(flac_12h, max_duration=600))
    assert isinstance(err, AudioTooLongError) and isinstance(err, AudioError)
    assert err.duration == pytest.approx(12 * 3600, rel=1e-3) and err.limit == 600
    assert "max_duration=600" in str(err) and "12:00:00" in str(err)
    assert seconds < 0.5 and peak < 8  # decoding it would take 2.7 GB


def test_lying_header_is_stopped_while_decoding(tmp_path):
    # STREAMINFO says "length unknown", the file is 2 h of silence: decoding must stop
    # at the limit, holding about the limit's worth of samples.
    liar = silent_flac(2 * 3600, header_seconds=0)
    err, seconds, peak = measured(lambda: load_audio(liar, max_duration=30))
    assert isinstance(err, AudioTooLongError)
    assert err.duration is None and err.limit == 30 and "max_duration=30" in str(err)
    assert seconds < 2 and peak < 30  # all of it: 2 h x 16 kHz x 4 B = 460 MB
    # The same through FFmpeg, read as a stream from a pipe (no header length at all).
    r, w = os.pipe()
    writer = threading.Thread(target=_write_all, args=(w, liar), daemon=True)
    writer.start()
    err, seconds, peak = measured(lambda: load_audio(f"/dev/fd/{r}", max_duration=30))
    os.close(r)
    writer.join(5)
    assert isinstance(err, AudioTooLongError) and err.duration is None
    assert seconds < 3 and peak < 30


def _write_all(fd: int, data: bytes) -> None:
    try:
        for i in range(0, len(data), 65536):
            os.write(fd, data[i : i + 65536])
    except BrokenPipeError:  # the reader stopped at the limit: expected
        pass
    finally:
        os.close(fd)


def test_limit_on_containers_and_arrays():
    pcm = voice_like(3.0, 48000)[:, None]
    m4a = encode(pcm, 48000, "ipod", "aac", bit_rate=96000)
    with pytest.raises(AudioTooLongError) as e:
        load_audio(m4a, max_duration=2)
    assert e.value.duration == pytest.approx(3.0, abs=0.1)  # the MP4 header says so
    assert len(load_audio(m4a, max_duration=3.5)) == pytest.approx(3 * SR, abs=0.1 * SR)
    with pytest.raises(AudioTooLongError) as e:
        load_audio(np.zeros(3 * 44100, np.int16), sample_rate=44100, max_duration=2.5)
    assert e.value.duration == 3.0
    x = np.zeros(2 * SR, np.float32)
    assert len(load_audio(x, sample_rate=SR, max_duration=2.0)) == 2 * SR  # at the limit is fine
    wav = io.BytesIO()
    sf.write(wav, x, SR, format="WAV")
    assert len(load_audio(wav.getvalue(), max_duration=2.0)) == 2 * SR
    with pytest.raises(AudioTooLongError):
        load_audio(wav.getvalue(), max_duration=1.999)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "10", True])
def test_max_duration_validated(bad):
    with pytest.raises(ValueError, match="max_duration"):
        load_audio(np.zeros(SR, np.float32), sample_rate=SR, max_duration=bad)


def test_wav_whose_header_says_1_hz():
    buf = io.BytesIO()
    sf.write(buf, np.zeros(4800, np.int16), SR, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    assert len(data) < 10_000  # the 9.6 KB file
    data[24:32] = struct.pack("<II", 1, 2)  # sample rate 1 Hz, 2 bytes/s
    err, seconds, peak = measured(lambda: load_audio(bytes(data)))
    assert isinstance(err, AudioError) and "1 Hz" in str(err) and "1 kHz" in str(err)
    assert seconds < 0.5 and peak < 5  # resampled it would be 80 minutes


@pytest.mark.parametrize("rate", [500, 999.9, 1_000_001, 96_000_000])
def test_absurd_sample_rates_refused(rate):
    with pytest.raises(AudioError, match="not a real audio sample rate"):
        load_audio(np.zeros(SR, np.float32), sample_rate=rate)
    with pytest.raises(AudioError, match="not a real audio sample rate"):
        load_audio(np.zeros(SR, np.float32), sample_rate=SR, target_rate=rate)


def test_edge_rates_accepted():
    assert len(load_audio(np.zeros(1000, np.float32), sample_rate=1000)) == SR
    y = load_audio(np.zeros(1_000_000 // 10, np.float32), sample_rate=1_000_000)
    assert len(y) == SR // 10


def test_long_file_is_decoded_in_chunks(tmp_path):
    # 3 min of 48 kHz stereo: the original-rate float32 copy would be 66 MiB, the
    # 16 kHz mono result 11 MiB. Chunked decoding holds little more than the result.
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros((180 * 48000, 2), np.int16), 48000, subtype="PCM_16")
    y, seconds, peak = measured(lambda: load_audio(path))
    assert len(y) == 180 * SR
    assert peak < 11 * 1.3 + 2


def long_noise_file(path, fmt: str, codec: str, minutes: float, rate: int = 48000) -> float:
    """``minutes`` of quiet stereo noise (-50 dBFS) as ``codec`` in container ``fmt``, made
    fast: 10 s are encoded once and their packets muxed over and over, back to back, each
    timed as one codec frame. Returns the length in seconds."""
    x = (np.random.default_rng(0).standard_normal((2, 10 * rate)) * 0.003).astype(np.float32)
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="stereo")
        stream.bit_rate = 32000
        ctx = stream.codec_context
        ctx.open()
        size, sample_fmt = ctx.frame_size, ctx.format.name
        packets = []
        for i in range(0, x.shape[1] - size + 1, size):
            block = x[:, i : i + size]
            if sample_fmt == "s16":  # interleaved 16-bit (libopus)
                block = np.round(block.T * 32767).astype(np.int16).reshape(1, -1)
            assert sample_fmt in ("s16", "fltp"), sample_fmt
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format=sample_fmt, layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = rate, i, fractions.Fraction(1, rate)
            packets += [bytes(p) for p in stream.encode(frame)]
        packets += [bytes(p) for p in stream.encode(None)]
        n = int(minutes * 60 * rate) // size
        for j in range(n):
            p = av.Packet(packets[j % len(packets)])
            p.stream, p.time_base = stream, fractions.Fraction(1, rate)
            p.pts = p.dts = j * size
            p.duration = size
            out.mux(p)
    return n * size / rate


@pytest.mark.parametrize("fmt,codec,name", [("ipod", "aac", "long.m4a"), ("webm", "libopus", "long.webm")])
def test_long_container_is_decoded_in_chunks(tmp_path, fmt, codec, name):
    # 20 min of 48 kHz stereo through PyAV: the original-rate float32 copy would be
    # 440 MiB (a mono one 220 MiB), the 16 kHz mono result 73 MiB. Decoding chunk by
    # chunk holds little more than the result.
    path = tmp_path / name
    seconds = long_noise_file(path, fmt, codec, 20)
    assert path.stat().st_size < 8e6
    y, _, peak = measured(lambda: load_audio(path))
    assert abs(len(y) - seconds * SR) < 0.1 * SR
    assert 5e-4 < np.sqrt(np.mean(y[: 60 * SR] ** 2)) < 2e-3  # the noise, decoded (what is left below 8 kHz)
    result_mb = len(y) * 4 / 2**20
    assert peak < 2.6 * result_mb + 2  # never a copy at the original rate
    # WebM's audio stream states no length, only the container does: the output buffer is
    # sized from the container's, not grown by half whenever it fills.
    assert peak < 1.1 * result_mb + 4
