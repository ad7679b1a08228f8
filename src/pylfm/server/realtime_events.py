"""The OpenAI Realtime protocol's data: a session's configuration (parsed from either the
GA or the beta spelling), the server events' names in each dialect, and the objects the
events carry (sessions, items, responses). No I/O here; `pylfm.server.realtime` runs
the sessions.

Two dialects are in use. The GA API (``session.type``, ``audio.input.format``,
``response.output_audio.delta``, ``conversation.item.added``) is the default; a client
that sends ``OpenAI-Beta: realtime=v1`` (or the ``openai-beta.realtime-v1`` WebSocket
subprotocol, as browsers do) gets the beta names (``response.audio.delta``,
``response.audio_transcript.delta``, ``response.text.delta``, the flat beta session
object). Both dialects' client events and session fields are accepted either way, and
the small item events are sent under both names (``conversation.item.added`` and
``conversation.item.created``).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional

from ..errors import SpeechError
from ..live.turns import TurnDetection
from ..speech.voices import CHAT_SYSTEM_PROMPT, DEFAULT_VOICE, MODES, voice_name
from .realtime_audio import AudioFormat, FormatError, parse_format

GA, BETA = "ga", "beta"
REALTIME, TRANSCRIPTION = "realtime", "transcription"
DEFAULT_INSTRUCTIONS = CHAT_SYSTEM_PROMPT  # "Respond with interleaved text and audio."
# semantic_vad is served by the same Silero detector; its eagerness picks the silence that ends a turn
EAGERNESS_SILENCE_MS = {"low": 800, "medium": 500, "auto": 500, "high": 250}

# server event names that differ between the dialects
NAMES = {
    GA: {"audio.delta": "response.output_audio.delta", "audio.done": "response.output_audio.done",
         "transcript.delta": "response.output_audio_transcript.delta",
         "transcript.done": "response.output_audio_transcript.done",
         "text.delta": "response.output_text.delta", "text.done": "response.output_text.done"},
    BETA: {"audio.delta": "response.audio.delta", "audio.done": "response.audio.done",
           "transcript.delta": "response.audio_transcript.delta", "transcript.done": "response.audio_transcript.done",
           "text.delta": "response.text.delta", "text.done": "response.text.done"},
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class ClientError(Exception):
    """A client event the session cannot act on: answered with an ``error`` event, and the
    session goes on."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: Optional[str] = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.code, self.param, self.type = message, code, param, type


def error_event(err: ClientError, client_event_id: Optional[str] = None) -> Dict[str, Any]:
    return {"type": "error", "event_id": new_id("event"),
            "error": {"type": err.type, "code": err.code, "message": err.message, "param": err.param,
                      "event_id": client_event_id}}


# ---------------------------------------------------------------------- the session's configuration
@dataclass(frozen=True)
class SessionConfig:
    """What a session does; changed by ``session.update``."""

    type: str = REALTIME
    instructions: str = DEFAULT_INSTRUCTIONS
    voice: str = DEFAULT_VOICE
    mode: str = "interleaved"                      # pylfm: interleaved or sequential replies
    output_modalities: tuple = ("audio",)          # ("audio",) (with its transcript) or ("text",)
    input_format: AudioFormat = field(default_factory=AudioFormat)
    output_format: AudioFormat = field(default_factory=AudioFormat)
    turn_detection: Optional[TurnDetection] = field(default_factory=TurnDetection)  # None: manual commits
    vad_type: str = "server_vad"
    eagerness: Optional[str] = None
    create_response: bool = True
    interrupt_response: bool = True
    transcribe_input: bool = False                 # conversation.item.input_audio_transcription.*
    transcription_model: Optional[str] = None      # echoed back; the server has one model
    max_output_tokens: Optional[int] = None        # None: "inf" (the server's own bound)

    @property
    def system(self) -> str:
        return self.instructions


def initial_config(session_type: str, voice: str, mode: str) -> SessionConfig:
    if session_type == TRANSCRIPTION:
        return SessionConfig(type=TRANSCRIPTION, voice=voice, mode=mode, transcribe_input=True,
                             output_modalities=("text",))
    return SessionConfig(voice=voice, mode=mode)


