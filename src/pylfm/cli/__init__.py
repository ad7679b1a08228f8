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
import tempfile
import traceback
from pathlib import Path
from typing import List, NoReturn, Optional

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
    "speak": ("pylfm.speak_cli", "text to speech (LFM2.5-Audio): write the spoken text to an audio file"),
    "chat": ("pylfm.chat_cli", "speech-to-speech: answer a spoken (or text) message with text and speech"),
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
DEFAULT_CUE_S = 10.0  # the longest subtitle cue, unless --max-segment says otherwise
def add_transcribe_arguments(p: argparse.ArgumentParser) -> None:
    from .formats import FORMATS

    p.add_argument("files", nargs="+", metavar="FILE",
                   help="audio or video files (wav, flac, mp3, m4a, ogg/opus, webm, mp4, ...); - reads stdin")
    add_model_arguments(p)
    g = p.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int, default=512, help="generation limit per window (default 512)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, deterministic (default)")
    g.add_argument("--top-k", type=int, default=0, help="sampling: keep the k likeliest tokens (0 = all)")
    g.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability (default 1)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--system", default="Perform ASR.", help="system prompt (default: 'Perform ASR.')")
    g.add_argument("--prompt", default=None, help="user text after the audio, e.g. a question about it")
    g.add_argument("--no-loop-guard", action="store_true",
                   help="do not stop and re-decode windows that fall into repetition loops")
    w = p.add_argument_group("long recordings")
    w.add_argument("--window", type=float, default=30.0,
                   help="the most audio decoded at once; longer recordings are cut (seconds, default 30)")
    w.add_argument("--max-segment", type=float, default=None,
                   help="the longest segment / subtitle cue in seconds (default: 10 for srt, vtt and all; "
                        "else the window)")
    w.add_argument("--vad", choices=("silero", "energy", "none"), default="silero",
                   help="speech detector that cuts long recordings (default silero)")
    w.add_argument("--max-duration", type=float, default=None, help="refuse recordings longer than this (seconds)")
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
    opts = dict(system=args.system, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                window=args.window, max_segment=args.max_segment, vad=None if args.vad == "none" else args.vad,
                max_duration=args.max_duration)
    if args.no_loop_guard:
        opts["loop_guard"] = None
    if args.max_segment is None and fmt in ("srt", "vtt", "all"):  # subtitles: cue-sized segments
        opts["max_segment"] = min(DEFAULT_CUE_S, args.window)
    _check_options(opts)  # before the model loads: a typo costs no time
    fmts = list(formats.FORMATS) if fmt == "all" else [fmt or "txt"]
    paths = _output_paths(args.files, args.output_dir, fmts)
    model = load_model(args)

    if len(args.files) == 1 and fmt is None and paths is None:
        return _stream_to_stdout(model, args.files[0], opts)  # the common case: text as it decodes

    results = _Results(args.files, fmts, paths, model, verbose=args.verbose)
    interrupted = False
    try:
        if len(args.files) == 1:  # one file: the bar runs over its audio seconds
            try:
                result = model.transcribe(args.files[0], progress=show_progress(args), **opts)
            except Exception as e:
                result = e
            results.on_result(0, result)
        else:  # several: windows of all files decoded together, the bar runs over files
            model.transcribe_batch(list(args.files), progress=show_progress(args), on_result=results.on_result,
                                   **opts)
    except KeyboardInterrupt:
        interrupted = True
    except Exception:
        results.finish()  # what is done is not lost to a bug elsewhere
        raise
    status = results.finish()
    if interrupted:
        print("pylfm transcribe: interrupted; the files already written are complete", file=sys.stderr)
        return EXIT_INTERRUPTED
    return status


# Errors that belong to one input (unreadable, not audio, failed to decode): reported
# for that input while the others go on. Anything else is a bug, reported as one.
_INPUT_ERRORS = (PylfmError, OSError, ValueError, MemoryError)


def _check_options(opts: dict) -> None:
    from .options import TranscribeOptions

    try:
        TranscribeOptions(**opts)
    except (TypeError, ValueError) as e:
        raise CommandError(str(e)) from None


