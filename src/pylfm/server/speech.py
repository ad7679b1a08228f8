"""``POST /v1/audio/speech``: OpenAI-compatible text to speech with LFM2.5-Audio."""

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict

from .disconnect import Client, watch_disconnect
from .errors import APIError

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("pylfm.server")

SPEECH_MAX_INPUT = 4096  # characters, as OpenAI's /v1/audio/speech


def add_speech_routes(app: Any, svc: "Service") -> None:
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

    from ..errors import ModelLoadError, PylfmError, SpeechError
    from ..speech.audio_file import AUDIO_FORMATS, encode_audio
    from ..speech.istft import SAMPLE_RATE
    from ..speech.voices import tts_system_prompt

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
        svc.admit()
        handed_off = False  # a streamed answer releases its slot when the generation ends
        watcher = None
        try:
            try:
                body = await request.json()
            except ValueError:
                raise APIError(400, "the body is not JSON; send {\"input\": \"...\", \"voice\": \"US female\"}") from None
            req = parse(body)
            loop = asyncio.get_running_loop()
            client = Client()
            watcher = watch_disconnect(request, client, loop)
            job = SpeechJob()
            client.attach(job)
            media_type = AUDIO_FORMATS[req["format"]][2]
            queue = svc.start_worker(job, lambda emit: generate(job, req, emit), "audio")
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
