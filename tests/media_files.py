"""Audio/video files made in the tests with PyAV from numpy signals (no external binaries),
and a hand-made FLAC of silence whose header says whatever the test wants."""

from __future__ import annotations

import fractions
import io
import struct

import av
import numpy as np


def voice_like(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """A harmonic, pitch-gliding, amplitude-modulated signal (speech-like spectrum)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase + rng.uniform(0, 6)) / k for k in range(1, 8))
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 3.1 * t)
    return (0.15 * env * x).astype(np.float32)


def encode(x: np.ndarray, rate: int, fmt: str, codec: str, *, video: bool = False,
           bit_rate: int | None = None, faststart: bool = False) -> bytes:
    """Encode ``x`` ((frames, channels) float32) as ``codec`` in container ``fmt``; with
    ``video``, a small MPEG-4 video stream (added first) runs alongside."""
    ch = x.shape[1]
    layout = "mono" if ch == 1 else "stereo"
    buf = io.BytesIO()
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(buf, "w", format=fmt, options=options) as out:
        v = None
        if video:
            v = out.add_stream("mpeg4", rate=25)
            v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream(codec, rate=rate, layout=layout)
        if bit_rate:
            a.bit_rate = bit_rate
        fmt_name = a.codec_context.format.name
        size = a.codec_context.frame_size or 1024
        pts, vpts = 0, 0
        for i in range(0, len(x), size):
            block = _to_format(x[i : i + size], fmt_name)
            frame = av.AudioFrame.from_ndarray(block, format=fmt_name, layout=layout)
            frame.sample_rate, frame.pts = rate, pts
            frame.time_base = fractions.Fraction(1, rate)
            pts += len(x[i : i + size])
            for p in a.encode(frame):
                out.mux(p)
            while v is not None and vpts / 25 <= pts / rate:
                img = np.full((48, 64, 3), (vpts * 9) % 256, np.uint8)
                vf = av.VideoFrame.from_ndarray(img, format="rgb24")
                vf.pts, vpts = vpts, vpts + 1
                for p in v.encode(vf):
                    out.mux(p)
        for p in a.encode(None):
            out.mux(p)
        if v is not None:
            for p in v.encode(None):
                out.mux(p)
    return buf.getvalue()


def video_only(seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        v = out.add_stream("mpeg4", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * 25)):
            vf = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 9 % 256, np.uint8), format="rgb24")
            vf.pts = i
            for p in v.encode(vf):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
    return buf.getvalue()


def _to_format(block: np.ndarray, fmt: str) -> np.ndarray:
    planar = fmt.endswith("p")
    base = fmt[:-1] if planar else fmt
    if base == "flt":
        y = block.astype(np.float32)
    elif base == "s16":
        y = np.round(block * 32767).astype(np.int16)
    elif base == "s32":
        y = np.round(block * 2147483647.0).astype(np.int32)
    else:
        raise ValueError(f"sample format {fmt} not handled by the test helper")
    return np.ascontiguousarray(y.T) if planar else y.reshape(1, -1)


# --------------------------------------------------------------------------- FLAC of silence


def _crc_table(poly: int, width: int) -> np.ndarray:
    top, mask = 1 << (width - 1), (1 << width) - 1
    table = []
    for byte in range(256):
        crc = byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
        table.append(crc)
    return np.array(table, np.uint32)


_CRC8, _CRC16 = _crc_table(0x07, 8), _crc_table(0x8005, 16)


def _utf8(n: int) -> list:
    """FLAC's UTF-8-style frame number coding (allows what Python's codec refuses)."""
    if n < 0x80:
        return [n]
    if n < 0x800:
        return [0xC0 | n >> 6, 0x80 | n & 63]
    if n < 0x10000:
        return [0xE0 | n >> 12, 0x80 | n >> 6 & 63, 0x80 | n & 63]
    return [0xF0 | n >> 18, 0x80 | n >> 12 & 63, 0x80 | n >> 6 & 63, 0x80 | n & 63]


def silent_flac(seconds: float, rate: int = 16000, header_seconds: float | None = None) -> bytes:
    """A valid 16-bit mono FLAC of digital silence, ``seconds`` long, in 4096-sample frames
    of one constant subframe each (13-14 bytes a frame: 12 h at 16 kHz is 2.2 MB).
    ``header_seconds`` sets the length STREAMINFO claims (0 = unknown) instead of the truth.
    Made by hand because encoding 12 h with libFLAC takes ~20 s."""
    block = 4096
    n_frames = int(seconds * rate) // block
    total = n_frames * block if header_seconds is None else int(header_seconds * rate)
    info = struct.pack(">HH", block, block) + b"\0" * 6  # block sizes; frame sizes unknown
    info += ((rate << 44) | (0 << 41) | (15 << 36) | total).to_bytes(8, "big") + b"\0" * 16
    rate_code = {8000: 4, 16000: 5, 22050: 6, 24000: 7, 32000: 8, 44100: 9, 48000: 10}[rate]
    by_len: dict = {}
    for k in range(n_frames):
        by_len.setdefault(len(_utf8(k)), []).append(k)
    frames = [b""] * n_frames
    for ulen, ks in by_len.items():  # CRCs computed for all frames of a length at once
        m = np.zeros((len(ks), 10 + ulen), np.uint32)
        m[:, :4] = [0xFF, 0xF8, 0xC0 | rate_code, 0x08]  # sync, 4096/rate, mono 16-bit
        m[:, 4 : 4 + ulen] = [_utf8(k) for k in ks]
        crc = np.zeros(len(ks), np.uint32)
        for j in range(4 + ulen):
            crc = _CRC8[crc ^ m[:, j]]
        m[:, 4 + ulen] = crc  # then a constant subframe (0x00) of value 0 (2 bytes)
        crc = np.zeros(len(ks), np.uint32)
        for j in range(8 + ulen):
            crc = _CRC16[(crc >> 8) ^ m[:, j]] ^ ((crc << 8) & 0xFFFF)
        m[:, 8 + ulen], m[:, 9 + ulen] = crc >> 8, crc & 0xFF
        for k, row in zip(ks, m.astype(np.uint8)):
            frames[k] = row.tobytes()
    return b"".join([b"fLaC", bytes([0x80, 0, 0, 34]), info, *frames])


def speech_like_noise(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Utterances of 1-8 s of coloured noise in syllable-rate (3-6 Hz) bursts, with
    0.3-2 s pauses of digital silence between them: a recording's rhythm without words."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n, np.float32)
    i = 0
    while i < n:
        j = min(n, i + int(rng.uniform(1.0, 8.0) * rate))
        t = np.arange(j - i) / rate
        syllables = 0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(3.0, 6.0) * t)
        noise = rng.standard_normal(j - i).astype(np.float32)
        noise[1:] += 0.7 * noise[:-1]  # more low than high frequencies, as in speech
        out[i:j] = 0.1 * syllables * noise
        i = j + int(rng.uniform(0.3, 2.0) * rate)
    return out
