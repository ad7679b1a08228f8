"""The FastAPI app: `create_app`, ``GET /health``, ``GET /v1/models`` and
``POST /v1/audio/transcriptions`` (the speech route is added from `pylfm.server.speech`).

``POST /v1/audio/transcriptions`` (multipart/form-data), as OpenAI's API:

- ``file`` (required): the recording, in any format pylfm reads. It is decoded in
  memory; nothing is written to disk.
- ``model``: any name is accepted (the server has one model; ``GET /v1/models`` names it).
- ``response_format``: ``json`` (default, ``{"text": ...}``), ``text``, ``srt``, ``vtt``
  or ``verbose_json`` (``task``, ``language`` = ``"unknown"``, ``duration``, ``text``,
  ``segments`` with ``id``/``seek``/``start``/``end``/``text``/``tokens``/``temperature``
  and pylfm's ``stop_reason``/``avg_logprob``/``compression_ratio``). Subtitle formats
  and verbose_json are decoded in cue-sized windows (``--max-cue``, 10 s).
- ``stream``: ``true`` answers with server-sent events as OpenAI does:
  ``{"type": "transcript.text.delta", "delta": ...}`` per decoded piece, then
  ``{"type": "transcript.text.done", "text": ...}`` (the deltas joined; the same text as
  the ``json`` answer). Only with ``json`` / ``text``. The status is sent with the first
  event, so a request that fails before any text gets the same status as without
  ``stream``; an error after the stream started is sent as an event
  ``{"type": "error", "error": {...}}``.
- ``temperature``: 0 (default) is greedy decoding and deterministic; above 0 samples.
- ``prompt``: given to LFM2-Audio as user text after the audio, i.e. as an instruction
  ("Transcribe and translate to French."), not Whisper's style/vocabulary hint. It is
  plain text (special-token strings in it are not parsed) and at most
  ``--max-prompt-tokens`` (1024) tokens long.
- Accepted and ignored, because the model cannot honour them: ``language`` (LFM2-Audio
  has no language switch; ``language`` in verbose_json is ``"unknown"``),
  ``timestamp_granularities[]`` (segments follow speech regions; there are no word
  timestamps), ``include[]`` (no logprobs), ``chunking_strategy`` and any other field.

A request is admitted (``--queue``) before its body is read and holds its place while
it is uploaded, decoded and planned (on a worker thread: the event loop only moves bytes,
so ``/health`` and every other connection keep answering) and transcribed. Its windows go to the
model's scheduler with everyone else's. When every window fails because of the request
itself (its prompt and audio do not fit a sequence's context) the answer is 400
(``context_length_exceeded``); any other failure of every window is a 500, logged with
the request id. A window that fails inside a long recording is reported on its segment
(``stop_reason`` "error") and the answer carries every other window's text.
"""

import json
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from .disconnect import Client, watch_disconnect
from .errors import APIError, error_body
from .forms import flag, read_form, temperature
from .middleware import AuthMiddleware, RequestIdMiddleware, request_id
from ..transcription.options import DEFAULT_CUE_S, DEFAULT_MAX_NEW_TOKENS
from ..vad import DEFAULT_WINDOW_S
from .service import DEFAULT_MAX_AUDIO_S, DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_MAX_SPEECH_S, DEFAULT_MODEL_NAME, Service
from .speech import add_speech_routes

if TYPE_CHECKING:  # asyncio is imported when the server is built
    import asyncio

    from .realtime import RealtimeSettings  # imported with the app: it loads the engine's live layer

log = logging.getLogger("pylfm.server")

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
STREAM_FORMATS = ("json", "text")
CUE_FORMATS = ("srt", "vtt", "verbose_json")  # decoded in cue-sized windows

# What the engine says when a window cannot be decoded because of what the request asked
# for: its prompt and audio need more tokens than a sequence's context holds.
_REQUEST_FAILURES = ("prompt tokens",)


# ---------------------------------------------------------------------- requests
def transcription_options(svc: Service, fields: Dict[str, str], fmt: str) -> Dict[str, Any]:
    """The `TranscribeOptions` (as keyword arguments) of one request."""
    from dataclasses import asdict

    options = asdict(svc.options)
    options["loop_guard"] = svc.options.loop_guard  # asdict would turn it into a dict
    options["temperature"] = temperature(fields.get("temperature"))
    prompt = fields.get("prompt") or None
    if prompt is not None:
        n = svc.model.count_tokens(prompt)
        if n > svc.max_prompt_tokens:
            raise APIError(400, f"the prompt is {n} tokens long; this server takes at most {svc.max_prompt_tokens} "
                                "(pylfm serve --max-prompt-tokens)", param="prompt", code="prompt_too_long")
    options["prompt"] = prompt
    if fmt in CUE_FORMATS:
        options["max_segment"] = svc.max_cue
    return options


