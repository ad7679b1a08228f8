"""The ``pylfm`` command: transcribe, speak, chat, convert, quantize, inspect, info, bench,
eval, serve, corpus.

Each command is a module of this package with ``add_arguments(parser)`` and
``main(args) -> int``; the options several commands share are defined once in
`pylfm.cli.options`, and exit statuses and error reporting live in `pylfm.cli.errors`.
This module only wires them up.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, NoReturn, Optional

from .errors import EXIT_USAGE, CommandError, json_error, report

# command name -> help; its module is pylfm.cli.<name>
COMMANDS = {
    "transcribe": "transcribe audio files (text streamed to stdout, or files with -f/-o)",
    "convert": "convert a liquid-audio / Hugging Face checkpoint to model + mmproj GGUFs",
    "quantize": "quantize a model or mmproj GGUF (Q4_0, Q4_K_M, Q8_0, ...)",
    "inspect": "show what a GGUF file holds",
    "info": "show the compiled-in backends and devices",
    "bench": "measure load, encode, prefill and decode speed, RTF and memory",
    "eval": "word and character error rates over a JSONL manifest",
    "serve": "serve an OpenAI-compatible /v1/audio/transcriptions endpoint",
    "corpus": "transcribe a corpus (files, folders, manifests) with Ray Data, locally or on a cluster",
    "speak": "text to speech (LFM2.5-Audio): write the spoken text to an audio file",
    "chat": "speech-to-speech: answer a spoken (or text) message with text and speech",
}
EXTRAS = {"serve": "server", "corpus": "ray"}  # commands that need an optional extra


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """Only the chosen command's module is imported: ``pylfm transcribe`` does not pay
    for (or depend on) the converter, the server extra or the benchmark code."""
    from .. import __version__

    argv = argv if argv is not None else sys.argv[1:]
    parser = _Parser(prog="pylfm", description="LFM2-Audio speech recognition on llama.cpp")
    parser.json = "--json" in argv
    parser.add_argument("--version", action="version", version=f"pylfm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.json = parser.json
        if name != chosen:
            continue
        command = _import_command(name)
        command.add_arguments(p)
        p.set_defaults(command_main=command.main)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with the errors the README promises: a bad argument (``--seed nan``, an
    unknown option, a missing file name) is one line on stderr and exit status 2, and
    with ``--json`` also ``{"error", "error_type", "exit_code"}`` on stdout, instead of
    argparse's usage block."""

    json = False

    def error(self, message: str) -> NoReturn:
        text = f"{' '.join(message.split())} ({self.prog} --help lists the options)"
        if self.json:
            json_error(text, "CommandError", EXIT_USAGE)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {text}\n")


def _import_command(name: str):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError as e:
        if name in EXTRAS:  # optional extra: explain instead of failing the whole CLI
            return _MissingExtra(name, e)
        raise


class _MissingExtra:
    """Stands in for a command whose optional extra is not installed."""

    def __init__(self, name: str, error: Exception) -> None:
        self.name, self.error = name, error

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("rest", nargs=argparse.REMAINDER)

    def main(self, args: argparse.Namespace) -> int:
        extra = EXTRAS[self.name]
        raise CommandError(f"needs the {extra} extra: pip install \"pylfm[{extra}]\" ({self.error})")


def main(argv: Optional[List[str]] = None) -> int:
    """The ``pylfm`` command. Returns the exit status (see `pylfm.cli.errors`):
    argparse's own usage errors exit with 2 before this returns."""
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return int(args.command_main(args) or 0)
    except (KeyboardInterrupt, Exception) as e:
        return report(args.command, e, verbose=verbose, as_json=bool(getattr(args, "json", False)))
