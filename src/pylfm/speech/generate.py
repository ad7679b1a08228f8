"""Speech output: text-to-speech (`speak`) and speech-to-speech (`chat`) with LFM2.5-Audio.

    model = pylfm.Model("LFM2.5-Audio-1.5B-Q8_0.gguf", mmproj="mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf")
    speech = model.speak("Hello there.", voice="UK male")      # .audio (24 kHz float32), .save("hi.wav")
    for chunk in model.speak("A longer text ...", stream=True): play(chunk)
    reply = model.chat("question.wav")                         # .text and .audio of the answer

The native engine (``_core.SpeechEngine``) runs on the model's loaded backbone: text
steps sample from the LM head; audio steps run the depthformer (8 codes per 80 ms
frame) and the audio detokenizer, whose spectrogram rows arrive here frame by frame.
This module turns them into a waveform (the inverse STFT of liquid-audio's
detokenizer, in NumPy), streams it, and holds the prompts and the result type.

The speech GGUFs (``vocoder-*.gguf``, ``tokenizer-*.gguf``) are found next to the
model (or in its hub repository), or passed to `Model.load_speech`.
"""

from __future__ import annotations

import math
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from .errors import PylfmError

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model

SAMPLE_RATE = 24000  # the detokenizer's output rate
N_FFT = 1280
HOP = 320
UPSAMPLE = 6  # spectrogram frames per audio frame
FRAME_SAMPLES = HOP * UPSAMPLE  # 1920 samples = 80 ms per audio frame (12.5 frames/s)
FRAMES_PER_SECOND = SAMPLE_RATE / FRAME_SAMPLES

VOICES = ("US female", "US male", "UK female", "UK male")
DEFAULT_VOICE = "US female"
CHAT_SYSTEM_PROMPT = "Respond with interleaved text and audio."
MODES = ("interleaved", "sequential")
# liquid-audio's README samples audio with these (TTS: 0.8 / 64; chat: 1.0 / 4); text is greedy.
TTS_TEMPERATURE, TTS_TOP_K = 0.8, 64
CHAT_TEMPERATURE, CHAT_TOP_K = 1.0, 4
DEFAULT_MAX_DURATION = 60.0  # seconds of speech per call unless told otherwise


class SpeechError(PylfmError, ValueError):
    """Speech output cannot run as asked (bad input, missing speech GGUFs, an ASR-only model)."""


def tts_system_prompt(voice: str) -> str:
    """``Perform TTS. Use the US female voice.`` for one of `VOICES` (case and separators free)."""
    if not isinstance(voice, str):
        raise SpeechError(f"voice must be a string, one of {', '.join(VOICES)}; got {voice!r}")
    key = " ".join(voice.replace("-", " ").replace("_", " ").split()).lower()
    for v in VOICES:
        if v.lower() == key:
            return f"Perform TTS. Use the {v} voice."
    raise SpeechError(f"unknown voice {voice!r}; LFM2.5-Audio has {', '.join(VOICES)} "
                      "(or pass system='Perform TTS. ...' with your own voice description)")


