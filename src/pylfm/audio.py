"""Audio input: decode, downmix and resample anything the user hands us to what the
LFM2-Audio encoder expects (float32 mono PCM at 16 kHz).

    >>> x = load_audio("talk.mp3")                        # file path, "-" for stdin
    >>> x = load_audio(pcm_int16, sample_rate=44100)      # numpy array: rate required

Accepted inputs
    * a path (``str`` / ``os.PathLike``) to any file libsndfile decodes: WAV, FLAC,
      OGG (Vorbis/Opus), MP3 (libsndfile >= 1.1), AIFF, ... ``"-"`` reads the encoded
      file from standard input (name a file called ``-`` as ``./-``);
    * ``bytes`` / ``bytearray`` / ``memoryview`` holding an encoded file;
    * a binary file object (anything with ``.read()`` returning bytes);
    * a numpy array (or anything ``np.asarray`` takes, e.g. a list) of raw PCM, which
      needs ``sample_rate=``. Integer samples are scaled to [-1, 1) (``uint8`` and other
      unsigned types are offset binary, centred on 2**(bits-1)); float samples are
      taken as they are. 1-D is mono; 2-D is multichannel in either layout, see
      :func:`load_audio` for how the channel axis is chosen.

Multichannel audio is downmixed by averaging the channels; a different sample rate is
converted with soxr. Every failure raises :class:`~pylfm.errors.AudioError` (a
``ValueError``) whose message says what to do, except a missing file, which raises
the builtin ``FileNotFoundError``, and an unsupported input type (``TypeError``).
"""

from __future__ import annotations

import errno
import io
import math
import os
import sys
from typing import BinaryIO, Optional, Union

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioError

__all__ = [
    "SAMPLE_RATE",
    "MIN_SAMPLES_16K",
    "AudioInput",
    "load_audio",
    "min_samples",
    "duration",
]

#: The rate LFM2-Audio's preprocessor works at.
SAMPLE_RATE = 16000

#: The shortest clip the encoder can embed: 80 ms at 16 kHz (8 mel frames of 10 ms,
#: subsampled x8) is one LFM2 audio embedding. Anything shorter yields no audio
#: tokens at all, so it is rejected rather than silently transcribed as "".
MIN_SAMPLES_16K = 1280

#: Channel counts up to this are recognised when guessing a 2-D array's layout.
_MAX_GUESSED_CHANNELS = 8

AudioInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO, np.ndarray]


def min_samples(rate: float) -> int:
    """The :data:`MIN_SAMPLES_16K` equivalent at ``rate`` Hz (rounded up)."""
    return int(math.ceil(MIN_SAMPLES_16K * rate / SAMPLE_RATE))


def duration(x: Union[np.ndarray, int], rate: float) -> float:
    """Length in seconds of ``x`` (an array of samples along axis 0, or a sample count)."""
    n = x if isinstance(x, (int, np.integer)) else len(x)
    return float(n) / float(rate)


