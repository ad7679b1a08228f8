"""``POST /v1/chat/completions`` with audio: Liquid's server API (llama.cpp PR 18641's
``llama-liquid-audio-server``) and OpenAI's audio chat completions, on the shared model.

Request (JSON): ``messages`` (``system``/``developer``, ``user``, ``assistant``; a user's
content is text or a list of ``text`` and ``input_audio`` parts, ``{"data": base64,
"format": "wav"}`` (any format pylfm reads; ``pcm16`` is raw 16-bit 24 kHz mono)),
``modalities`` (``["text"]``, ``["audio"]``, ``["text", "audio"]``), ``audio``
(OpenAI's ``{"voice", "format"}``: its presence selects OpenAI's answer shape), ``stream``
(server-sent events), ``stream_options.include_usage``, ``max_tokens`` /
``max_completion_tokens`` (steps: text tokens + audio frames), ``temperature`` (of the
text; 0 = greedy, the default), ``seed``, and pylfm's ``mode`` ("interleaved" /
"sequential"), ``audio_temperature``, ``top_k`` (audio sampling), ``max_duration``
(seconds of speech).

What the model does follows the system prompt and ``modalities``, as Liquid's server:
"Perform ASR." (or ``modalities: ["text"]``) answers with text only; "Perform TTS. Use
the UK male voice." speaks the user's text; anything else (default "Respond with
interleaved text and audio.") answers with text and speech, interleaved.

Answers, streamed (``stream: true``) as ``chat.completion.chunk`` events:
- Liquid's shape (no ``audio`` field in the request): text in ``delta.content``; speech in
  ``delta.audio = {"id", "data": base64 16-bit PCM, "format": "pcm", "sample_rate": 24000}``.
  A request without ``modalities`` (written for the first version of Liquid's server,
  e.g. LiveKit's Liquid plugin) also gets ``delta.audio_chunk = {"data": base64 float32}``.
- OpenAI's shape (``audio: {"voice", "format": "pcm16"}``): the speech's transcript in
  ``delta.audio.transcript``, its samples in ``delta.audio.data``; ``content`` stays empty.
Both end with ``finish_reason`` ("stop", or "length" at the step limit), a usage chunk
when asked for, and ``data: [DONE]``. Not streamed: ``choices[0].message`` has
``content`` (the text; null in OpenAI's shape when there is audio) and ``audio``
(``id``, ``data`` in ``audio.format`` (wav by default; pcm16, flac, mp3, opus), or
Liquid's base64 16-bit PCM, ``transcript``, ``expires_at``).

Each request carries the whole conversation (OpenAI's convention): earlier assistant
turns are sent as text, or as ``{"audio": {"id"}}`` of an answer this server gave
recently, which puts the model's own tokens and audio frames back in the prompt. Liquid's
``reset_context: false`` (a context kept on the server between requests) is not
supported: send the history instead.

Requests are admitted like the other routes (``--queue``), decode in the engine's
batch slots with everything else (no session slot is taken), and stop at the next
step when their client disconnects. A model without speech GGUFs answers text-only
requests and 501 for speech.
"""

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from .disconnect import Client, watch_disconnect
from .errors import APIError
from .forms import read_body

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("pylfm.server")

AUDIO_ID_CACHE = 1024      # answers whose tokens and frames are kept for {"audio": {"id"}} turns
AUDIO_ID_TTL_S = 3600
MAX_STEPS = 4096
DEFAULT_STEPS = 2048       # Liquid's server: max_tokens defaults to 2048
OUTPUT_FORMATS = ("wav", "pcm16", "flac", "mp3", "opus")
IM_END = 7