# ---------------------------------------------------------------------- inverse STFT
class StreamingISTFT:
    """liquid-audio's ``ISTFT(n_fft=1280, hop=320, win=1280, padding="same")``, fed a few
    spectrogram frames at a time.

    Each row holds ``n_fft/2+1`` log-magnitudes then as many phases. A frame is
    ``irfft(exp(logmag) * e^(i*phase)) * hann`` (periodic window), overlap-added at ``hop``;
    the sum is divided by the overlap-added squared window and ``(n_fft-hop)/2`` samples
    are trimmed at both ends, so T frames give ``T*hop`` samples. Samples are returned
    as soon as no later frame can change them; `finish` returns the rest. The chunks
    join to exactly what one call over all frames gives.
    """

    def __init__(self, n_fft: int = N_FFT, hop: int = HOP) -> None:
        self.n_fft, self.hop = n_fft, hop
        self.pad = (n_fft - hop) // 2
        self.bins = n_fft // 2 + 1
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
        self._acc = np.zeros(0, np.float64)  # overlap-added samples from position self._start on
        self._env = np.zeros(0, np.float64)
        self._start = 0  # first position not yet returned (untrimmed coordinates)
        self.n_frames = 0

    def push(self, rows: np.ndarray) -> np.ndarray:
        """Adds spectrogram rows (k, 2*(n_fft/2+1)); returns the samples now final."""
        rows = np.asarray(rows, np.float32)
        if rows.ndim != 2 or rows.shape[1] != 2 * self.bins:
            raise ValueError(f"spectrogram rows must be (k, {2 * self.bins}), got {rows.shape}")
        k = rows.shape[0]
        if k:
            spec = np.exp(rows[:, :self.bins].astype(np.float64)) * np.exp(1j * rows[:, self.bins:].astype(np.float64))
            frames = np.fft.irfft(spec, n=self.n_fft, axis=1) * self.window
            end = (self.n_frames + k - 1) * self.hop + self.n_fft
            grow = end - self._start - len(self._acc)
            if grow > 0:
                self._acc = np.concatenate([self._acc, np.zeros(grow)])
                self._env = np.concatenate([self._env, np.zeros(grow)])
            w2 = self.window.astype(np.float64) ** 2
            for i in range(k):
                at = (self.n_frames + i) * self.hop - self._start
                self._acc[at:at + self.n_fft] += frames[i]
                self._env[at:at + self.n_fft] += w2
            self.n_frames += k
        return self._emit(self.n_frames * self.hop)  # no later frame starts before this

    def finish(self) -> np.ndarray:
        """The remaining samples (up to ``n_frames * hop`` in all)."""
        if self.n_frames == 0:
            return np.zeros(0, np.float32)
        return self._emit(self.n_frames * self.hop + self.pad)

    def _emit(self, final: int) -> np.ndarray:
        final = min(final, self.n_frames * self.hop + self.pad)
        lo = max(self._start, self.pad)
        if final <= lo:
            return np.zeros(0, np.float32)
        a, b = lo - self._start, final - self._start
        out = (self._acc[a:b] / self._env[a:b]).astype(np.float32)
        self._acc, self._env = self._acc[b:], self._env[b:]
        self._start = final
        return out


def istft(rows: np.ndarray) -> np.ndarray:
    """The whole waveform of spectrogram rows (the test oracle of `StreamingISTFT`, and
    the direct form of liquid-audio's ISTFT)."""
    rows = np.asarray(rows, np.float64)
    bins = N_FFT // 2 + 1
    t = rows.shape[0]
    if t == 0:
        return np.zeros(0, np.float32)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    frames = np.fft.irfft(np.exp(rows[:, :bins]) * np.exp(1j * rows[:, bins:]), n=N_FFT, axis=1) * window
    size = (t - 1) * HOP + N_FFT
    y, env = np.zeros(size), np.zeros(size)
    for i in range(t):
        y[i * HOP:i * HOP + N_FFT] += frames[i]
        env[i * HOP:i * HOP + N_FFT] += window ** 2
    pad = (N_FFT - HOP) // 2
    return (y[pad:-pad] / env[pad:-pad]).astype(np.float32)


# ---------------------------------------------------------------------- results
@dataclass
class Speech:
    """Generated speech (and any text the model wrote with it).

    ``audio`` is float32 mono at ``sample_rate`` (24 kHz); ``codes`` the audio frames
    (n, 8) the model generated (12.5 per second); ``timings`` in milliseconds:
    encode (audio input), prefill, backbone, depthformer, detokenizer, istft, total,
    first_audio (from the call to the first audio chunk)."""

    audio: np.ndarray
    sample_rate: int = SAMPLE_RATE
    text: str = ""
    codes: np.ndarray = field(default_factory=lambda: np.zeros((0, 8), np.int32))
    tokens: List[int] = field(default_factory=list)
    stop_reason: str = ""
    timings: Dict[str, float] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return len(self.audio) / self.sample_rate

    @property
    def rtf(self) -> float:
        """Real-time factor: seconds of audio made per second of wall time."""
        total = self.timings.get("total", 0.0) / 1000.0
        return self.duration / total if total > 0 else 0.0

    def save(self, path: Union[str, os.PathLike], format: Optional[str] = None) -> Path:
        """Writes the audio: wav (16-bit), flac, mp3, opus (ogg) or pcm (raw s16le), by
        ``format`` or the file's extension (default wav). The file appears complete."""
        path = Path(path)
        fmt = (format or path.suffix.lstrip(".") or "wav").lower()
        fmt = {"ogg": "opus", "raw": "pcm"}.get(fmt, fmt)
        data = encode_audio(self.audio, self.sample_rate, fmt)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise SpeechError(f"cannot write {path}: {e.strerror or e}") from None
        return path

    def __repr__(self) -> str:
        text = self.text if len(self.text) < 60 else self.text[:57] + "..."
        return (f"Speech({self.duration:.2f} s at {self.sample_rate} Hz, {len(self.codes)} frames, text={text!r}, "
                f"stop_reason={self.stop_reason!r})")


