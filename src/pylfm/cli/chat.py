"""``pylfm chat in.wav -o reply.wav``: speech-to-speech (or ``--text``) answers.

Prints the answer's text on stdout as it is generated and writes its speech; the
options and the report are those of ``pylfm speak`` (`pylfm.cli.speak`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import SpeechError
from ..speech.voices import CHAT_MAX_NEW_TOKENS, CHAT_SYSTEM_PROMPT, CHAT_TEMPERATURE, CHAT_TOP_K, MODES
from .options import MAX_NEW_TOKENS, SYSTEM, add_speech_model_arguments, show_progress
from .speak import add_max_duration, add_output_arguments, add_sampling_arguments, load_speech_model, report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", help="the spoken message (audio file; - reads it from stdin)")
    p.add_argument("--text", default=None, help="a text message instead of audio")
    add_speech_model_arguments(p)
    g = p.add_argument_group("answer")
    g.add_argument("--mode", choices=MODES, default="interleaved",
                   help="interleaved (text and audio in a fixed pattern, default) or sequential")
    SYSTEM.add(g, default=None, help=f"system prompt (default: {CHAT_SYSTEM_PROMPT!r})")
    add_sampling_arguments(g, CHAT_TEMPERATURE, CHAT_TOP_K)
    MAX_NEW_TOKENS.add(g, default=CHAT_MAX_NEW_TOKENS,
                       help=f"text tokens + audio frames (default {CHAT_MAX_NEW_TOKENS})")
    add_max_duration(g)
    add_output_arguments(p, "reply.wav")


def main(args: argparse.Namespace) -> int:
    if (args.input is None) == (args.text is None):
        raise SpeechError("give the message either as an audio file or with --text, not both")
    message: Any = args.text
    if args.input is not None:
        message = sys.stdin.buffer.read() if args.input == "-" else args.input
    model = load_speech_model(args)
    opts = dict(mode=args.mode, system=args.system or CHAT_SYSTEM_PROMPT, temperature=args.temperature,
                top_k=args.top_k, seed=args.seed, max_new_tokens=args.max_new_tokens, max_duration=args.max_duration)

    def show(text: str) -> None:  # the answer's text goes to stdout as it comes
        sys.stdout.write(text)
        sys.stdout.flush()

    speech = model.chat(message, on_text=None if args.json else show, progress=show_progress(args) and args.json,
                        **opts)
    if not args.json:
        sys.stdout.write("\n")
    path = str(speech.save(args.output, args.format))
    report(args, speech, path)
    return 0