@dataclass
class ChatRequest:
    system: Optional[str]
    turns: List[Tuple[str, list]]            # (role, parts): parts are str (text), int (audio clip) or cached items
    clips: List[np.ndarray]
    task: str                                # "text" | "speech" | "tts"
    openai_shape: bool
    audio_chunk: bool                        # also send Liquid's first audio_chunk field (float32)
    out_format: str
    stream: bool
    include_usage: bool
    steps: int
    max_duration: float
    mode: str
    text_temperature: float
    audio_temperature: Optional[float]
    top_k: Optional[int]
    seed: Optional[int]
    user_text: Optional[str] = None          # the text of a single-message transcription request
    model: str = ""
    raw_audio: List[Tuple[bytes, str, Optional[int]]] = field(default_factory=list)


class AudioCache:
    """The tokens and frames of recent answers, by their audio id."""

    def __init__(self, size: int = AUDIO_ID_CACHE) -> None:
        self.size = size
        self._items: "OrderedDict[str, Tuple[float, str, list]]" = OrderedDict()

    def put(self, audio_id: str, text: str, items: list) -> None:
        self._items[audio_id] = (time.time() + AUDIO_ID_TTL_S, text, items)
        self._items.move_to_end(audio_id)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def get(self, audio_id: str) -> Optional[Tuple[str, list]]:
        got = self._items.get(audio_id)
        if got is None or got[0] < time.time():
            return None
        return got[1], got[2]


