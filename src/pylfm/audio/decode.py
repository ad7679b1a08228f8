"""Decoding an opened `Source` chunk by chunk into float32 mono PCM at the target rate.

Two decoders:

* libsndfile (``soundfile``): the fast path for WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF,
  CAF, ... on seekable input;
* FFmpeg through PyAV (``av``): everything else, i.e. M4A/AAC, MP4/MOV/MKV/WebM video
  (their first audio stream), WebM/Opus, WMA, AMR, AC-3, ..., and every non-seekable
  stream (pipes, FIFOs, stdin), which libsndfile cannot read.

Each decoded chunk is downmixed, checked and resampled (soxr's streaming resampler)
before the next one is read, so the original-rate, multichannel signal of a long file
is never held whole. A ``max_duration`` is checked against the container header before
decoding where the header states the length, and against the samples decoded so far
otherwise: decoding stops as soon as the limit is passed.
"""

from __future__ import annotations

import logging
import math
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import soundfile as sf
import soxr

from .source import Source
from ..errors import AudioError, AudioTooLongError

log = logging.getLogger(__name__)

#: Sample rates outside this range (Hz) are not recordings but broken or hostile
#: headers (a 1 Hz WAV "lasts" hours; 100 MHz would make the resampler allocate GBs).
MIN_RATE, MAX_RATE = 1000.0, 1_000_000.0

_BLOCK_FRAMES = 1 << 16  # frames per chunk read from libsndfile
_UNKNOWN_FRAMES = 1 << 62  # libsndfile reports SF_COUNT_MAX when the length is unknown
# FFmpeg may open nested inputs named inside a file (ffconcat lists, HLS playlists); an
# uploaded file must never make us read local files or URLs, so no protocol is allowed.
_AV_OPTIONS = {"protocol_whitelist": "none"}


