"""``pylfm serve``: an OpenAI-compatible speech-to-text server.

    pylfm serve --model LFM2.5-Audio-1.5B-Q8_0.gguf --mmproj mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused")
    text = client.audio.transcriptions.create(model="lfm2-audio", file=open("a.wav", "rb")).text

Endpoints
---------
``POST /v1/audio/transcriptions`` (multipart/form-data), as OpenAI's API:

- ``file`` (required): the recording, in any format pylfm reads. It is decoded in
  memory; nothing is written to disk.
- ``model``: any name is accepted (the server has one model; ``GET /v1/models`` names it).
- ``response_format``: ``json`` (default, ``{"text": ...}``), ``text``, ``srt``, ``vtt``
  or ``verbose_json`` (``task``, ``language`` = ``"unknown"``, ``duration``, ``text``,
  ``segments`` with ``id``/``seek``/``start``/``end``/``text``/``temperature`` and
  pylfm's ``stop_reason``/``avg_logprob``/``compression_ratio``). Subtitle formats and
  verbose_json are decoded in cue-sized windows (``--max-cue``, 10 s).
- ``stream``: ``true`` answers with server-sent events as OpenAI does:
  ``{"type": "transcript.text.delta", "delta": ...}`` per decoded piece, then
  ``{"type": "transcript.text.done", "text": ...}`` (the deltas joined; the same text as
  the ``json`` answer). Only with ``json`` / ``text``; an error after the stream started
  is sent as an event ``{"type": "error", "error": {...}}``.
- ``temperature``: 0 (default) is greedy decoding and deterministic; above 0 samples.
- ``prompt``: given to LFM2-Audio as user text after the audio, i.e. as an instruction
  ("Transcribe and translate to French."), not Whisper's style/vocabulary hint. It is
  plain text (special-token strings in it are not parsed) and at most
  ``--max-prompt-tokens`` (1024) tokens long.
- Accepted and ignored, because the model cannot honour them: ``language`` (LFM2-Audio
  has no language switch; ``language`` in verbose_json is ``"unknown"``),
  ``timestamp_granularities[]`` (segments follow speech regions; there are no word
  timestamps), ``include[]`` (no logprobs), ``chunking_strategy`` and any other field.

``GET /v1/models`` lists the one model; ``GET /health`` (no key needed) reports status
and the queue.

``POST /v1/audio/speech`` (JSON): text to speech with LFM2.5-Audio, as OpenAI's API
(``input``, ``voice``, ``response_format`` mp3/opus/flac/wav/pcm); see
`add_speech_routes` for what is supported.

Concurrency
-----------
All requests share the one loaded `pylfm.Model` and go through its scheduler: windows
of concurrent requests decode together in the engine's sequence slots (continuous
batching, first come first served). Blocking work (audio decoding, waiting for a
result) runs in a thread pool, never on the event loop.

``--queue N`` bounds the requests admitted at once (being uploaded, decoded, waiting or
running); the next one is answered ``503`` with ``Retry-After`` at once, before its body
is read. Each admitted request holds at most its upload (``--max-upload-mib``) and its
decoded audio (``--max-audio-s`` x 64 KiB/s of float32 at 16 kHz, plus a transient copy
at the file's own rate while it is resampled), so the server's peak memory beyond the
model is at most about ``N x (upload + 3 x max_audio_s x 64 KiB)``: 16 x (25 MiB + 3 x
3600 x 64 KiB) = 11 GiB with the defaults; lower ``--max-audio-s`` or ``--queue`` on
small machines.

A client that disconnects stops its work: before decoding, its request is dropped;
while it runs, its windows stop at the engine's next step and their slots go to other
requests.

Safety
------
The server listens on 127.0.0.1 unless ``--host`` says otherwise. With ``--api-key``
every request but ``/health`` needs ``Authorization: Bearer KEY`` (scheme in any case;
else 401). Uploads larger than ``--max-upload-mib`` get 413 (a declared Content-Length
is checked before reading, and the limit is enforced while reading); audio longer than
``--max-audio-s`` gets 413 (from the container header before decoding where it says
the length). Input that is not decodable audio gets 400 with the decoder's message.
Every 5xx is logged with its request id and the exception. Errors use OpenAI's body:
``{"error": {"message", "type", "param", "code"}}``; each response carries
``X-Request-ID``.

FastAPI and uvicorn are the ``server`` extra (``pip install "pylfm[server]"``); they are
imported only when the server is built, so importing this module is cheap.
"""