def _bad(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def parse_request(body: Any, cache: AudioCache, *, max_reply_s: float, max_prompt_tokens: int,
                  count_tokens: Any) -> ChatRequest:
    """The request, checked (APIError 400 for anything it cannot do)."""
    from ..speech.voices import CHAT_SYSTEM_PROMPT, MODES, voice_name
    from ..errors import SpeechError

    if not isinstance(body, dict):
        raise _bad("send a JSON object with 'messages'")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list", "messages")
    for key in ("tools", "functions"):
        if body.get(key):
            raise _bad("tools are not supported: LFM2-Audio has no function calling", key, "unsupported")
    n = body.get("n", 1)
    if n not in (1, None):
        raise _bad("n must be 1", "n")
    if body.get("reset_context") is False:
        raise _bad("pylfm does not keep a conversation between requests (reset_context: false); send the whole "
                   "history in 'messages'", "reset_context", "unsupported")
    systems: List[str] = []
    turns: List[Tuple[str, list]] = []
    raw_audio: List[Tuple[bytes, str, Optional[int]]] = []
    text_chars = 0
    for k, m in enumerate(messages):
        where = f"messages[{k}]"
        if not isinstance(m, dict):
            raise _bad(f"{where} must be an object", where)
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            t = _text_of(content, f"{where}.content")
            if t:
                systems.append(t)
            continue
        if role not in ("user", "assistant"):
            raise _bad(f"{where}.role must be system, developer, user or assistant, got {role!r}", f"{where}.role")
        parts: list = []
        if role == "assistant":
            ref = m.get("audio")
            cached = cache.get(ref.get("id")) if isinstance(ref, dict) and isinstance(ref.get("id"), str) else None
            if cached is not None:
                parts.append(("items", cached[1]))
            else:
                t = _text_of(content, f"{where}.content")
                if not t and isinstance(ref, dict) and isinstance(ref.get("transcript"), str):
                    t = ref["transcript"]
                if not t:
                    raise _bad(f"{where}: an assistant message needs its text (content), or the audio id of an "
                               "answer this server gave in the last hour", f"{where}.content")
                parts.append(t)
                text_chars += len(t)
        else:
            if isinstance(content, str):
                if not content.strip():
                    raise _bad(f"{where}.content is empty", f"{where}.content")
                parts.append(content)
                text_chars += len(content)
            elif isinstance(content, list) and content:
                for j, p in enumerate(content):
                    pw = f"{where}.content[{j}]"
                    if not isinstance(p, dict):
                        raise _bad(f"{pw} must be an object", pw)
                    ptype = p.get("type")
                    if ptype == "text":
                        t = p.get("text")
                        if not isinstance(t, str):
                            raise _bad(f"{pw}.text must be a string", f"{pw}.text")
                        if t.strip():
                            parts.append(t)
                            text_chars += len(t)
                    elif ptype == "input_audio":
                        ia = p.get("input_audio")
                        if not isinstance(ia, dict):
                            raise _bad(f"{pw}.input_audio must be an object with 'data' and 'format'", f"{pw}.input_audio")
                        data = ia.get("data")
                        if not isinstance(data, str) or not data:
                            raise _bad(f"{pw}.input_audio.data must be base64 audio", f"{pw}.input_audio.data")
                        try:
                            raw = base64.b64decode(data, validate=True)
                        except (binascii.Error, ValueError):
                            raise _bad(f"{pw}.input_audio.data is not valid base64", f"{pw}.input_audio.data") from None
                        fmt = str(ia.get("format") or "wav").lower()
                        rate = ia.get("sample_rate")
                        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int)
                                                 or not 8000 <= rate <= 48000):
                            raise _bad(f"{pw}.input_audio.sample_rate must be an integer in [8000, 48000]",
                                       f"{pw}.input_audio.sample_rate")
                        parts.append(len(raw_audio))
                        raw_audio.append((raw, fmt, rate))
                    else:
                        raise _bad(f"{pw}.type must be 'text' or 'input_audio', got {ptype!r}", f"{pw}.type",
                                   "unsupported")
                if not parts:
                    raise _bad(f"{where}.content has neither text nor audio", f"{where}.content")
            else:
                raise _bad(f"{where}.content must be a string or a non-empty list of parts", f"{where}.content")
        turns.append((role, parts))
    if not turns or turns[-1][0] != "user":
        raise _bad("the last message must be the user's", "messages")
    system = "\n".join(systems) if systems else None
    if system is not None and count_tokens(system) > max_prompt_tokens:
        raise _bad(f"the system prompt is longer than {max_prompt_tokens} tokens (pylfm serve --max-prompt-tokens)",
                   "messages", "prompt_too_long")
    if text_chars > 64 * max_prompt_tokens:
        raise _bad("the messages' text is too long", "messages", "prompt_too_long")

    modalities = body.get("modalities")
    if modalities is not None:
        if not isinstance(modalities, list) or not modalities or any(x not in ("text", "audio") for x in modalities):
            raise _bad("modalities must be a list of 'text' and 'audio'", "modalities")
    audio_param = body.get("audio")
    openai_shape = audio_param is not None
    out_format = "pcm16"
    voice = None
    if openai_shape:
        if not isinstance(audio_param, dict):
            raise _bad("audio must be an object like {\"voice\": \"US female\", \"format\": \"wav\"}", "audio")
        out_format = str(audio_param.get("format") or ("pcm16" if body.get("stream") else "wav")).lower()
        if out_format not in OUTPUT_FORMATS:
            raise _bad(f"audio.format {out_format!r} is not supported; use one of {', '.join(OUTPUT_FORMATS)}",
                       "audio.format")
        if body.get("stream") and out_format != "pcm16":
            raise _bad("streamed audio is pcm16 (as OpenAI's): set audio.format to pcm16", "audio.format")
        if audio_param.get("voice") is not None:
            try:
                voice = voice_name(audio_param["voice"])
            except SpeechError as e:
                raise _bad(str(e), "audio.voice") from None

    low = (system or "").strip().lower()
    if modalities == ["text"] or (modalities is None and low.startswith("perform asr")):
        task = "text"
    elif low.startswith("perform tts"):
        task = "tts"
        if any(isinstance(p, int) for p in turns[-1][1]):
            raise _bad("text to speech ('Perform TTS.') speaks the user's text; the last message has audio",
                       "messages")
    else:
        task = "speech"
        if system is None:
            system = CHAT_SYSTEM_PROMPT
    if voice is not None and task != "text" and "voice" not in low:
        system = f"{system} Use the {voice} voice." if system else f"Use the {voice} voice."

    steps = body.get("max_completion_tokens", body.get("max_tokens"))
    if steps is None:
        steps = DEFAULT_STEPS
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise _bad(f"max_tokens must be an integer in [1, {MAX_STEPS}]", "max_tokens")
    max_duration = body.get("max_duration", max_reply_s)
    if isinstance(max_duration, bool) or not isinstance(max_duration, (int, float)) or not 0 < max_duration:
        raise _bad("max_duration must be a positive number of seconds", "max_duration")
    mode = body.get("mode", "interleaved")
    if mode not in MODES:
        raise _bad(f"mode must be one of {', '.join(MODES)}", "mode")

    def number(key: str, default: Any, lo: float, hi: float) -> Any:
        v = body.get(key, default)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise _bad(f"{key} must be a number in [{lo:g}, {hi:g}]", key)
        return v

    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
        raise _bad("seed must be an integer in [0, 2**32)", "seed")
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise _bad("top_k must be a non-negative integer", "top_k")
    stream_options = body.get("stream_options") or {}
    user_text = " ".join(p for p in turns[-1][1] if isinstance(p, str)) or None
    return ChatRequest(
        system=system, turns=turns, clips=[], task=task, openai_shape=openai_shape,
        audio_chunk=modalities is None and not openai_shape, out_format=out_format, stream=bool(body.get("stream")),
        include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
        steps=min(int(steps), MAX_STEPS), max_duration=float(min(max_duration, max_reply_s)), mode=mode,
        text_temperature=float(number("temperature", 0.0, 0.0, 2.0)),
        audio_temperature=number("audio_temperature", None, 0.0, 2.0), top_k=top_k, seed=seed,
        user_text=user_text, model=str(body.get("model") or ""), raw_audio=raw_audio)


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for p in content:
            if isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text") \
                    and isinstance(p.get("text"), str):
                out.append(p["text"])
            else:
                raise _bad(f"{where}: only text parts are allowed here", where)
        return "".join(out)
    raise _bad(f"{where} must be a string or a list of text parts", where)


