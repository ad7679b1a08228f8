"""`Model`: an LFM2-Audio model held in memory, and `transcribe` on top of it.

The thin facade over the layers below: the native engine (``pylfm._core.Engine``,
opened by `pylfm.engine.native`) loads the text GGUF and the mmproj once. Every way of
transcribing is a thin adapter over one pipeline: the audio is loaded
(`pylfm.audio.load_audio`), its windows planned (`pylfm.vad.plan_windows`), and a
`TranscriptionJob` goes to the model's `Scheduler`, which decodes windows of every job
together. Speech output runs on the model's `SpeechRuntime` (`pylfm.speech`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .audio.load import AudioInput, load_audio
from .engine.device import CPU_SESSIONS, GPU_SESSIONS, resolve_defaults
from .engine.cpu_weights import describe as describe_cpu_weights, resolve_policy
from .engine.native import call_engine, open_engine
from .engine.prompt import ASR_SYSTEM_PROMPT, prompt_parts
from .engine.scheduler import Scheduler
from .engine.speech import SpeechRuntime
from .errors import PylfmError
from .files.resolve import DEFAULT_QUANT, resolve
from .transcription.formats import Segment
from .transcription.job import TranscriptionJob
from .transcription.options import TranscribeOptions
from .transcription.results import Transcription, TranscriptionInfo
from .vad import plan_windows

log = logging.getLogger("pylfm")
log.addHandler(logging.NullHandler())  # a library stays silent unless the application configures logging


class Model:
    """An LFM2-Audio model (text GGUF + audio mmproj GGUF) loaded once for many calls.

    Args:
        model: path to the text-model ``.gguf``, a directory holding both GGUFs, or a
            Hugging Face repo id (default: ``$PYLFM_MODEL`` or LiquidAI/LFM2.5-Audio-1.5B-GGUF).
        mmproj: path to the ``mmproj-*.gguf`` (default: ``$PYLFM_MMPROJ`` or found next to model).
        device: "auto" (CUDA or Metal when the build has it, else CPU), "cpu", "gpu",
            "cuda", "metal", "vulkan", "hip", "sycl", ... optionally with an index
            ("cuda:1"); see `pylfm.engine.device.BACKENDS`.
        n_threads: CPU threads (default: one per physical core available to this process).
        batch_size: sequence slots: how many windows (of any calls) decode at once
            (default: 4 on the CPU, 32 on a GPU).
        n_ctx: context per sequence in tokens; default: sized to fit each window
            (grown when a longer one arrives). A fixed n_ctx cuts generation that does
            not fit (stop reason "context").
        quant: which quantization to pick when downloading from the hub.
        flash_attn: let llama.cpp use flash attention where the backend supports it
            (default: on a GPU yes, on the CPU no).
        sessions: live conversations the model keeps at once (each owns a sequence of
            the engine beside the ``batch_size`` ones; default 4 on the CPU, 16 on a GPU).
        verbose: echo llama.cpp's own log to stderr.
        cpu_repack: where weights live on the CPU: "auto" (never the AMX buffer type,
            whose matrix product crashes on Sapphire Rapids-class Xeons), "on"
            (llama.cpp's own choice), "off" (no repacking) or "no-amx"; default
            ``$PYLFM_CPU_REPACK`` or "auto" (`pylfm.engine.cpu_weights`).

    ``None`` (the default of n_threads, batch_size, flash_attn, sessions) is the device's
    default (`pylfm.engine.device.resolve_defaults`); ``model.device``, ``n_threads``,
    ``batch_size``, ``flash_attn`` and ``sessions`` say what was used.

    Thread safety: one Model may be shared by any number of threads (and server
    requests); their windows are batched together by the model's scheduler.
    """

    def __init__(self, model: Optional[Union[str, os.PathLike]] = None, mmproj: Optional[Union[str, os.PathLike]] = None,
                 *, device: str = "auto", n_threads: Optional[int] = None, batch_size: Optional[int] = None,
                 n_ctx: Optional[int] = None, quant: str = DEFAULT_QUANT, flash_attn: Optional[bool] = None,
                 sessions: Optional[int] = None, verbose: bool = False, cpu_repack: Optional[str] = None) -> None:
        if sessions is not None:
            _positive_int("sessions", sessions, 0)
        if n_ctx is not None:
            _positive_int("n_ctx", n_ctx, 64)
        # The user's device word becomes ggml's ("metal" -> "mtl:0"), and what was left
        # None becomes the device's default, in one place.
        chosen = resolve_defaults(device, n_threads, batch_size, flash_attn)
        cpu_repack = resolve_policy(cpu_repack)
        if sessions is None:
            sessions = GPU_SESSIONS if chosen.on_gpu else CPU_SESSIONS
        model_path, mmproj_path = resolve(model, mmproj, quant)
        self._engine = open_engine(model_path, mmproj_path, n_threads=chosen.n_threads, device=chosen.device,
                                   n_ctx=n_ctx, batch_size=chosen.batch_size + sessions, flash_attn=chosen.flash_attn,
                                   verbose=verbose, cpu_repack=cpu_repack)
        self.model_path = model_path
        self.mmproj_path = mmproj_path
        self.n_threads: int = chosen.n_threads
        self.batch_size: int = chosen.batch_size
        self.flash_attn: bool = chosen.flash_attn
        self.sessions: int = sessions
        self.sample_rate: int = self._engine.sample_rate
        self.n_vocab: int = self._engine.n_vocab
        self.device: str = self._engine.device
        self.load_ms: float = self._engine.load_ms
        #: where the weights went on the CPU: {policy, mode, reason, buffers_mib, ...}
        self.cpu_weights: Dict[str, Any] = dict(self._engine.cpu_weights)
        self.scheduler = Scheduler(self._engine, self.batch_size)
        #: speech output (`speak`, `chat`, conversations) on this model's backbone, loaded on first use
        self.speech_runtime = SpeechRuntime(self._engine, self.scheduler, model_path, max_sessions=sessions)
        self._finalizer = weakref.finalize(self, self.scheduler.close)
        log.info("loaded %s + %s on %s in %.0f ms (%d threads, %d slots, %d sessions, flash attention %s)",
                 model_path.name, mmproj_path.name, self.device, self.load_ms, self.n_threads, self.batch_size,
                 sessions, "auto" if self.flash_attn else "off")
        log.info("CPU weights: %s", describe_cpu_weights(self.cpu_weights))

    def __repr__(self) -> str:
        return f"Model(model={str(self.model_path)!r}, mmproj={str(self.mmproj_path)!r}, device={self.device!r})"

    def close(self) -> None:
        """Stops the model's engine thread (running requests end as cancelled)."""
        self._finalizer()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ transcription
    def submit(self, audio: AudioInput, *, sample_rate: Optional[int] = None, stream: bool = False,
               **options: Any) -> TranscriptionJob:
        """Starts transcribing ``audio`` and returns its `TranscriptionJob` at once:
        ``job.result()``, ``job.pieces()`` or ``job.segments()`` wait for it,
        ``job.cancel()`` stops it. Options are `TranscribeOptions`' fields."""
        job = self._job(audio, sample_rate, TranscribeOptions(**options), stream)
        self.scheduler.submit(job)
        return job

    def transcribe(self, audio: AudioInput, *, sample_rate: Optional[int] = None, stream: bool = False,
                   progress: bool = False, cancel: Optional[threading.Event] = None, timeout: Optional[float] = None,
                   **options: Any) -> Union[Transcription, Iterator[str]]:
        """Transcribes one recording (or answers ``system``/``prompt`` about it).

        Args:
            audio: a file path, encoded bytes, a binary file object, or a numpy array of
                any int/float dtype, 1-D or 2-D (either channel order); arrays need
                ``sample_rate``.
            stream: return an iterator of text pieces, in transcript order, as they are
                decoded (long recordings are still decoded batched).
            progress: a progress bar over audio seconds on stderr.
            cancel: a ``threading.Event``; setting it stops the transcription within a
                few decode steps (raises `TranscriptionCancelled` with ``.partial``).
            timeout: seconds; past it the transcription stops (`TranscriptionTimeout`).
            **options: `TranscribeOptions` fields: system, prompt, max_new_tokens,
                temperature, top_k, top_p, seed, window, max_segment, vad, vad_options,
                loop_guard, batch_size, max_duration, ignore_eos.

        Returns:
            A `Transcription` (``.text``, ``.segments``, ``.tokens``, ``.timings``,
            ``.stop_reason``), or with ``stream=True`` an iterator of str pieces that
            join to the same text.
        """
        job = self._job(audio, sample_rate, TranscribeOptions(**options), stream)
        bar = _bar(progress, job.duration)
        if bar is not None:
            job.on_progress = bar.update
        self.scheduler.submit(job)
        if stream:
            return _closing(job.pieces(cancel, timeout), bar)
        try:
            return job.result(cancel, timeout)
        finally:
            if bar is not None:
                bar.close()

    def transcribe_segments(self, audio: AudioInput, *, sample_rate: Optional[int] = None, progress: bool = False,
                            cancel: Optional[threading.Event] = None, timeout: Optional[float] = None,
                            **options: Any) -> Tuple[Iterator[Segment], TranscriptionInfo]:
        """Like faster-whisper's ``WhisperModel.transcribe``: a lazy iterator of `Segment`
        (decoding starts at the first ``next()``; segments come in order as they are
        ready) and a `TranscriptionInfo` known up front."""
        job = self._job(audio, sample_rate, TranscribeOptions(**options), False)
        bar = _bar(progress, job.duration)

        def segments() -> Iterator[Segment]:
            if bar is not None:
                job.on_progress = bar.update
            self.scheduler.submit(job)
            yield from _closing(job.segments(cancel, timeout), bar)

        return segments(), job.info

    def transcribe_batch(self, audios: Sequence[AudioInput], *, sample_rate: Optional[int] = None,
                         progress: bool = False,
                         on_result: Optional[Callable[[int, Union[Transcription, Exception]], None]] = None,
                         **options: Any) -> List[Union[Transcription, Exception]]:
        """Transcribes several recordings, their windows decoded together. An input that
        cannot be read or transcribed gives its exception in the returned list (and to
        ``on_result(index, result)``, called as each finishes) instead of stopping the
        others. Inputs are loaded while earlier ones decode, a few at a time."""
        opts = TranscribeOptions(**options)
        outputs: List[Union[Transcription, Exception, None]] = [None] * len(audios)
        finished: "queue.Queue[Tuple[int, Union[TranscriptionJob, Exception]]]" = queue.Queue()
        room = threading.Semaphore(2 * self.batch_size)  # files loaded ahead of the decoding
        stop = threading.Event()
        jobs: List[TranscriptionJob] = []

        def load_all() -> None:
            # Loading runs beside the decoding, so finished results are handed out at once
            # (and a Ctrl-C in the caller's thread loses none that were done).
            for i, audio in enumerate(audios):
                while not room.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                try:
                    job = self._job(audio, sample_rate, opts, False)
                except Exception as e:  # this input's failure, reported in its place
                    finished.put((i, e))
                    continue
                if stop.is_set():  # the caller stopped while this input was loading
                    return
                jobs.append(job)
                job.on_finished = lambda j, i=i: finished.put((i, j))
                if job.done:  # nothing to decode (silence)
                    finished.put((i, job))
                else:
                    self.scheduler.submit(job)

        loader = threading.Thread(target=load_all, name="pylfm-batch-loader", daemon=True)
        bar = _bar(progress, float(len(audios)), unit="file")
        loader.start()
        try:
            for _ in range(len(audios)):
                i, item = finished.get()
                room.release()
                try:
                    outputs[i] = item.result() if isinstance(item, TranscriptionJob) else item
                except PylfmError as e:
                    outputs[i] = e
                if bar is not None:
                    bar.update(1)
                if on_result is not None:
                    on_result(i, outputs[i])  # type: ignore[arg-type]
        finally:
            stop.set()
            # Wait for the input being loaded: native decoders and VAD must not be running
            # in a thread while the interpreter exits (e.g. after Ctrl-C).
            loader.join()
            for job in jobs:
                job.cancel()  # no-op for finished ones
            if bar is not None:
                bar.close()
        return outputs  # type: ignore[return-value]

    # ------------------------------------------------------------------ engine probes
    def encode_audio(self, audio: AudioInput, *, sample_rate: Optional[int] = None) -> np.ndarray:
        """The audio embeddings the language model receives: (n_tokens, n_embd) float32."""
        pcm = self._load(audio, sample_rate)
        return self._call(self._engine.encode_audio, pcm)

    def first_logits(self, audio: AudioInput, *, sample_rate: Optional[int] = None,
                     system: Optional[str] = ASR_SYSTEM_PROMPT, prompt: Optional[str] = None) -> np.ndarray:
        """Logits (n_vocab,) at the first generated position after the prompt and audio."""
        pcm = self._load(audio, sample_rate)
        return self._call(self._engine.first_logits, prompt_parts(system, prompt), [pcm])

    def prompt_tokens(self, audio: AudioInput, *, sample_rate: Optional[int] = None,
                      system: Optional[str] = ASR_SYSTEM_PROMPT, prompt: Optional[str] = None) -> List[int]:
        """Token ids of the full prompt; the audio's positions are -1."""
        pcm = self._load(audio, sample_rate)
        return list(self._call(self._engine.prompt_tokens, prompt_parts(system, prompt), [pcm]))

    def engine_stats(self) -> Dict[str, int]:
        """The engine's counters since load: ``decode_steps``, ``decode_rows`` (sequences
        they advanced), ``max_rows`` (most in one step), ``audio_rows`` and ``text_rows``
        (rows that made an audio frame / a token): how much really decoded together."""
        return dict(self._engine.stats())

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` takes as plain (user) text."""
        return self._engine.count_tokens(text, False)

    def token_text(self, token: int) -> str:
        """The text of one token id (special tokens shown as themselves)."""
        return self._engine.token_piece(int(token), True).decode("utf-8", "replace")

    # ------------------------------------------------------------------ speech output
    def load_speech(self, vocoder: Optional[Union[str, os.PathLike]] = None,
                    detokenizer: Optional[Union[str, os.PathLike]] = None) -> None:
        """Loads speech output (LFM2.5-Audio) on this model's backbone: the audio head
        ``vocoder-*.gguf`` and the audio detokenizer ``tokenizer-*.gguf`` (default:
        ``$PYLFM_VOCODER`` / ``$PYLFM_DETOKENIZER``, else found next to the model or in its
        hub repository). `speak` and `chat` call it on first use."""
        self.speech_runtime.load(vocoder, detokenizer)

    @property
    def vocoder_path(self) -> Optional[Path]:
        """The speech output's audio head GGUF, once loaded (else None)."""
        return self.speech_runtime.vocoder_path

    @property
    def detokenizer_path(self) -> Optional[Path]:
        """The speech output's audio detokenizer GGUF, once loaded (else None)."""
        return self.speech_runtime.detokenizer_path

    def speak(self, text: str, **options: Any) -> Any:
        """Text to speech. Returns a `Speech` (``.audio`` float32 at 24 kHz, ``.save(path)``),
        or with ``stream=True`` an iterator of float32 audio chunks as frames decode.

        Options: voice ("US female", "US male", "UK female", "UK male"), system (a
        ``Perform TTS. ...`` prompt instead of a voice), temperature (0.8; 0 = greedy),
        top_k (64), seed, max_duration (seconds, default 60), stream, progress (a bar on
        stderr over seconds of speech)."""
        from .speech.generate import speak

        return speak(self.speech_runtime, text, **options)

    def chat(self, audio_or_text: Any, **options: Any) -> Any:
        """Speech-to-speech (or text-to-speech) answer: returns a `Speech` with ``.text``
        and ``.audio``, or with ``stream=True`` an iterator of `SpeechChunk` (text and/or
        audio). ``audio_or_text``: an audio file path, bytes, array (``sample_rate=``), or
        a text message.

        Options: mode ("interleaved": text and audio in a fixed pattern, lowest latency;
        "sequential": the model switches modality itself), system, temperature (1.0) and
        top_k (4) for audio, text_temperature (0 = greedy), seed, max_new_tokens (1024),
        max_duration, stream, progress, on_text (called with each text piece)."""
        from .speech.generate import chat

        return chat(self.speech_runtime, audio_or_text, **options)

    # ------------------------------------------------------------------ live
    def conversation(self, *, system: Optional[str] = None, voice: Optional[str] = None, mode: str = "interleaved",
                     temperature: float = 1.0, top_k: Optional[int] = 4, text_temperature: float = 0.0,
                     seed: Optional[int] = None, max_new_tokens: int = 1024, max_duration: Optional[float] = None,
                     max_context: int = 4096) -> Any:
        """A multi-turn voice conversation whose history stays in the engine (see
        `pylfm.live.Conversation`): add the user's audio or text, then ``reply()``.

        Args:
            system: the system prompt (default "Respond with interleaved text and audio.").
            voice: one of the model's voices ("US female", "US male", "UK female",
                "UK male"), added to the system prompt as "Use the ... voice."
            mode: "interleaved" (fixed pattern of 6 text tokens and 12 audio frames: the
                lowest latency) or "sequential" (the model switches modality itself).
            temperature: sampling temperature of audio codes.
            top_k: top-k of audio codes.
            text_temperature: sampling temperature of text (0 = greedy).
            seed: makes sampling reproducible.
            max_new_tokens: the most steps (text tokens + audio frames) of each reply.
            max_duration: the most seconds of speech of each reply.
            max_context: positions the history may take; the oldest turns are dropped
                (and counted in ``dropped_turns``) beyond it.

        The model keeps ``sessions`` conversations at once (a `Model` argument);
        a `ConversationError` says so when all are taken."""
        from .live.conversation import Conversation, ConversationError
        from .speech.voices import CHAT_SYSTEM_PROMPT

        if isinstance(max_context, bool) or not isinstance(max_context, int) or max_context < 256:
            raise ConversationError(f"max_context must be an integer >= 256, got {max_context!r}")
        max_context = min(max_context, self._engine.max_ctx_seq)
        session = self.speech_runtime.open_session()
        if session < 0:
            raise ConversationError(f"all {self.sessions} conversation slots of this model are in use; close a "
                                    "conversation or load the model with a larger sessions=")
        try:
            return Conversation(self, session, system=CHAT_SYSTEM_PROMPT if system is None else system, voice=voice,
                                mode=mode, temperature=temperature, top_k=top_k, text_temperature=text_temperature,
                                seed=seed, max_new_tokens=max_new_tokens, max_duration=max_duration,
                                max_context=max_context)
        except BaseException:
            self.speech_runtime.close_session(session)
            raise

    def transcriber(self, *, sample_rate: int = 16000, turn_detection: Any = "server_vad", interim: bool = False,
                    interim_interval: float = 1.0, on_event: Optional[Callable[[Any], None]] = None,
                    **options: Any) -> Any:
        """Transcription of audio as it arrives (see `pylfm.live.Transcriber`): ``push``
        PCM chunks; each utterance the turn detector finishes is transcribed, with text
        deltas as it decodes.

        Args:
            sample_rate: the rate of the pushed audio.
            turn_detection: a `pylfm.live.TurnDetection`, "server_vad" (its defaults), or
                None (utterances end only at ``commit()``).
            interim: also transcribe the utterance in progress every ``interim_interval`` s.
            on_event: called with each event; without it, iterate ``events()``.
            **options: `TranscribeOptions` fields for each utterance."""
        from .live.transcriber import Transcriber
        from .live.turns import TurnDetection

        if turn_detection == "server_vad":
            turn_detection = TurnDetection()
        elif turn_detection is not None and not isinstance(turn_detection, TurnDetection):
            raise ValueError("turn_detection must be a pylfm.live.TurnDetection, 'server_vad' or None")
        return Transcriber(self, sample_rate=sample_rate, turn_detection=turn_detection, interim=interim,
                           interim_interval=interim_interval, on_event=on_event, **options)

    # ------------------------------------------------------------------ internals
    def _job(self, audio: AudioInput, sample_rate: Optional[int], opts: TranscribeOptions,
             stream: bool) -> TranscriptionJob:
        pcm = self._load(audio, sample_rate, opts.max_duration)
        windows = plan_windows(pcm, self.sample_rate, window=opts.segment_limit, vad=opts.vad, options=opts.vad_options)
        return TranscriptionJob(pcm, self.sample_rate, windows, opts, device=self.device,
                                model_name=self.model_path.name, load_ms=self.load_ms, stream=stream)

    def _load(self, audio: AudioInput, sample_rate: Optional[int], max_duration: Optional[float] = None) -> np.ndarray:
        return load_audio(audio, sample_rate=sample_rate, target_rate=self.sample_rate, max_duration=max_duration)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return call_engine(self.scheduler, lambda: fn(*args))  # on the engine's thread, like all compute


# ---------------------------------------------------------------------- module helpers
_default_model: Optional[Model] = None
_default_key: Optional[tuple] = None
_default_lock = threading.Lock()


def transcribe(audio: AudioInput, model: Optional[Union[str, os.PathLike]] = None,
               mmproj: Optional[Union[str, os.PathLike]] = None, **kwargs: Any) -> Any:
    """Transcribes ``audio`` and returns the text, reusing one cached default `Model`
    (loaded on first use; reloaded when ``model``/``mmproj`` change).

    Keyword arguments go to `Model.transcribe` (``stream=True`` returns an iterator).
    """
    global _default_model, _default_key
    key = (model and os.fspath(model), mmproj and os.fspath(mmproj),
           os.environ.get("PYLFM_MODEL"), os.environ.get("PYLFM_MMPROJ"))
    with _default_lock:
        if _default_model is None or _default_key != key:
            if _default_model is not None:
                _default_model.close()
            _default_model = None
            _default_model = Model(model, mmproj)
            _default_key = key
        m = _default_model
    result = m.transcribe(audio, **kwargs)
    return result if kwargs.get("stream") else result.text  # type: ignore[union-attr]


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _closing(it: Iterator[Any], bar: Any) -> Iterator[Any]:
    """``it``, closing the progress bar (and, through ``it``, the job) however it ends."""
    try:
        yield from it
    finally:
        it.close()  # type: ignore[attr-defined]
        if bar is not None:
            bar.close()


def _bar(enabled: bool, total: float, unit: str = "s"):
    """A tqdm bar on stderr, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=round(total, 2), unit=unit, unit_scale=False, dynamic_ncols=True, leave=False,
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} " + unit + " [{elapsed}<{remaining}]")
