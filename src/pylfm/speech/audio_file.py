"""Generated audio as a file in memory: wav (16-bit), flac, mp3, opus (ogg) or pcm
(raw 16-bit little-endian), as `Speech.save` and the server's ``/v1/audio/speech`` write it."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from ..errors import SpeechError

# format -> (soundfile format, subtype, media type); pcm is raw 16-bit little-endian.
AUDIO_FORMATS: Dict[str, Tuple[Optional[str], Optional[str], str]] = {
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "opus": ("OGG", "OPUS", "audio/ogg"),
    "pcm": (None, None, "audio/pcm"),
}


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """The audio as a file of format ``fmt`` (one of `AUDIO_FORMATS`) in memory."""
    import io

    import soundfile as sf

    if fmt not in AUDIO_FORMATS:
        raise SpeechError(f"audio format {fmt!r} is not supported; use one of {', '.join(AUDIO_FORMATS)}")
    audio = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)
    sf_format, subtype, _ = AUDIO_FORMATS[fmt]
    if sf_format is None:
        return (audio * 32767.0).round().astype("<i2").tobytes()
    if sf_format not in sf.available_formats():
        raise SpeechError(f"this libsndfile cannot write {fmt}; use wav, flac or pcm")
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format=sf_format, subtype=subtype)
    return buf.getvalue()
