"""What the routes share: the model, the worker threads, admission (``--queue``) and
the settings every request is checked against.

Memory: every admitted request, transcription or speech, holds at most
`Service.request_bytes` beyond the model (its upload and decoded audio, or its body and
generated audio), so the server holds at most ``--queue`` x that (`memory_bound`).
"""

import math
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from .errors import APIError
from .forms import MIB

if TYPE_CHECKING:  # asyncio is imported when the server runs
    import asyncio

DEFAULT_MODEL_NAME = "lfm2-audio"
DEFAULT_MAX_AUDIO_S = 3600.0
DEFAULT_MAX_PROMPT_TOKENS = 1024
# Speech per request: enough for OpenAI's 4096-character input at a normal speaking rate
# (~14 characters a second: 290 s).
DEFAULT_MAX_SPEECH_S = 300.0
SPEECH_MAX_BODY = 1024 * 1024  # a speech request's JSON: 4096 characters take < 50 KiB however escaped

DECODED_BYTES_PER_S = 16000 * 4  # a transcription's audio: 16 kHz float32 (62.5 KiB/s)
DECODE_GROWTH = 2.5  # a buffer grown by half while decoding holds the old and the new one
SPEECH_BYTES_PER_S = 24000 * 4  # generated speech: 24 kHz float32 (93.75 KiB/s)
# generated chunks + their concatenation, then the concatenation + its clipped copy + the file
SPEECH_COPIES = 3


