"""Opening what `load_audio` is given (a path, ``"-"``, bytes, a file object) as a byte
stream, with the errors a user can act on.

Regular files and in-memory bytes are seekable, so every decoder can read them. Pipes,
FIFOs, process substitution (``<(cmd)`` = ``/dev/fd/N``), sockets, terminals and a piped
stdin are not: they are read front to back as a stream (seeking them fails with
"Illegal seek"). Reading one of those waits at most ``read_timeout`` seconds for each
piece of data, so a FIFO nobody writes to does not hang the caller forever.
"""

from __future__ import annotations

import errno
import io
import math
import os
import select
import stat
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Optional

from ..errors import AudioError

#: How long to wait for data from a pipe/FIFO/stdin before giving up, in seconds.
DEFAULT_READ_TIMEOUT_S = 10.0
#: Environment variable that overrides :data:`DEFAULT_READ_TIMEOUT_S`.
READ_TIMEOUT_ENV = "PYLFM_READ_TIMEOUT"


@dataclass
class Source:
    """An opened input: ``file`` is read with ``read(n)``; ``seekable`` says whether it
    may also be seeked (decoders that need to seek are only used then)."""

    file: BinaryIO
    name: str
    seekable: bool


def read_timeout_s(value: Optional[float]) -> float:
    """The read timeout: ``value`` if given, else $PYLFM_READ_TIMEOUT, else 10 s."""
    where = "read_timeout"
    if value is None:
        env = os.environ.get(READ_TIMEOUT_ENV)
        if not env:
            return DEFAULT_READ_TIMEOUT_S
        where = f"${READ_TIMEOUT_ENV}"
        try:
            value = float(env)
        except ValueError:
            raise ValueError(f"{where} must be a number of seconds, got {env!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
        raise ValueError(f"{where} must be a positive number of seconds, got {value!r}")
    return float(value)


@contextmanager
def open_source(audio: Any, read_timeout: Optional[float] = None) -> Iterator[Source]:
    """Open ``audio`` for reading; closes what it opened on exit."""
    if isinstance(audio, (str, os.PathLike)):
        path = os.fspath(audio)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if path == "-":
            with _open_stdin(read_timeout) as src:
                yield src
            return
        with _open_path(path, read_timeout) as src:
            yield src
        return
    if isinstance(audio, (bytes, bytearray, memoryview)):
        data = bytes(audio)
        if not data:
            raise AudioError("<bytes> is empty (0 bytes); pass the contents of an audio file")
        yield Source(io.BytesIO(data), "<bytes>", True)
        return
    if hasattr(audio, "read"):
        yield _file_object(audio)
        return
    raise TypeError(
        f"cannot load audio from {type(audio).__name__}; pass a path, '-', bytes, "
        "a binary file object, or a numpy array with sample_rate="
    )


# ---------------------------------------------------------------------------- paths


@contextmanager
def _open_path(path: str, read_timeout: Optional[float]) -> Iterator[Source]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT,
            f"audio file not found (relative paths start from {os.getcwd()}); check the path",
            path,
        ) from None
    except PermissionError:
        raise _permission_error(path) from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(f"{path!r} is a directory, not an audio file; pass a file inside it")
    name = repr(path)
    if stat.S_ISREG(st.st_mode):
        # Python's own open gives clear errors (permission denied, ...) where
        # libsndfile/FFmpeg would say "System error" or "Invalid data".
        try:
            f = open(path, "rb")
        except PermissionError:
            raise _permission_error(path) from None
        with f:
            if st.st_size == 0:
                raise AudioError(f"{name} is empty (0 bytes); pass a file with audio in it")
            yield Source(f, name, True)
        return
    # A FIFO, /dev/fd/N of a pipe, a socket or a character device: a stream. Opening a
    # FIFO blocks until a writer opens it; non-blocking open returns at once, and the
    # timed reader then waits (with a limit) for the first data.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise _permission_error(path) from None
    except OSError as e:
        raise AudioError(f"cannot open {name} for reading: {e.strerror}") from None
    _set_blocking(fd)
    with _stream(_TimedReader(fd, name, read_timeout_s(read_timeout), owns_fd=True), name) as src:
        yield src