def decode_clips(req: ChatRequest, target_rate: int, max_duration: float) -> None:
    """Decodes the request's audio parts (blocking: run it on a worker thread)."""
    from ..audio.load import load_audio
    from ..errors import AudioError, AudioTooLongError

    total = 0.0
    for k, (raw, fmt, rate) in enumerate(req.raw_audio):
        try:
            if fmt in ("pcm16", "pcm", "s16le"):
                if len(raw) % 2:
                    raise AudioError("raw pcm16 audio needs an even number of bytes")
                pcm = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
                pcm = load_audio(pcm, sample_rate=rate or 24000, target_rate=target_rate)
            else:
                pcm = load_audio(raw, target_rate=target_rate, max_duration=max_duration)
        except AudioTooLongError:
            raise APIError(413, f"an input_audio part is longer than {max_duration:g} s (pylfm serve --max-audio-s)",
                           param="messages", code="audio_too_long") from None
        except (AudioError, ValueError, TypeError) as e:
            raise APIError(400, f"input_audio part {k} is not usable audio: {e}", param="messages",
                           code="invalid_audio") from None
        total += len(pcm) / target_rate
        if total > max_duration:
            raise APIError(413, f"the request's audio is longer than {max_duration:g} s (pylfm serve --max-audio-s)",
                           param="messages", code="audio_too_long")
        req.clips.append(pcm)
    req.raw_audio = []


def prompt_of(req: ChatRequest) -> list:
    """The engine prompt parts of the conversation (ChatML, as `pylfm.live.Conversation`
    lays it out), ending with the open assistant turn."""
    parts: list = []
    if req.system:
        parts += [("<|im_start|>system\n", True), (req.system, False), ("<|im_end|>\n", True)]
    for role, items in req.turns:
        parts.append((f"<|im_start|>{role}\n", True))
        for p in items:
            if isinstance(p, int):
                parts.append(p)
            elif isinstance(p, str):
                parts.append((p, False))
            else:
                parts += _item_parts(p[1])
        parts.append(("<|im_end|>\n", True))
    parts.append(("<|im_start|>assistant\n", True))
    if req.task == "tts":
        parts.append(("<|audio_start|>", True))
    return parts


