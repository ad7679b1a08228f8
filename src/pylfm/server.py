"""``pylfm serve``: an OpenAI-compatible speech-to-text server.

    pylfm serve --model LFM2.5-Audio-1.5B-Q8_0.gguf --mmproj mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused")
    text = client.audio.transcriptions.create(model="lfm2-audio", file=open("a.wav", "rb")).text

Endpoints
---------
``POST /v1/audio/transcriptions`` (multipart/form-data), as OpenAI's API:

- ``file`` (required): the recording, wav / flac / ogg / mp3 (whatever libsndfile
  decodes). It is decoded in memory; nothing is written to disk.
- ``model``: any name is accepted (the server has one model; ``GET /v1/models`` names it).
- ``response_format``: ``json`` (default, ``{"text": ...}``), ``text``, ``srt``, ``vtt``
  or ``verbose_json`` (``task``, ``language`` = ``"unknown"``, ``duration``, ``text``,
  ``segments`` with ``id``/``seek``/``start``/``end``/``text``/``temperature``).
- ``stream``: ``true`` answers with server-sent events as OpenAI does:
  ``{"type": "transcript.text.delta", "delta": ...}`` per decoded piece, then
  ``{"type": "transcript.text.done", "text": ...}`` (the deltas joined). Only with
  ``json`` / ``text``; an error after the stream started is sent as an event
  ``{"type": "error", "error": {...}}``. For a long-form recording the windows' text is
  streamed as decoded, joined by a space, so it can differ from the ``json`` text in
  whitespace.
- ``temperature``: 0 (default) is greedy decoding and deterministic; above 0 samples
  (Whisper's "0 = automatic fallback" does not exist here).
- ``prompt``: given to LFM2-Audio as user text after the audio, i.e. as an instruction
  ("Transcribe and translate to French."), not Whisper's style/vocabulary hint.
- Accepted and ignored, because the model cannot honour them: ``language`` (LFM2-Audio
  has no language switch; ``language`` in verbose_json is ``"unknown"``),
  ``timestamp_granularities[]`` (segments are the long-form windows; there are no word
  timestamps), ``include[]`` (no logprobs), ``chunking_strategy`` and any other field.

Recordings longer than the server's ``--window`` (30 s) take the long-form path: they
are cut at pauses and each window becomes one segment with its time span.

``POST /v1/audio/speech`` (JSON): text to speech with LFM2.5-Audio, as OpenAI's API
(``input``, ``voice``, ``response_format`` mp3/opus/flac/wav/pcm); see
`add_speech_routes` for what is supported.

``GET /v1/models`` lists the one model; ``GET /health`` reports status and the queue.

Concurrency and cancellation
----------------------------
All requests share the one loaded `pylfm.Model`. Blocking work (audio decoding,
inference) runs in a thread pool, never on the event loop. Inference is serialised
by a first-come-first-served gate (the engine runs one request at a time anyway), so
a request waiting for its turn holds no engine resources.

The HTTP side (uploads, audio decoding, JSON) needs CPU too, so ``pylfm serve`` gives
the engine one thread fewer than the available cores unless ``--threads`` says
otherwise: llama.cpp's spinning worker threads slow down sharply (seconds per
request) when they have to share their cores.

``--queue N`` bounds the requests admitted at once (being uploaded, waiting or
decoding). The next one is answered ``503`` with ``Retry-After`` at once, before its
body is read; with ``--max-upload-mb`` this also bounds the memory uploads can take
(N x limit).

A client that disconnects:
- while waiting for its turn: the request is dropped and never reaches the engine;
- while streaming, or during a non-streaming request of one window: decoding stops
  at the next token (the server closes the generator from
  ``Model.transcribe(stream=True)``, which cancels the engine's sequence);
- during a non-streaming long-form request (several windows, decoded batch by batch
  through ``Model.transcribe_segments``): the batch of windows being decoded finishes,
  the rest are never decoded, and the result is discarded.
Its queue slot is freed when the engine lets go of the request.

Safety
------
The server listens on 127.0.0.1 unless ``--host`` says otherwise. With ``--api-key``
every request needs ``Authorization: Bearer KEY`` (else 401). Uploads larger than
``--max-upload-mb`` get 413: a declared ``Content-Length`` is checked before reading,
and the limit is enforced while reading, so an unbounded body is never held in memory.
Input that is not decodable audio gets 400 with the decoder's message. Errors use
OpenAI's body: ``{"error": {"message", "type", "param", "code"}}``.

FastAPI and uvicorn are the ``server`` extra (``pip install "pylfm[server]"``); they are
imported only when the server is built, so importing this module is cheap.
"""