def _get(d: Dict[str, Any], key: str, param: str, kinds: tuple, allow_none: bool = True) -> Any:
    v = d[key]
    if v is None and allow_none:
        return None
    if isinstance(v, bool) and bool not in kinds:
        raise ClientError(f"{param} must be {_kind_names(kinds)}, got {v!r}", param=param)
    if not isinstance(v, kinds):
        raise ClientError(f"{param} must be {_kind_names(kinds)}, got {type(v).__name__}", param=param)
    return v


def _kind_names(kinds: tuple) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
             list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def apply_update(cfg: SessionConfig, session: Any, max_output_tokens: int) -> SessionConfig:
    """``cfg`` changed by the ``session`` object of a ``session.update`` (GA or beta
    fields); ClientError for anything it cannot do. Nothing changes on error."""
    if not isinstance(session, dict):
        raise ClientError("session.update needs a 'session' object", param="session")
    s = session
    changes: Dict[str, Any] = {}
    if "type" in s:
        t = _get(s, "type", "session.type", (str,), allow_none=False)
        if t not in (REALTIME, TRANSCRIPTION):
            raise ClientError(f"session.type must be 'realtime' or 'transcription', got {t!r}", param="session.type")
        changes["type"] = t
    if "instructions" in s:
        ins = _get(s, "instructions", "session.instructions", (str,))
        changes["instructions"] = ins if ins and ins.strip() else DEFAULT_INSTRUCTIONS
    if "mode" in s:  # pylfm
        m = _get(s, "mode", "session.mode", (str,), allow_none=False)
        if m not in MODES:
            raise ClientError(f"session.mode must be one of {', '.join(MODES)}, got {m!r}", param="session.mode")
        changes["mode"] = m
    for key in ("output_modalities", "modalities"):
        if key in s:
            mods = _get(s, key, f"session.{key}", (list,), allow_none=False)
            changes["output_modalities"] = parse_modalities(mods, f"session.{key}")
    if "max_output_tokens" in s or "max_response_output_tokens" in s:
        key = "max_output_tokens" if "max_output_tokens" in s else "max_response_output_tokens"
        changes["max_output_tokens"] = parse_max_tokens(s[key], f"session.{key}", max_output_tokens)
    tools = s.get("tools")
    if tools:
        raise ClientError("tools are not supported: LFM2-Audio has no function calling", param="session.tools",
                          code="unsupported")
    if s.get("prompt"):
        raise ClientError("stored prompts are not supported; send instructions", param="session.prompt",
                          code="unsupported")

    # the beta API's flat fields
    if "voice" in s:
        changes["voice"] = parse_voice(s["voice"], "session.voice")
    if "input_audio_format" in s:
        changes["input_format"] = _format(s["input_audio_format"], "session.input_audio_format")
    if "output_audio_format" in s:
        changes["output_format"] = _format(s["output_audio_format"], "session.output_audio_format")
    if "input_audio_transcription" in s:
        changes.update(_transcription(s["input_audio_transcription"], "session.input_audio_transcription"))
    if "turn_detection" in s:
        changes.update(_turn_detection(s["turn_detection"], "session.turn_detection", cfg))

    # the GA API's audio object
    audio = s.get("audio")
    if audio is not None:
        if not isinstance(audio, dict):
            raise ClientError("session.audio must be an object", param="session.audio")
        inp, out = audio.get("input"), audio.get("output")
        if inp is not None:
            if not isinstance(inp, dict):
                raise ClientError("session.audio.input must be an object", param="session.audio.input")
            if "format" in inp:
                changes["input_format"] = _format(inp["format"], "session.audio.input.format")
            if "transcription" in inp:
                changes.update(_transcription(inp["transcription"], "session.audio.input.transcription"))
            if "turn_detection" in inp:
                changes.update(_turn_detection(inp["turn_detection"], "session.audio.input.turn_detection", cfg))
        if out is not None:
            if not isinstance(out, dict):
                raise ClientError("session.audio.output must be an object", param="session.audio.output")
            if "format" in out:
                changes["output_format"] = _format(out["format"], "session.audio.output.format")
            if "voice" in out:
                changes["voice"] = parse_voice(out["voice"], "session.audio.output.voice")
            speed = out.get("speed")
            if speed is not None and speed != 1.0:
                raise ClientError("speed is not supported: LFM2.5-Audio speaks at its own pace",
                                  param="session.audio.output.speed", code="unsupported")
    new = replace(cfg, **changes)
    if new.type == TRANSCRIPTION and "transcribe_input" not in changes:
        new = replace(new, transcribe_input=True)
    return new


