"""Exit statuses and error reporting of the ``pylfm`` command, in one place.

Every command returns an exit status or raises; `report` turns what it raised into one
line on stderr (and, with ``--json``, ``{"error", "error_type", "exit_code"}`` on stdout)
and the status below. Commands that go on after one input fails (``transcribe``) use
`describe` and `bug_message` for that input's line.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Optional

from ..errors import PylfmError

EXIT_OK = 0  # everything asked for was done
EXIT_FAILED = 1  # some inputs failed, or their outputs could not be written; the others were written
EXIT_USAGE = 2  # nothing was done: bad arguments, model not found or not loadable, unusable output directory
EXIT_BUG = 70  # an unexpected error inside pylfm (sysexits' EX_SOFTWARE); --verbose shows the traceback
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); the files already written stay, each complete

# Errors that say what is wrong with the request or its input (exit status 2, or, for
# one input of several, that input's failure). Anything else is a bug, reported as one.
USER_ERRORS = (PylfmError, OSError, ValueError, MemoryError)


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


def bug_message(e: BaseException, verbose: bool) -> str:
    """The line for an unexpected exception (with the traceback on stderr when verbose)."""
    if verbose:
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    return (f"unexpected {type(e).__name__}: {describe(e)} (a bug in pylfm: please report it"
            + ("" if verbose else "; --verbose shows the traceback") + ")")


def write_stdout(text: str) -> None:
    """Writes and flushes ``text``; a failure other than a closed pipe is a `StdoutError`."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        silence_stdout()  # the buffered rest would fail again at exit
        raise StdoutError(e.errno, e.strerror) from None


def silence_stdout() -> None:
    """Points stdout at /dev/null (after a broken pipe: nothing more can be written)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def json_error(message: str, error_type: str, status: int) -> None:
    """The error as JSON on stdout, for scripts reading it (``--json``)."""
    try:
        write_stdout(json.dumps({"error": message, "error_type": error_type, "exit_code": status}) + "\n")
    except OSError:
        pass


def report(command: str, e: BaseException, *, verbose: bool = False, as_json: bool = False) -> int:
    """Reports what ``pylfm COMMAND`` raised and returns its exit status."""
    if isinstance(e, KeyboardInterrupt):
        print(f"pylfm {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(e, BrokenPipeError):  # e.g. piped into head: the reader wanted no more
        silence_stdout()
        return EXIT_OK
    if isinstance(e, (CommandError,) + USER_ERRORS):
        status, message = EXIT_USAGE, describe(e)
    else:
        status, message = EXIT_BUG, bug_message(e, verbose)
    print(f"pylfm {command}: error: {message}", file=sys.stderr)
    if as_json:  # scripts reading stdout get JSON either way
        json_error(message, type(e).__name__, status)
    return status


def input_failure(e: BaseException, subject: str, verbose: bool) -> str:
    """The line for one input's failure (its own error, or a bug)."""
    return describe(e, subject) if isinstance(e, USER_ERRORS) else bug_message(e, verbose)