import argparse
import hmac
import json
import logging
import math
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

if TYPE_CHECKING:  # asyncio is imported when the server is built
    import asyncio

log = logging.getLogger("pylfm.server")

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
STREAM_FORMATS = ("json", "text")
CUE_FORMATS = ("srt", "vtt", "verbose_json")  # decoded in cue-sized windows
DEFAULT_MODEL_NAME = "lfm2-audio"
DEFAULT_MAX_AUDIO_S = 3600.0
DEFAULT_MAX_PROMPT_TOKENS = 1024
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


# ---------------------------------------------------------------------- the service
class _Slots:
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


class _Service:
    """What the routes share: the model, the worker threads, admission, settings."""

    def __init__(self, model: Any, *, api_key: Optional[str], max_upload_mib: float, queue_size: int,
                 model_name: str, max_new_tokens: int, window: float, max_cue: float, max_audio_s: float,
                 max_prompt_tokens: int, vad: Optional[str], fixed_tokens: Optional[int] = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from ..options import TranscribeOptions

        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not max_upload_mib > 0:
            raise ValueError(f"max_upload_mib must be > 0, got {max_upload_mib}")
        if not max_audio_s > 0:
            raise ValueError(f"max_audio_s must be > 0, got {max_audio_s}")
        if max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        # Validated once here, so a bad setting fails at start-up rather than per request.
        self.options = TranscribeOptions(max_new_tokens=max_new_tokens, window=window, vad=vad, max_duration=max_audio_s)
        if fixed_tokens is not None:  # benchmarks: the same work for every request
            self.options = TranscribeOptions(max_new_tokens=fixed_tokens, ignore_eos=True, loop_guard=None, window=window,
                                             vad=vad, max_duration=max_audio_s)
        TranscribeOptions(window=window, max_segment=min(max_cue, window))
        self.model = model
        self.api_key = api_key or None
        self.max_upload_bytes = int(max_upload_mib * _MIB)
        self.model_name = model_name
        self.max_cue = min(float(max_cue), float(window))
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.sample_rate = int(model.sample_rate)
        self.slots = _Slots(queue_size)
        # One thread per admitted request is enough: a request uses one at a time.
        self.executor = ThreadPoolExecutor(max_workers=queue_size, thread_name_prefix="pylfm-serve")
        self.created = int(time.time())
        self.jobs: "set[Any]" = set()
        self._stats_lock = threading.Lock()
        self._mean_s = 1.0  # moving average of a request's time in the engine, for Retry-After
        self.served = 0

    def options_for(self, fields: Dict[str, str], fmt: str) -> Dict[str, Any]:
        """The TranscribeOptions of one request."""
        from dataclasses import asdict

        options = asdict(self.options)
        options["loop_guard"] = self.options.loop_guard  # asdict would turn it into a dict
        options["temperature"] = _temperature(fields.get("temperature"))
        prompt = fields.get("prompt") or None
        if prompt is not None and self.model.count_tokens(prompt) > self.max_prompt_tokens:
            raise APIError(400, f"the prompt is {self.model.count_tokens(prompt)} tokens long; this server takes at "
                                f"most {self.max_prompt_tokens} (pylfm serve --max-prompt-tokens)", param="prompt",
                           code="prompt_too_long")
        options["prompt"] = prompt
        if fmt in CUE_FORMATS:
            options["max_segment"] = self.max_cue
        return options

    def decode_audio(self, data: bytes):
        from ..audio import load_audio

        return load_audio(data, target_rate=self.sample_rate, max_duration=self.options.max_duration)

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

    def shutdown(self) -> None:
        for job in list(self.jobs):
            job.cancel()
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
                              "(pylfm serve --max-upload-mib)", code="file_too_large", param="file")
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
    return f"{n / _MIB:g} MiB"


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
    if not math.isfinite(t):
        raise APIError(400, f"temperature must be a finite number between 0 and 2, got {value}", param="temperature")
    if not 0.0 <= t <= 2.0:
        raise APIError(400, f"temperature must be between 0 and 2, got {value}", param="temperature")
    return t