def check_rate(rate: float, what: str, hint: str = "the file header is broken, or pass the right rate") -> float:
    """Raise `AudioError` unless ``rate`` is a plausible sample rate in Hz (``hint``
    says what to do about it)."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(
            f"{what} is {rate:.10g} Hz, which is not a real audio sample rate (pylfm accepts "
            f"{MIN_RATE / 1000:g} kHz to {MAX_RATE / 1e6:g} MHz); {hint}"
        )
    return rate


def decode(src: Source, target_rate: float, quality: str, max_duration: Optional[float]) -> Tuple[np.ndarray, float]:
    """Decode ``src`` -> (float32 mono samples at ``target_rate``, the file's own rate)."""
    sf_detail = None  # why libsndfile could not open it, for the error message
    if src.seekable:  # libsndfile needs to seek
        start = src.file.tell()
        try:
            sfile = sf.SoundFile(src.file)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            sf_detail = getattr(e, "error_string", None) or str(e)
            src.file.seek(start)
        else:
            with sfile:
                return _decode_sndfile(sfile, src.name, target_rate, quality, max_duration)
    return _decode_av(src, target_rate, quality, max_duration, sf_detail)


def supported_formats() -> str:
    return ("WAV, FLAC, OGG/Opus, MP3, AIFF (libsndfile) and whatever FFmpeg reads: M4A/AAC, "
            "MP4/MOV/MKV/WebM video (the first audio stream), WebM/Opus, WMA, AMR, AC-3, ...")


# ---------------------------------------------------------------------------- output


class _Sink:
    """Downmix -> finite check -> limit check -> streaming resample -> one output array."""

    def __init__(self, name: str, rate: float, target_rate: float, quality: str,
                 max_duration: Optional[float], expected_frames: Optional[int]) -> None:
        self.name, self.rate, self.max_duration = name, rate, max_duration
        self.frames = 0  # input frames consumed
        self._limit = math.inf if max_duration is None else max_duration * rate
        self._resampler = None
        if not math.isclose(rate, target_rate):
            self._resampler = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality=quality)
        cap = 0
        if expected_frames:  # a trusted header length: allocate once (capped: headers can lie)
            cap = int(min(expected_frames, self._limit, 3600 * rate) * target_rate / rate) + 64
        self._out = np.empty(max(cap, 1 << 14), np.float32)
        self._n = 0

    def add(self, chunk: np.ndarray) -> None:
        """``chunk``: (frames, channels) float32 at the input rate."""
        if chunk.shape[0] == 0:
            return
        self.frames += chunk.shape[0]
        if self.frames > self._limit:
            assert self.max_duration is not None
            raise AudioTooLongError(
                f"{self.name} is longer than max_duration={self.max_duration:g} s (decoding stopped "
                f"there); cut the recording or raise max_duration", None, self.max_duration)
        # Averaging keeps the level of correlated channels; a sum could clip.
        mono = _downmix(chunk)
        if not np.isfinite(mono).all():
            at = (self.frames - chunk.shape[0] + int(np.argmin(np.isfinite(mono)))) / self.rate
            raise AudioError(
                f"{self.name} contains NaN or infinite samples (the first at {at:.3f} s); "
                "clean the signal first, e.g. np.nan_to_num(x)")
        self._push(mono if self._resampler is None else self._resampler.resample_chunk(mono, last=False))

    def finish(self) -> np.ndarray:
        if self._resampler is not None and self.frames:
            self._push(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        out = self._out[: self._n]
        # Give back a badly over-sized buffer (a header that overstated the length).
        return out.copy() if len(self._out) > 1.25 * self._n + (1 << 16) else out

    def _push(self, y: np.ndarray) -> None:
        need = self._n + len(y)
        if need > len(self._out):
            grown = np.empty(max(need, len(self._out) * 3 // 2), np.float32)
            grown[: self._n] = self._out[: self._n]
            self._out = grown
        self._out[self._n : need] = y
        self._n = need


def _downmix(chunk: np.ndarray) -> np.ndarray:
    """Average of the channels (as ``mean(axis=1)``, a column at a time: much faster on
    interleaved blocks)."""
    if chunk.shape[1] == 1:
        return chunk[:, 0]
    mono = chunk[:, 0] + chunk[:, 1]
    for c in range(2, chunk.shape[1]):
        mono += chunk[:, c]
    mono *= np.float32(1.0 / chunk.shape[1])
    return mono


def _check_header_duration(name: str, seconds: Optional[float], max_duration: Optional[float]) -> None:
    if max_duration is not None and seconds is not None and seconds > max_duration:
        raise AudioTooLongError(
            f"{name} is {seconds:.1f} s long ({_hms(seconds)}), more than max_duration={max_duration:g} s; "
            "cut the recording or raise max_duration", seconds, max_duration)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# ---------------------------------------------------------------------------- libsndfile


def _decode_sndfile(f: "sf.SoundFile", name: str, target_rate: float, quality: str,
                    max_duration: Optional[float]) -> Tuple[np.ndarray, float]:
    rate = check_rate(float(f.samplerate), f"the sample rate in {name}'s header")
    if f.channels < 1:
        raise AudioError(f"{name} has no audio channels; pass a recording with sound in it")
    frames = f.frames if 0 <= f.frames < _UNKNOWN_FRAMES else None
    _check_header_duration(name, None if frames is None else frames / rate, max_duration)
    sink = _Sink(name, rate, target_rate, quality, max_duration, frames)
    try:
        while True:
            # float32 from libsndfile already scales integer PCM to [-1, 1).
            block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                break
            sink.add(block)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{name} is damaged: decoding failed after {sink.frames / rate:.1f} s "
                         f"({getattr(e, 'error_string', None) or e}); re-export or repair the file") from e
    return sink.finish(), rate


# ---------------------------------------------------------------------------- FFmpeg


def _decode_av(src: Source, target_rate: float, quality: str, max_duration: Optional[float],
               sf_detail: Optional[str]) -> Tuple[np.ndarray, float]:
    try:
        import av
    except ImportError:  # pragma: no cover - a core dependency
        raise AudioError(f"could not decode {src.name} with libsndfile ({sf_detail}); install PyAV "
                         "(pip install av) to read other formats") from None
    name = src.name
    try:
        container = av.open(src.file, mode="r", options=_AV_OPTIONS)
    except av.error.FFmpegError as e:
        raise _not_audio(src, e, sf_detail) from None
    with container:
        streams = container.streams.audio
        if not streams:
            kinds = ", ".join(f"{s.type}" for s in container.streams) or "no streams"
            raise AudioError(f"{name} has no audio stream ({container.format.name}: {kinds}); "
                             "pass a recording or a video with sound")
        stream = streams[0]
        if stream.codec_context is None:  # no decoder for it (e.g. a WAV header saying 0 bits per sample)
            raise _not_audio(src, "no decoder for its audio stream (a broken header or an unknown codec)",
                             sf_detail)
        seconds = None
        if stream.duration and stream.time_base:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration and container.duration > 0:  # e.g. WebM: only the container's length
            seconds = container.duration / 1e6  # AV_TIME_BASE
        header_rate = stream.codec_context.sample_rate
        if header_rate:
            check_rate(float(header_rate), f"the sample rate in {name}'s header")
        _check_header_duration(name, seconds, max_duration)
        sink: Optional[_Sink] = None
        rate = 0.0
        try:
            for chunk, frame_rate in _av_chunks(container, stream):
                if sink is None:
                    rate = check_rate(float(frame_rate), f"the sample rate of {name}")
                    expected = int(seconds * rate) if seconds else None
                    sink = _Sink(name, rate, target_rate, quality, max_duration, expected)
                sink.add(chunk)
        except _Unconvertible as e:
            raise AudioError(f"could not decode {name}: FFmpeg decodes its {stream.codec_context.name} audio to "
                             f"{e} samples, which pylfm cannot convert; convert the file first, e.g. "
                             "ffmpeg -i input.wav -ac 1 -ar 16000 output.wav") from None
        except _Damaged as e:
            if sink is None or sink.frames == 0:
                raise AudioError(f"could not decode {name}: its {stream.codec_context.name} audio is damaged "
                                 f"({e}); re-export or repair the file") from None
            # FFmpeg's own tools keep what decoded from a truncated or damaged file.
            log.warning("%s: decoding stopped at %.1f s on damaged data (%s)", name, sink.frames / rate, e)
    if sink is not None and seconds and sink.frames / rate < 0.9 * seconds - 1.0:
        # FFmpeg ends quietly at some kinds of damage; say so rather than lose audio silently.
        log.warning("%s: decoded %.1f s of the %.1f s its header states; the file may be truncated or damaged",
                    name, sink.frames / rate, seconds)
    if sink is None:
        if getattr(stream.codec_context, "channels", None) == 0:  # nothing can decode from that
            raise AudioError(f"{name} has no usable audio channels (FFmpeg reads 0 from its header, which is "
                             "broken); pass a recording with sound in it")
        raise AudioError(f"{name} contains no audio samples (0 samples); pass a non-empty recording")
    return sink.finish(), rate


class _Damaged(Exception):
    """The container or too many packets in a row could not be decoded."""


class _Unconvertible(Exception):
    """FFmpeg's samples come in a format numpy cannot take (e.g. s64 from a WAV header
    saying 64-bit integer PCM); the argument is the format's name."""


_MAX_BAD_PACKETS = 32


def _av_chunks(container, stream) -> Iterator[Tuple[np.ndarray, int]]:
    """(frames, channels) float32 chunks of ``stream``, _BLOCK_FRAMES each but the last.

    Decoded frames (1024 samples for AAC) are gathered in FFmpeg's own FIFO, so the
    per-frame Python work stays small. A damaged packet is skipped as FFmpeg's tools do;
    a damaged container or many bad packets in a row end decoding with `_Damaged`.
    """
    import av

    fifo, layout, rate, bad = None, None, 0, 0
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
                bad = 0
            except (av.error.InvalidDataError, ValueError) as e:
                bad += 1
                if bad > _MAX_BAD_PACKETS:
                    raise _Damaged(str(e)) from None
                continue
            for frame in frames:
                key = (frame.format.name, frame.layout.name, frame.sample_rate)
                if key != layout:  # the first frame, or the stream changed format
                    if fifo is not None and fifo.samples:
                        yield _frame_samples(fifo.read()), rate
                    if rate and frame.sample_rate != rate:
                        raise AudioError(f"the audio changes its sample rate mid-stream ({rate} -> "
                                         f"{frame.sample_rate} Hz); convert it to one rate first")
                    fifo, layout, rate = av.AudioFifo(), key, frame.sample_rate
                frame.pts = None  # the FIFO would refuse a gap in timestamps
                fifo.write(frame)
                if fifo.samples >= _BLOCK_FRAMES:
                    yield _frame_samples(fifo.read(_BLOCK_FRAMES)), rate
    except av.error.FFmpegError as e:
        if fifo is not None and fifo.samples:
            yield _frame_samples(fifo.read()), rate
        raise _Damaged(getattr(e, "strerror", None) or str(e)) from None
    if fifo is not None and fifo.samples:
        yield _frame_samples(fifo.read()), rate


def _frame_samples(frame) -> np.ndarray:
    """An FFmpeg audio frame as (samples, channels) float32 in [-1, 1)."""
    try:
        a = frame.to_ndarray()
    except ValueError:  # "Conversion from 's64' format to numpy array is not supported"
        raise _Unconvertible(frame.format.name) from None
    a = a.T if frame.format.is_planar else a.reshape(-1, len(frame.layout.channels))
    if a.dtype.kind == "f":
        return a.astype(np.float32, copy=False)
    # Integer PCM: full scale is 2**(bits-1) (FFmpeg keeps 24-bit audio in the top bits
    # of s32); u8 is offset binary.
    bits = a.dtype.itemsize * 8
    y = a.astype(np.float32)
    if a.dtype.kind == "u":
        y -= np.float32(2.0 ** (bits - 1))
    y *= np.float32(2.0 ** -(bits - 1))
    return y


def _not_audio(src: Source, error: Union[Exception, str], sf_detail: Optional[str]) -> AudioError:
    detail = getattr(error, "strerror", None) or str(error)
    hint = ""
    if not src.seekable:
        hint = (" It was read as a stream (a pipe or stdin), which some containers cannot be "
                "(MP4/M4A with the index at the end); pass it as a file path instead.")
    sf_part = f"libsndfile: {sf_detail}; " if sf_detail else ""
    return AudioError(
        f"could not decode {src.name} as audio ({sf_part}FFmpeg: {detail}). Supported formats: "
        f"{supported_formats()}.{hint} Convert anything else first, e.g. "
        "ffmpeg -i input.xyz -ac 1 -ar 16000 output.wav")