def load_audio(
    audio: AudioInput,
    *,
    sample_rate: Optional[float] = None,
    target_rate: float = SAMPLE_RATE,
    channel_axis: Optional[int] = None,
    resample_quality: str = "HQ",
) -> np.ndarray:
    """Return ``audio`` as float32 mono, C-contiguous samples at ``target_rate`` Hz.

    Args:
        audio: a file path (``"-"`` = stdin), encoded bytes, a binary file object, or a
            numpy array of raw samples (see the module docstring).
        sample_rate: the rate of a raw array, in Hz; required for arrays. For encoded
            input the file header gives the rate; passing one that disagrees with it
            is an error (it would mean the caller thinks the data is something else).
        target_rate: the rate to return, 16000 for LFM2-Audio.
        channel_axis: for a 2-D array, which axis holds the channels (0 or 1). When
            not given it is guessed: if one dimension is <= 8 and the other is larger,
            the smaller one is the channel axis, so both ``(samples, channels)``
            (soundfile's layout) and ``(channels, samples)`` (torchaudio's) work.
            Shapes where that is ambiguous (both dimensions > 8, or equal) need it.
        resample_quality: soxr quality ("QQ", "LQ", "MQ", "HQ", "VHQ").

    The result may share memory with a float32 mono input that needs no conversion;
    pylfm never writes into it.

    Raises:
        FileNotFoundError: the path does not exist.
        AudioError: not decodable, empty, NaN/inf, unsupported array dtype or shape,
            bad rate, or shorter than one encoder frame (:data:`MIN_SAMPLES_16K` at
            16 kHz) after resampling.
        TypeError: ``audio`` is of an unsupported type.
    """
    target_rate = _check_rate(target_rate, "target_rate")
    if sample_rate is not None:
        sample_rate = _check_rate(sample_rate, "sample_rate")

    if isinstance(audio, np.ndarray) or _is_array_like(audio):
        if sample_rate is None:
            raise AudioError(
                "a raw sample array needs its rate: pass sample_rate=, e.g. "
                "load_audio(x, sample_rate=16000) (or pass a file path/bytes instead)"
            )
        samples = _array_to_2d(np.asarray(audio), channel_axis)
        rate = sample_rate
        name = "array"
    else:
        samples, rate, name = _decode(audio)
        if sample_rate is not None and not math.isclose(sample_rate, rate):
            raise AudioError(
                f"{name} is {rate:g} Hz according to its header but sample_rate={sample_rate:g} "
                "was passed; leave sample_rate out for encoded files (it is read from the file)"
            )

    # samples is (frames, channels) float32 here.
    if samples.shape[0] == 0 or samples.shape[1] == 0:
        raise AudioError(f"{name} contains no audio samples (0 samples); pass a non-empty recording")

    # Averaging keeps the level of correlated channels (a stereo copy of a mono
    # signal downmixes to itself); a sum could clip.
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)

    if not np.isfinite(mono).all():
        bad = int(np.count_nonzero(~np.isfinite(mono)))
        raise AudioError(
            f"{name} contains {bad} NaN or infinite sample(s) (or values beyond float32 range); "
            "clean the signal first, e.g. np.nan_to_num(x)"
        )

    if not math.isclose(rate, target_rate):
        mono = soxr.resample(mono, rate, target_rate, quality=resample_quality)

    need = min_samples(target_rate)
    if len(mono) < need:
        raise AudioError(
            f"{name} is too short: {duration(mono, target_rate) * 1000:.1f} ms "
            f"({len(mono)} samples at {target_rate:g} Hz); LFM2-Audio needs at least "
            f"{MIN_SAMPLES_16K / SAMPLE_RATE * 1000:.0f} ms ({need} samples), one encoder "
            "frame. Pad it with silence or use a longer clip."
        )
    return np.ascontiguousarray(mono, dtype=np.float32)


# ---------------------------------------------------------------------------------
# Encoded input


def _supported_formats() -> str:
    available = sf.available_formats()
    common = [f for f in ("WAV", "FLAC", "OGG", "MP3") if f in available]
    return ", ".join(common) + " and the other formats libsndfile reads"


def _decode(audio: object) -> "tuple[np.ndarray, float, str]":
    """Decode an encoded file given as path/bytes/file object -> (frames x channels, rate, name)."""
    if isinstance(audio, (str, os.PathLike)):
        path = os.fspath(audio)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if path == "-":
            # Read everything: stdin is not seekable, and libsndfile needs to seek.
            return _decode_bytes(sys.stdin.buffer.read(), "<stdin>")
        if not os.path.exists(path):
            raise FileNotFoundError(
                errno.ENOENT,
                f"audio file not found (relative paths start from {os.getcwd()}); check the path",
                path,
            )
        if os.path.isdir(path):
            raise AudioError(f"{path!r} is a directory, not an audio file; pass a file inside it")
        # Opening it here gives Python's own errors (e.g. PermissionError) rather than
        # libsndfile's vague "System error".
        with open(path, "rb") as f:
            return _sf_read(f, repr(path))
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(audio), "<bytes>")
    if hasattr(audio, "read"):
        data = audio.read()
        if isinstance(data, str):
            raise TypeError("the file object is in text mode; open the audio file with mode 'rb'")
        return _decode_bytes(bytes(data), getattr(audio, "name", None) or "<file object>")
    raise TypeError(
        f"cannot load audio from {type(audio).__name__}; pass a path, '-', bytes, "
        "a binary file object, or a numpy array with sample_rate="
    )


