"""Audio input: decode, downmix and resample anything the user hands us to what the
LFM2-Audio encoder expects (float32 mono PCM at 16 kHz).

    >>> x = load_audio("talk.mp3")                        # file path, "-" for stdin
    >>> x = load_audio(pcm_int16, sample_rate=44100)      # numpy array: rate required

Accepted inputs
    * a path (``str`` / ``os.PathLike``) to an audio or video file: WAV, FLAC, OGG
      (Vorbis/Opus), MP3, AIFF go through libsndfile (fast); M4A/AAC, MP4/MOV/MKV/WebM
      video (first audio stream), WebM/Opus, WMA, AMR and whatever else FFmpeg reads go
      through PyAV. ``"-"`` reads standard input (name a file called ``-`` as ``./-``);
      pipes, FIFOs and ``<(cmd)`` are read as streams;
    * ``bytes`` / ``bytearray`` / ``memoryview`` holding an encoded file;
    * a binary file object (anything with ``.read()`` returning bytes);
    * a numpy array (or anything ``np.asarray`` takes, e.g. a list) of raw PCM, which
      needs ``sample_rate=``. Integer samples are scaled to [-1, 1) (``uint8`` and other
      unsigned types are offset binary, centred on 2**(bits-1)); float samples are
      taken as they are. 1-D is mono; 2-D is multichannel in either layout, see
      :func:`load_audio` for how the channel axis is chosen.

Multichannel audio is downmixed by averaging the channels; a different sample rate is
converted with soxr. Encoded input is decoded chunk by chunk (see `pylfm.audio.decode`),
so only the 16 kHz mono result is held whole. Every failure raises
:class:`~pylfm.errors.AudioError` (a ``ValueError``) whose message says what to do,
except a missing file (``FileNotFoundError``), an unreadable one (``PermissionError``)
and an unsupported input type (``TypeError``); audio longer than ``max_duration`` raises
:class:`~pylfm.errors.AudioTooLongError`, an ``AudioError``.
"""

from __future__ import annotations

import math
import os
from typing import Any, BinaryIO, Optional, Union

import numpy as np
import soxr

from ..errors import AudioError, AudioTooLongError
from .decode import check_rate, decode
from .source import open_source

__all__ = [
    "SAMPLE_RATE",
    "MIN_SAMPLES_16K",
    "MAX_WINDOW_S",
    "AudioInput",
    "load_audio",
    "min_samples",
    "duration",
    "to_float32",
]

#: The rate LFM2-Audio's preprocessor works at.
SAMPLE_RATE = 16000

#: The shortest clip the encoder can embed: 80 ms at 16 kHz (8 mel frames of 10 ms,
#: subsampled x8) is one LFM2 audio embedding. Anything shorter yields no audio
#: tokens at all, so it is rejected rather than silently transcribed as "".
MIN_SAMPLES_16K = 1280

#: The longest clip pylfm hands the encoder at once, in seconds. llama.cpp's LFM2A
#: encoder has a fixed relative-position table: one audio chunk may not exceed ~327 s,
#: or the process aborts. Stay well below.
MAX_WINDOW_S = 300.0

#: Channel counts up to this are recognised when guessing a 2-D array's layout.
_MAX_GUESSED_CHANNELS = 8

#: What `load_audio` (and every Model call) takes; Any: lists and objects with ``__array__`` (torch tensors).
AudioInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO, np.ndarray, Any]


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
    max_duration: Optional[float] = None,
    read_timeout: Optional[float] = None,
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
        max_duration: refuse audio longer than this many seconds. Checked against the
            container header before decoding when the header states the length, and
            while decoding otherwise (decoding stops as soon as the limit is passed), so
            a small file that decodes to hours costs next to nothing. None: no limit.
        read_timeout: for pipes, FIFOs and stdin, the longest wait for data in seconds
            (default: $PYLFM_READ_TIMEOUT, else 10 s).

    The result may share memory with a float32 mono input that needs no conversion;
    pylfm never writes into it.

    Raises:
        FileNotFoundError: the path does not exist.
        PermissionError: the file may not be read.
        AudioTooLongError: longer than ``max_duration``.
        AudioError: not decodable, no audio stream, empty, NaN/inf, unsupported array
            dtype or shape, implausible rate (outside 1 kHz - 1 MHz), nothing arrived
            from a pipe within ``read_timeout``, or shorter than one encoder frame
            (:data:`MIN_SAMPLES_16K` at 16 kHz) after resampling.
        TypeError: ``audio`` is of an unsupported type.
        ValueError: ``max_duration`` or ``read_timeout`` is not a positive number.
    """
    target_rate = _check_rate(target_rate, "target_rate")
    if sample_rate is not None:
        sample_rate = _check_rate(sample_rate, "sample_rate")
    if max_duration is not None:
        if isinstance(max_duration, bool) or not isinstance(max_duration, (int, float)) \
                or math.isnan(max_duration) or max_duration <= 0:
            raise ValueError(f"max_duration must be a positive number of seconds or None, got {max_duration!r}")
        max_duration = float(max_duration)

    if isinstance(audio, np.ndarray) or _is_array_like(audio):
        if sample_rate is None:
            raise AudioError(
                "a raw sample array needs its rate: pass sample_rate=, e.g. "
                "load_audio(x, sample_rate=16000) (or pass a file path/bytes instead)"
            )
        mono = _array_to_mono(np.asarray(audio), channel_axis, sample_rate, max_duration)
        if not math.isclose(sample_rate, target_rate):
            mono = soxr.resample(mono, sample_rate, target_rate, quality=resample_quality)
        name = "array"
    else:
        with open_source(audio, read_timeout) as src:
            name = src.name
            mono, rate = decode(src, target_rate, resample_quality, max_duration)
        if sample_rate is not None and not math.isclose(sample_rate, rate):
            raise AudioError(
                f"{name} is {rate:g} Hz according to its header but sample_rate={sample_rate:g} "
                "was passed; leave sample_rate out for encoded files (it is read from the file)"
            )
        if len(mono) == 0:
            raise AudioError(f"{name} contains no audio samples (0 samples); pass a non-empty recording")

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
# Raw arrays


def _is_array_like(audio: object) -> bool:
    # Lists/tuples and objects exposing __array__ (e.g. CPU torch tensors).
    return isinstance(audio, (list, tuple)) or hasattr(audio, "__array__")


def _array_to_mono(x: np.ndarray, channel_axis: Optional[int], rate: float,
                   max_duration: Optional[float]) -> np.ndarray:
    """Validate a raw PCM array and return it as float32 mono at its own rate."""
    samples = _array_to_2d(x, channel_axis)
    seconds = samples.shape[0] / rate
    if max_duration is not None and seconds > max_duration:
        raise AudioTooLongError(
            f"the audio array is {seconds:.1f} s long, more than max_duration={max_duration:g} s; "
            "cut the recording or raise max_duration", seconds, max_duration)
    # Averaging keeps the level of correlated channels (a stereo copy of a mono
    # signal downmixes to itself); a sum could clip.
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        bad = int(np.count_nonzero(~np.isfinite(mono)))
        raise AudioError(
            f"array contains {bad} NaN or infinite sample(s) (or values beyond float32 range); "
            "clean the signal first, e.g. np.nan_to_num(x)"
        )
    return mono


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
    return to_float32(x)


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


def to_float32(x: np.ndarray) -> np.ndarray:
    """Samples as float32: floats as they are, integer PCM scaled to [-1, 1)."""
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
    return check_rate(r, what, "LFM2-Audio works at 16000")