def parse_modalities(mods: List[Any], param: str) -> tuple:
    got = set()
    for m in mods:
        if m not in ("text", "audio"):
            raise ClientError(f"{param} may hold 'text' and 'audio', got {m!r}", param=param)
        got.add(m)
    if not got:
        raise ClientError(f"{param} must not be empty", param=param)
    return ("audio",) if "audio" in got else ("text",)


def parse_max_tokens(v: Any, param: str, bound: int) -> Optional[int]:
    if v is None or v == "inf":
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096:
        raise ClientError(f"{param} must be an integer in [1, 4096] or 'inf', got {v!r}", param=param)
    return min(v, bound)


def parse_voice(v: Any, param: str) -> str:
    if isinstance(v, dict):
        v = v.get("id")
    try:
        return voice_name(v)
    except SpeechError as e:
        raise ClientError(str(e), param=param) from None


def _format(v: Any, param: str) -> AudioFormat:
    try:
        return parse_format(v)
    except FormatError as e:
        raise ClientError(str(e), param=param) from None


def _transcription(v: Any, param: str) -> Dict[str, Any]:
    if v is None:
        return {"transcribe_input": False, "transcription_model": None}
    if not isinstance(v, dict):
        raise ClientError(f"{param} must be an object (e.g. {{\"model\": \"lfm2-audio\"}}) or null", param=param)
    model = v.get("model")
    return {"transcribe_input": True, "transcription_model": model if isinstance(model, str) else None}


def _turn_detection(v: Any, param: str, cfg: SessionConfig) -> Dict[str, Any]:
    if v is None:
        return {"turn_detection": None}
    if not isinstance(v, dict):
        raise ClientError(f"{param} must be an object or null", param=param)
    kind = v.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise ClientError(f"{param}.type must be 'server_vad' or 'semantic_vad', got {kind!r}", param=f"{param}.type")
    base = cfg.turn_detection or TurnDetection()
    fields: Dict[str, Any] = {}
    eagerness = None
    if kind == "semantic_vad":
        eagerness = v.get("eagerness") or "auto"
        if eagerness not in EAGERNESS_SILENCE_MS:
            raise ClientError(f"{param}.eagerness must be low, medium, high or auto, got {eagerness!r}",
                              param=f"{param}.eagerness")
        fields["silence_duration_ms"] = EAGERNESS_SILENCE_MS[eagerness]
    else:
        for key in ("threshold", "prefix_padding_ms", "silence_duration_ms"):
            if v.get(key) is not None:
                val = v[key]
                if isinstance(val, bool) or not isinstance(val, (int, float)):
                    raise ClientError(f"{param}.{key} must be a number, got {val!r}", param=f"{param}.{key}")
                fields[key] = float(val)
    try:
        td = replace(base, **fields)
    except ValueError as e:
        raise ClientError(str(e).replace("TurnDetection.", f"{param}."), param=param) from None
    out: Dict[str, Any] = {"turn_detection": td, "vad_type": kind, "eagerness": eagerness}
    for key in ("create_response", "interrupt_response"):
        if v.get(key) is not None:
            if not isinstance(v[key], bool):
                raise ClientError(f"{param}.{key} must be true or false", param=f"{param}.{key}")
            out[key] = v[key]
    return out


