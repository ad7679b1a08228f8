"""``/v1/realtime``: OpenAI's Realtime API over a WebSocket, on the shared model.

A ``realtime`` session is a voice conversation: the client streams the user's audio
(``input_audio_buffer.append``, base64 PCM16 at 24 kHz by default), turns end by server
VAD (Silero, OpenAI's ``server_vad`` options) or by ``input_audio_buffer.commit``, and the
model answers with interleaved text and speech (``response.output_audio.delta`` and its
transcript) as it decodes. The history stays in the engine (one of the model's session
slots, `pylfm.live.Conversation`), so each turn prefills only what is new. Barge-in:
speech detected during a reply cancels it (``interrupt_response``) or the client sends
``response.cancel``, then ``conversation.item.truncate`` with what it played; the
history then holds only what the user heard. A ``transcription`` session (``?intent=
transcription`` or ``session.type``) streams the user's transcripts and needs no slot.

Everything runs through the model's scheduler, batched with every other session and
HTTP request. The event loop never waits on the engine: engine calls run on worker
threads, replies arrive through `pylfm.live.Conversation.areply`.

Limits (`RealtimeSettings`, ``pylfm serve`` flags): connections at once, conversation
slots (the model's ``sessions``), session length, idle time, message size, the
uncommitted audio buffer, the length of a reply, the events queued for a client that
does not read. Every bad client message is answered with an ``error`` event and the
session goes on; a session ends with a close code that says why:
1000 (closed, idle or expired), 1008 (bad API key, a client that does not read),
1011 (server error), 1013 (the server is full: try again later).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Set

import numpy as np

from ..errors import PylfmError, SpeechError, TranscriptionCancelled
from ..live.conversation import ConversationError, Reply, kept_items, system_prompt
from ..live.turns import RATE, SpeechDetector, SpeechDropped, SpeechStarted, Utterance
from ..speech.istft import SAMPLE_RATE as OUTPUT_RATE
from ..speech.voices import CHAT_TEMPERATURE, CHAT_TOP_K, DEFAULT_VOICE, MODES, voice_name
from . import realtime_events as ev
from .middleware import bearer_matches
from .realtime_audio import FormatError, Resampler, decode_b64, from_float, to_float
from .realtime_events import BETA, GA, REALTIME, TRANSCRIPTION, ClientError, SessionConfig, new_id

log = logging.getLogger("pylfm.server")

MIB = 1024 * 1024
MIN_COMMIT_S = 0.1  # OpenAI refuses to commit less than 100 ms of audio
ONE_FRAME_S = 0.08  # text-only replies stop at the first audio frame (sequential mode)
KEY_PROTOCOL = "openai-insecure-api-key."
BETA_PROTOCOL = "openai-beta.realtime-v1"


@dataclass
class RealtimeSettings:
    """The limits of ``/v1/realtime`` (``pylfm serve --realtime-*``)."""

    max_connections: int = 16        # WebSocket sessions at once (both types); more get close 1013
    max_session_s: float = 1800.0    # a session's length; then error session_expired and close 1000
    idle_timeout_s: float = 300.0    # no client message and no reply for this long: idle_timeout, close 1000
    max_message_mib: float = 16.0    # one client message (OpenAI allows 15 MiB per append)
    max_buffer_s: float = 120.0      # uncommitted input audio (manual turns); VAD utterances end at 30 s
    max_reply_s: float = 60.0        # seconds of speech per reply
    max_reply_tokens: int = 1024     # steps (text tokens + audio frames) per reply
    max_context: int = 4096          # positions a conversation keeps; the oldest turns are dropped past it
    send_buffer_mib: float = 32.0    # events queued for a client that is not reading; then close 1008
    voice: str = DEFAULT_VOICE
    mode: str = "interleaved"
    temperature: float = CHAT_TEMPERATURE  # audio sampling of replies (liquid-audio's chat defaults)
    top_k: int = CHAT_TOP_K
    seed: Optional[int] = None           # fixed: reproducible replies (tests, benchmarks)

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_reply_tokens", "max_context"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"realtime {name} must be a positive integer, got {v!r}")
        for name in ("max_session_s", "idle_timeout_s", "max_message_mib", "max_buffer_s", "max_reply_s",
                     "send_buffer_mib"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"realtime {name} must be a positive number, got {v!r}")
        if self.mode not in MODES:
            raise ValueError(f"realtime mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.voice = voice_name(self.voice)

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mib * MIB)


class RealtimeHub:
    """The server's realtime sessions (``app.state.realtime``): admission, the settings
    they share, statistics for ``/health``."""

    def __init__(self, model: Any, settings: RealtimeSettings, *, api_key: Optional[str], model_name: str,
                 max_new_tokens: int) -> None:
        self.model = model
        self.settings = settings
        self.api_key = api_key
        self.model_name = model_name
        self.transcribe_tokens = max_new_tokens
        self.sessions: Set["RealtimeSession"] = set()
        self.served = 0
        # Blocking work of the sessions (turn detection, engine calls that wait up to a step,
        # streamed user transcripts): its own threads, so that many sessions never starve the
        # event loop's default pool.
        from concurrent.futures import ThreadPoolExecutor

        self.executor = ThreadPoolExecutor(max_workers=3 * settings.max_connections + 4,
                                           thread_name_prefix="pylfm-realtime")

    async def call(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the sessions' threads."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args))

    @property
    def conversations(self) -> int:
        return sum(1 for s in self.sessions if s.conv is not None)

    def stats(self) -> Dict[str, Any]:
        speech = getattr(self.model, "speech_runtime", None)
        return {"connections": len(self.sessions), "capacity": self.settings.max_connections,
                "conversations": self.conversations, "slots": getattr(self.model, "sessions", 0),
                "slots_held": speech.open_sessions if speech is not None else 0, "served": self.served}

    def authorized(self, headers: Any, protocols: List[str]) -> bool:
        if not self.api_key:
            return True
        expected = self.api_key.encode("utf-8")
        # the header's raw bytes (Starlette decodes them as latin-1), as the HTTP routes see them
        if bearer_matches(headers.get("authorization", "").encode("latin-1"), expected):
            return True
        for p in protocols:
            if p.startswith(KEY_PROTOCOL) and hmac.compare_digest(p[len(KEY_PROTOCOL):].encode("utf-8"), expected):
                return True
        return False

    async def close_all(self) -> None:
        """Ends every session (server shutdown): their replies stop and slots are freed."""
        for s in list(self.sessions):
            s.stop(1001, "the server is shutting down")
        for _ in range(100):  # their replies stop within a step; wait for them to let go of their slots
            if not self.sessions:
                break
            await asyncio.sleep(0.05)
        self.executor.shutdown(wait=False)


# ---------------------------------------------------------------------- one session
@dataclass
class Item:
    """A conversation item as the client sees it, and what the engine needs to rebuild it."""

    id: str
    role: str                                   # "user" | "assistant"
    content: List[Dict[str, Any]]               # the item's content as events show it (no audio data)
    pcm: Optional[np.ndarray] = None            # user audio, 16 kHz int16
    text: Optional[str] = None                  # user or assistant text
    reply: Optional[Reply] = None               # an assistant reply's tokens and frames (no audio)
    synced: bool = False                        # in the Conversation
    status: str = "completed"

    def obj(self) -> Dict[str, Any]:
        return ev.item_object(self.id, self.role, self.content, self.status)


@dataclass
class Response:
    id: str
    item_id: str
    modalities: tuple
    max_tokens: Optional[int]
    metadata: Any = None
    task: Optional["asyncio.Task"] = None
    cancel_reason: Optional[str] = None
    transcript: str = ""
    audio_samples: int = 0


class RealtimeSession:
    """One WebSocket connection (see the module docstring)."""

    def __init__(self, hub: RealtimeHub, ws: Any) -> None:
        self.hub = hub
        self.model = hub.model
        self.settings = hub.settings
        self.ws = ws
        self.id = new_id("sess")
        protocols = list(ws.scope.get("subprotocols") or [])
        self.protocols = protocols
        beta = ws.headers.get("openai-beta", "").replace(" ", "").lower()
        self.dialect = BETA if ("realtime=v1" in beta or BETA_PROTOCOL in protocols) else GA
        intent = ws.query_params.get("intent")
        session_type = TRANSCRIPTION if intent == "transcription" else REALTIME
        self.cfg: SessionConfig = ev.initial_config(session_type, self.settings.voice, self.settings.mode)
        self.conv: Any = None
        self.items: List[Item] = []
        self.dirty = False                       # the Conversation must be rebuilt from the items
        self.buffer: List[np.ndarray] = []       # manual turns: the uncommitted audio (16 kHz float32)
        self.buffer_samples = 0
        self.detector: Optional[SpeechDetector] = None
        self.speech_item: Optional[str] = None   # the id the utterance in progress will get
        self.resample_in = Resampler(self.cfg.input_format.rate, RATE)
        self.response: Optional[Response] = None
        self.pending_response = False
        self.tasks: Set["asyncio.Task"] = set()
        self.jobs: Set[Any] = set()
        self.started = time.monotonic()
        self.last_message = self.started
        self.audio_in_s = 0.0
        self._queue: "asyncio.Queue[Any]" = asyncio.Queue()
        self._queued_bytes = 0
        self._sender: Optional["asyncio.Task"] = None
        self._stop: Optional["asyncio.Future"] = None
        self.closing = False
        self.gone = False
        self._close: Optional[tuple] = None
        self._dropped_seen = 0
        self.client_code: Optional[int] = None   # the close code the client sent (1005/1006: none, it vanished)

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        hub = self.hub
        chosen = "realtime" if "realtime" in self.protocols else None
        if chosen is None and BETA_PROTOCOL in self.protocols:
            chosen = BETA_PROTOCOL
        await self.ws.accept(subprotocol=chosen)
        self._stop = asyncio.get_running_loop().create_future()
        self._sender = asyncio.create_task(self._send_loop())
        registered = False
        try:
            if not hub.authorized(self.ws.headers, self.protocols):
                self.fail(ClientError("invalid or missing API key: send 'Authorization: Bearer KEY' or the "
                                      f"'{KEY_PROTOCOL}KEY' subprotocol", code="invalid_api_key"), 1008,
                          "invalid API key")
                return
            if len(hub.sessions) >= self.settings.max_connections:
                self.fail(ClientError(f"the server is busy ({self.settings.max_connections} realtime sessions); "
                                      "try again later", code="session_limit_reached", type="server_error"),
                          1013, "too many sessions")
                return
            hub.sessions.add(self)
            registered = True
            if self.cfg.type == REALTIME:
                try:
                    await self._open_conversation()
                except ClientError as e:
                    self.fail(e, 1013 if e.code == "session_limit_reached" else 1011, e.message[:120])
                    return
            self.detector = SpeechDetector(self.cfg.turn_detection) if self.cfg.turn_detection else None
            created, _ = ev.session_event_names(self.cfg, self.dialect)
            self.emit({"type": created, "session": self._session_obj()})
            await self._receive_loop()
        except Exception as e:  # noqa: BLE001 - a session's failure must not take the server with it
            log.exception("realtime session %s failed", self.id)
            self.fail(ClientError(f"internal error: {type(e).__name__}: {e}", code="server_error",
                                  type="server_error"), 1011, "internal error")
        finally:
            await self._cleanup()
            if registered:
                hub.sessions.discard(self)
                hub.served += 1

    async def _receive_loop(self) -> None:
        assert self._stop is not None
        while not self.closing:
            now = time.monotonic()
            if self.response is not None:  # a client listening to a long reply is not idle
                self.last_message = now
            idle_left = self.last_message + self.settings.idle_timeout_s - now
            session_left = self.started + self.settings.max_session_s - now
            if session_left <= 0:
                self.fail(ClientError(f"the session reached its length limit ({self.settings.max_session_s:g} s)",
                                      code="session_expired"), 1000, "session expired")
                return
            if idle_left <= 0:
                self.fail(ClientError(f"no client event for {self.settings.idle_timeout_s:g} s",
                                      code="idle_timeout"), 1000, "idle timeout")
                return
            recv = asyncio.ensure_future(self.ws.receive())
            done, _ = await asyncio.wait({recv, self._stop}, timeout=min(idle_left, session_left),
                                         return_when=asyncio.FIRST_COMPLETED)
            if recv not in done:
                recv.cancel()
                try:
                    await recv
                except BaseException:  # noqa: BLE001 - cancelled, or the connection went
                    pass
                continue
            try:
                message = recv.result()
            except Exception:  # noqa: BLE001 - the connection is gone
                self.gone = True
                return
            if message["type"] == "websocket.disconnect":
                self.gone = True
                self.client_code = message.get("code")
                return
            self.last_message = time.monotonic()
            await self._handle(message)

    def stop(self, code: int, reason: str) -> None:
        """Ends the session from outside (shutdown)."""
        self._request_close(code, reason)

    def fail(self, err: ClientError, code: int, reason: str) -> None:
        """Sends ``err`` and closes the connection with ``code``."""
        self.emit(ev.error_event(err))
        self._request_close(code, reason)

    def _request_close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self._close = (code, reason)
        self._queue.put_nowait(None)  # the sender closes after what is queued
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    async def _cleanup(self) -> None:
        t0 = time.monotonic()
        replying = self.response is not None
        self.closing = True
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)
        try:
            if self.response is not None:
                await self._cancel_response("client_cancelled")
        except Exception:  # noqa: BLE001
            log.exception("realtime session %s: cancelling its reply failed", self.id)
        for job in list(self.jobs):
            job.cancel()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)
        if self.conv is not None:
            conv, self.conv = self.conv, None
            try:
                await self.hub.call(conv.close)
            except Exception:  # noqa: BLE001
                log.exception("realtime session %s: closing its conversation failed", self.id)
            if self.gone:
                how = "client gone" if self.client_code in (None, 1005, 1006) else f"client closed {self.client_code}"
            else:
                how = f"closed {self._close[0] if self._close else 1000}"
            log.info("realtime session %s ended (%s)%s; its conversation slot was freed in %.0f ms", self.id, how,
                     ", a reply was stopped" if replying else "", 1000 * (time.monotonic() - t0))
        if self._close is None:
            self._close = (1000, "")
            self._queue.put_nowait(None)
        if self._sender is not None:
            try:
                await asyncio.wait_for(self._sender, timeout=5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                self._sender.cancel()

    # ------------------------------------------------------------------ sending
    def emit(self, event: Dict[str, Any]) -> None:
        if self.gone or (self.closing and self._close is not None and event.get("type") != "error"):
            return
        event.setdefault("event_id", new_id("event"))
        if log.isEnabledFor(logging.DEBUG) and not event["type"].endswith(".delta"):
            log.debug("realtime session %s -> %s", self.id, event["type"])
        data = json.dumps(event, ensure_ascii=False)
        if self._queued_bytes + len(data) > self.settings.send_buffer_mib * MIB:
            log.warning("realtime session %s: the client is not reading its events; closing", self.id)
            self._request_close(1008, "the client is not reading its events")
            return
        self._queued_bytes += len(data)
        self._queue.put_nowait(data)

    async def _send_loop(self) -> None:
        while True:
            data = await self._queue.get()
            if data is None:
                if self._close is None:
                    continue
                if not self.gone:
                    code, reason = self._close
                    try:
                        await self.ws.close(code=code, reason=reason[:120])
                    except Exception:  # noqa: BLE001 - already closed
                        pass
                return
            self._queued_bytes -= len(data)
            if self.gone:
                continue
            try:
                await self.ws.send_text(data)
            except Exception:  # noqa: BLE001 - the client left
                self.gone = True
                if self._stop is not None and not self._stop.done():
                    self._stop.set_result(None)

    def _session_obj(self) -> Dict[str, Any]:
        return ev.session_object(self.cfg, self.dialect, self.id, self.hub.model_name,
                                 ev.expires_at(self.settings.max_session_s - (time.monotonic() - self.started)))

    # ------------------------------------------------------------------ client events
    async def _handle(self, message: Dict[str, Any]) -> None:
        text = message.get("text")
        event_id = None
        try:
            if text is None:
                if message.get("bytes") is not None:
                    raise ClientError("binary messages are not part of the protocol: send JSON events as text",
                                      code="invalid_event")
                return
            if len(text) > self.settings.max_message_bytes:
                raise ClientError(f"the message is {len(text)} bytes; this server takes at most "
                                  f"{self.settings.max_message_bytes} (pylfm serve --realtime-max-message-mib)",
                                  code="message_too_large")
            try:
                event = json.loads(text)
            except ValueError as e:
                raise ClientError(f"the message is not JSON: {e}", code="invalid_json") from None
            if isinstance(event, dict) and isinstance(event.get("event_id"), str):
                event_id = event["event_id"]
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise ClientError("an event is a JSON object with a 'type'", code="invalid_event")
            if event["type"] != "input_audio_buffer.append":
                log.debug("realtime session %s <- %s", self.id, event["type"])
            handler = self._HANDLERS.get(event["type"])
            if handler is None:
                raise ClientError(f"unknown event type {event['type']!r}", code="unknown_event", param="type")
            await handler(self, event)
        except ClientError as e:
            self.emit(ev.error_event(e, event_id))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the session goes on
            log.exception("realtime session %s: handling an event failed", self.id)
            self.emit(ev.error_event(ClientError(f"internal error: {type(e).__name__}: {e}", code="server_error",
                                                 type="server_error"), event_id))

    async def _on_session_update(self, e: Dict[str, Any]) -> None:
        old = self.cfg
        new = ev.apply_update(old, e.get("session"), self.settings.max_reply_tokens)
        if new.type != old.type:
            if new.type == REALTIME:
                self.cfg = new
                try:
                    await self._open_conversation()
                except ClientError:
                    self.cfg = old
                    raise
            else:
                if self.response is not None:
                    await self._cancel_response("client_cancelled")
                conv, self.conv = self.conv, None
                if conv is not None:
                    await self.hub.call(conv.close)
                self.items, self.dirty = [], False
        self.cfg = new
        if new.input_format != old.input_format:
            self.resample_in = Resampler(new.input_format.rate, RATE)
        if new.turn_detection != old.turn_detection or new.type != old.type:
            self.detector = SpeechDetector(new.turn_detection) if new.turn_detection else None
            self.buffer, self.buffer_samples, self.speech_item = [], 0, None
        if self.conv is not None and (new.instructions != old.instructions or new.voice != old.voice):
            system = system_prompt(new.instructions, new.voice)
            if self.conv.n_past == 0 and not self.dirty:
                self.conv.system = system
            else:
                self.dirty = True  # rebuilt before the next reply
        _, updated = ev.session_event_names(self.cfg, self.dialect)
        self.emit({"type": updated, "session": self._session_obj()})

    async def _on_append(self, e: Dict[str, Any]) -> None:
        try:
            raw = decode_b64(e.get("audio"), "audio")
            pcm = to_float(raw, self.cfg.input_format)
        except FormatError as err:
            raise ClientError(str(err), param="audio") from None
        if not len(pcm):
            return
        self.audio_in_s += len(pcm) / self.cfg.input_format.rate
        pcm16 = self.resample_in(pcm)
        if self.detector is None:
            if (self.buffer_samples + len(pcm16)) / RATE > self.settings.max_buffer_s:
                raise ClientError(f"the input audio buffer is full ({self.settings.max_buffer_s:g} s): commit or "
                                  "clear it (pylfm serve --realtime-max-buffer-s)", code="input_audio_buffer_full")
            self.buffer.append(pcm16)
            self.buffer_samples += len(pcm16)
            return
        detector = self.detector
        events = await self.hub.call(detector.push, pcm16)
        if detector is not self.detector:
            return  # turn detection changed meanwhile
        for te in events:
            await self._turn_event(te)

    async def _turn_event(self, te: Any) -> None:
        if isinstance(te, SpeechStarted):
            self.speech_item = new_id("item")
            self.emit({"type": "input_audio_buffer.speech_started", "audio_start_ms": int(te.start * 1000),
                       "item_id": self.speech_item})
            if self.response is not None and self.cfg.interrupt_response:
                await self._cancel_response("turn_detected")
        elif isinstance(te, Utterance):
            item_id = self.speech_item or new_id("item")
            self.speech_item = None
            self.emit({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": int(te.end * 1000),
                       "item_id": item_id})
            self._commit_audio(te.pcm, item_id)
            if self.cfg.type == REALTIME and self.cfg.create_response:
                self._start_response({})
        elif isinstance(te, SpeechDropped):
            item_id = self.speech_item or new_id("item")
            self.speech_item = None
            self.emit({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": int(te.start * 1000),
                       "item_id": item_id})
            self.emit({"type": "input_audio_buffer.cleared"})

    async def _on_commit(self, e: Dict[str, Any]) -> None:
        if self.detector is not None:
            utt = self.detector.commit()
            pcm = utt.pcm if utt is not None else np.zeros(0, np.float32)
            if utt is not None and self.speech_item is not None:
                self.emit({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": int(utt.end * 1000),
                           "item_id": self.speech_item})
        else:
            self.buffer.append(self.resample_in(np.zeros(0, np.float32), last=True))  # what the resampler holds
            self.resample_in = Resampler(self.cfg.input_format.rate, RATE)
            pcm = np.concatenate(self.buffer) if self.buffer else np.zeros(0, np.float32)
            self.buffer, self.buffer_samples = [], 0
        item_id, self.speech_item = self.speech_item or new_id("item"), None
        if len(pcm) < MIN_COMMIT_S * RATE:
            raise ClientError(f"the input audio buffer holds {1000 * len(pcm) / RATE:.0f} ms of audio; a commit needs "
                              f"at least {1000 * MIN_COMMIT_S:.0f} ms", code="input_audio_buffer_commit_empty")
        self._commit_audio(pcm, item_id)

    async def _on_clear(self, e: Dict[str, Any]) -> None:
        if self.detector is not None:
            self.detector.clear()
        self.buffer, self.buffer_samples, self.speech_item = [], 0, None
        self.emit({"type": "input_audio_buffer.cleared"})

    def _commit_audio(self, pcm: np.ndarray, item_id: str) -> None:
        """The user's turn from the buffer: the item, its events, its transcription."""
        previous = self.items[-1].id if self.items else None
        item = Item(item_id, "user", [{"type": "input_audio", "transcript": None}],
                    pcm=np.clip(np.round(pcm * 32767), -32768, 32767).astype(np.int16))
        if self.cfg.type == REALTIME:
            self.items.append(item)
        self.emit({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous})
        self._item_added(item, previous)
        if self.cfg.transcribe_input:
            self._spawn(self._transcribe(item, pcm))

    def _item_added(self, item: Item, previous: Optional[str]) -> None:
        obj = item.obj()
        self.emit({"type": "conversation.item.added", "previous_item_id": previous, "item": obj})
        self.emit({"type": "conversation.item.created", "previous_item_id": previous, "item": obj})
        if item.status != "in_progress":
            self.emit({"type": "conversation.item.done", "previous_item_id": previous, "item": obj})

    async def _transcribe(self, item: Item, pcm: np.ndarray) -> None:
        """conversation.item.input_audio_transcription.delta / .completed (or .failed) for
        the user's audio: the same model with "Perform ASR.", batched with the rest."""
        loop = asyncio.get_running_loop()
        seconds = len(pcm) / RATE
        holder: Dict[str, Any] = {}

        def delta(piece: str) -> None:
            self.emit({"type": "conversation.item.input_audio_transcription.delta", "item_id": item.id,
                       "content_index": 0, "delta": piece})

        def pump() -> str:
            job = self.model.submit(pcm, sample_rate=RATE, stream=True, vad=None,
                                    max_new_tokens=self.hub.transcribe_tokens)
            holder["job"] = job
            self.jobs.add(job)
            if self.closing:
                job.cancel()
            try:
                for piece in job.pieces():
                    try:
                        loop.call_soon_threadsafe(delta, piece)
                    except RuntimeError:  # the loop is gone: shutdown
                        job.cancel()
                return job.transcription().text
            finally:
                self.jobs.discard(job)

        try:
            text = await self.hub.call(pump)
        except TranscriptionCancelled:
            return
        except asyncio.CancelledError:
            if "job" in holder:
                holder["job"].cancel()
            raise
        except Exception as e:  # noqa: BLE001 - reported as this item's failure
            if not self.closing:
                log.warning("realtime session %s: transcription of %s failed: %s", self.id, item.id, e)
            self.emit({"type": "conversation.item.input_audio_transcription.failed", "item_id": item.id,
                       "content_index": 0, "error": {"type": "server_error", "code": "transcription_failed",
                                                     "message": str(e), "param": None}})
            return
        item.content = [{"type": "input_audio", "transcript": text}]
        self.emit({"type": "conversation.item.input_audio_transcription.completed", "item_id": item.id,
                   "content_index": 0, "transcript": text,
                   "usage": {"type": "duration", "seconds": round(seconds, 3)}})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _on_item_create(self, e: Dict[str, Any]) -> None:
        self._need_conversation("conversation.item.create")
        item_in = e.get("item")
        if not isinstance(item_in, dict):
            raise ClientError("conversation.item.create needs an 'item' object", param="item")
        kind = item_in.get("type", "message")
        if kind != "message":
            raise ClientError(f"items of type {kind!r} are not supported (no function calling); send a message",
                              param="item.type", code="unsupported")
        role = item_in.get("role")
        if role == "system":
            raise ClientError("system items are not supported: set the session's instructions", param="item.role",
                              code="unsupported")
        if role not in ("user", "assistant"):
            raise ClientError(f"item.role must be 'user' or 'assistant', got {role!r}", param="item.role")
        content = item_in.get("content")
        if not isinstance(content, list) or not content:
            raise ClientError("item.content must be a non-empty list", param="item.content")
        item_id = item_in.get("id") if isinstance(item_in.get("id"), str) and item_in.get("id") else new_id("item")
        if any(i.id == item_id for i in self.items):
            raise ClientError(f"an item with id {item_id!r} exists already", param="item.id")
        texts: List[str] = []
        clips: List[np.ndarray] = []
        shown: List[Dict[str, Any]] = []
        for k, part in enumerate(content):
            if not isinstance(part, dict):
                raise ClientError("each content part is an object", param=f"item.content[{k}]")
            ptype = part.get("type")
            if role == "user" and ptype in ("input_text", "text"):
                t = part.get("text")
                if not isinstance(t, str) or not t.strip():
                    raise ClientError("input_text needs a non-empty 'text'", param=f"item.content[{k}].text")
                texts.append(t)
                shown.append({"type": "input_text", "text": t})
            elif role == "user" and ptype in ("input_audio", "audio"):
                try:
                    pcm = to_float(decode_b64(part.get("audio"), "audio"), self.cfg.input_format)
                except FormatError as err:
                    raise ClientError(str(err), param=f"item.content[{k}].audio") from None
                if len(pcm) / self.cfg.input_format.rate > self.settings.max_buffer_s:
                    raise ClientError(f"the item's audio is longer than {self.settings.max_buffer_s:g} s",
                                      param=f"item.content[{k}].audio", code="input_audio_buffer_full")
                clips.append(Resampler(self.cfg.input_format.rate, RATE)(pcm, last=True))
                shown.append({"type": "input_audio", "transcript": part.get("transcript")})
            elif role == "assistant" and ptype in ("output_text", "text", "output_audio", "audio"):
                t = part.get("text") if ptype in ("output_text", "text") else part.get("transcript")
                if not isinstance(t, str) or not t.strip():
                    raise ClientError("an assistant item needs its text (output_text.text or output_audio.transcript)",
                                      param=f"item.content[{k}]")
                texts.append(t)
                shown.append({"type": "output_text", "text": t} if ptype in ("output_text", "text")
                             else {"type": "output_audio", "transcript": t})
            else:
                raise ClientError(f"content type {ptype!r} is not supported in a {role} item",
                                  param=f"item.content[{k}].type", code="unsupported")
        prev = e.get("previous_item_id")
        index = len(self.items)
        if prev == "root":
            index = 0
        elif isinstance(prev, str) and prev:
            found = [k for k, i in enumerate(self.items) if i.id == prev]
            if not found:
                raise ClientError(f"previous_item_id {prev!r} is not in the conversation", param="previous_item_id",
                                  code="item_not_found")
            index = found[0] + 1
        pcm_all = np.concatenate(clips) if clips else None
        item = Item(item_id, role, shown, text="\n".join(texts) if texts else None,
                    pcm=None if pcm_all is None else np.clip(np.round(pcm_all * 32767), -32768, 32767).astype(np.int16))
        if role == "assistant" and self.response is not None and index == len(self.items):
            raise ClientError("a reply is running: cancel it or wait for response.done before adding an assistant "
                              "item", code="conversation_already_has_active_response")
        if index != len(self.items):
            self.dirty = True
        self.items.insert(index, item)
        self._item_added(item, self.items[index - 1].id if index > 0 else None)

    async def _on_item_truncate(self, e: Dict[str, Any]) -> None:
        self._need_conversation("conversation.item.truncate")
        item_id, ms, ci = e.get("item_id"), e.get("audio_end_ms"), e.get("content_index", 0)
        if self.response is not None and self.response.item_id == item_id:
            await self._cancel_response("client_cancelled")  # what was not heard is not wanted either
        item = self._find(item_id)
        if item.role != "assistant":
            raise ClientError("only assistant items can be truncated", param="item_id")
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms < 0:
            raise ClientError(f"audio_end_ms must be a number >= 0, got {ms!r}", param="audio_end_ms")
        conv = self.conv
        if item.reply is None:  # a reply stopped before it said anything: nothing to cut
            self.emit({"type": "conversation.item.truncated", "item_id": item.id, "content_index": ci,
                       "audio_end_ms": int(ms)})
            return
        index = self.items.index(item)
        later = [i for i in self.items[index + 1:] if i.synced]
        if self.response is None and not self.dirty and item.synced and not later and conv.last_reply is not None:
            # the reply is the last turn in the engine: roll its tail back there
            try:
                await self.hub.call(conv.truncate, float(ms))
            except ConversationError as err:
                raise ClientError(str(err), param="item_id") from None
            kept = _slim(conv.last_reply)
        else:
            # turns came after it (a reply may be running): the history is rebuilt before the next reply
            keep = kept_items(item.reply.items, float(ms))
            kept = item.reply
            if keep is not None:
                kept = replace(item.reply, items=item.reply.items[:keep], item_texts=item.reply.item_texts[:keep],
                               text="".join(item.reply.item_texts[:keep]), truncated=True)
                self.dirty = True
        item.reply = kept
        kind = item.content[0]["type"] if item.content else "output_audio"
        item.content = [{"type": kind, "transcript" if kind == "output_audio" else "text": kept.text}]
        self.emit({"type": "conversation.item.truncated", "item_id": item.id, "content_index": ci,
                   "audio_end_ms": int(ms)})

    async def _on_item_delete(self, e: Dict[str, Any]) -> None:
        self._need_conversation("conversation.item.delete")
        item = self._find(e.get("item_id"))
        if self.response is not None and self.response.item_id == item.id:
            await self._cancel_response("client_cancelled")
        if item.synced:
            self.dirty = True
        self.items.remove(item)
        self.emit({"type": "conversation.item.deleted", "item_id": item.id})

    async def _on_item_retrieve(self, e: Dict[str, Any]) -> None:
        item = self._find(e.get("item_id"))
        obj = item.obj()
        if item.pcm is not None:
            obj = dict(obj, content=[dict(c) for c in obj["content"]])
            for c in obj["content"]:
                if c.get("type") == "input_audio":
                    pcm = Resampler(RATE, self.cfg.input_format.rate)(item.pcm.astype(np.float32) / 32768, last=True)
                    c["audio"] = base64.b64encode(from_float(pcm, self.cfg.input_format)).decode("ascii")
        self.emit({"type": "conversation.item.retrieved", "item": obj})

    async def _on_response_create(self, e: Dict[str, Any]) -> None:
        self._need_conversation("response.create")
        params = e.get("response") or {}
        if not isinstance(params, dict):
            raise ClientError("response must be an object", param="response")
        if self.response is not None:
            raise ClientError("a reply is already running; cancel it (response.cancel) or wait for response.done",
                              code="conversation_already_has_active_response")
        if params.get("conversation") not in (None, "auto"):
            raise ClientError("out-of-band responses (conversation: 'none') are not supported",
                              param="response.conversation", code="unsupported")
        if params.get("input") is not None:
            raise ClientError("responses with their own input are not supported", param="response.input",
                              code="unsupported")
        if params.get("tools"):
            raise ClientError("tools are not supported: LFM2-Audio has no function calling", param="response.tools",
                              code="unsupported")
        said = [i for i in self.items if i.role == "user" or i.reply is not None or i.text]
        if not said or said[-1].role != "user":
            raise ClientError("there is no user turn to answer: commit audio or create a user item first",
                              code="no_user_turn")
        self._start_response(params)

    def _start_response(self, params: Dict[str, Any]) -> None:
        if self.response is not None:
            self.pending_response = True  # after the running one (interrupt_response off)
            return
        mods = self.cfg.output_modalities
        for key in ("output_modalities", "modalities"):
            if isinstance(params.get(key), list):
                mods = ev.parse_modalities(params[key], f"response.{key}")
        max_tokens = self.cfg.max_output_tokens
        for key in ("max_output_tokens", "max_response_output_tokens"):
            if key in params:
                max_tokens = ev.parse_max_tokens(params[key], f"response.{key}", self.settings.max_reply_tokens)
        r = Response(new_id("resp"), new_id("item"), mods, max_tokens, metadata=params.get("metadata"))
        self.response = r
        r.task = asyncio.ensure_future(self._respond(r))

    async def _on_response_cancel(self, e: Dict[str, Any]) -> None:
        rid = e.get("response_id")
        if self.response is None:
            raise ClientError("there is no reply to cancel", code="response_cancel_not_active")
        if rid and rid != self.response.id:
            raise ClientError(f"response {rid!r} is not running (the running one is {self.response.id!r})",
                              param="response_id", code="response_cancel_not_active")
        await self._cancel_response("client_cancelled")

    async def _on_output_audio_clear(self, e: Dict[str, Any]) -> None:
        raise ClientError("output_audio_buffer.clear is for WebRTC; over a WebSocket stop playing and send "
                          "response.cancel and conversation.item.truncate", code="unsupported")

    _HANDLERS = {
        "session.update": _on_session_update,
        "transcription_session.update": _on_session_update,
        "input_audio_buffer.append": _on_append,
        "input_audio_buffer.commit": _on_commit,
        "input_audio_buffer.clear": _on_clear,
        "conversation.item.create": _on_item_create,
        "conversation.item.truncate": _on_item_truncate,
        "conversation.item.delete": _on_item_delete,
        "conversation.item.retrieve": _on_item_retrieve,
        "response.create": _on_response_create,
        "response.cancel": _on_response_cancel,
        "output_audio_buffer.clear": _on_output_audio_clear,
    }

    def _find(self, item_id: Any) -> Item:
        for i in self.items:
            if i.id == item_id:
                return i
        raise ClientError(f"there is no item {item_id!r} in the conversation", param="item_id", code="item_not_found")

    def _need_conversation(self, what: str) -> None:
        if self.cfg.type != REALTIME or self.conv is None:
            raise ClientError(f"{what} needs a realtime session; this is a transcription session",
                              code="invalid_session_type")

    # ------------------------------------------------------------------ the conversation
    async def _open_conversation(self) -> None:
        s = self.settings

        def open_it() -> Any:
            return self.model.conversation(system=self.cfg.instructions, voice=self.cfg.voice, mode=self.cfg.mode,
                                           max_new_tokens=s.max_reply_tokens, max_duration=s.max_reply_s,
                                           max_context=s.max_context, temperature=s.temperature, top_k=s.top_k,
                                           seed=s.seed)

        try:
            self.conv = await self.hub.call(open_it)
        except ConversationError as e:
            raise ClientError(f"the server is busy: {e}", code="session_limit_reached", type="server_error") from None
        except (SpeechError, PylfmError) as e:
            raise ClientError(f"this server's model cannot speak: {e}", code="speech_unavailable",
                              type="server_error") from None
        self.items, self.dirty = [], False

    async def _sync(self, upto: Optional[int] = None) -> None:
        """Brings the Conversation up to the items (the first ``upto`` of them): appends
        what is new, or rebuilds the history when items changed before its end."""
        conv = self.conv
        items = self.items[:upto] if upto is not None else list(self.items)
        rebuild = self.dirty
        if rebuild:
            system = system_prompt(self.cfg.instructions, self.cfg.voice)
            todo = [i for i in items if i.role == "user" or i.reply is not None or i.text]
        else:
            todo = [i for i in items if not i.synced]

        def apply() -> None:
            if rebuild:
                conv.system = system
                conv.reset()
            for i in todo:
                if i.role == "user":
                    if i.pcm is not None:
                        conv.add_audio(i.pcm.astype(np.float32) / 32768.0, sample_rate=RATE)
                    if i.text:
                        conv.add_text(i.text)
                elif i.reply is not None:
                    conv.add_assistant(i.reply)
                elif i.text:
                    conv.add_assistant(i.text)

        await self.hub.call(apply)
        if rebuild:
            self.dirty = False
            for i in self.items:
                i.synced = False
        for i in todo:
            i.synced = True
        self._dropped_seen = conv.dropped_turns

    def _trim_items(self) -> None:
        """Forgets the items of the turns the Conversation dropped (past ``max_context``)."""
        dropped = self.conv.dropped_turns - self._dropped_seen
        if dropped <= 0:
            return
        self._dropped_seen = self.conv.dropped_turns
        # the turns in the engine: runs of items of one role (empty replies are not turns there)
        k, turns, last_role, cut = 0, 0, None, 0
        while k < len(self.items):
            i = self.items[k]
            if i.synced and (i.role == "user" or i.reply is not None or i.text):
                if i.role != last_role:
                    if turns == dropped:
                        break
                    turns += 1
                    last_role = i.role
                cut = k + 1
            k += 1
        self.items = self.items[cut:]

    async def _cancel_response(self, reason: str) -> None:
        r = self.response
        if r is None:
            return
        if r.cancel_reason is None:
            r.cancel_reason = reason
        task = r.task
        while task is not None and not task.done():
            if self.conv is not None:
                await self.hub.call(self.conv.cancel)
            await asyncio.wait({task}, timeout=0.05)

    async def _respond(self, r: Response) -> None:
        """One reply: its events as it decodes, then the done events."""
        names = ev.NAMES[self.dialect]
        cfg = self.cfg
        conv = self.conv
        text_only = r.modalities == ("text",)
        previous = self.items[-1].id if self.items else None
        status, details = "completed", None
        kind = "output_text" if text_only else "output_audio"
        live_item = ev.item_object(r.item_id, "assistant", [], "in_progress")
        self.emit({"type": "response.created",
                   "response": ev.response_object(r.id, "in_progress", [], cfg, r.modalities, r.max_tokens, r.metadata)})
        self.emit({"type": "response.output_item.added", "response_id": r.id, "output_index": 0, "item": live_item})
        self.emit({"type": "conversation.item.added", "previous_item_id": previous, "item": live_item})
        self.emit({"type": "conversation.item.created", "previous_item_id": previous, "item": live_item})
        part0 = {"type": "text", "text": ""} if text_only else {"type": "audio", "transcript": ""}
        where = {"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0}
        self.emit({"type": "response.content_part.added", **where, "part": part0})
        out_fmt = cfg.output_format
        resample = Resampler(OUTPUT_RATE, out_fmt.rate)
        before = conv.last_reply
        n_past0 = conv.n_past
        reply = None
        try:
            if r.cancel_reason is None:
                await self._sync()
                if r.cancel_reason is None:
                    conv.mode = "sequential" if text_only else cfg.mode
                    steps = r.max_tokens or self.settings.max_reply_tokens
                    agen = conv.areply(max_new_tokens=steps,
                                       max_duration=ONE_FRAME_S if text_only else self.settings.max_reply_s)
                    try:
                        async for chunk in agen:
                            if chunk.text:
                                r.transcript += chunk.text
                                self.emit({"type": names["text.delta" if text_only else "transcript.delta"], **where,
                                           "delta": chunk.text})
                            if len(chunk.audio) and not text_only:
                                self._send_audio(names, where, resample(chunk.audio), r)
                            if r.cancel_reason is not None:
                                break
                    finally:
                        await agen.aclose()
                    if not text_only:
                        self._send_audio(names, where, resample(np.zeros(0, np.float32), last=True), r)
            got = conv.last_reply
            reply = got if got is not None and got is not before else None
            stop = reply.stop_reason if reply is not None else "cancelled"
            if r.cancel_reason is not None or stop == "cancelled":
                status, details = "cancelled", {"type": "cancelled", "reason": r.cancel_reason or "client_cancelled"}
            elif stop in ("length", "context") and not text_only:
                status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
        except asyncio.CancelledError:
            raise
        except (ConversationError, SpeechError) as e:
            status, details = "failed", {"type": "failed", "error": {"type": "invalid_request_error",
                                                                     "code": "reply_failed", "message": str(e)}}
            self.emit(ev.error_event(ClientError(str(e), code="reply_failed")))
        except Exception as e:  # noqa: BLE001 - the session goes on
            log.exception("realtime session %s: a reply failed", self.id)
            status, details = "failed", {"type": "failed", "error": {"type": "server_error", "code": "server_error",
                                                                     "message": str(e)}}
            self.emit(ev.error_event(ClientError(f"the reply failed: {e}", code="server_error", type="server_error")))
        transcript = reply.text if reply is not None and text_only else r.transcript
        if text_only:
            self.emit({"type": names["text.done"], **where, "text": transcript})
            part = {"type": "text", "text": transcript}
        else:
            self.emit({"type": names["audio.done"], **where})
            self.emit({"type": names["transcript.done"], **where, "transcript": transcript})
            part = {"type": "audio", "transcript": transcript}
        self.emit({"type": "response.content_part.done", **where, "part": part})
        content = [{"type": kind, "text" if text_only else "transcript": transcript}]
        # a reply stopped before it began still gets its (empty) item, as clients saw it added; it has nothing
        # in the engine, so it counts as synced
        item = Item(r.item_id, "assistant", content, reply=_slim(reply) if reply is not None else None,
                    synced=True, status="completed" if status == "completed" else "incomplete")
        done_item = item.obj()
        self.emit({"type": "response.output_item.done", "response_id": r.id, "output_index": 0, "item": done_item})
        self.emit({"type": "conversation.item.done", "previous_item_id": previous, "item": done_item})
        # the assistant turn sits after the items that were in the conversation when it began
        at = next((k + 1 for k, i in enumerate(self.items) if i.id == previous), 0 if previous is None else None)
        self.items.insert(len(self.items) if at is None else at, item)
        if reply is not None:
            self._trim_items()
        n_out = len(reply.items) if reply is not None else 0
        n_in = max(0, conv.n_past - n_past0 - n_out) if reply is not None else 0
        usage = {"total_tokens": n_in + n_out, "input_tokens": n_in, "output_tokens": n_out,
                 "input_token_details": {"text_tokens": 0, "audio_tokens": n_in, "cached_tokens": n_past0},
                 "output_token_details": {"text_tokens": len(reply.tokens) if reply is not None else 0,
                                          "audio_tokens": len(reply.codes) if reply is not None else 0}}
        self.emit({"type": "response.done",
                   "response": ev.response_object(r.id, status, [done_item], cfg, r.modalities, r.max_tokens,
                                                  r.metadata, details, usage)})
        self.response = None
        self.last_message = max(self.last_message, time.monotonic())  # idle counts from the reply's end
        if self.pending_response and not self.closing:
            self.pending_response = False
            said = [i for i in self.items if i.role == "user" or i.reply is not None or i.text]
            if said and said[-1].role == "user":
                self._start_response({})

    def _send_audio(self, names: Dict[str, str], where: Dict[str, Any], pcm: np.ndarray, r: Response) -> None:
        if not len(pcm):
            return
        r.audio_samples += len(pcm)
        data = base64.b64encode(from_float(pcm, self.cfg.output_format)).decode("ascii")
        self.emit({"type": names["audio.delta"], **where, "delta": data})


def _slim(reply: Reply) -> Reply:
    """The reply without its audio: what the conversation needs to rebuild it."""
    return replace(reply, audio=np.zeros(0, np.float32))


def add_realtime_routes(app: Any, hub: RealtimeHub) -> None:
    """``/v1/realtime`` (and ``/realtime``, as some clients spell it) on ``app``."""
    app.state.realtime = hub

    async def realtime(websocket: Any) -> None:  # a Starlette route: no parameter parsing
        await RealtimeSession(hub, websocket).run()

    app.router.add_websocket_route("/v1/realtime", realtime)
    app.router.add_websocket_route("/realtime", realtime)
