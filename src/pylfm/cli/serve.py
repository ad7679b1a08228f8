"""``pylfm serve``'s command line: ``add_arguments(parser)`` and ``main(args)``, wired up
by ``pylfm.cli`` (FastAPI and uvicorn are checked for here, the ``server`` extra)."""

import argparse
import logging

from .app import create_app
from .service import DEFAULT_MAX_AUDIO_S, DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_MODEL_NAME

log = logging.getLogger("pylfm.server")


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
