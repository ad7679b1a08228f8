"""Audio on the Realtime wire: the formats a session may use, base64 in and out, and the
streamed resampling between them and the model (16 kHz in, 24 kHz out).

OpenAI's formats: ``audio/pcm`` (16-bit little-endian mono, 24 kHz), ``audio/pcmu``
(G.711 mu-law, 8 kHz) and ``audio/pcma`` (G.711 A-law, 8 kHz); the beta API names them
``pcm16``, ``g711_ulaw`` and ``g711_alaw``. pylfm also takes ``audio/pcm`` at another
``rate`` (8000-48000), for clients that capture at 16 kHz.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

PCM, PCMU, PCMA = "audio/pcm", "audio/pcmu", "audio/pcma"
BETA_NAMES = {"pcm16": PCM, "g711_ulaw": PCMU, "g711_alaw": PCMA}
BETA_OF = {v: k for k, v in BETA_NAMES.items()}
DEFAULT_RATE = 24000
MIN_RATE, MAX_RATE = 8000, 48000


class FormatError(ValueError):
    """An audio format a session cannot use, or audio that is not in its format."""


@dataclass(frozen=True)
class AudioFormat:
    type: str = PCM
    rate: int = DEFAULT_RATE

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.type == PCM else 1

    def ga(self) -> Dict[str, Any]:
        """The format as the GA API writes it."""
        return {"type": self.type, "rate": self.rate} if self.type == PCM else {"type": self.type}

    def beta(self) -> str:
        return BETA_OF[self.type]


def parse_format(value: Any) -> AudioFormat:
    """A session's audio format from either API's spelling (FormatError otherwise)."""
    if isinstance(value, str):
        if value in BETA_NAMES:
            return AudioFormat(BETA_NAMES[value], DEFAULT_RATE if value == "pcm16" else 8000)
        if value in (PCM, PCMU, PCMA):
            value = {"type": value}
        else:
            raise FormatError(f"unknown audio format {value!r}; use audio/pcm (24 kHz), audio/pcmu or audio/pcma")
    if not isinstance(value, dict):
        raise FormatError(f"an audio format is an object like {{\"type\": \"audio/pcm\", \"rate\": 24000}}, got {value!r}")
    kind = value.get("type", PCM)
    if kind in BETA_NAMES:
        kind = BETA_NAMES[kind]
    if kind not in (PCM, PCMU, PCMA):
        raise FormatError(f"unknown audio format type {kind!r}; use audio/pcm, audio/pcmu or audio/pcma")
    rate = value.get("rate")
    if kind != PCM:
        if rate not in (None, 8000):
            raise FormatError(f"{kind} is 8 kHz audio; rate {rate!r} is not possible")
        return AudioFormat(kind, 8000)
    if rate is None:
        return AudioFormat(PCM, DEFAULT_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise FormatError(f"audio/pcm rate must be an integer in [{MIN_RATE}, {MAX_RATE}] (OpenAI's is 24000), "
                          f"got {rate!r}")
    return AudioFormat(PCM, rate)


def decode_b64(data: Any, what: str = "audio") -> bytes:
    if not isinstance(data, str):
        raise FormatError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{what} is not valid base64") from None


def to_float(raw: bytes, fmt: AudioFormat) -> np.ndarray:
    """Samples in [-1, 1) from the bytes of ``fmt``."""
    if fmt.type == PCM:
        if len(raw) % 2:
            raise FormatError("audio/pcm needs whole 16-bit samples (an even number of bytes)")
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    codes = np.frombuffer(raw, np.uint8)
    table = _ULAW_DECODE if fmt.type == PCMU else _ALAW_DECODE
    return table[codes].astype(np.float32) / 32768.0


def from_float(x: np.ndarray, fmt: AudioFormat) -> bytes:
    """The bytes of ``fmt`` for samples in [-1, 1]."""
    pcm = np.clip(np.round(np.asarray(x, np.float32) * 32767.0), -32768, 32767).astype(np.int16)
    if fmt.type == PCM:
        return pcm.astype("<i2").tobytes()
    return (_ulaw_encode(pcm) if fmt.type == PCMU else _alaw_encode(pcm)).tobytes()


class Resampler:
    """A streamed resampler (soxr) from one rate to another; a no-op between equal rates."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self._stream: Optional[Any] = None
        if rate_in != rate_out:
            import soxr

            self._stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32")

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return np.asarray(x, np.float32)
        return self._stream.resample_chunk(np.asarray(x, np.float32), last=last)


# ---------------------------------------------------------------------- G.711
def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


_ULAW_DECODE = _ulaw_decode_table()
_ALAW_DECODE = _alaw_decode_table()


def _ulaw_encode(pcm: np.ndarray) -> np.ndarray:
    x = pcm.astype(np.int32)
    sign = (x < 0).astype(np.int32) << 7
    magnitude = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def _alaw_encode(pcm: np.ndarray) -> np.ndarray:
    x = pcm.astype(np.int32)
    sign = np.where(x >= 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), 32767)
    big = magnitude >= 256
    exponent = np.where(big, np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 7, 0)
    mantissa = np.where(big, (magnitude >> (exponent + 3)) & 0x0F, magnitude >> 4)
    return ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8)
