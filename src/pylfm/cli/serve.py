"""``pylfm serve``: the OpenAI-compatible server (`pylfm.server`) on one loaded model.

FastAPI, uvicorn and python-multipart are the ``server`` extra; they are imported with
this module, so that a missing extra is reported by `pylfm.cli` as such.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from typing import Optional

import fastapi  # noqa: F401 - the server extra
import python_multipart  # noqa: F401
import uvicorn

from ..engine.device import CPU_SESSIONS, GPU_SESSIONS, physical_cores
from ..server import (DEFAULT_MAX_AUDIO_S, DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_MAX_SPEECH_S, DEFAULT_MODEL_NAME,
                      create_app)
from ..server.realtime import RealtimeSettings
from ..speech.voices import MODES, VOICES
from ..transcription.options import DEFAULT_CUE_S
from .options import FIXED_TOKENS, MAX_NEW_TOKENS, VAD, WINDOW, add_model_arguments, load_model, vad_method

log = logging.getLogger("pylfm.server")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, threads=dict(
        help="CPU threads for the engine (default: one per physical core but one, left to the HTTP side)"))
    g = p.add_argument_group("server")
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
    g.add_argument("--max-speech-s", type=float, default=DEFAULT_MAX_SPEECH_S,
                   help=f"most speech one /v1/audio/speech request makes, in seconds; longer input is refused "
                        f"(default {DEFAULT_MAX_SPEECH_S:g})")
    g.add_argument("--max-prompt-tokens", type=int, default=DEFAULT_MAX_PROMPT_TOKENS,
                   help=f"longest accepted prompt in tokens (default {DEFAULT_MAX_PROMPT_TOKENS})")
    g.add_argument("--queue", type=int, default=16,
                   help="requests admitted at once (uploading, decoding, waiting, running); more get 503 (default 16)")
    g.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                   help=f"model id reported by /v1/models (default {DEFAULT_MODEL_NAME})")
    d = p.add_argument_group("decoding")
    MAX_NEW_TOKENS.add(d)
    WINDOW.add(d)
    d.add_argument("--max-cue", type=float, default=DEFAULT_CUE_S,
                   help=f"window limit for srt/vtt/verbose_json answers, seconds (default {DEFAULT_CUE_S:g})")
    VAD.add(d, help="speech detector for long recordings (default silero)")
    FIXED_TOKENS.add(d)
    rt, r = RealtimeSettings(), p.add_argument_group("voice chat (/v1/realtime, /v1/chat/completions, the page at /)")
    r.add_argument("--sessions", type=int, default=None,
                   help="speech-to-speech conversations at once (each keeps its history in one of the engine's "
                        f"session slots; default {CPU_SESSIONS} on a CPU, {GPU_SESSIONS} on a GPU)")
    r.add_argument("--open", action="store_true", help="open the voice chat page in a browser once serving")
    r.add_argument("--voice", choices=VOICES, default=rt.voice, help=f"default voice of replies (default {rt.voice})")
    r.add_argument("--reply-mode", choices=MODES, default=rt.mode,
                   help=f"default reply mode of realtime sessions (default {rt.mode})")
    r.add_argument("--max-reply-s", type=float, default=rt.max_reply_s,
                   help=f"seconds of speech per reply (default {rt.max_reply_s:g})")
    r.add_argument("--max-reply-tokens", type=int, default=rt.max_reply_tokens,
                   help=f"steps (text tokens + audio frames) per realtime reply (default {rt.max_reply_tokens})")
    r.add_argument("--realtime-max-connections", type=int, default=rt.max_connections,
                   help=f"realtime WebSocket sessions at once, both types; more are closed with 1013 "
                        f"(default {rt.max_connections})")
    r.add_argument("--realtime-max-session-s", type=float, default=rt.max_session_s,
                   help=f"length of a realtime session in seconds (default {rt.max_session_s:g})")
    r.add_argument("--realtime-idle-timeout-s", type=float, default=rt.idle_timeout_s,
                   help=f"close a realtime session after this long without a client event or a running reply (default "
                        f"{rt.idle_timeout_s:g})")
    r.add_argument("--realtime-max-message-mib", type=float, default=rt.max_message_mib,
                   help=f"largest realtime client message in MiB (default {rt.max_message_mib:g})")
    r.add_argument("--realtime-max-buffer-s", type=float, default=rt.max_buffer_s,
                   help=f"uncommitted input audio a realtime session may hold, seconds (default {rt.max_buffer_s:g})")
    r.add_argument("--realtime-max-context", type=int, default=rt.max_context,
                   help=f"positions a conversation keeps before dropping its oldest turns (default {rt.max_context})")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def engine_threads(threads: Optional[int]) -> int:
    """``--threads``, else one per physical core but one: that core decodes uploads and
    runs the speech detector beside the engine (llama.cpp's threads spin while they wait
    for each other, so a core shared with other work slows every step)."""
    return threads if threads else max(1, physical_cores() - 1)


def main(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get("PYLFM_API_KEY") or None
    if not _is_loopback(args.host) and not api_key:
        log.warning("listening on %s without --api-key: anyone who can reach this port can use the server",
                    args.host)
    args.threads = engine_threads(args.threads)
    realtime = RealtimeSettings(max_connections=args.realtime_max_connections,
                                max_session_s=args.realtime_max_session_s,
                                idle_timeout_s=args.realtime_idle_timeout_s,
                                max_message_mib=args.realtime_max_message_mib, max_buffer_s=args.realtime_max_buffer_s,
                                max_reply_s=args.max_reply_s, max_reply_tokens=args.max_reply_tokens,
                                max_context=args.realtime_max_context, voice=args.voice, mode=args.reply_mode)
    model = load_model(args)
    app = create_app(model, api_key=api_key, max_upload_mib=args.max_upload_mib, queue_size=args.queue,
                     model_name=args.model_name, max_new_tokens=args.max_new_tokens, window=args.window,
                     max_cue=args.max_cue, max_audio_s=args.max_audio_s, max_prompt_tokens=args.max_prompt_tokens,
                     vad=vad_method(args.vad), fixed_tokens=args.fixed_tokens, max_speech_s=args.max_speech_s,
                     realtime=realtime)
    svc = app.state.pylfm
    log.info("requests hold at most %.0f MiB beyond the model (--queue %d x %.0f MiB)", svc.memory_bound / 2**20,
             args.queue, svc.request_bytes / 2**20)
    print(f"pylfm: serving {model.model_path.name} on {model.device} at http://{args.host}:{args.port}/v1 "
          f"(model id {args.model_name!r}); voice chat at {_page_url(args.host, args.port)}", flush=True)
    if args.open:
        _open_when_up(_page_url(args.host, args.port))
    # messages a little over the limit reach the session, which answers them with an error event
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                timeout_graceful_shutdown=5, ws_max_size=2 * realtime.max_message_bytes)
    return 0


def _page_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/"


def _open_when_up(url: str) -> None:
    """Opens ``url`` in a browser once the server answers (from a daemon thread)."""
    import threading
    import time
    import urllib.request
    import webbrowser

    def wait_and_open() -> None:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        if not webbrowser.open(url):
            log.warning("could not open a browser; the voice chat page is at %s", url)

    threading.Thread(target=wait_and_open, name="pylfm-open", daemon=True).start()
