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

from ..engine.device import physical_cores
from ..server import (DEFAULT_MAX_AUDIO_S, DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_MAX_SPEECH_S, DEFAULT_MODEL_NAME,
                      create_app)
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
    model = load_model(args)
    app = create_app(model, api_key=api_key, max_upload_mib=args.max_upload_mib, queue_size=args.queue,
                     model_name=args.model_name, max_new_tokens=args.max_new_tokens, window=args.window,
                     max_cue=args.max_cue, max_audio_s=args.max_audio_s, max_prompt_tokens=args.max_prompt_tokens,
                     vad=vad_method(args.vad), fixed_tokens=args.fixed_tokens, max_speech_s=args.max_speech_s)
    svc = app.state.pylfm
    log.info("requests hold at most %.0f MiB beyond the model (--queue %d x %.0f MiB)", svc.memory_bound / 2**20,
             args.queue, svc.request_bytes / 2**20)
    print(f"pylfm: serving {model.model_path.name} on {model.device} at http://{args.host}:{args.port}/v1 "
          f"(model id {args.model_name!r})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                timeout_graceful_shutdown=5)
    return 0