@dataclass
class SpeechChunk:
    """A piece of a streamed answer: text, audio (float32, 24 kHz), or both empty."""

    text: str = ""
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


# ---------------------------------------------------------------------- audio files
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


# ---------------------------------------------------------------------- the engine
def speech_engine(model: "Model", vocoder: Optional[Union[str, os.PathLike]] = None,
                  detokenizer: Optional[Union[str, os.PathLike]] = None) -> Any:
    """The model's `_core.SpeechEngine`, loaded on first use (files as in `Model.load_speech`)."""
    with _load_lock:
        engine = getattr(model, "_speech_engine", None)
        if engine is not None and vocoder is None and detokenizer is None:
            return engine
        from . import _core
        from .resolve import speech_files
        from .scheduler import drain_llama_log

        voc, det = speech_files(model.model_path, vocoder, detokenizer)
        _check_speech_files(voc, det)
        try:
            engine = _core.SpeechEngine(model._engine, str(voc), str(det))
        except (ValueError, RuntimeError) as e:
            raise SpeechError(f"could not load speech output: {e}") from None
        finally:
            drain_llama_log()
        model._speech_engine = engine
        model.vocoder_path, model.detokenizer_path = voc, det
        return engine


_load_lock = threading.Lock()


def _check_speech_files(vocoder: Path, detokenizer: Path) -> None:
    from .converter.speech import VOCODER_ARCH
    from .errors import ModelLoadError
    from .gguf_info import check_gguf

    try:
        v, d = check_gguf(vocoder), check_gguf(detokenizer)
    except ModelLoadError as e:
        raise SpeechError(str(e)) from None
    if v.get("arch") == "lfm2" and d.get("arch") == VOCODER_ARCH:
        raise SpeechError(f"vocoder and detokenizer are swapped: {vocoder} is the detokenizer (tokenizer-*.gguf) and "
                          f"{detokenizer} the vocoder")
    if v.get("arch") != VOCODER_ARCH:
        raise SpeechError(f"{vocoder} is not an LFM2.5-Audio vocoder GGUF (architecture {v.get('arch')!r}); pass "
                          "vocoder-*.gguf")
    if d.get("arch") != "lfm2":
        raise SpeechError(f"{detokenizer} is not an LFM2.5-Audio detokenizer GGUF (architecture {d.get('arch')!r}); "
                          "pass tokenizer-*.gguf")


def _seed(seed: Optional[int]) -> int:
    if seed is None:
        return random.SystemRandom().randrange(2**32)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise SpeechError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return seed


def _check_sampling(temperature: float, top_k: Optional[int], what: str) -> Tuple[float, int]:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise SpeechError(f"{what}temperature must be a number, got {temperature!r}") from None
    if not math.isfinite(t) or t < 0:
        raise SpeechError(f"{what}temperature must be >= 0 (0 = greedy), got {temperature!r}")
    k = 0 if top_k is None else top_k
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise SpeechError(f"{what}top_k must be a non-negative integer (0 = all), got {top_k!r}")
    return t, k


def _frames_for(max_duration: Optional[float]) -> int:
    seconds = DEFAULT_MAX_DURATION if max_duration is None else max_duration
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise SpeechError(f"max_duration must be a positive number of seconds, got {max_duration!r}")
    return max(1, math.ceil(seconds * FRAMES_PER_SECOND))