# ---------------------------------------------------------------------- objects the events carry
def turn_detection_object(cfg: SessionConfig) -> Optional[Dict[str, Any]]:
    td = cfg.turn_detection
    if td is None:
        return None
    if cfg.vad_type == "semantic_vad":
        return {"type": "semantic_vad", "eagerness": cfg.eagerness or "auto", "create_response": cfg.create_response,
                "interrupt_response": cfg.interrupt_response}
    return {"type": "server_vad", "threshold": td.threshold, "prefix_padding_ms": int(td.prefix_padding_ms),
            "silence_duration_ms": int(td.silence_duration_ms), "create_response": cfg.create_response,
            "interrupt_response": cfg.interrupt_response, "idle_timeout_ms": None}


def session_object(cfg: SessionConfig, dialect: str, session_id: str, model_name: str,
                   expires_at: int) -> Dict[str, Any]:
    """The session as ``session.created`` / ``session.updated`` carry it."""
    transcription = {"model": cfg.transcription_model or model_name, "language": None, "prompt": None} \
        if cfg.transcribe_input else None
    max_tokens = "inf" if cfg.max_output_tokens is None else cfg.max_output_tokens
    if dialect == BETA:
        obj: Dict[str, Any] = {
            "id": session_id, "object": "realtime.session" if cfg.type == REALTIME else "realtime.transcription_session",
            "model": model_name, "expires_at": expires_at,
            "modalities": ["text", "audio"] if "audio" in cfg.output_modalities else ["text"],
            "instructions": cfg.instructions, "voice": cfg.voice,
            "input_audio_format": cfg.input_format.beta(), "output_audio_format": cfg.output_format.beta(),
            "input_audio_transcription": transcription, "turn_detection": turn_detection_object(cfg),
            "tools": [], "tool_choice": "auto", "temperature": 1.0, "max_response_output_tokens": max_tokens,
            "mode": cfg.mode,
        }
        return obj
    inp: Dict[str, Any] = {"format": cfg.input_format.ga(), "transcription": transcription,
                           "noise_reduction": None, "turn_detection": turn_detection_object(cfg)}
    if cfg.type == TRANSCRIPTION:
        return {"type": TRANSCRIPTION, "object": "realtime.transcription_session", "id": session_id,
                "expires_at": expires_at, "audio": {"input": inp}, "include": None}
    return {"type": REALTIME, "object": "realtime.session", "id": session_id, "model": model_name,
            "expires_at": expires_at, "output_modalities": list(cfg.output_modalities),
            "instructions": cfg.instructions, "mode": cfg.mode,
            "audio": {"input": inp, "output": {"format": cfg.output_format.ga(), "voice": cfg.voice, "speed": 1.0}},
            "max_output_tokens": max_tokens, "tools": [], "tool_choice": "auto", "tracing": None,
            "truncation": "auto", "prompt": None, "include": None}


def session_event_names(cfg: SessionConfig, dialect: str) -> tuple:
    """(created, updated) event names: beta transcription sessions have their own."""
    if dialect == BETA and cfg.type == TRANSCRIPTION:
        return "transcription_session.created", "transcription_session.updated"
    return "session.created", "session.updated"


def item_object(item_id: str, role: str, content: List[Dict[str, Any]], status: str = "completed") -> Dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": role, "status": status,
            "content": content}


def response_object(response_id: str, status: str, output: List[Dict[str, Any]], cfg: SessionConfig,
                    modalities: tuple, max_tokens: Optional[int], metadata: Any = None,
                    status_details: Optional[Dict[str, Any]] = None,
                    usage: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return {"id": response_id, "object": "realtime.response", "status": status, "status_details": status_details,
            "output": output, "conversation_id": None, "output_modalities": list(modalities),
            "modalities": list(modalities) if "text" in modalities else ["text", "audio"],
            "audio": {"output": {"format": cfg.output_format.ga(), "voice": cfg.voice}},
            "max_output_tokens": "inf" if max_tokens is None else max_tokens, "metadata": metadata, "usage": usage}


def expires_at(max_session_s: float) -> int:
    return int(time.time() + (max_session_s if math.isfinite(max_session_s) else 86400))
