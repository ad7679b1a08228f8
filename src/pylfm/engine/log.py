"""llama.cpp's and mtmd's log, routed into Python `logging` (logger ``pylfm.llama``).

The native core buffers their log lines (``llama_log_set`` / ``mtmd_log_set``); they
are moved into ``pylfm.llama`` after each native call that may log (loads, requests
ending, speech generation). Quiet by default: llama.cpp's warnings (e.g. "audio input
is experimental" on every load) are routine for us, and its errors also reach the
user as exceptions. ``verbose=True`` also echoes them to stderr.
"""

from __future__ import annotations

import logging

from .. import _core

_llama_log = logging.getLogger("pylfm.llama")
# llama.cpp's own levels, one step down (see the module docstring).
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.WARNING}


def set_verbose(verbose: bool) -> None:
    """Echo llama.cpp's own log to stderr (True) or keep it in ``pylfm.llama`` only."""
    _core.set_verbose(bool(verbose))


def drain_llama_log() -> None:
    """Moves llama.cpp's buffered log lines into the ``pylfm.llama`` logger."""
    for level, line in _core.pop_log():
        _llama_log.log(_LEVELS.get(level, logging.DEBUG), "%s", line)