def transcription_failure(exc: BaseException, job: Any, prompt: Optional[str]) -> APIError:
    """The answer for ``job`` whose windows all failed (``exc``, raised by the job): 400
    when each failed because of the request itself, else 500 (``exc`` is its cause)."""
    errors = [s.error for s in job.transcription().segments if s.error]
    if errors and all(any(m in e for m in _REQUEST_FAILURES) for e in errors):
        return APIError(400, f"the recording cannot be transcribed with this request: {errors[0]}",
                        code="context_length_exceeded", param="prompt" if prompt else "file")
    message = str(exc)
    if not message.startswith("transcription failed"):
        message = f"transcription failed: {message}"
    return APIError(500, message, type="server_error")


# ---------------------------------------------------------------------- responses
def _verbose(result: Any) -> Dict[str, Any]:
    return {
        "task": "transcribe",
        "language": "unknown",
        "duration": round(result.duration, 3),
        "text": result.text,
        "segments": [{"id": s.id, "seek": int(round(s.start * 100)), "start": round(s.start, 3),
                      "end": round(s.end, 3), "text": s.text, "tokens": list(s.tokens),
                      "temperature": s.temperature, "avg_logprob": s.avg_logprob,
                      "compression_ratio": s.compression_ratio, "stop_reason": s.stop_reason}
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


# ---------------------------------------------------------------------- the app
def create_app(model: Any, *, api_key: Optional[str] = None, max_upload_mib: float = 25, queue_size: int = 16,
               model_name: str = DEFAULT_MODEL_NAME, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               window: float = DEFAULT_WINDOW_S, max_cue: float = DEFAULT_CUE_S,
               max_audio_s: float = DEFAULT_MAX_AUDIO_S,
               max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, vad: Optional[str] = "silero",
               fixed_tokens: Optional[int] = None, max_speech_s: float = DEFAULT_MAX_SPEECH_S,
               realtime: Optional["RealtimeSettings"] = None):
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
        max_speech_s: the most speech one ``/v1/audio/speech`` request generates (seconds;
            longer input is 400, a larger ``max_duration`` too).
        realtime: the limits of ``/v1/realtime`` and of speech replies (`RealtimeSettings`).
    """
    import asyncio
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .. import __version__
    from ..errors import AudioError, AudioTooLongError, PylfmError, TranscriptionCancelled
    from ..transcription.formats import to_srt, to_vtt

    svc = Service(model, api_key=api_key, max_upload_mib=max_upload_mib, queue_size=queue_size,
                  model_name=model_name, max_new_tokens=max_new_tokens, window=window, max_cue=max_cue,
                  max_audio_s=max_audio_s, max_prompt_tokens=max_prompt_tokens, vad=vad, fixed_tokens=fixed_tokens,
                  max_speech_s=max_speech_s)

    from .realtime import RealtimeHub, RealtimeSettings, add_realtime_routes

    hub = RealtimeHub(model, realtime or RealtimeSettings(), api_key=svc.api_key, model_name=svc.model_name,
                      max_new_tokens=svc.options.max_new_tokens)

    @asynccontextmanager
    async def lifespan(_app: Any):
        yield
        await hub.close_all()
        svc.shutdown()

    app = FastAPI(title="pylfm", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible speech-to-text with LFM2-Audio on llama.cpp")
    app.state.pylfm = svc
    if svc.api_key:
        app.add_middleware(AuthMiddleware, api_key=svc.api_key)
    app.add_middleware(RequestIdMiddleware)  # outermost: 401s get an id too

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        headers = dict(exc.headers)
        if exc.status == 413:
            headers["Connection"] = "close"
        if exc.status >= 500:
            cause = exc.__cause__
            log.log(logging.ERROR if cause is not None else logging.WARNING, "request %s answered %d: %s",
                    request_id(request), exc.status, exc.message,
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
        log.error("request %s answered 500", request_id(request), exc_info=(type(exc), exc, exc.__traceback__))
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    @app.get("/health")
    async def health() -> Dict[str, Any]:
        return {"status": "ok", "version": __version__, "model": svc.model_name,
                "device": getattr(model, "device", None),
                "queue": {"admitted": svc.slots.in_use, "capacity": svc.slots.capacity,
                          "decoding": model.scheduler.busy, "slots": model.batch_size},
                "realtime": hub.stats(), "served": svc.served}

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
        svc.admit()
        handed_off = False  # a streaming answer releases its slot when its stream ends
        watcher = None
        try:
            fields, (filename, data) = await read_form(request, svc.max_upload_bytes)
            fmt = (fields.get("response_format") or "json").strip()
            if fmt not in RESPONSE_FORMATS:
                raise APIError(400, f"response_format {fmt!r} is not supported; use one of "
                                    f"{', '.join(RESPONSE_FORMATS)}", param="response_format")
            stream = flag(fields.get("stream"), "stream")
            if stream and fmt not in STREAM_FORMATS:
                raise APIError(400, f"stream=true works with response_format json or text, not {fmt!r}",
                               param="stream")
            loop = asyncio.get_running_loop()
            client = Client()
            watcher = watch_disconnect(request, client, loop)
            upload = [data]  # handed over: the bytes are dropped as soon as they are decoded
            del data

            def prepare() -> Tuple[Dict[str, Any], Any]:
                # On a worker thread, never on the event loop: the prompt's tokens, decoding
                # the upload and planning its windows (Silero runs over the whole recording:
                # seconds for an hour), then the job goes to the scheduler.
                options = transcription_options(svc, fields, fmt)
                try:
                    pcm = svc.decode_audio(upload.pop())
                except AudioTooLongError as e:
                    length = f"{e.duration:.1f} s long" if e.duration is not None else "longer than that"
                    raise APIError(413, f"{filename or 'the upload'} is {length}; this server accepts at most "
                                        f"{svc.options.max_duration:g} s (pylfm serve --max-audio-s)", param="file",
                                   code="audio_too_long") from None
                except (AudioError, ValueError, TypeError) as e:
                    raise APIError(400, f"{filename or 'the upload'} is not usable audio: {e}", param="file",
                                   code="invalid_audio") from None
                if client.gone.is_set():
                    return options, None  # nobody is listening
                job = model.submit(pcm, sample_rate=svc.sample_rate, stream=stream, **options)
                client.attach(job)  # cancels it at once if the client left meanwhile
                return options, job

            try:
                options, job = await loop.run_in_executor(svc.executor, prepare)
            except asyncio.CancelledError:
                client.leave()  # the server is stopping: a job submitted meanwhile is cancelled
                raise
            if job is None or client.gone.is_set():
                return Response(status_code=499)  # nobody is listening
            if stream:
                queue = start_stream(job)
                handed_off = True
                return await stream_response(request, job, queue, watcher, options["prompt"])
            t0 = time.monotonic()
            svc.jobs.add(job)
            try:
                result = await loop.run_in_executor(svc.executor, job.result)
            except TranscriptionCancelled:
                return Response(status_code=499)
            except PylfmError as e:
                raise transcription_failure(e, job, options["prompt"]) from e
            except asyncio.CancelledError:
                job.cancel()
                raise
            finally:
                svc.jobs.discard(job)
                svc.record(time.monotonic() - t0)
            return render(result, fmt)
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

    def render(result: Any, fmt: str):
        if fmt == "text":
            return PlainTextResponse(result.text)
        if fmt == "srt":
            return PlainTextResponse(to_srt(result.segments))
        if fmt == "vtt":
            return PlainTextResponse(to_vtt(result.segments), media_type="text/vtt")
        if fmt == "verbose_json":
            return JSONResponse(_verbose(result))
        return JSONResponse({"text": result.text, "usage": {"type": "duration", "seconds": round(result.duration, 3)}})

    def start_stream(job: Any) -> "asyncio.Queue[Tuple[str, Any]]":
        """Starts pumping ``job``'s pieces on a worker thread into the returned queue, as
        ("delta", text)... then ("end", None) or ("error", exception); the request's
        slot is released when the pump ends."""

        def pump(emit: Callable[[str], None]) -> None:
            try:
                for piece in job.pieces():
                    emit(piece)
            except TranscriptionCancelled:
                pass  # ends like a finished stream

        return svc.start_worker(job, pump, "delta")

    async def stream_response(request: Any, job: Any, queue: "asyncio.Queue[Tuple[str, Any]]", watcher: "asyncio.Task",
                              prompt: Optional[str]):
        """Server-sent events of the pumped pieces. The answer starts with the first
        event, so a failure before any text gets its own status."""
        try:
            first = await queue.get()
        except asyncio.CancelledError:
            job.cancel()
            watcher.cancel()
            raise
        if first[0] == "error":
            watcher.cancel()
            raise transcription_failure(first[1], job, prompt) from first[1]

        async def events():
            parts: List[str] = []
            kind, value = first
            try:
                while True:
                    if kind == "delta":
                        parts.append(value)
                        yield _sse({"type": "transcript.text.delta", "delta": value})
                    elif kind == "error":
                        err = transcription_failure(value, job, prompt)
                        if err.status >= 500:
                            log.error("request %s: streamed transcription failed", request_id(request),
                                      exc_info=(type(value), value, value.__traceback__))
                        yield _sse({"type": "error", **err.body()})
                        return
                    else:
                        if not job.cancelled:
                            yield _sse({"type": "transcript.text.done", "text": "".join(parts)})
                        return
                    kind, value = await queue.get()
            finally:
                job.cancel()  # a no-op when done; otherwise the client left: stop decoding
                watcher.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    from .chat_completions import add_chat_routes
    from .page import add_page_routes

    add_speech_routes(app, svc)
    add_chat_routes(app, svc, max_reply_s=hub.settings.max_reply_s)
    add_realtime_routes(app, hub)
    add_page_routes(app)
    return app
