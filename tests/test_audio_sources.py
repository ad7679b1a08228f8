"""Inputs that are not plain seekable files: pipes, FIFOs, process substitution, stdin,
and files the user may not read."""

import io
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from media_files import voice_like
from pylfm.audio import load_audio
from pylfm.errors import AudioError

SR = 16000


@pytest.fixture(scope="module")
def flac_bytes() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.stack([voice_like(2.0, 44100), voice_like(2.0, 44100, 1)], 1), 44100, format="FLAC")
    return buf.getvalue()


def feed(fd: int, data: bytes, delay: float = 0.0) -> threading.Thread:
    """Write ``data`` to ``fd`` (then close it) from a thread, after ``delay`` seconds."""

    def run():
        time.sleep(delay)
        try:
            for i in range(0, len(data), 8192):
                os.write(fd, data[i : i + 8192])
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_process_substitution_is_read_as_a_stream(flac_bytes):
    """``pylfm transcribe <(cat a.flac)`` passes /dev/fd/N, a pipe: it cannot seek."""
    want = load_audio(flac_bytes)
    for data in (flac_bytes, _wav(voice_like(1.5, 8000), 8000)):
        r, w = os.pipe()
        t = feed(w, data)
        got = load_audio(f"/dev/fd/{r}")
        os.close(r)
        t.join(5)
        if data is flac_bytes:
            np.testing.assert_allclose(got, want, atol=1e-6)
        else:
            assert len(got) == int(1.5 * SR)


def test_fifo_with_a_writer(tmp_path, flac_bytes):
    fifo = tmp_path / "in.flac"
    os.mkfifo(fifo)

    def writer():
        time.sleep(0.2)  # the reader is waiting by then
        with open(fifo, "wb") as f:
            f.write(flac_bytes)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    np.testing.assert_allclose(load_audio(fifo), load_audio(flac_bytes), atol=1e-6)
    t.join(5)


def test_fifo_without_a_writer_times_out(tmp_path, monkeypatch):
    fifo = tmp_path / "nobody-writes"
    os.mkfifo(fifo)
    t = time.perf_counter()
    with pytest.raises(AudioError, match="no data arrived") as e:
        load_audio(fifo, read_timeout=0.3)
    assert 0.25 < time.perf_counter() - t < 3
    assert "read_timeout" in str(e.value) and "PYLFM_READ_TIMEOUT" in str(e.value)
    monkeypatch.setenv("PYLFM_READ_TIMEOUT", "0.2")
    t = time.perf_counter()
    with pytest.raises(AudioError, match="for 0.2 s"):
        load_audio(fifo)
    assert time.perf_counter() - t < 3
    # A writer that sends the start of a file and then stalls is also given up on.
    r, w = os.pipe()
    os.write(w, b"RIFF")
    with pytest.raises(AudioError, match="no data arrived"):
        load_audio(f"/dev/fd/{r}", read_timeout=0.3)
    os.close(r)
    os.close(w)


@pytest.mark.parametrize("bad", ["soon", "-1", "0"])
def test_read_timeout_validated(tmp_path, monkeypatch, bad):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    monkeypatch.setenv("PYLFM_READ_TIMEOUT", bad)
    with pytest.raises(ValueError, match="PYLFM_READ_TIMEOUT"):
        load_audio(fifo)
    with pytest.raises(ValueError, match="read_timeout"):
        load_audio(fifo, read_timeout=-2)


def test_stdin_pipe_and_empty_stdin(monkeypatch, flac_bytes):
    r, w = os.pipe()
    t = feed(w, flac_bytes)
    with open(r, "rb", closefd=True) as stdin:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
        np.testing.assert_allclose(load_audio("-"), load_audio(flac_bytes), atol=1e-6)
    t.join(5)
    r, w = os.pipe()
    os.close(w)  # nothing is sent
    with open(r, "rb") as stdin:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
        with pytest.raises(AudioError, match="empty"):
            load_audio("-")


def test_non_seekable_file_object(flac_bytes):
    class Stream(io.RawIOBase):
        def __init__(self, data):
            self._b = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, buf):
            return self._b.readinto(buf)

    np.testing.assert_allclose(load_audio(Stream(flac_bytes)), load_audio(flac_bytes), atol=1e-6)


def test_permission_denied(tmp_path):
    root = os.geteuid() == 0
    # root reads anything: check as an ordinary user (the effective id only, so the
    # test gets root back), in a directory that user may enter.
    folder = Path(tempfile.mkdtemp(dir="/tmp")) if root else tmp_path
    try:
        folder.chmod(0o755)
        path = folder / "private.wav"
        sf.write(path, voice_like(1.0, SR), SR)
        path.chmod(0)
        if root:
            os.seteuid(65534)
        try:
            with pytest.raises(PermissionError) as e:
                load_audio(path)
        finally:
            if root:
                os.seteuid(0)
    finally:
        if root:
            shutil.rmtree(folder)
    msg = str(e.value)
    assert "\n" not in msg and "permission denied" in msg and str(path) in msg


def _wav(x: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV")
    return buf.getvalue()
