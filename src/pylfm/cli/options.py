"""The command-line options that more than one ``pylfm`` command takes, each defined once,
and the helpers that turn them into what the library takes.

A command adds an option with ``OPTION.add(parser_or_group)``; where a command means
something narrower by it (its own default, e.g. chat's ``--max-new-tokens 1024``, or a
help text that says what the option does there) it passes that to ``add``, and only
that. Options only one command has are defined in that command's module.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional

from ..engine.prompt import ASR_SYSTEM_PROMPT
from ..transcription.options import DEFAULT_MAX_NEW_TOKENS, fixed_tokens
from ..vad import DEFAULT_WINDOW_S

VAD_CHOICES = ("silero", "energy", "none")  # "none" on the command line is vad=None


class Option:
    """One option: its flags and `argparse` settings, added to any parser or group."""

    def __init__(self, *flags: str, **settings: Any) -> None:
        self.flags, self.settings = flags, settings

    def add(self, parser: Any, **changes: Any) -> argparse.Action:
        """Adds the option to ``parser`` (a parser or an argument group); ``changes``
        replace settings (default, help) for a command that means something narrower."""
        return parser.add_argument(*self.flags, **{**self.settings, **changes})


# ---------------------------------------------------------------------- the model
MODEL = Option("--model", "-m", help="text-model GGUF, a folder with both GGUFs, or a hub repo id "
                                     "(default: $PYLFM_MODEL or LiquidAI/LFM2.5-Audio-1.5B-GGUF)")
MMPROJ = Option("--mmproj", help="audio encoder mmproj GGUF (default: $PYLFM_MMPROJ or next to --model)")
DEVICE = Option("--device", default="auto",
                help="auto (default), cpu, gpu, cuda, metal, vulkan, hip, sycl, ...; optionally :N (cuda:1)")
# None: the device's default (pylfm.engine.device.resolve_defaults), as for pylfm.Model
THREADS = Option("--threads", "-t", type=int, default=None, help="CPU threads (default: one per physical core)")
BATCH_SIZE = Option("--batch-size", type=int, default=None,
                    help="windows/files decoded in parallel (default: 4 on the CPU, 32 on a GPU)")
VERBOSE = Option("--verbose", "-v", action="store_true", help="show llama.cpp's log")
VOCODER = Option("--vocoder", help="audio head GGUF (default: $PYLFM_VOCODER or vocoder-*.gguf next to the model)")
DETOKENIZER = Option("--detokenizer", help="audio detokenizer GGUF (default: $PYLFM_DETOKENIZER or "
                                           "tokenizer-*.gguf next to the model)")

# ---------------------------------------------------------------------- decoding
MAX_NEW_TOKENS = Option("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"generation limit per window (default {DEFAULT_MAX_NEW_TOKENS})")
FIXED_TOKENS = Option("--fixed-tokens", type=int, default=None, metavar="N",
                      help="benchmarks: generate exactly N tokens per window, ignoring end-of-generation "
                           "(comparable decode timings, e.g. on random-weight models)")
TEMPERATURE = Option("--temperature", type=float, default=0.0, help="0 = greedy, deterministic (default)")
TOP_K = Option("--top-k", type=int, default=0, help="sampling: keep the k likeliest tokens (0 = all)")
SEED = Option("--seed", type=int, default=0, help="sampling seed (default 0)")
SYSTEM = Option("--system", default=ASR_SYSTEM_PROMPT, help=f"system prompt (default: {ASR_SYSTEM_PROMPT!r})")
PROMPT = Option("--prompt", default=None, help="user text after the audio, e.g. a question about it")
WINDOW = Option("--window", type=float, default=DEFAULT_WINDOW_S,
                help=f"the most audio decoded at once; longer recordings are cut at pauses "
                     f"(seconds, default {DEFAULT_WINDOW_S:g})")
VAD = Option("--vad", choices=VAD_CHOICES, default="silero",
             help="speech detector that cuts long recordings (default silero)")
MAX_DURATION = Option("--max-duration", type=float, default=None,
                      help="refuse recordings longer than this (seconds)")

# ---------------------------------------------------------------------- output
JSON = Option("--json", action="store_true", help="print JSON")
QUIET = Option("--quiet", "-q", action="store_true", help="no progress bar")
PROGRESS = Option("--progress", action="store_true", help="progress bar even when stderr is not a terminal")
FORCE = Option("--force", action="store_true", help="overwrite existing outputs")


def add_model_arguments(p: argparse.ArgumentParser, **changes: Dict[str, Any]) -> Any:
    """The model-loading options of every command that runs the model (group "model").
    ``changes`` maps an option's dest ("threads", ...) to the settings it changes."""
    g = p.add_argument_group("model")
    for option, dest in ((MODEL, "model"), (MMPROJ, "mmproj"), (DEVICE, "device"), (THREADS, "threads"),
                         (BATCH_SIZE, "batch_size"), (VERBOSE, "verbose")):
        option.add(g, **changes.get(dest, {}))
    return g


def add_speech_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model options plus the speech-output GGUFs (``speak``, ``chat``)."""
    add_model_arguments(p)
    g = p.add_argument_group("speech output")
    VOCODER.add(g)
    DETOKENIZER.add(g)


# ---------------------------------------------------------------------- values
def vad_method(choice: Optional[str]) -> Optional[str]:
    """The ``vad=`` of a ``--vad`` choice: "none" is None."""
    return None if choice == "none" else choice


def fixed_tokens_options(n: Optional[int]) -> Dict[str, Any]:
    """The `TranscribeOptions` fields ``--fixed-tokens N`` stands for ({} without it)."""
    return {} if n is None else fixed_tokens(n)


def load_model(args: argparse.Namespace):
    """The `pylfm.Model` the model options name."""
    from ..model import Model

    extra = {"sessions": args.sessions} if getattr(args, "sessions", None) is not None else {}
    return Model(args.model, args.mmproj, device=args.device, n_threads=args.threads,
                 batch_size=args.batch_size, verbose=args.verbose, **extra)


def show_progress(args: argparse.Namespace) -> bool:
    """A bar on stderr when it is a terminal, unless --quiet; --progress forces it."""
    if getattr(args, "quiet", False):
        return False
    return bool(getattr(args, "progress", False)) or sys.stderr.isatty()
