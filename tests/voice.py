"""Speech for the voice tests: the espeak-ng fixture's utterances, as the wire carries them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Iterator, List

import numpy as np
import soundfile as sf

FIXTURES = Path(__file__).parent / "fixtures"
RATE_IN = 24000


def utterances(rate: int = RATE_IN) -> List[np.ndarray]:
    """The fixture's three spoken sentences (float32 mono at ``rate``), cut at the
    fixture's own marks with 0.2 s of margin."""
    import soxr

    x, sr = sf.read(FIXTURES / "speech_espeak.flac", dtype="float32")
    marks = json.loads((FIXTURES / "speech_espeak.json").read_text())["utterances"]
    out = []
    for u in marks:
        a, b = max(0, int((u["start"] - 0.2) * sr)), int((u["end"] + 0.2) * sr)
        out.append(soxr.resample(x[a:b], sr, rate).astype(np.float32))
    return out


def silence(seconds: float, rate: int = RATE_IN) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.float32)


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(np.round(x * 32767), -32768, 32767)).astype("<i2").tobytes()


def b64_chunks(x: np.ndarray, chunk_s: float = 0.1, rate: int = RATE_IN) -> Iterator[str]:
    """``x`` as the base64 PCM16 chunks of ``input_audio_buffer.append`` events."""
    raw = pcm16(x)
    step = 2 * int(chunk_s * rate)
    for i in range(0, len(raw), step):
        yield base64.b64encode(raw[i:i + step]).decode("ascii")


def from_b64(deltas: List[str]) -> np.ndarray:
    """Concatenated base64 PCM16 deltas as int16 samples."""
    return np.frombuffer(b"".join(base64.b64decode(d) for d in deltas), "<i2")


def wav_bytes(x: np.ndarray, rate: int) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