class _Run:
    """One generation: the native call on a thread, its events turned into text and
    audio chunks (ISTFT) in order, the result assembled at the end."""

    def __init__(self, model: "Model", parts: list, audio: list, params: Any) -> None:
        from . import _core

        self.engine = speech_engine(model)
        self.scheduler = model.scheduler
        self.parts, self.audio, self.params = parts, audio, params
        self.cancel = _core.CancelFlag()
        self.istft = StreamingISTFT()
        self.istft_ms = 0.0
        self.t0 = time.perf_counter()
        self.first_audio_ms: Optional[float] = None
        self.result: Optional[dict] = None
        self.error: Optional[BaseException] = None
        self.bar: Any = None  # a tqdm bar over seconds of speech, when asked for

    def _chunk(self, kind: int, text: str, spectrum: Optional[np.ndarray]) -> SpeechChunk:
        audio = np.zeros(0, np.float32)
        if spectrum is not None:
            t = time.perf_counter()
            audio = self.istft.push(spectrum)
            self.istft_ms += (time.perf_counter() - t) * 1000
            if self.first_audio_ms is None and len(audio):
                self.first_audio_ms = (time.perf_counter() - self.t0) * 1000
            if self.bar is not None:
                self.bar.update(round(len(audio) / SAMPLE_RATE, 2))
        return SpeechChunk(text=text if kind == 0 else "", audio=audio)

    def _generate(self, on_event) -> None:
        from .scheduler import drain_llama_log

        try:
            # On the engine's thread, between transcription steps (see Scheduler.call).
            self.result = self.scheduler.call(
                lambda: self.engine.generate(self.parts, self.audio, self.params, on_event, self.cancel), self.cancel)
        except ValueError as e:  # the request cannot run (too long, ...)
            self.error = SpeechError(str(e))
        except RuntimeError as e:  # the engine failed
            self.error = PylfmError(f"speech generation failed: {e}")
        except BaseException as e:  # KeyboardInterrupt in the callback, ...
            self.error = e
        finally:
            drain_llama_log()

    def chunks(self) -> Iterator[SpeechChunk]:
        """Streams the answer; closing the iterator cancels the generation."""
        q: "queue.Queue[Optional[SpeechChunk]]" = queue.Queue()

        def on_event(kind, text, token, codes, spectrum):
            # The ISTFT runs here, on the generating thread, as in `run`: the consumer only
            # takes finished chunks, so it never holds the GIL while the engine waits for it.
            q.put(self._chunk(kind, text, spectrum))

        def work():
            try:
                self._generate(on_event)
            finally:
                q.put(None)

        thread = threading.Thread(target=work, name="pylfm-speech", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                yield item
            if self.error is not None:
                raise self.error
            tail = self.istft.finish()
            if len(tail):
                yield SpeechChunk(audio=tail)
        finally:
            self.cancel.set()
            thread.join()

    def run(self, on_text: Optional[Callable[[str], None]] = None) -> List[SpeechChunk]:
        """The whole answer (generated on the engine's thread; ``on_text`` sees each text piece there)."""
        out: List[SpeechChunk] = []

        def on_event(kind, text, token, codes, spectrum):
            out.append(self._chunk(kind, text, spectrum))
            if on_text is not None and kind == 0 and text:
                on_text(text)

        self._generate(on_event)
        if self.error is not None:
            raise self.error
        out.append(SpeechChunk(audio=self.istft.finish()))
        return out

    def show_progress(self, total_seconds: float) -> None:
        """A progress bar on stderr over seconds of speech generated (the end is where the
        model ends the audio, or ``total_seconds``)."""
        from tqdm import tqdm

        self.bar = tqdm(total=round(total_seconds, 2), unit="s", dynamic_ncols=True, leave=False,
                        bar_format="speech {n:.1f} s [{elapsed}, {rate_fmt}]")

    def speech(self, chunks: List[SpeechChunk]) -> Speech:
        if self.bar is not None:
            self.bar.close()
        r = self.result or {}
        audio = [c.audio for c in chunks if len(c.audio)]
        timings = {k[:-3]: float(r.get(k, 0.0)) for k in
                   ("encode_ms", "prefill_ms", "backbone_ms", "depth_ms", "detok_ms")}
        timings["depthformer"] = timings.pop("depth")
        timings["detokenizer"] = timings.pop("detok")
        timings["istft"] = self.istft_ms
        timings["total"] = (time.perf_counter() - self.t0) * 1000
        if self.first_audio_ms is not None:
            timings["first_audio"] = self.first_audio_ms
        return Speech(audio=np.concatenate(audio) if audio else np.zeros(0, np.float32),
                      text=str(r.get("text", "")), codes=np.asarray(r.get("codes", np.zeros((0, 8))), np.int32),
                      tokens=list(r.get("tokens", [])), stop_reason=str(r.get("stop_reason", "")), timings=timings)


def _params(**fields: Any) -> Any:
    from . import _core

    p = _core.SpeechParams()
    for k, v in fields.items():
        setattr(p, k, v)
    return p


# ---------------------------------------------------------------------- speak / chat
def speak(model: "Model", text: str, *, voice: Optional[str] = DEFAULT_VOICE, system: Optional[str] = None,
          temperature: float = TTS_TEMPERATURE, top_k: Optional[int] = TTS_TOP_K, seed: Optional[int] = None,
          max_duration: Optional[float] = None, stream: bool = False, progress: bool = False,
          ignore_audio_end: bool = False) -> Union[Speech, Iterator[np.ndarray]]:
    """Text to speech: `Model.speak` (see there). ``ignore_audio_end`` (benchmarks) keeps
    generating past the model's end-of-audio frame, up to ``max_duration``."""
    from .prompt import prompt_parts

    if not isinstance(text, str):
        raise SpeechError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise SpeechError("text is empty: give the words to speak")
    if system is None:
        system = tts_system_prompt(voice if voice is not None else DEFAULT_VOICE)
    elif not isinstance(system, str) or not system.strip():
        raise SpeechError("system must be a non-empty string (e.g. 'Perform TTS. Use the UK male voice.')")
    temperature, top_k = _check_sampling(temperature, top_k, "")
    frames = _frames_for(max_duration)
    parts = prompt_parts(system, text, n_audio=0) + [("<|audio_start|>", True)]
    # Speech starts at once: the assistant turn of a TTS answer begins with <|audio_start|>
    # (liquid-audio's training layout), so it is part of the prompt, and the answer ends
    # with the end-of-audio frame.
    params = _params(start_audio=True, stop_at_audio_end=True, ignore_audio_end=bool(ignore_audio_end),
                     max_new_tokens=frames + 1, max_audio_frames=frames,
                     audio_temperature=temperature, audio_top_k=top_k, seed=_seed(seed))
    run = _Run(model, parts, [], params)
    if stream:
        return _audio_only(run.chunks())
    if progress:
        run.show_progress(frames / FRAMES_PER_SECOND)
    return run.speech(run.run())


def _audio_only(chunks: Iterator[SpeechChunk]) -> Iterator[np.ndarray]:
    try:
        for c in chunks:
            if len(c.audio):
                yield c.audio
    finally:
        chunks.close()  # type: ignore[attr-defined]


def chat(model: "Model", audio_or_text: Any, *, mode: str = "interleaved", system: Optional[str] = CHAT_SYSTEM_PROMPT,
         sample_rate: Optional[int] = None, temperature: float = CHAT_TEMPERATURE, top_k: Optional[int] = CHAT_TOP_K,
         text_temperature: float = 0.0, seed: Optional[int] = None, max_new_tokens: int = 1024,
         max_duration: Optional[float] = None, stream: bool = False, progress: bool = False,
         on_text: Optional[Callable[[str], None]] = None) -> Union[Speech, Iterator[SpeechChunk]]:
    """Speech (or text) in, text and speech out: `Model.chat` (see there)."""
    from .prompt import prompt_parts

    if mode not in MODES:
        raise SpeechError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise SpeechError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    temperature, top_k = _check_sampling(temperature, top_k, "")
    text_temperature, _ = _check_sampling(text_temperature, 0, "text_")
    if system is not None and not isinstance(system, str):
        raise SpeechError(f"system must be a string or None, got {type(system).__name__}")
    audio = _as_audio(model, audio_or_text, sample_rate)
    if audio is None:
        if not audio_or_text.strip():
            raise SpeechError("the message is empty: give audio or text")
        parts = prompt_parts(system, audio_or_text, n_audio=0)
        clips: list = []
    else:
        parts = prompt_parts(system, None, n_audio=1)
        clips = [audio]
    params = _params(interleaved=mode == "interleaved", max_new_tokens=max_new_tokens,
                     max_audio_frames=_frames_for(max_duration), audio_temperature=temperature, audio_top_k=top_k,
                     text_temperature=text_temperature, seed=_seed(seed))
    run = _Run(model, parts, clips, params)
    if stream:
        return _non_empty(run.chunks())
    if progress:
        run.show_progress(params.max_audio_frames / FRAMES_PER_SECOND)
    return run.speech(run.run(on_text))


def _non_empty(chunks: Iterator[SpeechChunk]) -> Iterator[SpeechChunk]:
    try:
        for c in chunks:
            if c.text or len(c.audio):
                yield c
    finally:
        chunks.close()  # type: ignore[attr-defined]


_AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".m4a", ".webm")


def _as_audio(model: "Model", x: Any, sample_rate: Optional[int]) -> Optional[np.ndarray]:
    """The input as 16 kHz PCM, or None when it is a text message. A str is a path when
    such a file exists (or it names an audio file), otherwise the text itself."""
    if isinstance(x, str):
        if not (os.path.isfile(x) or (x.lower().endswith(_AUDIO_SUFFIXES) and "\n" not in x and len(x) < 4096)):
            return None
    elif x is None:
        raise SpeechError("nothing to answer: give audio (path, bytes, array) or text")
    return model._load(x, sample_rate)
