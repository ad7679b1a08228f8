"""What a corpus job reads: paths, globs, folders and manifests, local or fsspec URLs,
expanded on the driver into one list of audio locations.

    >>> expand_inputs(["calls/", "extra/*.flac", "s3://bucket/list.parquet"])
    ['/home/me/calls/a.wav', ..., 's3://bucket/audio/x.mp3']

A folder is searched recursively for audio files (by extension). A manifest is a
``.csv``, ``.jsonl``/``.json`` or ``.parquet`` file with a ``path`` (or ``audio``)
column; its relative paths are read from the manifest's folder. Local paths become
absolute, so the same string names the file on every worker of a cluster that mounts
the same shared folder, and the output's ``path`` column can be matched on resume.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import posixpath
from typing import Iterable, List, Optional

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64", ".m4a", ".aac",
                    ".wma", ".amr", ".ac3", ".mka", ".webm")  # video containers: name them (or a glob)
MANIFEST_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
PATH_COLUMNS = ("path", "audio")


def is_url(location: str) -> bool:
    """True for fsspec URLs such as ``s3://bucket/key`` (``file://`` included)."""
    return "://" in location


def expand_inputs(inputs: Iterable[str], *, path_column: Optional[str] = None) -> List[str]:
    """Every audio location named by ``inputs``, in order, each once.

    Raises:
        FileNotFoundError: an input matches nothing (a glob without matches, a
            missing folder or manifest, an empty folder).
        ValueError: a manifest without the path column, or unreadable.
        ImportError: a URL whose filesystem package (s3fs, gcsfs, ...) is missing.
    """
    seen, out = set(), []
    for item in inputs:
        for location in _expand_one(os.fspath(item), path_column):
            if location not in seen:
                seen.add(location)
                out.append(location)
    return out


def _expand_one(item: str, path_column: Optional[str]) -> List[str]:
    if item.lower().endswith(MANIFEST_EXTENSIONS):
        return read_manifest(item, path_column)
    if is_url(item):
        return _expand_url(item)
    if glob.has_magic(item):
        matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
        found = [os.path.abspath(m) for m in matches if os.path.isfile(m)]
        if not found:
            raise FileNotFoundError(f"no files match {item!r}; check the pattern (quote it so the shell "
                                    "does not expand it first)")
        return found
    path = os.path.abspath(os.path.expanduser(item))
    if os.path.isdir(path):
        found = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                       if name.lower().endswith(AUDIO_EXTENSIONS))
        if not found:
            raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {path}")
        return found
    # A file that does not exist (or is not audio) is still an input: it becomes a row
    # with its error, like a broken file inside a folder would.
    return [path]


def _expand_url(url: str) -> List[str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    protocol = url.split("://", 1)[0]
    if glob.has_magic(root):
        names = sorted(fs.glob(root))
    elif fs.isdir(root):
        names = sorted(n for n in fs.find(root) if n.lower().endswith(AUDIO_EXTENSIONS))
    else:
        return [url]
    if not names:
        raise FileNotFoundError(f"no audio files match {url!r}")
    return [n if is_url(n) else f"{protocol}://{n.lstrip('/') if protocol != 'file' else n}" for n in names]


def read_manifest(location: str, path_column: Optional[str] = None) -> List[str]:
    """The audio locations listed in a CSV/TSV, JSON Lines or Parquet manifest."""
    rows = _manifest_column(location, path_column)
    base = posixpath.dirname(location) if is_url(location) else os.path.dirname(os.path.abspath(location))
    out = []
    for value in rows:
        if value is None or str(value).strip() == "":
            continue
        value = str(value).strip()
        if is_url(value):
            out.append(value)
        elif is_url(base):
            out.append(posixpath.join(base, value))
        else:
            out.append(os.path.abspath(os.path.join(base, os.path.expanduser(value))))
    if not out:
        raise ValueError(f"manifest {location} lists no paths")
    return out


def _manifest_column(location: str, path_column: Optional[str]) -> list:
    lower = location.lower()
    try:
        if lower.endswith(".parquet"):
            import pyarrow.parquet as pq

            with _open(location, "rb") as f:
                table = pq.read_table(f)
            return table.column(_pick(table.column_names, path_column, location)).to_pylist()
        with _open(location, "rb") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig")
            if lower.endswith((".jsonl", ".json")):
                records = [json.loads(line) for line in text if line.strip()]
                if not all(isinstance(r, dict) for r in records):
                    raise ValueError("each line must be a JSON object")
                names = list(dict.fromkeys(k for r in records for k in r))
                column = _pick(names, path_column, location)
                return [r.get(column) for r in records]
            reader = csv.DictReader(text, delimiter="\t" if lower.endswith(".tsv") else ",")
            column = _pick(reader.fieldnames or [], path_column, location)
            return [r.get(column) for r in reader]
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest not found: {location}") from None
    except _NoPathColumn:
        raise
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise ValueError(f"could not read manifest {location}: {e}") from None


class _NoPathColumn(ValueError):
    pass


def _pick(names: List[str], wanted: Optional[str], location: str) -> str:
    for name in ([wanted] if wanted else PATH_COLUMNS):
        if name in names:
            return name
    want = repr(wanted) if wanted else " or ".join(repr(n) for n in PATH_COLUMNS)
    raise _NoPathColumn(f"manifest {location} has no {want} column (columns: {', '.join(map(str, names)) or 'none'}); "
                     "name the column with --path-column")


def _open(location: str, mode: str):
    if is_url(location):
        import fsspec

        return fsspec.open(location, mode).open()
    return open(location, mode)