def _permission_error(path: str) -> PermissionError:
    return PermissionError(
        errno.EACCES,
        "permission denied reading the audio file; check its permissions (ls -l) or run as a user who may read it",
        path,
    )


def _set_blocking(fd: int) -> None:
    # Reads then block, but only after poll() said data (or end of file) is there.
    try:
        os.set_blocking(fd, True)
    except (AttributeError, OSError):  # pragma: no cover - platforms without it
        pass


# ---------------------------------------------------------------------------- stdin


@contextmanager
def _open_stdin(read_timeout: Optional[float]) -> Iterator[Source]:
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    if stdin is None:
        raise AudioError("there is no standard input to read audio from; pass a file path instead of '-'")
    fd = _fileno(stdin)
    if fd is None or _is_seekable_fd(fd):
        yield _file_object(stdin, "<stdin>")
        return
    # A pipe or terminal: read the descriptor directly (nothing has been buffered from
    # it yet), waiting at most read_timeout for each piece; never close the caller's stdin.
    with _stream(_TimedReader(fd, "<stdin>", read_timeout_s(read_timeout), owns_fd=False), "<stdin>") as src:
        yield src


@contextmanager
def _stream(raw: "_TimedReader", name: str) -> Iterator[Source]:
    with io.BufferedReader(raw, buffer_size=1 << 16) as f:
        if not f.peek(1):  # waits for the first data (or end of file)
            raise AudioError(f"{name} is empty (0 bytes arrived); pass the contents of an audio file")
        yield Source(f, name, False)


def _fileno(f: Any) -> Optional[int]:
    try:
        return int(f.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _is_seekable_fd(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


# ---------------------------------------------------------------------------- file objects


def _file_object(f: Any, name: Optional[str] = None) -> Source:
    name = name or _display_name(f)
    probe = f.read(0)
    if isinstance(probe, str):
        raise TypeError("the file object is in text mode; open the audio file with mode 'rb'")
    seekable = False
    try:
        seekable = bool(f.seekable()) if hasattr(f, "seekable") else hasattr(f, "seek")
    except (OSError, ValueError):
        pass
    if seekable:
        try:
            here = f.tell()
            end = f.seek(0, io.SEEK_END)
            f.seek(here)
        except (OSError, ValueError, AttributeError):
            seekable = False
        else:
            if end is not None and end - here <= 0:
                raise AudioError(f"{name} is empty (0 bytes); pass the contents of an audio file")
    return Source(f, name, seekable)


def _display_name(f: Any) -> str:
    name = getattr(f, "name", None)
    return repr(name) if isinstance(name, str) and name else "<file object>"


class _TimedReader(io.RawIOBase):
    """Reads a file descriptor, waiting at most ``timeout`` seconds for each piece."""

    def __init__(self, fd: int, name: str, timeout: float, owns_fd: bool) -> None:
        super().__init__()
        self._fd, self._name, self._timeout, self._owns = fd, name, timeout, owns_fd

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd

    def readinto(self, buf: Any) -> int:
        self._wait()
        try:
            return os.readv(self._fd, [buf])
        except BlockingIOError:  # someone else set O_NONBLOCK on a shared stdin: wait once more
            self._wait()
            return os.readv(self._fd, [buf])

    def _wait(self) -> None:
        if not hasattr(select, "poll"):  # pragma: no cover - Windows: blocking reads only
            return
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLPRI)
        if not poller.poll(self._timeout * 1000):
            raise AudioError(
                f"no data arrived from {self._name} for {self._timeout:g} s (is anything writing to it? "
                f"a FIFO needs a writer); raise the wait with read_timeout= or ${READ_TIMEOUT_ENV}"
            )

    def close(self) -> None:
        if not self.closed and self._owns:
            os.close(self._fd)
        super().close()