import argparse
import collections
import hmac
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

if TYPE_CHECKING:  # asyncio and concurrent.futures are imported when the server is built
    import asyncio
    from concurrent.futures import Future

log = logging.getLogger("pylfm.server")

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
STREAM_FORMATS = ("json", "text")
DEFAULT_MODEL_NAME = "lfm2-audio"
_MIB = 1024 * 1024
_MAX_FIELD_BYTES = 64 * 1024  # a non-file form field (prompt, model, ...)
_FORM_OVERHEAD = _MIB  # multipart headers and the other fields, on top of the file limit
_DRAIN_LIMIT = 64 * _MIB  # read (and discard) this much of an oversized body so the client sees the 413


# ---------------------------------------------------------------------- errors
class APIError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: Optional[str] = None, param: Optional[str] = None,
                 headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> Dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str = "invalid_request_error", code: Optional[str] = None,
               param: Optional[str] = None) -> Dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---------------------------------------------------------------------- concurrency primitives
class _Slots:
    """Admission control: at most ``capacity`` requests in flight + waiting."""

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


class _FifoGate:
    """A lock handed to waiters in arrival order; a waiter can give up when its
    ``cancel`` event is set (its client went away) without ever holding it."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._busy = False
        self._waiters: "collections.deque[threading.Event]" = collections.deque()

    def acquire(self, cancel: threading.Event, poll: float = 0.05) -> bool:
        if cancel.is_set():
            return False
        with self._mu:
            if not self._busy and not self._waiters:
                self._busy = True
                return True
            turn = threading.Event()
            self._waiters.append(turn)
        while not turn.wait(poll):
            if cancel.is_set():
                with self._mu:
                    if not turn.is_set():  # still queued: leave the line
                        self._waiters.remove(turn)
                        return False
                break  # handed the gate in the meantime: pass it on below
        if cancel.is_set():
            self.release()
            return False
        return True

    def release(self) -> None:
        with self._mu:
            if self._waiters:
                self._waiters.popleft().set()  # the gate passes straight to the next waiter
            else:
                self._busy = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)


@dataclass(eq=False)  # hashed by identity
class _Job:
    pcm: Any  # float32 mono at the model's rate
    duration: float
    options: Dict[str, Any]
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Result:
    text: str
    segments: List[Any]
    duration: float


# ---------------------------------------------------------------------- the service
class _Service:
    """What the routes share: the model, the worker threads, admission and the gate."""

    def __init__(self, model: Any, *, api_key: Optional[str], max_upload_mb: float, queue_size: int,
                 model_name: str, max_new_tokens: int, window: float) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window}")
        self.model = model
        self.api_key = api_key or None
        self.max_upload_bytes = int(max_upload_mb * _MIB)
        self.model_name = model_name
        self.max_new_tokens = int(max_new_tokens)
        self.window = float(window)
        self.sample_rate = int(getattr(model, "sample_rate", 16000))
        self.slots = _Slots(queue_size)
        self.gate = _FifoGate()
        # One thread per admitted request is enough: a request uses one at a time.
        from concurrent.futures import ThreadPoolExecutor

        self.executor = ThreadPoolExecutor(max_workers=queue_size, thread_name_prefix="pylfm-serve")
        self.created = int(time.time())
        self.jobs: "set[_Job]" = set()
        self._stats_lock = threading.Lock()
        self._mean_s = 1.0  # moving average of a request's engine time, for Retry-After
        self.served = 0

    # -- blocking parts, run in the worker threads
    def decode_audio(self, data: bytes):
        from .audio import load_audio

        return load_audio(data, target_rate=self.sample_rate)

    def _transcribe_kwargs(self, job: _Job) -> Dict[str, Any]:
        return dict(sample_rate=self.sample_rate, window=self.window, max_new_tokens=self.max_new_tokens,
                    **job.options)

    def run(self, job: _Job) -> Optional[_Result]:
        """Transcribes ``job`` as `Model.transcribe` would; None when its client went
        away first. Decoding stops early when ``job.cancel`` is set: between tokens for
        a single window, between batches of windows for the long form."""
        if not self.gate.acquire(job.cancel):
            return None
        t0 = time.monotonic()
        try:
            kwargs = self._transcribe_kwargs(job)
            if len(job.pcm) > self.window * self.sample_rate:
                segments_iter, info = self.model.transcribe_segments(job.pcm, **kwargs)
                if info.n_windows > 1:
                    # Several windows: Model.transcribe's text is the segments joined by spaces.
                    segments = []
                    try:
                        for seg in segments_iter:
                            segments.append(seg)
                            if job.cancel.is_set():
                                return None
                    finally:
                        segments_iter.close()
                    return _Result(" ".join(s.text for s in segments), segments, job.duration)
                segments_iter.close()  # not started: nothing was decoded
            return self._run_one_window(job, kwargs)
        finally:
            self.gate.release()
            self._record(time.monotonic() - t0)

    def _run_one_window(self, job: _Job, kwargs: Dict[str, Any]) -> Optional[_Result]:
        """At most one window: decoded through the streaming iterator, which can be
        cancelled between tokens; its pieces join to Model.transcribe's text."""
        from .formats import Segment

        pieces = []
        it = self.model.transcribe(job.pcm, stream=True, **kwargs)
        try:
            for piece in it:
                pieces.append(piece)
                if job.cancel.is_set():
                    return None
        finally:
            it.close()
        text = "".join(pieces)
        segments = [Segment(0, 0.0, job.duration, text.strip())] if text.strip() else []
        return _Result(text, segments, job.duration)

    def run_stream(self, job: _Job, emit: Callable[[str], None]) -> None:
        """Streams ``job``'s pieces to ``emit``; stops (and cancels decoding) when
        ``job.cancel`` is set."""
        if not self.gate.acquire(job.cancel):
            return
        t0 = time.monotonic()
        try:
            it = self.model.transcribe(job.pcm, stream=True, **self._transcribe_kwargs(job))
            try:
                for piece in it:
                    if job.cancel.is_set():
                        break
                    emit(piece)
            finally:
                it.close()  # cancels the engine's sequence if it is still decoding
        finally:
            self.gate.release()
            self._record(time.monotonic() - t0)

    def _record(self, seconds: float) -> None:
        with self._stats_lock:
            self._mean_s = 0.8 * self._mean_s + 0.2 * seconds
            self.served += 1

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead times the usual request."""
        with self._stats_lock:
            mean = self._mean_s
        return max(1, min(60, math.ceil(mean * max(1, self.gate.waiting + 1))))

    def submit(self, fn: Callable[..., Any], *args: Any, job: Optional[_Job] = None) -> "Future":
        """Runs ``fn`` on a worker thread; the request's slot is released when it ends
        (or is cancelled before it started)."""
        fut = self.executor.submit(fn, *args)
        if job is not None:
            self.jobs.add(job)

        def done(_f: "Future") -> None:
            if job is not None:
                self.jobs.discard(job)
            self.slots.release()

        fut.add_done_callback(done)
        return fut

    def shutdown(self) -> None:
        for job in list(self.jobs):
            job.cancel.set()
        self.executor.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------- request parsing
async def _read_form(request: Any, max_file_bytes: int) -> Tuple[Dict[str, str], Optional[Tuple[str, bytes]]]:
    """The multipart form, read as it arrives with the size limits enforced: returns
    (fields, (filename, bytes) of the ``file`` part or None). Nothing touches disk."""
    from starlette.requests import ClientDisconnect

    try:
        from python_multipart.multipart import MultipartParser, parse_options_header
    except ImportError:  # python-multipart < 0.0.13
        from multipart.multipart import MultipartParser, parse_options_header  # type: ignore[no-redef]

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise APIError(400, "send the request as multipart/form-data with the recording in a 'file' field")
    max_total = max_file_bytes + _FORM_OVERHEAD
    too_large = APIError(413, f"the upload is larger than this server's limit of {_mb(max_file_bytes)} "
                              "(pylfm serve --max-upload-mb)", code="file_too_large", param="file")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_total:
        raise too_large  # refused before reading anything

    fields: Dict[str, str] = {}
    upload: List[Any] = []  # [filename, bytearray] of the file part
    part: Dict[str, Any] = {}
    header: List[bytes] = [b"", b""]
    over: List[APIError] = []

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, data=bytearray(), limit=_MAX_FIELD_BYTES)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        part["headers"][header[0].strip().lower()] = header[1].strip()
        header[0], header[1] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(part["headers"].get(b"content-disposition", b""))
        part["name"] = disp.get(b"name", b"").decode("utf-8", "replace")
        part["filename"] = disp.get(b"filename")
        if part["filename"] is not None:
            part["limit"] = max_file_bytes

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if over:
            return
        buf = part["data"]
        if len(buf) + (end - start) > part["limit"]:
            over.append(too_large if part.get("filename") is not None else
                        APIError(413, f"form field {part.get('name')!r} is longer than {_MAX_FIELD_BYTES} bytes",
                                 param=part.get("name")))
            buf.clear()
            return
        buf += data[start:end]

    def on_part_end() -> None:
        if over:
            return
        name = part.get("name", "")
        if part.get("filename") is not None:
            if name == "file" and not upload:
                upload.extend([part["filename"].decode("utf-8", "replace"), part["data"]])
            return  # other file parts are ignored
        fields[name] = part["data"].decode("utf-8", "replace")

    parser = MultipartParser(params[b"boundary"], callbacks={
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end})
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_total and not over:
                over.append(too_large)
            if over:
                if received > max_total + _DRAIN_LIMIT:
                    break  # stop reading; the connection is closed after the answer
                continue  # keep reading (and dropping) so the client gets to see the 413
            parser.write(chunk)
        if not over:
            parser.finalize()
    except APIError:
        raise
    except ClientDisconnect:
        raise APIError(400, "the client disconnected during the upload") from None
    except Exception as e:  # a malformed body
        raise APIError(400, f"could not parse the multipart form: {e}") from None
    if over:
        raise over[0]
    if not upload:
        raise APIError(400, "no audio: send the recording as a file in the 'file' form field", param="file")
    return fields, (upload[0], bytes(upload[1]))


def _mb(n: int) -> str:
    return f"{n / _MIB:g} MB"


def _flag(value: Optional[str], name: str) -> bool:
    if value is None or value.strip() == "":
        return False
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise APIError(400, f"{name} must be true or false, got {value!r}", param=name)


def _temperature(value: Optional[str]) -> float:
    if value is None or value.strip() == "":
        return 0.0
    try:
        t = float(value)
    except ValueError:
        raise APIError(400, f"temperature must be a number, got {value!r}", param="temperature") from None
    if not (0.0 <= t <= 2.0) or math.isnan(t):
        raise APIError(400, f"temperature must be between 0 and 2, got {value}", param="temperature")
    return t


# ---------------------------------------------------------------------- responses
def _verbose(result: _Result, temperature: float) -> Dict[str, Any]:
    return {
        "task": "transcribe",
        "language": "unknown",
        "duration": round(result.duration, 3),
        "text": result.text,
        "segments": [{"id": s.id, "seek": int(round(s.start * 100)), "start": round(s.start, 3),
                      "end": round(s.end, 3), "text": s.text, "temperature": temperature}
                     for s in result.segments],
        "usage": {"type": "duration", "seconds": round(result.duration, 3)},
    }


# The form as /docs shows it (the body is parsed by hand, with limits, so FastAPI
# cannot infer it).
_OPENAPI_TRANSCRIPTIONS = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "wav, flac, ogg or mp3"},
        "model": {"type": "string", "description": "any name; the server has one model"},
        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
        "stream": {"type": "boolean", "default": False, "description": "server-sent events (json/text only)"},
        "temperature": {"type": "number", "default": 0, "description": "0 = greedy"},
        "prompt": {"type": "string", "description": "user text after the audio (an instruction)"},
        "language": {"type": "string", "description": "accepted and ignored"},
        "timestamp_granularities[]": {"type": "array", "items": {"type": "string"},
                                      "description": "accepted and ignored"},
    }}}}}}


def _sse(event: Dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n\n"


class _AuthMiddleware:
    """Pure ASGI middleware: every HTTP request needs ``Authorization: Bearer KEY``."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.expected = ("Bearer " + api_key).encode("utf-8")

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            got = b""
            for k, v in scope.get("headers", []):
                if k == b"authorization":
                    got = v
                    break
            if not hmac.compare_digest(got.strip(), self.expected):
                message = ("missing API key: send 'Authorization: Bearer KEY'" if not got else "invalid API key")
                body = json.dumps(error_body(message, "invalid_request_error", "invalid_api_key")).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b"Bearer"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------- the app