# ---------------------------------------------------------------------- responses
def _verbose(result: Any) -> Dict[str, Any]:
    return {
        "task": "transcribe",
        "language": "unknown",
        "duration": round(result.duration, 3),
        "text": result.text,
        "segments": [{"id": s.id, "seek": int(round(s.start * 100)), "start": round(s.start, 3),
                      "end": round(s.end, 3), "text": s.text, "temperature": s.temperature,
                      "avg_logprob": s.avg_logprob, "compression_ratio": s.compression_ratio,
                      "stop_reason": s.stop_reason}
                     for s in result.segments],
        "usage": {"type": "duration", "seconds": round(result.duration, 3)},
    }


# The form as /docs shows it (the body is parsed by hand, with limits, so FastAPI
# cannot infer it).
_OPENAPI_TRANSCRIPTIONS = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "any audio or video file (wav, flac, mp3, m4a, ogg/opus, webm, mp4, ...)"},
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
    """Pure ASGI middleware: every HTTP request but ``/health`` needs
    ``Authorization: Bearer KEY`` (the scheme in any case, as RFC 7235 says)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode("utf-8")

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") != "/health":
            got = b""
            for k, v in scope.get("headers", []):
                if k == b"authorization":
                    got = v.strip()
                    break
            scheme, _, key = got.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(key.strip(), self.expected):
                message = ("missing API key: send 'Authorization: Bearer KEY'" if not got else "invalid API key")
                body = json.dumps(error_body(message, "invalid_request_error", "invalid_api_key")).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b"Bearer"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class _RequestIdMiddleware:
    """Pure ASGI middleware: every request gets an id (the client's ``X-Request-ID`` if it
    is sane, else a new one), kept in ``request.state.request_id`` for the logs and sent
    back in the ``X-Request-ID`` header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for k, v in scope.get("headers", []):
            if k == b"x-request-id":
                rid = v.decode("latin-1").strip()
        if not (0 < len(rid) <= 64 and all(c.isalnum() or c in "-_.:" for c in rid)):
            rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + [(b"x-request-id", rid.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


# ---------------------------------------------------------------------- the app
def create_app(model: Any, *, api_key: Optional[str] = None, max_upload_mib: float = 25, queue_size: int = 16,
               model_name: str = DEFAULT_MODEL_NAME, max_new_tokens: int = 512, window: float = 30.0,
               max_cue: float = 10.0, max_audio_s: float = DEFAULT_MAX_AUDIO_S,
               max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, vad: Optional[str] = "silero",
               fixed_tokens: Optional[int] = None):
    """The FastAPI app serving ``model`` (a `pylfm.Model`, shared by all requests).

    Args:
        api_key: when set, every request but /health needs ``Authorization: Bearer <api_key>``.
        max_upload_mib: the largest accepted upload in MiB (413 above it).
        queue_size: requests admitted at once (uploading, decoding, waiting, running); more get 503.
        model_name: the id ``GET /v1/models`` reports.
        max_new_tokens: generation limit per window.
        window: the most audio decoded at once (seconds); longer recordings are cut at pauses.
        max_cue: window limit for srt / vtt / verbose_json answers (subtitle cues).
        max_audio_s: the longest accepted recording (413 above it).
        max_prompt_tokens: the longest accepted ``prompt`` (400 above it).
        vad: the speech detector for long recordings ("silero", "energy" or None).
        fixed_tokens: for benchmarks: every window generates exactly this many tokens.
    """
    import asyncio
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .. import __version__
    from ..errors import AudioError, AudioTooLongError, PylfmError, TranscriptionCancelled
    from ..formats import to_srt, to_vtt

    svc = _Service(model, api_key=api_key, max_upload_mib=max_upload_mib, queue_size=queue_size,
                   model_name=model_name, max_new_tokens=max_new_tokens, window=window, max_cue=max_cue,
                   max_audio_s=max_audio_s, max_prompt_tokens=max_prompt_tokens, vad=vad, fixed_tokens=fixed_tokens)

    @asynccontextmanager
    async def lifespan(_app: Any):
        yield
        svc.shutdown()

    app = FastAPI(title="pylfm", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible speech-to-text with LFM2-Audio on llama.cpp")
    app.state.pylfm = svc
    if svc.api_key:
        app.add_middleware(_AuthMiddleware, api_key=svc.api_key)
    app.add_middleware(_RequestIdMiddleware)  # outermost: 401s get an id too

    def rid_of(request: Any) -> str:
        return getattr(request.state, "request_id", "-")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        headers = dict(exc.headers)
        if exc.status == 413:
            headers["Connection"] = "close"
        if exc.status >= 500:
            cause = exc.__cause__
            log.log(logging.ERROR if cause is not None else logging.WARNING, "request %s answered %d: %s",
                    rid_of(request), exc.status, exc.message,
                    exc_info=(type(cause), cause, cause.__traceback__) if cause is not None else None)
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(str(exc.errors()), "invalid_request_error"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("request %s answered 500", rid_of(request), exc_info=(type(exc), exc, exc.__traceback__))
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    @app.get("/health")
    async def health() -> Dict[str, Any]:
        return {"status": "ok", "version": __version__, "model": svc.model_name,
                "device": getattr(model, "device", None),
                "queue": {"admitted": svc.slots.in_use, "capacity": svc.slots.capacity,
                          "decoding": model.scheduler.busy, "slots": model.batch_size},
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
            raise APIError(503, f"the server is busy ({svc.slots.capacity} requests admitted); retry later",
                           type="server_error", code="server_busy", headers={"Retry-After": str(svc.retry_after())})
        handed_off = False  # a streaming answer releases its slot when its stream ends
        watcher = None
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
            options = svc.options_for(fields, fmt)
            loop = asyncio.get_running_loop()
            client = _Client()
            watcher = _watch_disconnect(request, client, loop)
            try:
                pcm = await loop.run_in_executor(svc.executor, svc.decode_audio, data)
            except AudioTooLongError as e:
                length = f"{e.duration:.1f} s long" if e.duration is not None else "longer than that"
                raise APIError(413, f"{filename or 'the upload'} is {length}; this server accepts at most "
                                    f"{svc.options.max_duration:g} s (pylfm serve --max-audio-s)", param="file",
                               code="audio_too_long") from None
            except (AudioError, ValueError, TypeError) as e:
                raise APIError(400, f"{filename or 'the upload'} is not usable audio: {e}", param="file",
                               code="invalid_audio") from None
            del data
            if client.gone.is_set():
                return Response(status_code=499)  # nobody is listening
            job = model.submit(pcm, sample_rate=svc.sample_rate, stream=stream, **options)
            client.attach(job)
            if stream:
                response = _stream(job, request, watcher)
                handed_off = True
                return response
            t0 = time.monotonic()
            svc.jobs.add(job)
            try:
                result = await loop.run_in_executor(svc.executor, job.result)
            except TranscriptionCancelled:
                return Response(status_code=499)
            except asyncio.CancelledError:
                job.cancel()
                raise
            finally:
                svc.jobs.discard(job)
                svc.record(time.monotonic() - t0)
            return _render(result, fmt)
        except APIError:
            raise
        except PylfmError as e:
            raise APIError(500, f"transcription failed: {e}", type="server_error") from e
        except Exception as e:
            raise APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error") from e
        finally:
            if not handed_off:
                svc.slots.release()
                if watcher is not None:
                    watcher.cancel()

    def _render(result: Any, fmt: str):
        if fmt == "text":
            return PlainTextResponse(result.text)
        if fmt == "srt":
            return PlainTextResponse(to_srt(result.segments))
        if fmt == "vtt":
            return PlainTextResponse(to_vtt(result.segments), media_type="text/vtt")
        if fmt == "verbose_json":
            return JSONResponse(_verbose(result))
        return JSONResponse({"text": result.text, "usage": {"type": "duration", "seconds": round(result.duration, 3)}})

    def _stream(job: Any, request: Any, watcher: "asyncio.Task"):
        """Server-sent events of ``job``'s pieces; its slot is released when the stream ends."""
        loop = asyncio.get_running_loop()
        queue: "asyncio.Queue[Tuple[str, Any]]" = asyncio.Queue()
        t0 = time.monotonic()

        def put(item: Tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: the server is shutting down
                job.cancel()

        def pump() -> None:
            try:
                for piece in job.pieces():
                    put(("delta", piece))
                put(("end", None))
            except TranscriptionCancelled:
                put(("end", None))
            except Exception as e:
                log.error("request %s: streamed transcription failed", rid_of(request),
                          exc_info=(type(e), e, e.__traceback__))
                put(("error", e))

        def finished(_f: Any) -> None:
            svc.jobs.discard(job)
            svc.record(time.monotonic() - t0)
            svc.slots.release()

        svc.jobs.add(job)
        svc.executor.submit(pump).add_done_callback(finished)

        async def events():
            parts: List[str] = []
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "delta":
                        parts.append(value)
                        yield _sse({"type": "transcript.text.delta", "delta": value})
                    elif kind == "error":
                        yield _sse({"type": "error", **error_body(f"transcription failed: {value}", "server_error")})
                        return
                    else:
                        if not job.cancelled:
                            yield _sse({"type": "transcript.text.done", "text": "".join(parts)})
                        return
            finally:
                job.cancel()  # a no-op when done; otherwise the client left: stop decoding
                watcher.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    add_speech_routes(app, svc)
    return app


class _Client:
    """Whether a request's client is still there, and the job to stop when it leaves."""

    def __init__(self) -> None:
        self.gone = threading.Event()
        self._job: Any = None
        self._lock = threading.Lock()

    def attach(self, job: Any) -> None:
        with self._lock:
            self._job = job
        if self.gone.is_set():
            job.cancel()

    def leave(self) -> None:
        self.gone.set()
        with self._lock:
            job = self._job
        if job is not None:
            job.cancel()  # its windows stop at the engine's next step


def _watch_disconnect(request: Any, client: _Client, loop: "asyncio.AbstractEventLoop") -> "asyncio.Task":
    """A task that marks ``client`` gone when the client disconnects. Only start it once
    the request body has been read (it consumes the ASGI receive channel)."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                client.leave()
                return

    return loop.create_task(watch())


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
    (0.8; 0 = greedy), ``seed`` (reproducible audio) and ``max_duration`` (seconds,
    60). ``instructions`` and ``stream_format: "sse"`` are not supported (400). The
    speech GGUFs load with the first request; a model without them answers 501.
    Requests are admitted like transcriptions (``--queue``); speech runs on its own
    context of the shared model (one generation at a time, in arrival order), beside
    the transcription scheduler. A client that goes away stops the generation at the
    next audio frame.
    """
    import asyncio

    from fastapi import Request
    from fastapi.responses import Response, StreamingResponse

    from ..errors import ModelLoadError, PylfmError
    from ..speech import AUDIO_FORMATS, SAMPLE_RATE, SpeechError, encode_audio, tts_system_prompt

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

    class SpeechJob:
        """A request's generation, stopped by ``cancel()`` (its client left, or shutdown)."""

        def __init__(self) -> None:
            self.stop = threading.Event()

        def cancel(self) -> None:
            self.stop.set()

    def generate(job: SpeechJob, req: Dict[str, Any], emit: Callable[[Any], None]) -> None:
        """Runs on a worker thread; hands each audio chunk (float32) to ``emit``."""
        it = svc.model.speak(req["text"], stream=True, **req["options"])
        try:
            for chunk in it:
                if job.stop.is_set():
                    break
                emit(chunk)
        finally:
            it.close()  # cancels the generation if it is still running

    def api_error(e: BaseException) -> APIError:
        if isinstance(e, ModelLoadError):
            return APIError(501, f"this server's model cannot speak: {e}", type="server_error",
                            code="speech_unavailable")
        if isinstance(e, SpeechError):
            return APIError(400, str(e))
        if isinstance(e, PylfmError):
            return APIError(500, f"speech generation failed: {e}", type="server_error")
        log.error("speech request failed", exc_info=(type(e), e, e.__traceback__))
        return APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")

    @app.post("/v1/audio/speech", summary="Text to speech (OpenAI-compatible)")
    async def speech(request: Request):
        if not svc.slots.try_acquire():
            raise APIError(503, f"the server is busy ({svc.slots.capacity} requests admitted); retry later",
                           type="server_error", code="server_busy", headers={"Retry-After": str(svc.retry_after())})
        handed_off = False  # a streamed answer releases its slot when the generation ends
        watcher = None
        try:
            try:
                body = await request.json()
            except ValueError:
                raise APIError(400, "the body is not JSON; send {\"input\": \"...\", \"voice\": \"US female\"}") from None
            req = parse(body)
            loop = asyncio.get_running_loop()
            client = _Client()
            watcher = _watch_disconnect(request, client, loop)
            job = SpeechJob()
            client.attach(job)
            media_type = AUDIO_FORMATS[req["format"]][2]
            queue: "asyncio.Queue[Tuple[str, Any]]" = asyncio.Queue()

            def put(item: Tuple[str, Any]) -> None:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                except RuntimeError:  # the loop is closed: shutting down
                    job.cancel()

            def work() -> None:
                try:
                    generate(job, req, lambda a: put(("audio", a)))
                    put(("end", None))
                except Exception as e:
                    put(("error", e))

            t0 = time.monotonic()

            def finished(_f: Any) -> None:
                svc.jobs.discard(job)
                svc.record(time.monotonic() - t0)
                svc.slots.release()

            svc.jobs.add(job)
            svc.executor.submit(work).add_done_callback(finished)
            handed_off = True

            if req["format"] == "pcm":  # raw samples, sent as they are generated
                first = await queue.get()  # an error before any audio still gets a proper status
                if first[0] == "error":
                    job.cancel()
                    raise api_error(first[1])

                async def stream():
                    item = first
                    try:
                        while item[0] == "audio":
                            yield encode_audio(item[1], SAMPLE_RATE, "pcm")
                            item = await queue.get()
                    finally:
                        job.cancel()  # a no-op when done; otherwise the client left
                        watcher.cancel()

                return StreamingResponse(stream(), media_type=media_type, headers={"X-Sample-Rate": str(SAMPLE_RATE)})
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
                job.cancel()
                raise
            finally:
                watcher.cancel()
            if client.gone.is_set():
                return Response(status_code=499)  # nobody is listening
            import numpy as np

            audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            data = await loop.run_in_executor(None, encode_audio, audio, SAMPLE_RATE, req["format"])
            return Response(content=data, media_type=media_type)
        finally:
            if not handed_off:
                svc.slots.release()
                if watcher is not None:
                    watcher.cancel()


# ---------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli import add_model_arguments

    add_model_arguments(p)
    g = p.add_argument_group("server")
    for action in p._actions:  # serve's own default (see main)
        if action.dest == "threads":
            action.help = "CPU threads for the engine (default: all available but one, left to the HTTP side)"
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for all)")
    g.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    g.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every request but /health "
                        "(default: $PYLFM_API_KEY, else none)")
    g.add_argument("--max-upload-mib", "--max-upload-mb", dest="max_upload_mib", type=float, default=25,
                   help="largest accepted upload in MiB (default 25)")
    g.add_argument("--max-audio-s", type=float, default=DEFAULT_MAX_AUDIO_S,
                   help=f"longest accepted recording in seconds (default {DEFAULT_MAX_AUDIO_S:g})")
    g.add_argument("--max-prompt-tokens", type=int, default=DEFAULT_MAX_PROMPT_TOKENS,
                   help=f"longest accepted prompt in tokens (default {DEFAULT_MAX_PROMPT_TOKENS})")
    g.add_argument("--queue", type=int, default=16,
                   help="requests admitted at once (uploading, decoding, waiting, running); more get 503 (default 16)")
    g.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                   help=f"model id reported by /v1/models (default {DEFAULT_MODEL_NAME})")
    d = p.add_argument_group("decoding")
    d.add_argument("--max-new-tokens", type=int, default=512, help="generation limit per window (default 512)")
    d.add_argument("--window", type=float, default=30.0,
                   help="the most audio decoded at once, seconds; longer recordings are cut at pauses (default 30)")
    d.add_argument("--max-cue", type=float, default=10.0,
                   help="window limit for srt/vtt/verbose_json answers, seconds (default 10)")
    d.add_argument("--vad", choices=("silero", "energy", "none"), default="silero",
                   help="speech detector for long recordings (default silero)")
    d.add_argument("--fixed-tokens", type=int, default=None, metavar="N",
                   help="benchmarks: generate exactly N tokens per window, ignoring end-of-generation")


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

    from ..cli import load_model
    from ..errors import PylfmError

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
    if args.threads is None:  # leave a core to the HTTP side
        args.threads = max(1, _available_cpus() - 1)
    model = load_model(args)
    app = create_app(model, api_key=api_key, max_upload_mib=args.max_upload_mib, queue_size=args.queue,
                     model_name=args.model_name, max_new_tokens=args.max_new_tokens, window=args.window,
                     max_cue=args.max_cue, max_audio_s=args.max_audio_s, max_prompt_tokens=args.max_prompt_tokens,
                     vad=None if args.vad == "none" else args.vad, fixed_tokens=args.fixed_tokens)
    print(f"pylfm: serving {model.model_path.name} on {model.device} at http://{args.host}:{args.port}/v1 "
          f"(model id {args.model_name!r})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                timeout_graceful_shutdown=5)
    return 0
