"""Writing files so that they appear whole or not at all: the one atomic writer.

Every file pylfm writes (transcripts and subtitles, speech audio, converted and
quantized GGUFs) goes through here:

    write_atomic("talk.srt", text)                 # bytes or str (UTF-8)

    with AtomicFile("model-Q4_0.gguf") as f:       # for writers that take a path
        native_quantize(src, f.tmp)                # f.tmp is in the target's folder
                                                   # committed on success, removed on error

What it guarantees:

- the data goes to a temporary file in the target's own folder (so the final rename
  is atomic: readers see the old file or the new one, never a partial one) and is
  fsynced before the rename; the folder is fsynced after it (the rename is durable);
- an existing file keeps its permission bits (and owner, where allowed); a new file
  gets the usual ``0o666 & ~umask``;
- a symlink stays a link: the file it names is replaced, in that file's folder;
- a read-only file is refused (``PermissionError``) rather than replaced behind its
  owner's back (a rename would get past the read-only bit), and so is a directory in
  the way (``IsADirectoryError``);
- on any failure (including KeyboardInterrupt) the temporary file is removed, the
  target is untouched, and the ``OSError`` names the path the caller gave.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Union

__all__ = ["AtomicFile", "write_atomic", "commit_all", "check_writable_dir"]

PathLike = Union[str, "os.PathLike[str]"]
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation


class AtomicFile:
    """A file written under a temporary name (``tmp``) next to ``path``'s real target
    and moved over it by `commit` (or removed by `discard`).

    As a context manager it commits when the block succeeds and discards when it
    raises. Creating one checks the target (not a directory, writable if it exists)
    and creates the empty temporary file, so a writer may open ``tmp`` by name.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self.target = os.path.realpath(self.path)  # through symlinks: replace the file, keep the link
        self._done = False
        with _naming(self.path):
            try:
                self._existing: Optional[os.stat_result] = os.stat(self.target)
            except FileNotFoundError:
                self._existing = None
            if self._existing is not None:
                if stat.S_ISDIR(self._existing.st_mode):
                    raise IsADirectoryError(errno.EISDIR, "Is a directory")
                if not os.access(self.target, os.W_OK):
                    raise PermissionError(errno.EACCES, "Permission denied (the file is read-only)")
            directory, name = os.path.split(self.target)
            self.directory = directory
            self.tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
            # os.open with 0o666 lets the umask set a new file's permissions, as for any file.
            self._fd: Optional[int] = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)

    def write(self, data: bytes) -> None:
        """Writes ``data`` to the temporary file (for callers that do not open ``tmp`` themselves)."""
        if self._fd is None:
            raise ValueError(f"{self.path} is no longer open for writing")
        view = memoryview(data)
        with _naming(self.path):
            while view:
                view = view[os.write(self._fd, view):]

    def commit(self) -> Path:
        """Moves the finished temporary file over the target (durably); returns ``path``."""
        if self._done:
            raise ValueError(f"{self.path} was already committed or discarded")
        try:
            with _naming(self.path):
                fd, self._fd = self._fd, None
                if fd is None:  # a writer opened tmp by name: reopen it to sync what it wrote
                    fd = os.open(self.tmp, os.O_RDONLY | _O_BINARY)
                try:
                    if self._existing is not None:
                        _copy_owner_and_mode(fd, self._existing)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(self.tmp, self.target)
        except BaseException:
            self.discard()
            raise
        self._done = True
        _fsync_dir(self.directory)
        return Path(self.path)

    def discard(self) -> None:
        """Removes the temporary file (the target is untouched); safe to call twice."""
        self._done = True
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self.tmp)
        except OSError:
            pass

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_atomic(path: PathLike, content: Union[str, bytes]) -> Path:
    """Writes ``content`` (str as UTF-8) to ``path`` atomically (see the module
    docstring); returns ``path`` as a Path. Raises OSError naming ``path``."""
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    f = AtomicFile(path)
    try:
        f.write(data)
    except BaseException:
        f.discard()
        raise
    return f.commit()


def commit_all(files: Sequence[AtomicFile]) -> List[Path]:
    """Commits several finished files (e.g. the GGUFs of one conversion) once all of
    them are written; a failure discards every one not yet committed."""
    done: List[Path] = []
    try:
        for f in files:
            done.append(f.commit())
    finally:
        for f in files[len(done):]:
            f.discard()
    return done


def check_writable_dir(directory: PathLike) -> Path:
    """Creates ``directory`` (and its parents) if needed and checks that a file can be
    created in it. Raises OSError (FileExistsError when a file is in the way) otherwise."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=d, prefix=".pylfm-probe-"):
        pass
    return d


class _naming:
    """Re-raises an OSError with ``filename`` = the caller's path (never the temporary file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if isinstance(exc, OSError) and exc.filename != self.path:
            raise OSError(exc.errno, exc.strerror or str(exc), self.path) from None  # OSError picks the subclass
        return False


def _copy_owner_and_mode(fd: int, st: os.stat_result) -> None:
    if hasattr(os, "fchown") and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError:  # only root may give a file away; the mode is what matters
            pass
    if hasattr(os, "fchmod"):  # not on Windows, where only a read-only bit exists
        os.fchmod(fd, stat.S_IMODE(st.st_mode))


def _fsync_dir(directory: str) -> None:
    """Makes the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
