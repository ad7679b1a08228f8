"""Text to speech (`speak`) and speech-to-speech (`chat`): `Model.speak` and `Model.chat`.

Both build the chat prompt, validate the options, and run one generation on the
model's `pylfm.engine.speech.SpeechRuntime`; its events become text and audio chunks
(the inverse STFT runs on the generating thread) and, at the end, a `Speech`.
"""

from __future__ import annotations

import math
import os
import queue
import random
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import numpy as np

from .. import _core
from ..audio.load import load_audio
from ..engine.prompt import prompt_parts
from ..engine.speech import SpeechRuntime
from ..errors import SpeechError
from .istft import FRAMES_PER_SECOND, SAMPLE_RATE, StreamingISTFT
from .result import Speech, SpeechChunk
from .voices import (CHAT_MAX_NEW_TOKENS, CHAT_SYSTEM_PROMPT, CHAT_TEMPERATURE, CHAT_TOP_K, DEFAULT_MAX_DURATION,
                     DEFAULT_VOICE, MODES, TTS_TEMPERATURE, TTS_TOP_K, tts_system_prompt)


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

    def __init__(self, runtime: SpeechRuntime, parts: list, audio: list, params: Any) -> None:
        self.runtime = runtime
        self.engine = runtime.engine  # loaded now: its errors come from the call, even with stream=True
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
        try:
            # On the engine's thread, between transcription steps (see Scheduler.call).
            self.result = self.runtime.call(
                lambda: self.engine.generate(self.parts, self.audio, self.params, on_event, self.cancel), self.cancel)
        except BaseException as e:  # SpeechError, PylfmError, KeyboardInterrupt in the callback, ...
            self.error = e

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


def speech_params(**fields: Any) -> "_core.SpeechParams":
    """A ``_core.SpeechParams`` with ``fields`` set (the native generation settings)."""
    p = _core.SpeechParams()
    for k, v in fields.items():
        setattr(p, k, v)
    return p


# ---------------------------------------------------------------------- speak / chat
def speak(runtime: SpeechRuntime, text: str, *, voice: Optional[str] = DEFAULT_VOICE, system: Optional[str] = None,
          temperature: float = TTS_TEMPERATURE, top_k: Optional[int] = TTS_TOP_K, seed: Optional[int] = None,
          max_duration: Optional[float] = None, stream: bool = False, progress: bool = False,
          ignore_audio_end: bool = False) -> Union[Speech, Iterator[np.ndarray]]:
    """Text to speech on ``runtime``: `Model.speak` (see there). ``ignore_audio_end``
    (benchmarks) keeps generating past the model's end-of-audio frame, up to ``max_duration``."""

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
    params = speech_params(start_audio=True, stop_at_audio_end=True, ignore_audio_end=bool(ignore_audio_end),
                     max_new_tokens=frames + 1, max_audio_frames=frames,
                     audio_temperature=temperature, audio_top_k=top_k, seed=_seed(seed))
    run = _Run(runtime, parts, [], params)
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


def chat(runtime: SpeechRuntime, audio_or_text: Any, *, mode: str = "interleaved", system: Optional[str] = CHAT_SYSTEM_PROMPT,
         sample_rate: Optional[int] = None, temperature: float = CHAT_TEMPERATURE, top_k: Optional[int] = CHAT_TOP_K,
         text_temperature: float = 0.0, seed: Optional[int] = None, max_new_tokens: int = CHAT_MAX_NEW_TOKENS,
         max_duration: Optional[float] = None, stream: bool = False, progress: bool = False,
         on_text: Optional[Callable[[str], None]] = None) -> Union[Speech, Iterator[SpeechChunk]]:
    """Speech (or text) in, text and speech out, on ``runtime``: `Model.chat` (see there)."""

    if mode not in MODES:
        raise SpeechError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise SpeechError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    temperature, top_k = _check_sampling(temperature, top_k, "")
    text_temperature, _ = _check_sampling(text_temperature, 0, "text_")
    if system is not None and not isinstance(system, str):
        raise SpeechError(f"system must be a string or None, got {type(system).__name__}")
    audio = _as_audio(audio_or_text, sample_rate, runtime.sample_rate)
    if audio is None:
        if not audio_or_text.strip():
            raise SpeechError("the message is empty: give audio or text")
        parts = prompt_parts(system, audio_or_text, n_audio=0)
        clips: list = []
    else:
        parts = prompt_parts(system, None, n_audio=1)
        clips = [audio]
    params = speech_params(interleaved=mode == "interleaved", max_new_tokens=max_new_tokens,
                     max_audio_frames=_frames_for(max_duration), audio_temperature=temperature, audio_top_k=top_k,
                     text_temperature=text_temperature, seed=_seed(seed))
    run = _Run(runtime, parts, clips, params)
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


def _as_audio(x: Any, sample_rate: Optional[int], target_rate: int) -> Optional[np.ndarray]:
    """The input as PCM at ``target_rate`` (the model's 16 kHz), or None when it is a text
    message. A str is a path when such a file exists (or it names an audio file),
    otherwise the text itself."""
    if isinstance(x, str):
        if not (os.path.isfile(x) or (x.lower().endswith(_AUDIO_SUFFIXES) and "\n" not in x and len(x) < 4096)):
            return None
    elif x is None:
        raise SpeechError("nothing to answer: give audio (path, bytes, array) or text")
    return load_audio(x, sample_rate=sample_rate, target_rate=target_rate)
