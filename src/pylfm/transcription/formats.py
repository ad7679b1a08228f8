"""Transcript output: the :class:`Segment` type, writers for plain text, JSON, SRT and
WebVTT, parsers for SRT and WebVTT, and `write_output` (atomic, or stdout for ``-``).

    >>> segs = [Segment(0, 0.0, 2.5, "Hello there."), Segment(1, 2.5, 4.0, "Hi.")]
    >>> write_output("talk.srt", to_srt(segs))

Subtitle text is written as it is (no line wrapping). Cues are numbered from 1 in
file order whatever the segments' ids; parsed segments get ids 0, 1, 2, ... in file
order. Segments with blank text are left out of subtitles (a blank cue would end the
cue block early in most players).
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Union

from ..atomic import write_atomic

__all__ = [
    "FORMATS",
    "Segment",
    "format_timestamp",
    "parse_timestamp",
    "to_txt",
    "to_json",
    "to_srt",
    "to_vtt",
    "parse_srt",
    "parse_vtt",
    "write_output",
]

#: Output formats the writers here produce, by file extension.
FORMATS = ("txt", "json", "srt", "vtt")


@dataclass
class Segment:
    """A piece of transcript with its time span in seconds from the start of the audio.

    For transcribed windows: ``stop_reason`` is why decoding ended ("stop", "length" at
    max_new_tokens, "context", "repetition" when the loop guard stopped it and no
    fallback did better, "cancelled", "error" with the message in ``error``);
    ``avg_logprob`` is the mean log-probability of its tokens, ``compression_ratio`` the
    gzip ratio of its text and ``temperature`` the one its kept decoding used.
    """

    id: int
    start: float
    end: float
    text: str
    tokens: List[int] = field(default_factory=list)
    stop_reason: str = "stop"
    avg_logprob: Optional[float] = None
    compression_ratio: Optional[float] = None
    temperature: float = 0.0
    error: Optional[str] = None

    def to_dict(self) -> "dict[str, Any]":
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------
# Timestamps


def format_timestamp(
    seconds: float, always_include_hours: bool = False, decimal_marker: str = "."
) -> str:
    """``[HH:]MM:SS<marker>mmm``, rounded to the millisecond; hours are shown when
    asked or when non-zero. SRT wants ``(s, True, ",")``, WebVTT ``(s, True, ".")``."""
    if seconds < 0:
        raise ValueError(f"timestamps cannot be negative, got {seconds}")
    ms = int(round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if always_include_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


_TS = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[,.](\d{1,3}))?"
_TS_RE = re.compile(rf"^\s*{_TS}\s*$")
_TIMING_RE = re.compile(rf"^\s*{_TS}\s*-->\s*{_TS}(?:\s.*)?$")


def parse_timestamp(text: str) -> float:
    """Seconds from ``[HH:]MM:SS[,.]mmm`` (the inverse of :func:`format_timestamp`)."""
    m = _TS_RE.match(text)
    if not m:
        raise ValueError(f"not a timestamp: {text!r} (expected [HH:]MM:SS,mmm)")
    return _ts_seconds(m.groups())


def _ts_seconds(g: Sequence[Any]) -> float:
    h, m, s, frac = g
    ms = int((frac or "0").ljust(3, "0"))  # "5" after the marker is 500 ms
    return (int(h or 0) * 3600 + int(m) * 60 + int(s)) + ms / 1000.0


# ---------------------------------------------------------------------------------
# Writers


def to_txt(segments: Union[str, Iterable[Segment]]) -> str:
    """Plain text: the string as it is, or one segment per line."""
    if isinstance(segments, str):
        text = segments.strip()
    else:
        text = "\n".join(s.text.strip() for s in segments if s.text.strip())
    return text + "\n" if text else ""


def to_json(result: Mapping[str, Any]) -> str:
    """``result`` (e.g. ``{"text": ..., "segments": [Segment, ...], ...}``) as indented
    UTF-8 JSON; segments and other dataclasses become objects, numpy values numbers."""
    return json.dumps(result, ensure_ascii=False, indent=2, default=_json_default) + "\n"


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def _cue_text(text: str) -> str:
    # A blank line would end the cue; keep the lines, drop the empty ones.
    # split on newlines only: str.splitlines() also breaks at \x1c-\x1e, \x85, \u2028...,
    # which model output may contain, and the cue would no longer round-trip.
    lines = text.strip().replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.strip() for line in lines if line.strip())


def to_srt(segments: Iterable[Segment]) -> str:
    """SubRip subtitles: numbered cues ``HH:MM:SS,mmm --> HH:MM:SS,mmm`` + text."""
    cues = []
    for seg in segments:
        text = _cue_text(seg.text)
        if not text:
            continue
        start = format_timestamp(seg.start, True, ",")
        end = format_timestamp(seg.end, True, ",")
        cues.append(f"{len(cues) + 1}\n{start} --> {end}\n{text}\n")
    return "\n".join(cues)


def to_vtt(segments: Iterable[Segment]) -> str:
    """WebVTT subtitles. ``&``, ``<`` and ``>`` are escaped as the format requires
    (cue text is markup), and ``-->`` cannot occur in cue text."""
    out = ["WEBVTT\n"]
    for seg in segments:
        text = _cue_text(seg.text)
        if not text:
            continue
        text = html.escape(text, quote=False)  # "-->" becomes "--&gt;"
        start = format_timestamp(seg.start, True, ".")
        end = format_timestamp(seg.end, True, ".")
        out.append(f"{start} --> {end}\n{text}\n")
    return "\n".join(out)


# ---------------------------------------------------------------------------------
# Parsers


def _blocks(text: str) -> List[List[str]]:
    """Blank-line separated blocks of lines (BOM and CRLF tolerated)."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    blocks, cur = [], []
    for line in text.split("\n"):
        if line.strip():
            cur.append(line)
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    return blocks