class Slots:
    """Admission control: at most ``capacity`` requests admitted at once."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._n = 0
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self._n >= self.capacity:
                return False
            self._n += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._n -= 1

    @property
    def in_use(self) -> int:
        return self._n


class Service:
    """The state behind the routes (``app.state.pylfm``): the shared `pylfm.Model`, a
    thread pool for blocking work, admission, request statistics and the settings.
    ``options`` holds the `TranscribeOptions` every transcription starts from."""

    def __init__(self, model: Any, *, api_key: Optional[str], max_upload_mib: float, queue_size: int,
                 model_name: str, max_new_tokens: int, window: float, max_cue: float, max_audio_s: float,
                 max_prompt_tokens: int, vad: Optional[str], fixed_tokens: Optional[int] = None,
                 max_speech_s: float = DEFAULT_MAX_SPEECH_S) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from ..transcription.options import TranscribeOptions, fixed_tokens as fixed_tokens_options

        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not max_upload_mib > 0:
            raise ValueError(f"max_upload_mib must be > 0, got {max_upload_mib}")
        if not max_audio_s > 0:
            raise ValueError(f"max_audio_s must be > 0, got {max_audio_s}")
        if max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        if not (math.isfinite(max_speech_s) and max_speech_s > 0):
            raise ValueError(f"max_speech_s must be > 0 seconds, got {max_speech_s}")
        # Validated once here, so a bad setting fails at start-up rather than per request.
        self.options = TranscribeOptions(max_new_tokens=max_new_tokens, window=window, vad=vad, max_duration=max_audio_s)
        if fixed_tokens is not None:  # benchmarks: the same work for every request
            self.options = TranscribeOptions(window=window, vad=vad, max_duration=max_audio_s,
                                             **fixed_tokens_options(fixed_tokens))
        TranscribeOptions(window=window, max_segment=min(max_cue, window))
        self.model = model
        self.api_key = api_key or None
        self.max_upload_bytes = int(max_upload_mib * MIB)
        self.max_speech_s = float(max_speech_s)
        self.max_speech_body_bytes = min(SPEECH_MAX_BODY, self.max_upload_bytes)
        self.model_name = model_name
        self.max_cue = min(float(max_cue), float(window))
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.sample_rate = int(model.sample_rate)
        self.slots = Slots(queue_size)
        # One thread per admitted request is enough: a request uses one at a time.
        self.executor = ThreadPoolExecutor(max_workers=queue_size, thread_name_prefix="pylfm-serve")
        self.created = int(time.time())
        self.jobs: "set[Any]" = set()
        self._stats_lock = threading.Lock()
        self._mean_s = 1.0  # moving average of a request's time in the engine, for Retry-After
        self.served = 0

    def admit(self) -> None:
        """Takes an admission slot, or raises the 503 (with ``Retry-After``) when all are
        taken. The caller must `Slots.release` it when the request ends."""
        if not self.slots.try_acquire():
            raise APIError(503, f"the server is busy ({self.slots.capacity} requests admitted); retry later",
                           type="server_error", code="server_busy", headers={"Retry-After": str(self.retry_after())})

    @property
    def request_bytes(self) -> int:
        """The most memory one admitted request holds beyond the model: a transcription's
        upload plus its decoded audio (`DECODE_GROWTH` x 62.5 KiB per second of
        ``--max-audio-s``), or a speech request's body plus its generated audio
        (`SPEECH_COPIES` x 93.75 KiB per second of ``--max-speech-s``), whichever is more."""
        transcription = self.max_upload_bytes + DECODE_GROWTH * DECODED_BYTES_PER_S * self.options.max_duration
        speech = self.max_speech_body_bytes + SPEECH_COPIES * SPEECH_BYTES_PER_S * self.max_speech_s
        return int(max(transcription, speech))

    @property
    def memory_bound(self) -> int:
        """The most memory the admitted requests hold together beyond the model and its KV
        cache: ``--queue`` x `request_bytes`."""
        return self.slots.capacity * self.request_bytes

    def decode_audio(self, data: bytes):
        """The upload as float32 mono PCM at the model's rate (blocking: run it in
        ``executor``); at most ``--max-audio-s`` long (`AudioTooLongError` past it)."""
        from ..audio.load import load_audio

        return load_audio(data, target_rate=self.sample_rate, max_duration=self.options.max_duration)

    def speech_job(self, text: str, options: Dict[str, Any]) -> Any:
        """The checked `pylfm.speech.job.SpeechJob` of a speech request (``options``: voice or
        system, temperature, seed, max_duration), not yet submitted (blocking work: run
        it in ``executor``)."""
        from ..speech.generate import tts_job

        return tts_job(text, **options)

    def record(self, seconds: float) -> None:
        with self._stats_lock:
            self._mean_s = 0.8 * self._mean_s + 0.2 * seconds
            self.served += 1

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the requests ahead over the engine's
        parallel slots, times the usual request."""
        with self._stats_lock:
            mean = self._mean_s
        slots = max(1, getattr(self.model, "batch_size", 1))
        return max(1, min(60, math.ceil(mean * self.slots.in_use / slots)))

    def start_worker(self, job: Any, produce: Callable[[Callable[[Any], None]], Any],
                     kind: str) -> "asyncio.Queue[Tuple[str, Any]]":
        """Runs ``produce(emit)`` for an admitted request on a worker thread (call it on
        the event loop). Each item it emits arrives in the returned queue as
        ``(kind, item)``, then ``("end", what produce returned)``, or ``("error",
        exception)`` when it raises. When it ends, the request's time is recorded and its admission slot
        released; until then ``job.cancel()`` stops it at shutdown (or when the loop is
        gone)."""
        import asyncio

        loop = asyncio.get_running_loop()
        queue: "asyncio.Queue[Tuple[str, Any]]" = asyncio.Queue()
        t0 = time.monotonic()

        def put(item: Tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: the server is shutting down
                job.cancel()

        def work() -> None:
            try:
                put(("end", produce(lambda value: put((kind, value)))))
            except Exception as e:
                put(("error", e))

        def finished(_f: Any) -> None:
            self.jobs.discard(job)
            self.record(time.monotonic() - t0)
            self.slots.release()

        self.jobs.add(job)
        self.executor.submit(work).add_done_callback(finished)
        return queue

    def shutdown(self) -> None:
        for job in list(self.jobs):
            job.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