def _output_paths(files: List[str], output_dir: Optional[str], fmts: List[str]) -> Optional[List[List[Path]]]:
    """The files each input will be written to, or None for stdout. The folder is made
    and checked before any work, and two inputs may not write the same file."""
    if output_dir is None:
        return None
    out = Path(output_dir)
    paths, owner = [], {}
    for name in files:
        stem = "stdin" if name == "-" else Path(name).stem
        if stem in owner:
            raise CommandError(f"{owner[stem]} and {name} would both be written to {out / stem}.*; rename one "
                               "or transcribe them into different output directories")
        owner[stem] = name
        paths.append([out / f"{stem}.{f}" for f in fmts])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CommandError(f"output directory {out} is a file; pass a folder to -o") from None
    except OSError as e:
        raise CommandError(f"cannot create output directory {out}: {e.strerror or e}") from None
    try:  # writable? (a read-only folder or mount, no space left)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".pylfm-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CommandError(f"cannot write into output directory {out}: {e.strerror or e}") from None
    return paths


def _stream_to_stdout(model, name: str, opts: dict) -> int:
    pieces = None
    started = False
    try:
        pieces = model.transcribe(name, stream=True, **opts)
        for piece in pieces:
            _write_stdout(piece)
            started = started or bool(piece)
        _write_stdout("\n")
        return EXIT_OK
    except BrokenPipeError:  # the reader left (e.g. head): not this input's fault
        raise
    except StdoutError as e:
        print(f"pylfm transcribe: {name}: cannot write to standard output: {e.strerror or e}", file=sys.stderr)
    except _INPUT_ERRORS as e:
        if started:  # end the partial line (the input's error is the one to report)
            try:
                _write_stdout("\n")
            except OSError:
                pass
        print(f"pylfm transcribe: {name}: {describe(e, name)}", file=sys.stderr)
    finally:
        if pieces is not None and hasattr(pieces, "close"):
            pieces.close()
    return EXIT_FAILED


