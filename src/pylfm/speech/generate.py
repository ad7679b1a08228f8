"""Text to speech (`speak`) and speech-to-speech (`chat`): `Model.speak` and `Model.chat`.

Both build the chat prompt, validate the options, and run one generation on the
model's `pylfm.engine.speech.SpeechRuntime`; its events become text and audio chunks
(the inverse STFT runs on the generating thread) and, at the end, a `Speech`.
"""

from __future__ import annotations

import math
import os
import random
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import numpy as np

from .. import _core
from ..audio.load import load_audio
from ..engine.prompt import prompt_parts
from ..engine.speech import SpeechRuntime
from ..errors import SpeechError
from .istft import FRAMES_PER_SECOND
from .job import SpeechJob
from .result import Speech, SpeechChunk
from .voices import (CHAT_MAX_NEW_TOKENS, CHAT_SYSTEM_PROMPT, CHAT_TEMPERATURE, CHAT_TOP_K, DEFAULT_MAX_DURATION,
                     DEFAULT_VOICE, MODES, TTS_TEMPERATURE, TTS_TOP_K, tts_system_prompt)


def choose_seed(seed: Optional[int]) -> int:
    """``seed``, checked, or a random one when None."""
    if seed is None:
        return random.SystemRandom().randrange(2**32)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise SpeechError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return seed


def check_sampling(temperature: float, top_k: Optional[int], what: str) -> Tuple[float, int]:
    """(temperature, top_k) checked: SpeechError naming ``what`` + the field otherwise."""
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


def frames_for(max_duration: Optional[float]) -> int:
    """Audio frames in ``max_duration`` seconds (default 60), checked."""
    seconds = DEFAULT_MAX_DURATION if max_duration is None else max_duration
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise SpeechError(f"max_duration must be a positive number of seconds, got {max_duration!r}")
    return max(1, math.ceil(seconds * FRAMES_PER_SECOND))


def speech_params(**fields: Any) -> "_core.SpeechParams":
    """A ``_core.SpeechParams`` with ``fields`` set (the native generation settings)."""
    p = _core.SpeechParams()
    for k, v in fields.items():
        setattr(p, k, v)
    return p


# Nobody speaks faster than this: 25 characters a second is about 270 words a minute, where
# conversational English is 12-15 characters a second (150-180 words a minute) and read-aloud
# text slower still. So text longer than max_duration x 25 characters cannot fit in it.
MAX_CHARS_PER_SECOND = 25.0


def min_speech_seconds(text: str) -> float:
    """The least speech ``text`` can take: its characters (a run of white space counting
    as one) at `MAX_CHARS_PER_SECOND`. A lower bound: text under it may need more (a
    generation cut at its limit says so by its stop reason ``length``)."""
    return len(" ".join(text.split())) / MAX_CHARS_PER_SECOND


# ---------------------------------------------------------------------- speak / chat
def tts_job(text: str, *, voice: Optional[str] = DEFAULT_VOICE, system: Optional[str] = None,
            temperature: float = TTS_TEMPERATURE, top_k: Optional[int] = TTS_TOP_K, seed: Optional[int] = None,
            max_duration: Optional[float] = None, ignore_audio_end: bool = False) -> SpeechJob:
    """The `SpeechJob` of one text-to-speech request, checked and ready to submit to a
    `SpeechRuntime` (`speak` does that; the server reads the job's stop reason too)."""
    if not isinstance(text, str):
        raise SpeechError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise SpeechError("text is empty: give the words to speak")
    if system is None:
        system = tts_system_prompt(voice if voice is not None else DEFAULT_VOICE)
    elif not isinstance(system, str) or not system.strip():
        raise SpeechError("system must be a non-empty string (e.g. 'Perform TTS. Use the UK male voice.')")
    temperature, top_k = check_sampling(temperature, top_k, "")
    frames = frames_for(max_duration)
    parts = prompt_parts(system, text, n_audio=0) + [("<|audio_start|>", True)]
    # Speech starts at once: the assistant turn of a TTS answer begins with <|audio_start|>
    # (liquid-audio's training layout), so it is part of the prompt, and the answer ends
    # with the end-of-audio frame.
    params = speech_params(start_audio=True, stop_at_audio_end=True, ignore_audio_end=bool(ignore_audio_end),
                     max_new_tokens=frames + 1, max_audio_frames=frames,
                     audio_temperature=temperature, audio_top_k=top_k, seed=choose_seed(seed))
    return SpeechJob(parts, [], params)


def speak(runtime: SpeechRuntime, text: str, *, voice: Optional[str] = DEFAULT_VOICE, system: Optional[str] = None,
          temperature: float = TTS_TEMPERATURE, top_k: Optional[int] = TTS_TOP_K, seed: Optional[int] = None,
          max_duration: Optional[float] = None, stream: bool = False, progress: bool = False,
          ignore_audio_end: bool = False) -> Union[Speech, Iterator[np.ndarray]]:
    """Text to speech on ``runtime``: `Model.speak` (see there). ``ignore_audio_end``
    (benchmarks) keeps generating past the model's end-of-audio frame, up to ``max_duration``."""
    job = tts_job(text, voice=voice, system=system, temperature=temperature, top_k=top_k, seed=seed,
                  max_duration=max_duration, ignore_audio_end=ignore_audio_end)
    if progress and not stream:
        job.show_progress(job.params.max_audio_frames / FRAMES_PER_SECOND)
    runtime.submit(job)
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
    temperature, top_k = check_sampling(temperature, top_k, "")
    text_temperature, _ = check_sampling(text_temperature, 0, "text_")
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
                     max_audio_frames=frames_for(max_duration), audio_temperature=temperature, audio_top_k=top_k,
                     text_temperature=text_temperature, seed=choose_seed(seed))
    job = SpeechJob(parts, clips, params, on_text=on_text)
    if progress and not stream:
        job.show_progress(params.max_audio_frames / FRAMES_PER_SECOND)
    runtime.submit(job)
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
