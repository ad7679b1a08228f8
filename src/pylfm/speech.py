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


def voice_name(voice: str) -> str:
    """The canonical name of one of `VOICES` ("uk-male" -> "UK male"); SpeechError otherwise."""
    if not isinstance(voice, str):
        raise SpeechError(f"voice must be a string, one of {', '.join(VOICES)}; got {voice!r}")
    key = " ".join(voice.replace("-", " ").replace("_", " ").split()).lower()
    for v in VOICES:
        if v.lower() == key:
            return v
    raise SpeechError(f"unknown voice {voice!r}; LFM2.5-Audio has {', '.join(VOICES)} "
                      "(or pass system='Perform TTS. ...' with your own voice description)")


def tts_system_prompt(voice: str) -> str:
    """``Perform TTS. Use the US female voice.`` for one of `VOICES` (case and separators free)."""
    return f"Perform TTS. Use the {voice_name(voice)} voice."


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
    """A piece of a streamed answer: text, audio (float32, 24 kHz), or both empty.

    ``token`` is the text token the piece came from (-1 for audio); ``codes`` the audio
    frame's 8 codes (None for text); ``end_of_audio`` marks the model's end-of-audio frame."""

    text: str = ""
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    token: int = -1
    codes: Optional[np.ndarray] = None
    end_of_audio: bool = False


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


