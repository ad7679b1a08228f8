"""The ``pylfm`` command: transcribe, convert, quantize, inspect, info, bench, eval, serve.

Each larger command lives in its own module with ``add_arguments(parser)`` and
``main(args) -> int``; this file only wires them up.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

from .errors import PylfmError

# command name -> (module with add_arguments/main, help); None = defined here
_COMMANDS = {
    "transcribe": (None, "transcribe audio files (text streamed to stdout, or files with -f/-o)"),
    "convert": ("pylfm.converter.cli", "convert a liquid-audio / Hugging Face checkpoint to model + mmproj GGUFs"),
    "quantize": ("pylfm.quant", "quantize a model or mmproj GGUF (Q4_0, Q4_K_M, Q8_0, ...)"),
    "inspect": ("pylfm.gguf_info", "show what a GGUF file holds"),
    "info": (None, "show the compiled-in backends and devices"),
    "bench": ("pylfm.bench", "measure load, encode, prefill and decode speed, RTF and memory"),
    "eval": ("pylfm.evaluate", "word and character error rates over a JSONL manifest"),
    "serve": ("pylfm.server", "serve an OpenAI-compatible /v1/audio/transcriptions endpoint"),
    "corpus": ("pylfm.corpus.cli", "transcribe a corpus (files, folders, manifests) with Ray Data, locally or on a cluster"),
}


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model-loading options every command that runs the model shares."""
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", help="text-model GGUF, a folder with both GGUFs, or a hub repo id "
                                         "(default: $PYLFM_MODEL or LiquidAI/LFM2.5-Audio-1.5B-GGUF)")
    g.add_argument("--mmproj", help="audio encoder mmproj GGUF (default: $PYLFM_MMPROJ or next to --model)")
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda, metal, gpu; optionally :N")
    g.add_argument("--threads", "-t", type=int, default=None, help="CPU threads (default: all available)")
    g.add_argument("--batch-size", type=int, default=4, help="windows/files decoded in parallel (default 4)")
    g.add_argument("--verbose", "-v", action="store_true", help="show llama.cpp's log")


def load_model(args: argparse.Namespace):
    from .model import Model

    return Model(args.model, args.mmproj, device=args.device, n_threads=args.threads,
                 batch_size=args.batch_size, verbose=args.verbose)


def show_progress(args: argparse.Namespace) -> bool:
    """A bar on stderr when it is a terminal, unless --quiet; --progress forces it."""
    if getattr(args, "quiet", False):
        return False
    return bool(getattr(args, "progress", False)) or sys.stderr.isatty()


# ---------------------------------------------------------------------- transcribe
def add_transcribe_arguments(p: argparse.ArgumentParser) -> None:
    from .formats import FORMATS

    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg, mp3); - reads stdin")
    add_model_arguments(p)
    g = p.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int, default=512, help="generation limit per window (default 512)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, deterministic (default)")
    g.add_argument("--system", default="Perform ASR.", help="system prompt (default: 'Perform ASR.')")
    g.add_argument("--prompt", default=None, help="user text after the audio, e.g. a question about it")
    g.add_argument("--window", type=float, default=30.0, help="split recordings longer than this (seconds)")
    g.add_argument("--vad", choices=("silero", "energy", "none"), default="silero",
                   help="speech detector that cuts long recordings (default silero)")
    o = p.add_argument_group("output")
    o.add_argument("--format", "-f", choices=FORMATS + ("all",), default=None,
                   help="output format; with -o, one file per input (all = every format)")
    o.add_argument("--output-dir", "-o", default=None, help="write <input stem>.<format> files here")
    o.add_argument("--json", action="store_true", help="print results as JSON on stdout (same as -f json)")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    o.add_argument("--progress", action="store_true", help="progress bar even when stderr is not a terminal")


def main_transcribe(args: argparse.Namespace) -> int:
    from . import formats

    fmt = "json" if args.json and not args.format else args.format
    model = load_model(args)
    opts = dict(system=args.system, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, window=args.window, vad=None if args.vad == "none" else args.vad)

    if len(args.files) == 1 and fmt is None and args.output_dir is None:
        # The common case: text streamed to stdout as it decodes.
        for piece in model.transcribe(args.files[0], stream=True, **opts):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0

    fmts = list(formats.FORMATS) if fmt == "all" else [fmt or "txt"]
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    printed = []

    def on_result(i: int, result) -> None:
        nonlocal failures
        name = args.files[i]
        if isinstance(result, Exception):
            failures += 1
            print(f"pylfm: {name}: {result}", file=sys.stderr)
            return
        doc = formats.result_to_dict(result, source=name, model=model)
        if out_dir is None:
            printed.append(doc if fmts == ["json"] else formats.render(fmts[0], doc))
            return
        stem = "stdin" if name == "-" else Path(name).stem
        for f in fmts:
            formats.write_output(out_dir / f"{stem}.{f}", formats.render(f, doc))

    if len(args.files) == 1:  # one file: the bar runs over its audio seconds
        try:
            result = model.transcribe(args.files[0], progress=show_progress(args), **opts)
        except (PylfmError, OSError, ValueError) as e:
            result = e
        on_result(0, result)
    else:  # several: windows of all files decoded together, the bar runs over files
        model.transcribe_batch(list(args.files), progress=show_progress(args), on_result=on_result, **opts)
    if printed:
        if fmts == ["json"]:
            print(json.dumps(printed[0] if len(args.files) == 1 else printed, ensure_ascii=False, indent=2))
        else:
            print("\n".join(printed))
    return 1 if failures else 0


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def main_info(args: argparse.Namespace) -> int:
    from .model import system_info

    info = system_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("backends: " + ", ".join(info["backends"]))
    for d in info["devices"]:
        print(f"device:   {d['name']} ({d['type']}, {d['backend']}): {d['description']}")
    print("gpu offload: " + ("yes" if info["gpu_offload"] else "no"))
    print(info["llama_system_info"])
    return 0


# ---------------------------------------------------------------------- entry point
def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """Only the chosen command's module is imported: ``pylfm transcribe`` does not pay
    for (or depend on) the converter, the server extra or the benchmark code."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="pylfm", description="LFM2-Audio speech recognition on llama.cpp")
    parser.add_argument("--version", action="version", version=f"pylfm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = next((a for a in (argv if argv is not None else sys.argv[1:]) if a in _COMMANDS), None)
    for name, (module, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != chosen:
            continue
        if module is None:
            add, run = _LOCAL[name]
        else:
            mod = _import_command(module, name)
            add, run = mod.add_arguments, mod.main
        add(p)
        p.set_defaults(_main=run)
    return parser


_LOCAL = {"transcribe": (add_transcribe_arguments, main_transcribe), "info": (add_info_arguments, main_info)}


def _import_command(module: str, name: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if name in _EXTRAS:  # optional extra: explain instead of failing the whole CLI
            return _MissingExtra(name, e)
        raise


_EXTRAS = {"serve": "server", "corpus": "ray"}  # commands that need an optional extra


class _MissingExtra:
    def __init__(self, name: str, error: Exception) -> None:
        self.name, self.error = name, error

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("rest", nargs=argparse.REMAINDER)

    def main(self, args: argparse.Namespace) -> int:
        extra = _EXTRAS[self.name]
        print(f"pylfm {self.name} needs the {extra} extra: pip install \"pylfm[{extra}]\" ({self.error})", file=sys.stderr)
        return 2


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(name)s: %(message)s")
    try:
        return int(args._main(args) or 0)
    except (PylfmError, FileNotFoundError, ValueError) as e:
        print(f"pylfm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
