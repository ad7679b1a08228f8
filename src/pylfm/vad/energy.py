"""The dependency-free energy detector: frame levels in dBFS against an adaptive threshold.

Frames of 30 ms whose RMS level is above the threshold are speech. Unless given, the
threshold adapts to the recording: 10 dB above its noise floor (the 10th percentile of
the frame levels), but never more than 10 dB below its loudest frame (so a recording
that is speech throughout still counts as speech), and never below -60 dBFS (so digital
silence and very low noise are silence). An energy detector cannot tell speech from
loud noise or music, and in noise its threshold climbs towards the speech level; Silero
(the default) does not have those problems.
"""

from __future__ import annotations

import numpy as np

#: Frames at or below this level (dBFS) are always silence.
ABS_FLOOR_DB = -60.0
#: Speech must be this much above the noise floor (10th percentile of frame levels) ...
NOISE_MARGIN_DB = 10.0
#: ... but a frame within this much of the loudest frame is always speech.
LOUD_MARGIN_DB = 10.0
#: Percentile of frame levels taken as the noise floor.
NOISE_PERCENTILE = 10.0
#: Analysis frame length.
FRAME_MS = 30.0

_SILENT_DB = -120.0  # level reported for digital silence (avoids log(0))


def frame_len(rate: float) -> int:
    return max(1, int(round(rate * FRAME_MS / 1000)))


def frame_levels_db(x: np.ndarray, frame: int) -> np.ndarray:
    """RMS level in dBFS of consecutive, non-overlapping frames of ``frame`` samples of
    float mono ``x``. The last frame may be shorter; it is measured over what it has."""
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    n_full = n // frame
    full = x[: n_full * frame].reshape(n_full, frame)
    power = np.einsum("ij,ij->i", full, full, dtype=np.float64) / frame
    if n % frame:
        tail = x[n_full * frame :].astype(np.float64)
        power = np.append(power, np.mean(tail * tail))
    return 10.0 * np.log10(np.maximum(power, 10.0 ** (_SILENT_DB / 10.0)))


def auto_threshold_db(levels: np.ndarray) -> float:
    """The adaptive speech threshold (dBFS) for frame levels (see the module docstring)."""
    if len(levels) == 0:
        return ABS_FLOOR_DB
    noise = float(np.percentile(levels, NOISE_PERCENTILE))
    loud = float(np.max(levels))
    return max(ABS_FLOOR_DB, min(noise + NOISE_MARGIN_DB, loud - LOUD_MARGIN_DB))