class _Results:
    """Takes each input's result as it arrives: writes its files (-o) or keeps its
    document for stdout, and reports a failure on stderr for that input alone, so one
    bad input never costs the others their outputs."""

    def __init__(self, files: List[str], fmts: List[str], paths: Optional[List[List[Path]]], model,
                 verbose: bool = False) -> None:
        self.files, self.fmts, self.paths, self.model, self.verbose = files, fmts, paths, model, verbose
        self.docs: List[Optional[dict]] = [None] * len(files)
        self.failed: set = set()

    def on_result(self, i: int, result) -> None:
        try:
            self._take(i, result)
        except Exception as e:  # never let one input stop the batch
            self._fail(i, e)

    def _take(self, i: int, result) -> None:
        from . import formats

        if isinstance(result, BaseException):
            self._fail(i, result)
            return
        doc = formats.result_to_dict(result, source=self.files[i], model=self.model)
        self.docs[i] = doc
        if self.paths is None:
            return
        for path, f in zip(self.paths[i], self.fmts):
            try:
                formats.write_output(path, formats.render(f, doc))
            except OSError as e:
                self._fail(i, e, f"cannot write {path}: {e.strerror or e}")

    def _fail(self, i: int, e: BaseException, message: Optional[str] = None) -> None:
        name = self.files[i]
        if message is None:
            message = describe(e, name) if isinstance(e, _INPUT_ERRORS) else _bug_message(e, self.verbose)
        self.failed.add(i)
        self.docs[i] = {"source": name, "error": message, "error_type": type(e).__name__}
        print(f"pylfm transcribe: {name}: {message}", file=sys.stderr)

    def finish(self) -> int:
        """Prints the documents (stdout mode) in input order; the exit status."""
        from . import formats

        if self.paths is None:
            docs = [d for d in self.docs if d is not None]
            try:
                if self.fmts == ["json"]:
                    if docs:
                        doc = docs[0] if len(self.files) == 1 else docs
                        _write_stdout(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
                else:
                    texts = [formats.render(self.fmts[0], d) for d in docs if "error" not in d]
                    if texts:
                        _write_stdout("\n".join(texts) + "\n")
            except StdoutError as e:
                print(f"pylfm transcribe: cannot write to standard output: {e.strerror or e}", file=sys.stderr)
                return EXIT_FAILED
        return EXIT_FAILED if self.failed else EXIT_OK


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

    parser = _Parser(prog="pylfm", description="LFM2-Audio speech recognition on llama.cpp")
    parser.json = "--json" in (argv if argv is not None else sys.argv[1:])
    parser.add_argument("--version", action="version", version=f"pylfm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = next((a for a in (argv if argv is not None else sys.argv[1:]) if a in _COMMANDS), None)
    for name, (module, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.json = parser.json
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


class _Parser(argparse.ArgumentParser):
    """argparse with the errors the README promises: a bad argument (``--seed nan``, an
    unknown option, a missing file name) is one line on stderr and exit status 2, and
    with ``--json`` also ``{"error", "error_type", "exit_code"}`` on stdout, instead of
    argparse's usage block."""

    json = False

    def error(self, message: str) -> NoReturn:
        text = f"{' '.join(message.split())} ({self.prog} --help lists the options)"
        if self.json:
            try:
                _write_stdout(json.dumps({"error": text, "error_type": "CommandError", "exit_code": EXIT_USAGE}) + "\n")
            except OSError:
                pass
        self.exit(EXIT_USAGE, f"{self.prog}: error: {text}\n")


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


# ---------------------------------------------------------------------- errors and exit statuses
EXIT_OK = 0  # everything asked for was done
EXIT_FAILED = 1  # some inputs failed, or their outputs could not be written; the others were written
EXIT_USAGE = 2  # nothing was done: bad arguments, model not found or not loadable, unusable output directory
EXIT_BUG = 70  # an unexpected error inside pylfm (sysexits' EX_SOFTWARE); --verbose shows the traceback
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); the files already written stay, each complete


class CommandError(Exception):
    """A mistake in the command line or its environment, found before any work: one
    line on stderr and exit status 2."""


class StdoutError(OSError):
    """Standard output cannot be written (a full disk behind a redirection, ...)."""


def describe(e: BaseException, subject: Optional[str] = None) -> str:
    """One line for an exception: the reason for OS errors (prefixed by their file unless
    it is ``subject``), the message otherwise."""
    if isinstance(e, OSError) and e.strerror:
        name = os.fspath(e.filename) if e.filename is not None else None
        text = e.strerror if name is None or name == subject else f"{name}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def _bug_message(e: BaseException, verbose: bool) -> str:
    if verbose:
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    return (f"unexpected {type(e).__name__}: {describe(e)} (a bug in pylfm: please report it"
            + ("" if verbose else "; --verbose shows the traceback") + ")")


def _write_stdout(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        _silence_stdout()  # the buffered rest would fail again at exit
        raise StdoutError(e.errno, e.strerror) from None


def _silence_stdout() -> None:
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _fail(args: argparse.Namespace, e: BaseException, status: int, message: str) -> int:
    print(f"pylfm {args.command}: error: {message}", file=sys.stderr)
    if getattr(args, "json", False):  # scripts reading stdout get JSON either way
        try:
            _write_stdout(json.dumps({"error": message, "error_type": type(e).__name__, "exit_code": status}) + "\n")
        except OSError:
            pass
    return status


def main(argv: Optional[List[str]] = None) -> int:
    """The ``pylfm`` command. Returns the exit status (see the EXIT_* constants):
    argparse's own usage errors exit with 2 before this returns."""
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(name)s: %(message)s")
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print(f"pylfm {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. piped into head: the reader wanted no more
        _silence_stdout()
        return EXIT_OK
    except (CommandError, PylfmError, OSError, ValueError, MemoryError) as e:
        return _fail(args, e, EXIT_USAGE, describe(e))
    except Exception as e:
        return _fail(args, e, EXIT_BUG, _bug_message(e, getattr(args, "verbose", False)))


if __name__ == "__main__":
    sys.exit(main())
