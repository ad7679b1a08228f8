"""Voice activity detection and window planning for long recordings.

LFM2-Audio decodes one window of audio per request. `plan_windows` decides which spans
of a recording become windows: every entry point (``Model.transcribe*``, the CLI, the
server, ``bench``) calls it.

    >>> x = load_audio("meeting.m4a")
    >>> for start, end in plan_windows(x, 16000):           # Silero VAD, 30 s windows
    ...     text = engine(x[start:end])                      # times offset by start / 16000

Detectors (``vad=``):

* ``"silero"`` (default): Silero VAD v6, a small neural network run by onnxruntime on
  one CPU thread (the README has its measured speed). It tells speech from noise,
  music and silence.
* ``"energy"``: frame energy against an adaptive threshold; no dependencies, but in
  noise its threshold rises towards the speech level and it cuts inside sentences.
* ``None``: no detection; long audio is cut at its quietest points, nothing dropped.

`VadOptions` tunes both detectors; `speech_regions` returns a detector's raw regions.
"""

from __future__ import annotations

from .energy import auto_threshold_db, frame_levels_db
from .options import VadOptions
from .planner import DEFAULT_WINDOW_S, VAD_METHODS, plan_windows, speech_regions

__all__ = [
    "VadOptions",
    "VAD_METHODS",
    "DEFAULT_WINDOW_S",
    "plan_windows",
    "speech_regions",
    "frame_levels_db",
    "auto_threshold_db",
]