def _item_parts(items: list) -> list:
    """An answer's token ids and (8,) frames as runs of tokens and of frames (its closing
    <|im_end|> left to the prompt's own)."""
    from ..speech.job import item_parts

    items = list(items)
    if items and not isinstance(items[-1], np.ndarray) and int(items[-1]) == IM_END:
        items.pop()
    return item_parts(items)


def add_chat_routes(app: Any, svc: "Service", *, max_reply_s: float = 60.0) -> None:
    """``POST /v1/chat/completions`` (see the module docstring)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    from ..errors import ModelLoadError, PylfmError, SpeechError, TranscriptionCancelled
    from ..speech.audio_file import encode_audio
    from ..speech.generate import choose_seed, frames_for, speech_params
    from ..speech.istft import SAMPLE_RATE
    from ..speech.job import SpeechJob
    from ..speech.voices import CHAT_TEMPERATURE, CHAT_TOP_K, TTS_TEMPERATURE, TTS_TOP_K

    cache = AudioCache()
    app.state.audio_ids = cache
    body_limit = int(svc.max_upload_bytes * 4 / 3) + 1024 * 1024  # base64 of the largest upload, plus the JSON

    def api_error(e: BaseException) -> APIError:
        if isinstance(e, APIError):
            return e
        if isinstance(e, ModelLoadError) or (isinstance(e, SpeechError) and "speech" in str(e).lower()
                                            and "load" in str(e).lower()):
            return APIError(501, f"this server's model cannot speak: {e}", type="server_error",
                            code="speech_unavailable")
        if isinstance(e, SpeechError):
            return APIError(400, str(e), code="invalid_request")
        if isinstance(e, PylfmError):
            return APIError(500, f"generation failed: {e}", type="server_error")
        log.error("chat completion failed", exc_info=(type(e), e, e.__traceback__))
        return APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")

    async def read_json(request: Request) -> Any:
        body = await read_body(request, body_limit, "request", code="request_too_large",
                               hint=" (pylfm serve --max-upload-mib)")
        try:
            return json.loads(body)
        except ValueError:
            raise APIError(400, "the body is not JSON") from None

    def start(req: ChatRequest, loop: "asyncio.AbstractEventLoop", queue: "asyncio.Queue") -> Any:
        """Submits the generation (blocking: loads the speech GGUFs on first use); its
        chunks arrive in ``queue`` as ("text", str), ("audio", float32), then ("end", job)
        or ("error", exception)."""
        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: shutdown
                pass

        if req.task == "text" and len(req.turns) == 1 and len(req.clips) == 1:
            # one recording (and an instruction): the transcription path (long audio in windows,
            # no speech GGUFs needed), batched with the transcriptions
            job = svc.model.submit(req.clips[0], sample_rate=svc.sample_rate, stream=True, system=req.system,
                                   prompt=req.user_text, max_new_tokens=min(req.steps, svc.options.max_new_tokens),
                                   temperature=req.text_temperature, seed=req.seed or 0, vad=svc.options.vad,
                                   window=svc.options.window, max_duration=svc.options.max_duration)

            def pump() -> None:
                try:
                    for piece in job.pieces():
                        put(("text", piece))
                    job.transcription()
                    put(("end", job))
                except TranscriptionCancelled:
                    put(("end", job))
                except Exception as e:  # noqa: BLE001
                    put(("error", e))

            svc.executor.submit(pump)
            return job
        if req.task == "tts":
            temp, top_k = TTS_TEMPERATURE, TTS_TOP_K
        else:
            temp, top_k = CHAT_TEMPERATURE, CHAT_TOP_K
        if req.audio_temperature is not None:
            temp = req.audio_temperature
        if req.top_k is not None:
            top_k = req.top_k
        text_only = req.task == "text"
        frames = 1 if text_only else frames_for(req.max_duration)
        params = speech_params(interleaved=req.task == "speech" and req.mode == "interleaved",
                               start_audio=req.task == "tts", stop_at_audio_end=req.task == "tts",
                               max_new_tokens=req.steps + (1 if req.task == "tts" else 0), max_audio_frames=frames,
                               audio_temperature=float(temp), audio_top_k=int(top_k),
                               text_temperature=req.text_temperature, seed=choose_seed(req.seed),
                               detokenize=not text_only)
        job = SpeechJob(prompt_of(req), req.clips, params)

        def on_event(chunk: Any) -> None:
            if chunk is None:
                put(("error", job.error) if job.error is not None else ("end", job))
                return
            if chunk.text:
                put(("text", chunk.text))
            if len(chunk.audio) and not text_only:
                put(("audio", chunk.audio))

        job.on_event = on_event
        svc.model.speech_runtime.submit(job)
        return job

    def finish_reason(job: Any, req: ChatRequest) -> str:
        result = getattr(job, "result_dict", None)
        if isinstance(result, dict):
            stop = str(result.get("stop_reason", ""))
            if req.task == "text" and stop == "length" and 1 in list(result.get("order", [])):
                return "stop"  # text only: it stopped where the speech would begin
        else:
            segments = job.transcription().segments
            stop = segments[-1].stop_reason if segments else "stop"
        return "length" if stop in ("length", "context") else "stop"

    def usage_of(job: Any, n_text: int, n_audio: int) -> Dict[str, Any]:
        result = getattr(job, "result_dict", None)
        prompt = int(result.get("n_prompt_tokens", 0)) if isinstance(result, dict) else 0
        return {"prompt_tokens": prompt, "completion_tokens": n_text + n_audio, "total_tokens": prompt + n_text + n_audio,
                "completion_tokens_details": {"text_tokens": n_text, "audio_tokens": n_audio},
                "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0}}

    def remember(job: Any, audio_id: str, text: str) -> None:
        items = getattr(job, "items", None)
        if items:
            cache.put(audio_id, text, list(items))

    def pcm16(x: np.ndarray) -> bytes:  # Liquid's and OpenAI's audio deltas: raw 16-bit little-endian
        return encode_audio(x, SAMPLE_RATE, "pcm")

    @app.post("/v1/chat/completions", summary="Chat with audio in and out (Liquid's and OpenAI's shapes)")
    async def chat_completions(request: Request):
        svc.admit()
        handed_off = False
        watcher = None
        job = None
        try:
            body = await read_json(request)
            req = parse_request(body, cache, max_reply_s=max_reply_s, max_prompt_tokens=svc.max_prompt_tokens,
                                count_tokens=svc.model.count_tokens)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(svc.executor, decode_clips, req, svc.sample_rate, svc.options.max_duration)
            client = Client()
            watcher = watch_disconnect(request, client, loop)
            queue: "asyncio.Queue[Any]" = asyncio.Queue()
            t0 = time.monotonic()
            try:
                job = await loop.run_in_executor(svc.executor, start, req, loop, queue)
            except Exception as e:  # noqa: BLE001
                raise api_error(e) from e
            client.attach(job)
            svc.jobs.add(job)
            cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            audio_id = f"audio_{uuid.uuid4().hex[:24]}"
            created = int(time.time())
            model_name = svc.model_name

            def chunk(delta: Dict[str, Any], finish: Optional[str] = None, usage: Any = None) -> bytes:
                ev: Dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created,
                                      "model": model_name, "system_fingerprint": None,
                                      "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                   "finish_reason": finish}]}
                if usage is not None:
                    ev["choices"] = []
                    ev["usage"] = usage
                return b"data: " + json.dumps(ev, ensure_ascii=False).encode("utf-8") + b"\n\n"

            speaks = req.task != "text"

            if req.stream:
                first = await queue.get()
                if first[0] == "error":
                    raise api_error(first[1])

                async def events():
                    item = first
                    n_text = n_audio = 0
                    text_parts: List[str] = []
                    try:
                        yield chunk({"role": "assistant", "content": None if (req.openai_shape and speaks) else ""})
                        while True:
                            kind, value = item
                            if kind == "text":
                                n_text += 1
                                text_parts.append(value)
                                if req.openai_shape and speaks:
                                    yield chunk({"audio": {"id": audio_id, "transcript": value}})
                                else:
                                    yield chunk({"content": value})
                            elif kind == "audio":
                                n_audio += 1
                                if req.openai_shape:
                                    delta = {"audio": {"id": audio_id,
                                                       "data": base64.b64encode(pcm16(value)).decode("ascii")}}
                                else:
                                    delta = {"audio": {"id": audio_id,
                                                       "data": base64.b64encode(pcm16(value)).decode("ascii"),
                                                       "format": "pcm", "sample_rate": SAMPLE_RATE}}
                                    if req.audio_chunk:
                                        delta["audio_chunk"] = {"data": base64.b64encode(
                                            np.asarray(value, "<f4").tobytes()).decode("ascii")}
                                yield chunk(delta)
                            elif kind == "error":
                                err = api_error(value)
                                yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
                                return
                            else:
                                if client.gone.is_set():
                                    return
                                if speaks:
                                    remember(value, audio_id, "".join(text_parts))
                                if req.openai_shape and speaks:
                                    yield chunk({"audio": {"id": audio_id, "expires_at": created + AUDIO_ID_TTL_S}})
                                yield chunk({}, finish_reason(value, req))
                                if req.include_usage:
                                    yield chunk({}, usage=usage_of(value, n_text, n_audio))
                                yield b"data: [DONE]\n\n"
                                return
                            item = await queue.get()
                    finally:
                        job.cancel()  # a no-op when done; otherwise the client left
                        watcher.cancel()
                        svc.jobs.discard(job)
                        svc.record(time.monotonic() - t0)
                        svc.slots.release()

                handed_off = True
                return StreamingResponse(events(), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

            text_parts: List[str] = []
            audio_parts: List[np.ndarray] = []
            end_job = None
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "text":
                        text_parts.append(value)
                    elif kind == "audio":
                        audio_parts.append(value)
                    elif kind == "error":
                        raise api_error(value)
                    else:
                        end_job = value
                        break
            except asyncio.CancelledError:
                job.cancel()
                raise
            finally:
                svc.jobs.discard(job)
                svc.record(time.monotonic() - t0)
            if client.gone.is_set():
                return Response(status_code=499)
            text = "".join(text_parts)
            message: Dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            if speaks:
                audio = np.concatenate(audio_parts) if audio_parts else np.zeros(0, np.float32)
                remember(end_job, audio_id, text)
                if req.openai_shape:
                    fmt = {"pcm16": "pcm"}.get(req.out_format, req.out_format)
                    data = await loop.run_in_executor(svc.executor, encode_audio, audio, SAMPLE_RATE, fmt)
                    message["content"] = None
                    message["audio"] = {"id": audio_id, "data": base64.b64encode(data).decode("ascii"),
                                        "expires_at": created + AUDIO_ID_TTL_S, "transcript": text}
                else:
                    message["audio"] = {"id": audio_id, "data": base64.b64encode(pcm16(audio)).decode("ascii"),
                                        "format": "pcm", "sample_rate": SAMPLE_RATE, "transcript": text,
                                        "expires_at": created + AUDIO_ID_TTL_S}
            return JSONResponse({"id": cid, "object": "chat.completion", "created": created, "model": model_name,
                                 "system_fingerprint": None,
                                 "choices": [{"index": 0, "message": message, "logprobs": None,
                                              "finish_reason": finish_reason(end_job, req)}],
                                 "usage": usage_of(end_job, len(text_parts), len(audio_parts))})
        finally:
            if not handed_off:
                if job is not None:
                    job.cancel()
                svc.slots.release()
                if watcher is not None:
                    watcher.cancel()