# ---------------------------------------------------------------------- the runtime
class SpeechRuntime:
    """Speech output of one `Model`: the speech GGUFs loaded into the model's engine
    (once, on first use), and the speech requests that run in the engine's loop beside
    transcription. Made by the model; `Model.speech` returns it.

    Args:
        scheduler: the model's `Scheduler` (speech requests and the probes go through it).
        engine: the model's native engine.
        model_path: the text model's GGUF (the speech GGUFs are looked for next to it).
        max_sessions: how many sessions (conversations) may be open at once.
    """

    def __init__(self, scheduler: Any, engine: Any, model_path: Path, max_sessions: int = 0) -> None:
        self._scheduler = scheduler
        self.max_sessions = max_sessions
        self._sessions: set = set()
        self._engine = engine
        self._model_path = model_path
        self._lock = threading.RLock()  # re-entrant: a conversation dropped by the GC closes its session here
        self.vocoder_path: Optional[Path] = None
        self.detokenizer_path: Optional[Path] = None

    @property
    def loaded(self) -> bool:
        return self.vocoder_path is not None

    def load(self, vocoder: Optional[Union[str, os.PathLike]] = None,
             detokenizer: Optional[Union[str, os.PathLike]] = None) -> None:
        """Loads the audio head ``vocoder-*.gguf`` and the detokenizer ``tokenizer-*.gguf``
        (default: ``$PYLFM_VOCODER`` / ``$PYLFM_DETOKENIZER``, else found next to the model
        or in its hub repository). Without arguments it does nothing once loaded."""
        from .resolve import speech_files
        from .scheduler import drain_llama_log

        with self._lock:
            if self.loaded and vocoder is None and detokenizer is None:
                return
            voc, det = speech_files(self._model_path, vocoder, detokenizer)
            _check_speech_files(voc, det)
            try:
                self._scheduler.call(lambda: self._engine.load_speech(str(voc), str(det)))
            except (ValueError, RuntimeError) as e:
                raise SpeechError(f"could not load speech output: {e}") from None
            finally:
                drain_llama_log()
            self.vocoder_path, self.detokenizer_path = voc, det

    def submit(self, job: "SpeechJob") -> "SpeechJob":
        """Loads speech output if needed and queues ``job``."""
        self.load()
        self._scheduler.submit(job)
        return job

    # ------------------------------------------------------------------ sessions (live conversations)
    def open_session(self) -> int:
        """Reserves one of the engine's session slots (its sequence keeps a history
        between requests); -1 when all are taken."""
        self.load()
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                return -1
            session = int(self._scheduler.call(self._engine.open_session))
            if session >= 0:
                self._sessions.add(session)
            return session

    def close_session(self, session: int) -> None:
        with self._lock:
            self._sessions.discard(session)
        self._scheduler.call(lambda: self._engine.close_session(session))

    def rollback_session(self, session: int) -> int:
        """Back to the start of the session's last reply; returns the history's length."""
        def run() -> int:
            self._engine.rollback_session(session)
            return self._engine.session_n_past(session)

        return int(self._scheduler.call(run))

    def reset_session(self, session: int) -> None:
        self._scheduler.call(lambda: self._engine.reset_session(session))

    def tokenize(self, text: str) -> List[int]:
        """Token ids of plain text (special tokens not parsed)."""
        return list(self._engine.tokenize_text(text, False))

    # ------------------------------------------------------------------ probes (tests, fidelity)
    def _probe(self, name: str, *args: Any) -> Any:
        self.load()
        return self._scheduler.call(lambda: getattr(self._engine.speech, name)(*args))

    def depth_logits(self, hidden: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Depthformer logits (8, 2049) for a backbone hidden state, codebook j
        conditioned on ``codes[:j]``."""
        return self._probe("depth_logits", hidden, codes)

    def sample_frame(self, hidden: np.ndarray, temperature: float = 0.0, top_k: int = 0, seed: int = 0) -> np.ndarray:
        """One frame's 8 codes for a hidden state."""
        return self._probe("sample_frame", hidden, temperature, top_k, seed)

    def frame_embedding(self, codes: np.ndarray) -> np.ndarray:
        """The backbone's input for a frame: its codes' audio embeddings, summed."""
        return self._probe("frame_embedding", codes)

    def detokenize(self, codes: np.ndarray) -> np.ndarray:
        """The detokenizer's spectrogram rows (6 per frame) for (n, 8) codes, from a fresh state."""
        return self._probe("detokenize", codes)


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


class SpeechJob:
    """One speech request (speak, chat, a conversation's reply) in the model's scheduler.

    The engine's events arrive on its thread: text pieces, and audio frames whose
    spectrogram rows the streaming inverse STFT turns into samples there (the consumer only
    takes finished chunks). Consumers take the answer whole (`result`) or as it decodes
    (`chunks`); closing the stream, Ctrl-C or `cancel` stops the request at the engine's
    next step.
    """

    def __init__(self, parts: list, audio: list, params: Any, *, session: int = -1,
                 on_text: Optional[Callable[[str], None]] = None) -> None:
        from . import _core

        self.session = session
        self.parts, self.audio, self.params = parts, audio, params
        self.cancel_flag = _core.CancelFlag()
        self.on_text = on_text  # called on the engine thread with each text piece
        self.on_event: Optional[Callable[["SpeechChunk"], None]] = None  # called there with every chunk
        self.istft = StreamingISTFT()
        self.istft_ms = 0.0
        self.t0 = time.perf_counter()
        self.first_audio_ms: Optional[float] = None
        self.result_dict: Optional[Dict[str, Any]] = None
        self.error: Optional[BaseException] = None
        self.bar: Any = None  # a tqdm bar over seconds of speech, when asked for
        self._submitted = False
        self._cond = threading.Condition()
        self._queue: "queue.Queue[Optional[SpeechChunk]]" = queue.Queue()
        self._chunks: List[SpeechChunk] = []
        self.items: List[Any] = []  # what was generated, in order: token ids and (8,) frames (end of audio included)
        self.item_texts: List[str] = []  # the text each item added ("" for frames)
        self._done = False
        self._cancelled = False

    # ------------------------------------------------------------------ scheduler side
    def has_work(self) -> bool:
        return not self._submitted and not self._cancelled

    def next_request(self) -> Any:
        from . import _core
        from .scheduler import EngineRequest

        if self._submitted or self._cancelled:
            return None
        self._submitted = True
        return EngineRequest(0, self.parts, self.audio, _core.SamplingParams(), self.params, self.session)

    def on_piece(self, key: Any, text: str, token: int) -> None:
        if token >= 0:
            self.items.append(int(token))
            self.item_texts.append(text)
        elif self.item_texts:
            self.item_texts[-1] += text  # the flushed end of a character
        if text and self.on_text is not None:
            self.on_text(text)
        self._put(SpeechChunk(text=text, token=token))

    def on_audio(self, key: Any, codes: np.ndarray, spectrum: Optional[np.ndarray], end: bool) -> None:
        audio = np.zeros(0, np.float32)
        if spectrum is not None:
            t = time.perf_counter()
            audio = self.istft.push(spectrum)
            self.istft_ms += (time.perf_counter() - t) * 1000
            if self.first_audio_ms is None and len(audio):
                self.first_audio_ms = (time.perf_counter() - self.t0) * 1000
            if self.bar is not None:
                self.bar.update(round(len(audio) / SAMPLE_RATE, 2))
        self.items.append(np.asarray(codes, np.int32))
        self.item_texts.append("")
        self._put(SpeechChunk(audio=audio, codes=codes, end_of_audio=end))

    def on_done(self, key: Any, result: Dict[str, Any]) -> bool:
        tail = self.istft.finish()
        if len(tail):
            self._put(SpeechChunk(audio=tail))
        self._end(result, None)
        return False

    def on_error(self, key: Any, message: str) -> None:
        lowered = message.lower()
        bad_input = any(w in lowered for w in ("longer than", "does not fit", "needs", "must", "empty", "missing"))
        self._end(None, SpeechError(message) if bad_input else PylfmError(f"speech generation failed: {message}"))

    def fail(self, message: str) -> None:
        self._end(None, PylfmError(message))

    def cancel(self) -> None:
        """Stops the request at the engine's next step (or before it starts)."""
        self.cancel_flag.set()
        with self._cond:
            if self._submitted or self._done:
                return
            self._cancelled = True  # never handed over: it ends here
        self._end({"stop_reason": "cancelled"}, None)

    def _put(self, chunk: "SpeechChunk") -> None:
        self._chunks.append(chunk)
        self._queue.put(chunk)
        if self.on_event is not None:
            self.on_event(chunk)

    def _end(self, result: Optional[Dict[str, Any]], error: Optional[BaseException]) -> None:
        with self._cond:
            if self._done:
                return
            self.result_dict, self.error, self._done = result, error, True
            self._cond.notify_all()
        self._queue.put(None)
        if self.on_event is not None:
            self.on_event(None)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ consumers
    @property
    def done(self) -> bool:
        return self._done

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until the request has ended (True) or ``timeout`` seconds passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._done:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.1 if left is None else min(0.1, left))  # short waits: Ctrl-C gets through
        return True

    def chunks(self) -> Iterator["SpeechChunk"]:
        """The answer as it decodes; closing the iterator cancels the request."""
        try:
            while True:
                try:
                    item = self._queue.get(timeout=0.1)  # short waits: Ctrl-C gets through
                except queue.Empty:
                    continue
                if item is None:
                    break
                yield item
            if self.error is not None:
                raise self.error
        finally:
            if not self._done:
                self.cancel()
                self.wait()

    def run(self) -> List["SpeechChunk"]:
        """Waits for the whole answer (Ctrl-C cancels it)."""
        try:
            self.wait()
        except BaseException:
            self.cancel()
            self.wait()
            raise
        if self.error is not None:
            raise self.error
        return list(self._chunks)

    def show_progress(self, total_seconds: float) -> None:
        """A progress bar on stderr over seconds of speech generated (the end is where the
        model ends the audio, or ``total_seconds``)."""
        from tqdm import tqdm

        self.bar = tqdm(total=round(total_seconds, 2), unit="s", dynamic_ncols=True, leave=False,
                        bar_format="speech {n:.1f} s [{elapsed}, {rate_fmt}]")

    def speech(self, chunks: Optional[List["SpeechChunk"]] = None) -> "Speech":
        """The `Speech` of the finished request."""
        if chunks is None:
            chunks = self.run()
        if self.bar is not None:
            self.bar.close()
        r = self.result_dict or {}
        audio = [c.audio for c in chunks if len(c.audio)]
        timings = {"encode": float(r.get("encode_ms", 0.0)), "prefill": float(r.get("prefill_ms", 0.0)),
                   "backbone": float(r.get("decode_ms", 0.0)), "depthformer": float(r.get("depth_ms", 0.0)),
                   "detokenizer": float(r.get("detok_ms", 0.0)), "istft": self.istft_ms,
                   "total": (time.perf_counter() - self.t0) * 1000}
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
    job = SpeechJob(parts, [], params)
    if progress and not stream:
        job.show_progress(frames / FRAMES_PER_SECOND)
    model.speech.submit(job)
    if stream:
        return _audio_only(job.chunks())
    return job.speech()


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
    job = SpeechJob(parts, clips, params, on_text=on_text)
    if progress and not stream:
        job.show_progress(params.max_audio_frames / FRAMES_PER_SECOND)
    model.speech.submit(job)
    if stream:
        return _non_empty(job.chunks())
    return job.speech()


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
    from .audio import load_audio

    return load_audio(x, sample_rate=sample_rate, target_rate=model.sample_rate)