def create_app(model: Any, *, api_key: Optional[str] = None, max_upload_mb: float = 25, queue_size: int = 16,
               model_name: str = DEFAULT_MODEL_NAME, max_new_tokens: int = 512, window: float = 30.0):
    """The FastAPI app serving ``model`` (a `pylfm.Model`, shared by all requests).

    Args:
        api_key: when set, every request needs ``Authorization: Bearer <api_key>``.
        max_upload_mb: the largest accepted upload (413 above it).
        queue_size: requests admitted at once (decoding + waiting); more get 503.
        model_name: the id ``GET /v1/models`` reports.
        max_new_tokens: generation limit per window.
        window: recordings longer than this (seconds) are transcribed in windows.
    """
    import asyncio
    from concurrent.futures import Future
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from . import __version__
    from .errors import AudioError, PylfmError
    from .formats import to_srt, to_vtt

    svc = _Service(model, api_key=api_key, max_upload_mb=max_upload_mb, queue_size=queue_size,
                   model_name=model_name, max_new_tokens=max_new_tokens, window=window)

    @asynccontextmanager
    async def lifespan(_app: Any):
        yield
        svc.shutdown()

    app = FastAPI(title="pylfm", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible speech-to-text with LFM2-Audio on llama.cpp")
    app.state.pylfm = svc
    if svc.api_key:
        app.add_middleware(_AuthMiddleware, api_key=svc.api_key)

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError):
        headers = dict(exc.headers)
        if exc.status == 413:
            headers["Connection"] = "close"
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(str(exc.errors()), "invalid_request_error"), status_code=400)

    @app.get("/health")
    async def health() -> Dict[str, Any]:
        return {"status": "ok", "version": __version__, "model": svc.model_name,
                "device": getattr(model, "device", None),
                "queue": {"in_flight": svc.slots.in_use, "waiting": svc.gate.waiting,
                          "capacity": svc.slots.capacity},
                "served": svc.served}

    def model_card() -> Dict[str, Any]:
        return {"id": svc.model_name, "object": "model", "created": svc.created, "owned_by": "pylfm"}

    @app.get("/v1/models")
    async def models() -> Dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model_info(model_id: str) -> Dict[str, Any]:
        if model_id != svc.model_name:
            raise APIError(404, f"the model {model_id!r} does not exist; this server has {svc.model_name!r}",
                           code="model_not_found", param="model")
        return model_card()

    @app.post("/v1/audio/transcriptions", openapi_extra=_OPENAPI_TRANSCRIPTIONS,
              summary="Transcribe audio (OpenAI-compatible)")
    async def transcriptions(request: Request):
        if not svc.slots.try_acquire():
            raise APIError(503, f"the server is busy ({svc.slots.capacity} requests queued); retry later",
                           type="server_error", code="server_busy",
                           headers={"Retry-After": str(svc.retry_after())})
        handed_off = False
        try:
            fields, (filename, data) = await _read_form(request, svc.max_upload_bytes)
            fmt = (fields.get("response_format") or "json").strip()
            if fmt not in RESPONSE_FORMATS:
                raise APIError(400, f"response_format {fmt!r} is not supported; use one of "
                                    f"{', '.join(RESPONSE_FORMATS)}", param="response_format")
            stream = _flag(fields.get("stream"), "stream")
            if stream and fmt not in STREAM_FORMATS:
                raise APIError(400, f"stream=true works with response_format json or text, not {fmt!r}",
                               param="stream")
            temperature = _temperature(fields.get("temperature"))
            prompt = fields.get("prompt") or None
            loop = asyncio.get_running_loop()
            try:
                pcm = await loop.run_in_executor(svc.executor, svc.decode_audio, data)
            except (AudioError, ValueError, TypeError) as e:
                raise APIError(400, f"{filename or 'the upload'} is not usable audio: {e}", param="file",
                               code="invalid_audio") from None
            del data
            job = _Job(pcm=pcm, duration=len(pcm) / svc.sample_rate,
                       options=dict(temperature=temperature, prompt=prompt))
            if stream:
                response = _start_stream(svc, job, request, fmt)
            else:
                fut = svc.submit(svc.run, job, job=job)
                handed_off = True
                watcher = _watch_disconnect(request, job, fut, loop)
                try:
                    result = await asyncio.wrap_future(fut)
                except asyncio.CancelledError:
                    job.cancel.set()
                    raise
                finally:
                    watcher.cancel()
                if result is None:  # the client is gone; nobody reads this
                    return Response(status_code=499)
                response = _render(result, fmt, temperature)
            handed_off = True
            return response
        except APIError:
            raise
        except Exception as e:
            if isinstance(e, PylfmError):
                raise APIError(500, f"transcription failed: {e}", type="server_error") from None
            log.exception("transcription request failed")
            raise APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error") from None
        finally:
            if not handed_off:
                svc.slots.release()

    def _render(result: _Result, fmt: str, temperature: float):
        if fmt == "text":
            return PlainTextResponse(result.text)
        if fmt == "srt":
            return PlainTextResponse(to_srt(result.segments))
        if fmt == "vtt":
            return PlainTextResponse(to_vtt(result.segments), media_type="text/vtt")
        if fmt == "verbose_json":
            return JSONResponse(_verbose(result, temperature))
        return JSONResponse({"text": result.text,
                             "usage": {"type": "duration", "seconds": round(result.duration, 3)}})

    def _start_stream(svc: _Service, job: _Job, request: Any, fmt: str):
        loop = asyncio.get_running_loop()
        queue: "asyncio.Queue[Tuple[str, Any]]" = asyncio.Queue()

        def put(item: Tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: the server is shutting down
                job.cancel.set()

        def finished(f: "Future") -> None:
            if f.cancelled():
                put(("end", None))
            elif f.exception() is not None:
                put(("error", f.exception()))
            else:
                put(("end", None))

        fut = svc.submit(svc.run_stream, job, lambda piece: put(("delta", piece)), job=job)
        fut.add_done_callback(finished)
        watcher = _watch_disconnect(request, job, fut, loop)  # also covers a client gone before the first byte

        async def events():
            parts: List[str] = []
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "delta":
                        parts.append(value)
                        yield _sse({"type": "transcript.text.delta", "delta": value})
                    elif kind == "error":
                        msg = f"transcription failed: {value}"
                        yield _sse({"type": "error", **error_body(msg, "server_error")})
                        return
                    else:
                        if not job.cancel.is_set():
                            yield _sse({"type": "transcript.text.done", "text": "".join(parts)})
                        return
            finally:
                job.cancel.set()  # a no-op when done; otherwise the client left: stop decoding
                watcher.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    add_speech_routes(app, svc)
    return app


def _watch_disconnect(request: Any, job: _Job, fut: "Future", loop: "asyncio.AbstractEventLoop") -> "asyncio.Task":
    """A task that sets ``job.cancel`` when the client disconnects. Only call it once
    the request body has been read (it consumes the ASGI receive channel)."""

    async def watch() -> None:
        while not fut.done():
            message = await request.receive()
            if message["type"] == "http.disconnect":
                if not fut.done():
                    job.cancel.set()
                return

    task = loop.create_task(watch())

    def stop(_f: "Future") -> None:
        try:
            loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:  # loop closed
            pass

    fut.add_done_callback(stop)
    return task


# ---------------------------------------------------------------------- speech output
SPEECH_MAX_INPUT = 4096  # characters, as OpenAI's /v1/audio/speech


def add_speech_routes(app: Any, svc: _Service) -> None:
    """``POST /v1/audio/speech``: OpenAI-compatible text to speech (LFM2.5-Audio).

    JSON body: ``input`` (required, at most 4096 characters), ``model`` (any name),
    ``voice`` ("US female" (default), "US male", "UK female", "UK male"; OpenAI's voice
    names are not these and get 400), ``response_format`` ``mp3`` (default), ``opus``,
    ``flac``, ``wav`` or ``pcm`` (raw 16-bit little-endian mono at 24 kHz, streamed as
    it is generated), ``speed`` (only 1.0: the model speaks at its own pace; anything
    else gets 400 rather than being ignored), and pylfm extensions: ``temperature``
    (0.8; 0 = greedy), ``seed`` (reproducible audio) and ``max_duration`` (seconds, 60). ``instructions`` and
    ``stream_format: "sse"`` are not supported (400). The speech GGUFs load with the
    first request; a model without them answers 501. Requests share the engine gate
    with transcriptions (first come, first served); a client that goes away stops the
    generation at the next audio frame.
    """
    import asyncio

    from fastapi import Request
    from fastapi.responses import Response, StreamingResponse

    from .errors import ModelLoadError, PylfmError
    from .speech import AUDIO_FORMATS, SAMPLE_RATE, SpeechError, encode_audio, tts_system_prompt

    def field_error(message: str, param: str) -> APIError:
        return APIError(400, message, param=param)

    def parse(body: Any) -> Dict[str, Any]:
        if not isinstance(body, dict):
            raise APIError(400, "send a JSON object with at least 'input' (the text to speak)")
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise field_error("'input' must be the non-empty text to speak", "input")
        if len(text) > SPEECH_MAX_INPUT:
            raise field_error(f"'input' has {len(text)} characters; the limit is {SPEECH_MAX_INPUT}", "input")
        try:
            system = tts_system_prompt(body.get("voice") or "US female")
        except SpeechError as e:
            raise field_error(str(e), "voice") from None
        fmt = body.get("response_format") or "mp3"
        if fmt not in AUDIO_FORMATS:
            raise field_error(f"response_format {fmt!r} is not supported; use one of {', '.join(AUDIO_FORMATS)}",
                              "response_format")
        speed = body.get("speed", 1.0)
        if speed is not None and (isinstance(speed, bool) or not isinstance(speed, (int, float)) or speed != 1.0):
            raise field_error("speed is not supported: LFM2.5-Audio speaks at its own pace; send 1.0 or leave it out",
                              "speed")
        if body.get("instructions"):
            raise field_error("instructions are not supported; choose a voice (US/UK, male/female)", "instructions")
        if body.get("stream_format") not in (None, "audio"):
            raise field_error("stream_format 'sse' is not supported; use response_format pcm to stream audio",
                              "stream_format")
        opts: Dict[str, Any] = {"system": system}
        for key in ("temperature", "seed", "max_duration"):
            if body.get(key) is not None:
                opts[key] = body[key]
        return {"text": text, "format": fmt, "options": opts}

    def chunks(job: _Job, req: Dict[str, Any], emit: Callable[[bytes], None]) -> None:
        """Generates on a worker thread; hands each audio chunk (float32) to ``emit``."""
        if not svc.gate.acquire(job.cancel):
            return
        try:
            it = svc.model.speak(req["text"], stream=True, **req["options"])
            try:
                for chunk in it:
                    if job.cancel.is_set():
                        break
                    emit(chunk)
            finally:
                it.close()  # cancels the generation if it is still running
        finally:
            svc.gate.release()

    def api_error(e: BaseException) -> APIError:
        if isinstance(e, ModelLoadError):
            return APIError(501, f"this server's model cannot speak: {e}", type="server_error",
                            code="speech_unavailable")
        if isinstance(e, SpeechError):
            return APIError(400, str(e))
        if isinstance(e, PylfmError):
            return APIError(500, f"speech generation failed: {e}", type="server_error")
        log.error("speech request failed", exc_info=e)
        return APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")

    @app.post("/v1/audio/speech", summary="Text to speech (OpenAI-compatible)")
    async def speech(request: Request):
        if not svc.slots.try_acquire():
            raise APIError(503, f"the server is busy ({svc.slots.capacity} requests queued); retry later",
                           type="server_error", code="server_busy", headers={"Retry-After": str(svc.retry_after())})
        handed_off = False
        try:
            try:
                body = await request.json()
            except ValueError:
                raise APIError(400, "the body is not JSON; send {\"input\": \"...\", \"voice\": \"US female\"}") from None
            req = parse(body)
            job = _Job(pcm=None, duration=0.0, options={})
            loop = asyncio.get_running_loop()
            media_type = AUDIO_FORMATS[req["format"]][2]
            queue: "asyncio.Queue[Tuple[str, Any]]" = asyncio.Queue()

            def put(item: Tuple[str, Any]) -> None:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                except RuntimeError:  # the loop is closed: shutting down
                    job.cancel.set()

            def finished(f: "Future") -> None:
                error = None if f.cancelled() else f.exception()
                put(("error", error) if error is not None else ("end", None))

            fut = svc.submit(chunks, job, req, lambda a: put(("audio", a)), job=job)
            handed_off = True
            fut.add_done_callback(finished)
            watcher = _watch_disconnect(request, job, fut, loop)

            if req["format"] == "pcm":  # raw samples, sent as they are generated
                first = await queue.get()  # errors before any audio still get a proper status
                if first[0] == "error":
                    watcher.cancel()
                    raise api_error(first[1])

                async def stream():
                    item = first
                    try:
                        while item[0] == "audio":
                            yield encode_audio(item[1], SAMPLE_RATE, "pcm")
                            item = await queue.get()
                    finally:
                        job.cancel.set()  # a no-op when done; otherwise the client left
                        watcher.cancel()

                return StreamingResponse(stream(), media_type=media_type,
                                         headers={"X-Sample-Rate": str(SAMPLE_RATE)})
            parts = []
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "audio":
                        parts.append(value)
                    elif kind == "error":
                        raise api_error(value)
                    else:
                        break
            except asyncio.CancelledError:
                job.cancel.set()
                raise
            finally:
                watcher.cancel()
            if job.cancel.is_set():
                return Response(status_code=499)
            import numpy as np

            audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            data = await loop.run_in_executor(None, encode_audio, audio, SAMPLE_RATE, req["format"])
            return Response(content=data, media_type=media_type)
        finally:
            if not handed_off:
                svc.slots.release()


# ---------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import add_model_arguments

    add_model_arguments(p)
    g = p.add_argument_group("server")
    for action in p._actions:  # serve's own default (see main)
        if action.dest == "threads":
            action.help = "CPU threads for the engine (default: all available but one, left to the HTTP side)"
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for all)")
    g.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    g.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every request (default: $PYLFM_API_KEY, else none)")
    g.add_argument("--max-upload-mb", type=float, default=25, help="largest accepted upload in MB (default 25)")
    g.add_argument("--queue", type=int, default=16,
                   help="requests admitted at once, decoding + waiting; more get 503 (default 16)")
    g.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                   help=f"model id reported by /v1/models (default {DEFAULT_MODEL_NAME})")
    d = p.add_argument_group("decoding")
    d.add_argument("--max-new-tokens", type=int, default=512, help="generation limit per window (default 512)")
    d.add_argument("--window", type=float, default=30.0,
                   help="recordings longer than this (seconds) are split at pauses (default 30)")


def _available_cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(args: argparse.Namespace) -> int:
    import os

    from .cli import load_model
    from .errors import PylfmError

    try:
        import fastapi  # noqa: F401
        try:
            import python_multipart  # noqa: F401
        except ImportError:  # python-multipart < 0.0.13
            import multipart  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise PylfmError(f"pylfm serve needs the server extra: pip install \"pylfm[server]\" ({e})") from None
    api_key = args.api_key or os.environ.get("PYLFM_API_KEY") or None
    if not _is_loopback(args.host) and not api_key:
        log.warning("listening on %s without --api-key: anyone who can reach this port can use the server",
                    args.host)
    if args.threads is None:  # leave a core to the HTTP side (see "Concurrency" above)
        args.threads = max(1, _available_cpus() - 1)
    model = load_model(args)
    app = create_app(model, api_key=api_key, max_upload_mb=args.max_upload_mb, queue_size=args.queue,
                     model_name=args.model_name, max_new_tokens=args.max_new_tokens, window=args.window)
    print(f"pylfm: serving {model.model_path.name} on {model.device} at http://{args.host}:{args.port}/v1 "
          f"(model id {args.model_name!r})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                timeout_graceful_shutdown=5)
    return 0
