"""The rows a corpus job writes, and reading back what an earlier run wrote (for
``--resume``) without trusting files a killed job may have left half-written.

One row per input file, in Parquet or JSON Lines, with a fixed schema so that every
file of an output folder (and of resumed runs) reads back as one table:

    path      the input location (absolute local path or URL)
    text      the transcript (null when ``error`` is set)
    segments  list of {id, start, end, text, stop_reason}, seconds from the start
    duration  seconds of audio (null when it could not be read)
    stop_reason  why decoding ended: "stop", "length", "repetition", ..., "silence"
    model, device   the model file and the device that transcribed it
    timings   {encode_ms, prefill_ms, decode_ms}: engine time spent on this file
    error     null, or "ErrorType: message" for a file that failed
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

import pyarrow as pa

log = logging.getLogger("pylfm.corpus")

FORMATS = ("parquet", "jsonl")
# What Ray Data names the files of each format.
FILE_SUFFIX = {"parquet": ".parquet", "jsonl": ".json"}

SEGMENT = pa.struct([("id", pa.int32()), ("start", pa.float64()), ("end", pa.float64()),
                     ("text", pa.string()), ("stop_reason", pa.string())])
TIMINGS = pa.struct([("encode_ms", pa.float64()), ("prefill_ms", pa.float64()), ("decode_ms", pa.float64())])
SCHEMA = pa.schema([
    ("path", pa.string()),
    ("text", pa.string()),
    ("segments", pa.list_(SEGMENT)),
    ("duration", pa.float64()),
    ("stop_reason", pa.string()),
    ("model", pa.string()),
    ("device", pa.string()),
    ("timings", TIMINGS),
    ("error", pa.string()),
])


def error_text(e: BaseException) -> str:
    """How an exception appears in the ``error`` column."""
    return f"{type(e).__name__}: {e}"


def result_row(path: str, result: Any, *, model: str, device: str) -> Dict[str, Any]:
    """The row of one `pylfm.Transcription` (or of the exception that replaced it)."""
    if isinstance(result, BaseException):
        return error_row(path, result, model=model, device=device)
    t = result.timings
    return {
        "path": path,
        "text": result.text,
        "segments": [{"id": s.id, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
                      "stop_reason": s.stop_reason} for s in result.segments],
        "duration": round(result.duration, 3),
        "stop_reason": result.stop_reason,
        "model": model,
        "device": device,
        "timings": {"encode_ms": round(t.encode_ms, 3), "prefill_ms": round(t.prefill_ms, 3),
                    "decode_ms": round(t.decode_ms, 3)},
        "error": None,
    }


def error_row(path: str, error: Any, *, model: Optional[str] = None, device: Optional[str] = None,
              duration: Optional[float] = None) -> Dict[str, Any]:
    """The row of a file that could not be transcribed."""
    return {"path": path, "text": None, "segments": [], "duration": duration, "stop_reason": None,
            "model": model, "device": device, "timings": None,
            "error": error if isinstance(error, str) else error_text(error)}


def to_table(rows: List[Dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


# ---------------------------------------------------------------------- reading back
@dataclass
class ExistingOutput:
    """What an output folder already holds."""

    paths: Set[str] = field(default_factory=set)  # inputs with a row (ok or error)
    errors: int = 0  # of those, rows with an error
    files: List[str] = field(default_factory=list)  # complete output files read
    set_aside: List[str] = field(default_factory=list)  # cut-short files renamed _*.incomplete


def read_existing(out: str, fmt: str, *, repair: bool = False) -> ExistingOutput:
    """The inputs an earlier run already wrote to ``out`` (a folder, local or fsspec URL).

    A job killed while writing can leave one file cut short. JSON Lines keep their
    complete lines (a cut last line is dropped); a Parquet file without its footer is
    unreadable as a whole. With ``repair=True`` such files are fixed so that readers of
    the folder (pandas, Ray, DuckDB) see only complete rows: a JSON Lines file is
    rewritten with its complete lines, a broken Parquet file is renamed to
    ``_<name>.incomplete`` (its inputs are transcribed again; readers skip names that
    start with ``_`` or do not end in ``.parquet``).
    """
    fs, root = _fs(out)
    found = ExistingOutput()
    if not fs.exists(root):
        return found
    suffix = FILE_SUFFIX[fmt]
    for name in sorted(fs.find(root)):
        if not name.endswith(suffix) or posixpath.basename(name).startswith((".", "_")):
            continue
        if fmt == "parquet":
            rows, complete = _read_parquet(fs, name)
        else:
            rows, complete = _read_jsonl(fs, name)
        if not complete and repair:
            if fmt == "parquet":
                fs.mv(name, _beside(name, "_" + posixpath.basename(name) + ".incomplete"))
                found.set_aside.append(name)
                log.warning("set aside %s: it was cut short by an interrupted run", name)
                continue
            _rewrite_jsonl(fs, name)
            log.warning("dropped a cut-short last line from %s (an interrupted run)", name)
        found.files.append(name)
        for path, error in rows:
            found.paths.add(path)
            found.errors += error is not None
    return found


def _read_parquet(fs: Any, name: str) -> Tuple[List[Tuple[str, Optional[str]]], bool]:
    import pyarrow.parquet as pq

    try:
        with fs.open(name, "rb") as f:
            table = pq.read_table(f, columns=["path", "error"])
    except (pa.ArrowException, OSError, ValueError) as e:
        log.debug("unreadable parquet %s: %s", name, e)
        return [], False
    return list(zip(table.column("path").to_pylist(), table.column("error").to_pylist())), True


def _read_jsonl(fs: Any, name: str) -> Tuple[List[Tuple[str, Optional[str]]], bool]:
    rows, _, complete = _jsonl_lines(fs, name)
    return rows, complete


def _jsonl_lines(fs: Any, name: str) -> Tuple[List[Tuple[str, Optional[str]]], List[bytes], bool]:
    """(rows, their raw lines, complete): only newline-terminated lines that parse count;
    a killed write leaves at most a cut tail without its newline."""
    with fs.open(name, "rb") as f:
        *lines, tail = f.read().split(b"\n")
    rows, good, complete = [], [], not tail.strip()
    for line in lines:
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            rows.append((doc["path"], doc.get("error")))
            good.append(line)
        except (ValueError, KeyError, TypeError):
            complete = False
    return rows, good, complete


def _rewrite_jsonl(fs: Any, name: str) -> None:
    _, good, _ = _jsonl_lines(fs, name)
    tmp = _beside(name, "_" + posixpath.basename(name) + ".tmp")
    with fs.open(tmp, "wb") as f:
        f.write(b"".join(line + b"\n" for line in good))
    fs.mv(tmp, name)


def _beside(name: str, other: str) -> str:
    return posixpath.join(posixpath.dirname(name), other)


def _fs(out: str):
    import fsspec

    return fsspec.core.url_to_fs(out)