def _cue(lines: List[str]) -> "tuple[float, float, List[str]] | None":
    """(start, end, text lines) of a cue block; None if no timing line in its first two."""
    for i, line in enumerate(lines[:2]):
        m = _TIMING_RE.match(line)
        if m:
            g = m.groups()
            return _ts_seconds(g[:4]), _ts_seconds(g[4:]), lines[i + 1 :]
    return None


def parse_srt(text: str) -> List[Segment]:
    """Segments from SubRip text; raises ValueError naming a block that is not a cue."""
    segments = []
    for block in _blocks(text):
        cue = _cue(block)
        if cue is None:
            raise ValueError(f"not an SRT cue (no 'start --> end' line): {block[0]!r}")
        start, end, lines = cue
        segments.append(Segment(len(segments), start, end, "\n".join(lines)))
    return segments


_TAG_RE = re.compile(r"<[^>]*>")


def parse_vtt(text: str) -> List[Segment]:
    """Segments from WebVTT text. The header, NOTE, STYLE and REGION blocks are
    skipped; cue settings, markup tags (``<v Name>``, ``<b>``) and entities are
    removed from the text. Raises ValueError if the ``WEBVTT`` header is missing."""
    blocks = _blocks(text)
    if not blocks or not blocks[0][0].startswith("WEBVTT"):
        raise ValueError("not WebVTT: the first line must start with 'WEBVTT'")
    segments = []
    for block in blocks[1:]:
        if block[0].split(" ", 1)[0] in ("NOTE", "STYLE", "REGION"):
            continue
        cue = _cue(block)
        if cue is None:
            raise ValueError(f"not a WebVTT cue (no 'start --> end' line): {block[0]!r}")
        start, end, lines = cue
        body = html.unescape(_TAG_RE.sub("", "\n".join(lines)))
        segments.append(Segment(len(segments), start, end, body))
    return segments


# ---------------------------------------------------------------------------------
# Output


def write_output(path: Union[str, "os.PathLike[str]"], content: Union[str, bytes]) -> None:
    """Write ``content`` (str as UTF-8) to ``path`` atomically (`pylfm.atomic.write_atomic`:
    readers never see a partial file, an existing one survives a failed write, keeps
    its permissions, a symlink stays a link). ``"-"`` writes to stdout.

    Raises:
        OSError: the file cannot be written (missing or read-only folder, read-only file,
            a directory in the way, disk full, ...). Its ``filename`` is ``path`` (never
            the temporary file) and nothing is left behind.
    """
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    if os.fspath(path) == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    write_atomic(path, data)


# ---------------------------------------------------------------------------------
# Transcription results as documents


def result_to_dict(result: Any, *, source: str = "", model: Any = None) -> "dict[str, Any]":
    """A `pylfm.Transcription` as the JSON document the CLI and the server write:
    text, segments, duration, timings, and which model/device produced it."""
    doc: "dict[str, Any]" = {
        "source": source,
        "text": result.text,
        "duration": round(result.duration, 3),
        "segments": [s.to_dict() for s in result.segments],
        "timings": {k: round(v, 3) for k, v in dataclasses.asdict(result.timings).items()},
        "n_tokens": result.n_tokens,
        "device": result.device,
    }
    if model is not None:
        doc["model"] = os.fspath(model.model_path)
        doc["mmproj"] = os.fspath(model.mmproj_path)
    return doc


def render(fmt: str, doc: Mapping[str, Any]) -> str:
    """One of FORMATS from a `result_to_dict` document."""
    segments = [s if isinstance(s, Segment) else Segment(**s) for s in doc.get("segments", [])]
    if fmt == "txt":
        return to_txt(doc.get("text", ""))
    if fmt == "json":
        return to_json(doc)
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
