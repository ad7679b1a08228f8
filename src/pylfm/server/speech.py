"""``POST /v1/audio/speech``: OpenAI-compatible text to speech with LFM2.5-Audio."""

import json
import logging
import math
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from .disconnect import Client, watch_disconnect
from .errors import APIError
from .forms import read_body

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("pylfm.server")

SPEECH_MAX_INPUT = 4096  # characters, as OpenAI's /v1/audio/speech


def add_speech_routes(app: Any, svc: "Service") -> None:
    """``POST /v1/audio/speech``: OpenAI-compatible text to speech (LFM2.5-Audio).

    JSON body (at most 1 MiB, and at most ``--max-upload-mib``; 413 above): ``input``
    (required, at most 4096 characters), ``model`` (any name), ``voice`` ("US female"
    (default), "US male", "UK female", "UK male"; OpenAI's voice names are not these and
    get 400), ``response_format`` ``mp3`` (default), ``opus``, ``flac``, ``wav`` or
    ``pcm`` (raw 16-bit little-endian mono at 24 kHz, streamed as it is generated),
    ``speed`` (only 1.0: the model speaks at its own pace; anything else gets 400 rather
    than being ignored), and pylfm extensions: ``temperature`` (0.8; 0 = greedy),
    ``seed`` (reproducible audio) and ``max_duration`` (seconds). ``instructions`` and
    ``stream_format: "sse"`` are not supported (400). The speech GGUFs load with the first
    request; a model without them answers 501.

    Length: a request makes at most ``--max-speech-s`` seconds of speech, and the answer
    is never cut silently. Without ``max_duration`` the whole input must be spoken: input
    that needs more than ``--max-speech-s`` (at least one second per 25 characters, faster
    than anyone speaks) is 400 before anything is generated, and a generation that still
    reaches the limit (stop reason ``length``) is 400 too, with the limit named (the other
    formats are answered only when the audio is complete); a ``pcm`` stream, already
    under way, then ends without its last chunk (a broken transfer, not a complete answer).
    ``max_duration`` asks for at most that much speech (up to ``--max-speech-s``; more is
    400): the audio stops there if the text needs more, and ``X-Speech-Stop-Reason``
    (``length``, or ``audio_end`` when the model finished) says which.

    Requests are admitted like transcriptions (``--queue``: the same places, and the
    memory bound counts both) and decode in the engine's loop beside them. The request's
    job is built, run and its audio encoded on a worker thread; a client that goes away
    stops the generation at the engine's next step.
    """
    import asyncio

    from fastapi import Request
    from fastapi.responses import Response, StreamingResponse

    from ..errors import ModelLoadError, PylfmError, SpeechError
    from ..speech.audio_file import AUDIO_FORMATS, encode_audio
    from ..speech.generate import min_speech_seconds
    from ..speech.istft import SAMPLE_RATE
    from ..speech.voices import tts_system_prompt

    limit_flag = "pylfm serve --max-speech-s"

    def field_error(message: str, param: str, code: Optional[str] = None) -> APIError:
        return APIError(400, message, param=param, code=code)

    def too_long(seconds: Optional[float] = None) -> APIError:
        need = f"at least {seconds:.1f} s" if seconds is not None else f"more than {svc.max_speech_s:g} s"
        return field_error(f"'input' needs {need} of speech; this server makes at most {svc.max_speech_s:g} s per "
                           f"request ({limit_flag}): split the text into shorter requests", "input", "input_too_long")

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
        for key in ("temperature", "seed"):
            if body.get(key) is not None:
                opts[key] = body[key]
        asked = body.get("max_duration")
        if asked is None:  # all of the input must be spoken, within the server's limit
            need = min_speech_seconds(text)
            if need > svc.max_speech_s:
                raise too_long(need)
            opts["max_duration"] = svc.max_speech_s
        else:  # the client's own bound: stopping there is what it asked for
            if isinstance(asked, bool) or not isinstance(asked, (int, float)) or not math.isfinite(asked) or asked <= 0:
                raise field_error(f"max_duration must be a positive number of seconds, got {asked!r}", "max_duration")
            if asked > svc.max_speech_s:
                raise field_error(f"max_duration is {asked:g} s; this server makes at most {svc.max_speech_s:g} s of "
                                  f"speech per request ({limit_flag})", "max_duration", "max_duration_too_large")
            opts["max_duration"] = float(asked)
        return {"text": text, "format": fmt, "options": opts, "cut_is_error": asked is None}

    class SpeechRequest:
        """A request's generation, stopped by ``cancel()`` (its client left, or shutdown)."""

        def __init__(self) -> None:
            self.stop = threading.Event()
            self.job: Any = None
            self._lock = threading.Lock()

        def attach(self, job: Any) -> None:
            with self._lock:
                self.job = job
            if self.stop.is_set():
                job.cancel()

        def cancel(self) -> None:
            self.stop.set()
            with self._lock:
                job = self.job
            if job is not None:
                job.cancel()  # at the engine's next step

    def generate(handle: SpeechRequest, req: Dict[str, Any], emit: Callable[[Any], None]) -> str:
        """Runs on a worker thread: builds, submits and follows the request's job. ``pcm``
        emits each chunk's bytes as it comes; another format emits the whole file once
        (none when the answer is cut at the server's limit: it is not sent). Returns the
        stop reason."""
        job = svc.speech_job(req["text"], req["options"])
        handle.attach(job)
        svc.model.speech_runtime.submit(job)  # loads the speech GGUFs on first use
        chunks = job.chunks()
        parts = []
        try:
            for chunk in chunks:
                if handle.stop.is_set():
                    break
                if not len(chunk.audio):
                    continue
                if req["format"] == "pcm":
                    emit(encode_audio(chunk.audio, SAMPLE_RATE, "pcm"))
                else:
                    parts.append(chunk.audio)
        finally:
            chunks.close()  # cancels the generation if it is still running
        stop = str((job.result_dict or {}).get("stop_reason", "cancelled" if handle.stop.is_set() else ""))
        handle.job = None
        del job, chunks  # the job holds every chunk too
        if req["format"] != "pcm" and not handle.stop.is_set() and not (stop == "length" and req["cut_is_error"]):
            import numpy as np

            audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            parts.clear()
            emit(encode_audio(audio, SAMPLE_RATE, req["format"]))
        return stop

    def api_error(e: BaseException) -> APIError:
        if isinstance(e, APIError):
            return e
        if isinstance(e, ModelLoadError):
            return APIError(501, f"this server's model cannot speak: {e}", type="server_error",
                            code="speech_unavailable")
        if isinstance(e, SpeechError):
            return APIError(400, str(e))
        if isinstance(e, PylfmError):
            return APIError(500, f"speech generation failed: {e}", type="server_error")
        log.error("speech request failed", exc_info=(type(e), e, e.__traceback__))
        return APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")

    class CutStream(StreamingResponse):
        """A stream whose last chunk is sent only when the answer is complete: ``cut``
        set by the body iterator ends the transfer without it, so the client sees a
        broken transfer (and the server closes the connection), never a short answer."""

        cut = False

        async def stream_response(self, send: Any) -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not self.cut:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    @app.post("/v1/audio/speech", summary="Text to speech (OpenAI-compatible)")
    async def speech(request: Request):
        svc.admit()
        handed_off = False  # a streamed answer releases its slot when the generation ends
        watcher = None
        try:
            body = await read_body(request, svc.max_speech_body_bytes, "request body")
            try:
                data = json.loads(body)
            except ValueError:
                raise APIError(400, "the body is not JSON; send {\"input\": \"...\", \"voice\": \"US female\"}") from None
            req = parse(data)
            loop = asyncio.get_running_loop()
            client = Client()
            watcher = watch_disconnect(request, client, loop)
            handle = SpeechRequest()
            client.attach(handle)
            media_type = AUDIO_FORMATS[req["format"]][2]
            queue = svc.start_worker(handle, lambda emit: generate(handle, req, emit), "audio")
            handed_off = True

            if req["format"] == "pcm":  # raw samples, sent as they are generated
                first = await queue.get()  # an error before any audio still gets a proper status
                if first[0] == "error":
                    handle.cancel()
                    watcher.cancel()
                    raise api_error(first[1])
                if first == ("end", "length") and req["cut_is_error"]:
                    watcher.cancel()
                    raise too_long()

                async def stream():
                    item = first
                    try:
                        while item[0] == "audio":
                            yield item[1]
                            item = await queue.get()
                        if item[0] == "error" or (item == ("end", "length") and req["cut_is_error"]):
                            why = (f"generation failed: {item[1]}" if item[0] == "error" else
                                   f"the input needs more than {svc.max_speech_s:g} s of speech ({limit_flag})")
                            log.warning("speech stream cut (connection closed without the last chunk): %s", why)
                            response.cut = True
                    finally:
                        handle.cancel()  # a no-op when done; otherwise the client left
                        watcher.cancel()

                response = CutStream(stream(), media_type=media_type, headers={"X-Sample-Rate": str(SAMPLE_RATE)})
                return response
            data = b""
            stop = ""
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "audio":
                        data = value
                    elif kind == "error":
                        raise api_error(value)
                    else:
                        stop = value
                        break
            except asyncio.CancelledError:
                handle.cancel()
                raise
            finally:
                watcher.cancel()
            if client.gone.is_set() or stop == "cancelled":
                return Response(status_code=499)  # nobody is listening
            if stop == "length" and req["cut_is_error"]:
                raise too_long()
            return Response(content=data, media_type=media_type, headers={"X-Speech-Stop-Reason": stop})
        finally:
            if not handed_off:
                svc.slots.release()
                if watcher is not None:
                    watcher.cancel()
