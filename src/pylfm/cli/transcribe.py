"""``pylfm transcribe FILE...``: text streamed to stdout, or documents (txt, json, srt,
vtt) on stdout or into a folder, one per input. An input that fails is reported on
stderr for itself while the others go on (exit status 1)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from ..atomic import check_writable_dir
from ..transcription import formats
from ..transcription.options import DEFAULT_CUE_S
from .errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, USER_ERRORS, CommandError, StdoutError, describe,
                     input_failure, write_stdout)
from .options import (JSON, MAX_DURATION, MAX_NEW_TOKENS, PROGRESS, PROMPT, QUIET, SEED, SYSTEM, TEMPERATURE, TOP_K,
                      VAD, WINDOW, add_model_arguments, load_model, show_progress, vad_method)



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="audio or video files (wav, flac, mp3, m4a, ogg/opus, webm, mp4, ...); - reads stdin")
    add_model_arguments(p)
    g = p.add_argument_group("decoding")
    MAX_NEW_TOKENS.add(g)
    TEMPERATURE.add(g)
    TOP_K.add(g)
    g.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability (default 1)")
    SEED.add(g)
    SYSTEM.add(g)
    PROMPT.add(g)
    g.add_argument("--no-loop-guard", action="store_true",
                   help="do not stop and re-decode windows that fall into repetition loops")
    w = p.add_argument_group("long recordings")
    WINDOW.add(w)
    w.add_argument("--max-segment", type=float, default=None,
                   help="the longest segment / subtitle cue in seconds (default: 10 for srt, vtt and all; "
                        "else the window)")
    VAD.add(w)
    MAX_DURATION.add(w)
    o = p.add_argument_group("output")
    o.add_argument("--format", "-f", choices=formats.FORMATS + ("all",), default=None,
                   help="output format; with -o, one file per input (all = every format)")
    o.add_argument("--output-dir", "-o", default=None, help="write <input stem>.<format> files here")
    JSON.add(o, help="print results as JSON on stdout (same as -f json)")
    QUIET.add(o)
    PROGRESS.add(o)


def main(args: argparse.Namespace) -> int:
    fmt = "json" if args.json and not args.format else args.format
    opts = dict(system=args.system, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                window=args.window, max_segment=args.max_segment, vad=vad_method(args.vad),
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


def _check_options(opts: dict) -> None:
    from ..transcription.options import TranscribeOptions

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
        check_writable_dir(out)
    except OSError as e:
        raise CommandError(f"cannot write into output directory {out}: {e.strerror or e}") from None
    return paths


def _stream_to_stdout(model, name: str, opts: dict) -> int:
    pieces = None
    started = False
    try:
        pieces = model.transcribe(name, stream=True, **opts)
        for piece in pieces:
            write_stdout(piece)
            started = started or bool(piece)
        write_stdout("\n")
        return EXIT_OK
    except BrokenPipeError:  # the reader left (e.g. head): not this input's fault
        raise
    except StdoutError as e:
        print(f"pylfm transcribe: {name}: cannot write to standard output: {e.strerror or e}", file=sys.stderr)
    except USER_ERRORS as e:
        if started:  # end the partial line (the input's error is the one to report)
            try:
                write_stdout("\n")
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
            message = input_failure(e, name, self.verbose)
        self.failed.add(i)
        self.docs[i] = {"source": name, "error": message, "error_type": type(e).__name__}
        print(f"pylfm transcribe: {name}: {message}", file=sys.stderr)

    def finish(self) -> int:
        """Prints the documents (stdout mode) in input order; the exit status."""
        if self.paths is None:
            docs = [d for d in self.docs if d is not None]
            try:
                if self.fmts == ["json"]:
                    if docs:
                        doc = docs[0] if len(self.files) == 1 else docs
                        write_stdout(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
                else:
                    texts = [formats.render(self.fmts[0], d) for d in docs if "error" not in d]
                    if texts:
                        write_stdout("\n".join(texts) + "\n")
            except StdoutError as e:
                print(f"pylfm transcribe: cannot write to standard output: {e.strerror or e}", file=sys.stderr)
                return EXIT_FAILED
        return EXIT_FAILED if self.failed else EXIT_OK