def _decode_bytes(data: bytes, name: str) -> "tuple[np.ndarray, float, str]":
    if not data:
        raise AudioError(f"{name} is empty (0 bytes); pass the contents of an audio file")
    return _sf_read(io.BytesIO(data), name)


def _sf_read(src: object, name: str) -> "tuple[np.ndarray, float, str]":
    try:
        # float32 from libsndfile already scales integer PCM to [-1, 1).
        data, rate = sf.read(src, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as e:
        detail = getattr(e, "error_string", None) or str(e)
        raise AudioError(
            f"could not decode {name} as audio ({detail}). Supported formats: "
            f"{_supported_formats()}; convert anything else first, e.g. "
            "ffmpeg -i input.m4a -ac 1 -ar 16000 output.wav"
        ) from e
    return data, float(rate), name


# ---------------------------------------------------------------------------------
# Raw arrays


def _is_array_like(audio: object) -> bool:
    # Lists/tuples and objects exposing __array__ (e.g. CPU torch tensors).
    return isinstance(audio, (list, tuple)) or hasattr(audio, "__array__")


def _array_to_2d(x: np.ndarray, channel_axis: Optional[int]) -> np.ndarray:
    """Validate a raw PCM array and return it as (frames, channels) float32."""
    if x.dtype.kind not in "iuf":
        raise AudioError(
            f"unsupported sample dtype {x.dtype} (bool, complex, object and string arrays are "
            "not audio); pass integer PCM (int8/16/32, uint8) or floats in [-1, 1]"
        )
    if x.ndim == 0 or x.ndim > 2:
        raise AudioError(
            f"audio array has shape {x.shape}; pass 1-D mono or 2-D (samples, channels) / "
            "(channels, samples) — for a batch, load each item separately"
        )
    if x.size == 0:
        raise AudioError("audio array contains no samples (size 0); pass a non-empty recording")

    if x.ndim == 1:
        x = x[:, None]
    else:
        if channel_axis is None:
            channel_axis = _guess_channel_axis(x.shape)
        if channel_axis not in (0, 1, -1, -2):
            raise AudioError(f"channel_axis must be 0 or 1 for a 2-D array, got {channel_axis}")
        if channel_axis in (0, -2):
            x = x.T
    return _to_float32(x)


def _guess_channel_axis(shape: "tuple[int, ...]") -> int:
    a, b = shape
    if b <= _MAX_GUESSED_CHANNELS and a > b:
        return 1  # (samples, channels)
    if a <= _MAX_GUESSED_CHANNELS and b > a:
        return 0  # (channels, samples)
    raise AudioError(
        f"cannot tell which axis of the {shape} array holds the channels; pass "
        "channel_axis=0 for (channels, samples) or channel_axis=1 for (samples, channels), "
        "or downmix to 1-D yourself"
    )


def _to_float32(x: np.ndarray) -> np.ndarray:
    kind, bits = x.dtype.kind, x.dtype.itemsize * 8
    if kind == "f":
        return x.astype(np.float32, copy=False)
    # Full scale is 2**(bits-1); multiplying by a power of two is exact in float32, so
    # the only rounding is the int -> float32 conversion itself.
    scale = np.float32(2.0 ** -(bits - 1))
    y = x.astype(np.float32)
    if kind == "u":
        y -= np.float32(2.0 ** (bits - 1))  # offset binary: 128 is silence for uint8
    y *= scale
    return y


def _check_rate(rate: object, what: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise AudioError(f"{what} must be a number of Hz (e.g. 16000), got {rate!r}")
    r = float(rate)
    if not math.isfinite(r) or r <= 0:
        raise AudioError(f"{what} must be a positive number of Hz (e.g. 16000), got {rate!r}")
    return r
