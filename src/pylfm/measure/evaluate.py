"""Word and character error rates of the model over a JSONL manifest (the library
behind ``pylfm eval``).

    pylfm eval test.jsonl --model LFM2.5-Audio-1.5B-Q8_0.gguf
    pylfm eval test.jsonl --json > report.json

    >>> from pylfm.measure.evaluate import evaluate, wer, cer
    >>> report = evaluate(model, "test.jsonl")
    >>> report["overall"]["wer"], report["overall"]["rtf"]

Manifest: one JSON object per line, ``{"audio": PATH, "text": REFERENCE}``; a
relative ``PATH`` is read from the manifest's folder. An optional ``"id"`` is carried
into the report. Blank lines are skipped. A line that is not valid JSON, lacks
``audio``/``text``, or whose audio is missing or unreadable is reported as an error
for that line and the run goes on with the next; `evaluate` never raises for such a
line, and the command exits with status 1 after printing everything.

Normalisation (on by default, ``--no-normalize`` / ``normalize=False`` turns it off),
applied to both reference and hypothesis before scoring:

1. lower-case (``str.lower``);
2. strip punctuation: every Unicode punctuation character (categories ``P*``:
   ``. , ; : ! ? ' " - ( ) [ ] …`` and their non-ASCII forms) is deleted, so
   ``"It's"`` becomes ``"its"`` and ``"well-known"`` becomes ``"wellknown"``; Unicode
   counts ``% # & @ * /`` as punctuation too, while symbols (``$ + = < >``), digits and
   letters are kept;
3. collapse whitespace: runs of any whitespace become one space, and leading and
   trailing whitespace is removed.

Without normalisation only step 3 is applied (words are whitespace-separated either
way). Scores, computed with jiwer's edit-distance alignment:

* WER = (substitutions + deletions + insertions) / reference words;
* CER = the same over characters of the (normalised) text, spaces included;
* overall WER/CER are corpus-level: total edits over all scored files divided by
  total reference words (characters), not a mean of per-file rates;
* RTF = processing seconds / audio seconds (per file, and totals overall).

A file whose reference is empty (after normalisation) has no defined rate: its
``wer``/``cer`` are ``None`` (0.0 when the hypothesis is empty too), while its
insertions still count in the corpus totals.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import unicodedata
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

__all__ = ["normalize_text", "wer", "cer", "error_counts", "read_manifest", "evaluate", "NORMALIZATION"]

#: One-line statement of the normalisation, used in the help, the report and the docs.
NORMALIZATION = ("lower-case, strip punctuation (Unicode categories P*: deleted, so \"it's\" -> \"its\"), "
                 "collapse whitespace")

_WS = re.compile(r"\s+")


# ---------------------------------------------------------------------- text scoring
def normalize_text(text: str) -> str:
    """Lower-case, delete every Unicode punctuation character (category ``P*``), and
    collapse whitespace runs to single spaces (stripped at both ends).

    >>> normalize_text("  Hello,   World! It's   well-known. ")
    'hello world its wellknown'
    """
    text = text.lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return _collapse(text)


def _collapse(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _prepare(text: str, normalize: bool) -> str:
    if not isinstance(text, str):
        raise TypeError(f"expected text (str), got {type(text).__name__}")
    return normalize_text(text) if normalize else _collapse(text)


def error_counts(reference: str, hypothesis: str, *, normalize: bool = True, unit: str = "word") -> Dict[str, int]:
    """Alignment counts of ``hypothesis`` against ``reference``: ``substitutions``,
    ``deletions``, ``insertions``, ``hits``, ``errors`` (S+D+I) and ``ref_len``
    (reference words, or characters with ``unit="char"``)."""
    import jiwer

    if unit not in ("word", "char"):
        raise ValueError("unit must be 'word' or 'char'")
    ref, hyp = _prepare(reference, normalize), _prepare(hypothesis, normalize)
    ref_units = (ref.split(" ") if ref else []) if unit == "word" else list(ref)
    hyp_units = (hyp.split(" ") if hyp else []) if unit == "word" else list(hyp)
    if not ref_units or not hyp_units:  # jiwer refuses empty references; the counts are obvious
        return {"substitutions": 0, "deletions": len(ref_units), "insertions": len(hyp_units), "hits": 0,
                "errors": len(ref_units) + len(hyp_units), "ref_len": len(ref_units)}
    if unit == "word":
        out = jiwer.process_words(ref, hyp)
    else:
        out = jiwer.process_characters(ref, hyp)
    s, d, i, h = out.substitutions, out.deletions, out.insertions, out.hits
    return {"substitutions": s, "deletions": d, "insertions": i, "hits": h, "errors": s + d + i,
            "ref_len": len(ref_units)}


def _rate(c: Mapping[str, int]) -> Optional[float]:
    if c["ref_len"]:
        return c["errors"] / c["ref_len"]
    return 0.0 if c["errors"] == 0 else None


def wer(reference: str, hypothesis: str, *, normalize: bool = True) -> Optional[float]:
    """Word error rate, (S + D + I) / reference words, after the module's normalisation
    (lower-case, strip punctuation, collapse whitespace) unless ``normalize=False``.
    ``None`` when the reference has no words but the hypothesis has some.

    >>> wer("Hello, world!", "hello world")
    0.0
    """
    return _rate(error_counts(reference, hypothesis, normalize=normalize, unit="word"))


def cer(reference: str, hypothesis: str, *, normalize: bool = True) -> Optional[float]:
    """Character error rate over the (normalised) text, spaces included; see `wer`."""
    return _rate(error_counts(reference, hypothesis, normalize=normalize, unit="char"))


# ---------------------------------------------------------------------- manifest
class ManifestLineError(ValueError):
    """One manifest line is unusable; carries its line number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def read_manifest(manifest: Union[str, os.PathLike]) -> Iterator[Union[Dict[str, Any], ManifestLineError]]:
    """Yields one item per non-blank line of a JSONL manifest: a dict with ``line``
    (1-based), ``audio`` (resolved against the manifest's folder), ``text`` and, when
    given, ``id``; or a `ManifestLineError` for a line that cannot be used. Opening the
    manifest itself raises (``FileNotFoundError``, ...)."""
    path = Path(manifest)
    base = path.parent
    with open(path, "r", encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            yield _parse_line(raw, lineno, base)


def _parse_line(raw: str, lineno: int, base: Path) -> Union[Dict[str, Any], ManifestLineError]:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        return ManifestLineError(lineno, f"not valid JSON ({e.msg} at column {e.colno})")
    return _check_item(obj, lineno, base)


def _check_item(obj: Any, lineno: int, base: Path) -> Union[Dict[str, Any], ManifestLineError]:
    if not isinstance(obj, dict):
        return ManifestLineError(lineno, f"expected a JSON object with \"audio\" and \"text\", got {type(obj).__name__}")
    missing = [k for k in ("audio", "text") if k not in obj]
    if missing:
        return ManifestLineError(lineno, "missing " + " and ".join(f'"{k}"' for k in missing))
    if not isinstance(obj["audio"], str) or not obj["audio"]:
        return ManifestLineError(lineno, "\"audio\" must be a non-empty path string")
    if not isinstance(obj["text"], str):
        return ManifestLineError(lineno, "\"text\" must be a string")
    audio = Path(os.path.expanduser(obj["audio"]))
    item = {"line": lineno, "audio": str(audio if audio.is_absolute() else base / audio), "text": obj["text"]}
    if "id" in obj:
        item["id"] = obj["id"]
    return item


# ---------------------------------------------------------------------- evaluation
def evaluate(model: Any, manifest: Union[str, os.PathLike, Iterable[Mapping[str, Any]]], *, normalize: bool = True,
             on_item: Optional[Callable[[Dict[str, Any]], None]] = None, **transcribe_kwargs: Any) -> Dict[str, Any]:
    """Transcribes every manifest entry with ``model`` and scores it.

    Args:
        model: a `pylfm.Model` (anything with ``transcribe(audio, **kw)`` returning an
            object with ``.text`` and ``.duration``).
        manifest: a JSONL file path, or an iterable of ``{"audio", "text"}`` dicts
            (relative paths then resolve against the current directory).
        normalize: lower-case, strip punctuation and collapse whitespace before scoring
            (see the module docstring); False compares the texts as they are.
        on_item: called with each per-line entry as soon as it is done.
        transcribe_kwargs: passed to ``model.transcribe`` (``max_new_tokens``, ...).

    Returns:
        ``{"files": [...], "overall": {...}, "n_lines", "n_scored", "n_failed",
        "normalize", "normalization"}``. Each file entry has ``line``, ``audio``,
        ``reference``, ``hypothesis``, ``wer``, ``cer``, the word/char edit counts,
        ``duration``, ``processing_s`` and ``rtf``; a line that failed has ``line``,
        ``audio`` (when known) and ``error`` instead. ``overall`` holds corpus-level
        ``wer``/``cer`` (total edits / total reference words or characters), the
        summed counts, ``duration``, ``processing_s`` and ``rtf``.
    """
    if isinstance(manifest, (str, os.PathLike)):
        items: Iterable[Union[Dict[str, Any], ManifestLineError]] = read_manifest(manifest)
    else:
        items = (_check_item(dict(obj), i, Path.cwd()) for i, obj in enumerate(manifest, 1))

    files: List[Dict[str, Any]] = []
    for item in items:
        if isinstance(item, ManifestLineError):
            entry: Dict[str, Any] = {"line": item.line, "error": str(item)}
        else:
            entry = _score_one(model, item, normalize, transcribe_kwargs)
        files.append(entry)
        if on_item is not None:
            on_item(entry)

    scored = [f for f in files if "error" not in f]
    overall = _overall(scored)
    return {"files": files, "overall": overall, "n_lines": len(files), "n_scored": len(scored),
            "n_failed": len(files) - len(scored), "normalize": normalize,
            "normalization": NORMALIZATION if normalize else "none (whitespace collapsed only)"}


def _score_one(model: Any, item: Dict[str, Any], normalize: bool, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    entry: Dict[str, Any] = {"line": item["line"], "audio": item["audio"]}
    if "id" in item:
        entry["id"] = item["id"]
    if not os.path.isfile(item["audio"]):
        entry["error"] = f"audio file not found: {item['audio']}"
        return entry
    t0 = time.perf_counter()
    try:
        result = model.transcribe(item["audio"], **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # one bad file must not end the run
        entry["error"] = f"{type(e).__name__}: {e}"
        return entry
    elapsed = time.perf_counter() - t0
    hyp = result.text
    w = error_counts(item["text"], hyp, normalize=normalize, unit="word")
    c = error_counts(item["text"], hyp, normalize=normalize, unit="char")
    duration = float(getattr(result, "duration", 0.0) or 0.0)
    entry.update({
        "reference": item["text"], "hypothesis": hyp,
        "wer": _rate(w), "cer": _rate(c),
        "word_errors": w["errors"], "ref_words": w["ref_len"],
        "substitutions": w["substitutions"], "deletions": w["deletions"], "insertions": w["insertions"],
        "char_errors": c["errors"], "ref_chars": c["ref_len"],
        "duration": duration, "processing_s": elapsed,
        "rtf": elapsed / duration if duration > 0 else None,
    })
    return entry


def _overall(scored: List[Dict[str, Any]]) -> Dict[str, Any]:
    tot = {k: sum(f[k] for f in scored) for k in ("word_errors", "ref_words", "substitutions", "deletions",
                                                    "insertions", "char_errors", "ref_chars")}
    duration = sum(f["duration"] for f in scored)
    processing = sum(f["processing_s"] for f in scored)
    w = {"errors": tot["word_errors"], "ref_len": tot["ref_words"]}
    c = {"errors": tot["char_errors"], "ref_len": tot["ref_chars"]}
    return {"wer": _rate(w) if scored else None, "cer": _rate(c) if scored else None, **tot,
            "n_files": len(scored), "duration": duration, "processing_s": processing,
            "rtf": processing / duration if duration > 0 else None}


# ---------------------------------------------------------------------- output
def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100.0 * x:.2f}"


def _num(x: Optional[float], fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def format_table(report: Mapping[str, Any]) -> str:
    """A readable table of a report from `evaluate`."""
    rows = [("line", "file", "dur s", "WER %", "CER %", "RTF", "errors/words")]
    for f in report["files"]:
        name = _short(f.get("audio", ""))
        if "error" in f:
            rows.append((str(f["line"]), name, "", "", "", "", "ERROR"))
        else:
            rows.append((str(f["line"]), name, _num(f["duration"], ".1f"), _pct(f["wer"]), _pct(f["cer"]),
                         _num(f["rtf"], ".3f"), f"{f['word_errors']}/{f['ref_words']}"))
    o = report["overall"]
    rows.append(("", f"overall ({o['n_files']} files)", _num(o["duration"], ".1f"), _pct(o["wer"]), _pct(o["cer"]),
                 _num(o["rtf"], ".3f"), f"{o['word_errors']}/{o['ref_words']}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {0, 2, 3, 4, 5, 6}

    def fmt(r: Tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows[1:-1]]
    lines += ["  ".join("-" * w for w in widths), fmt(rows[-1])]
    lines.append(f"normalisation: {report['normalization']}")
    failed = [f for f in report["files"] if "error" in f]
    if failed:
        lines.append(f"{len(failed)} of {report['n_lines']} lines failed:")
        lines += [f"  line {f['line']}: {f['error']}" for f in failed]
    return "\n".join(lines)


def _short(path: str, width: int = 40) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3):]
