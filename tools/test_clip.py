"""Deterministic test clip shared by the reference fixture and the fidelity tests.

``make_clip()`` returns float32 mono PCM at 16 kHz made of tones, a chirp, an
amplitude envelope and a little pseudo-random noise, so every stage of the audio
front end (pre-emphasis, STFT, mel filterbank, per-feature normalisation) sees
varied, non-silent input.

It depends on nothing but NumPy, and its noise comes from a splitmix64 hash of the
sample index computed in uint64 arithmetic (not from ``numpy.random``), so the
samples are the same across NumPy versions and platforms. Do not change this file
without regenerating ``tests/fixtures/reference.npz`` (see tools/reference/README.md).
"""

from __future__ import annotations

import numpy as np

__all__ = ["make_clip", "CLIP_DEFAULTS"]

CLIP_DEFAULTS = {"seconds": 4.0, "rate": 16000, "seed": 1234, "noise": 0.01}


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser over uint64 (wrap-around arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def _uniform(n: int, seed: int) -> np.ndarray:
    """n deterministic uniforms in [0, 1) as float64."""
    idx = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x100000001B3)
    bits = _splitmix64(idx) >> np.uint64(11)  # top 53 bits
    return bits.astype(np.float64) / float(1 << 53)


def make_clip(seconds: float = 4.0, rate: int = 16000, seed: int = 1234, noise: float = 0.01) -> np.ndarray:
    """Return ``int(seconds*rate)`` float32 samples in [-1, 1].

    Layout over the clip (fractions of its length):
      - a chord of three tones (220, 554.37, 1318.5 Hz) throughout, with a slow
        tremolo so per-frame energy varies;
      - a linear chirp from 150 Hz to 6500 Hz between 25 % and 75 %;
      - a 3 kHz tone burst train (on/off every 0.2 s) in the last 25 %;
      - uniform noise of peak ``noise`` (approximately Gaussian: sum of 4 uniforms).
    """
    n = int(round(seconds * rate))
    t = np.arange(n, dtype=np.float64) / rate
    dur = n / rate

    tremolo = 0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t)
    x = tremolo * (
        0.20 * np.sin(2 * np.pi * 220.0 * t)
        + 0.12 * np.sin(2 * np.pi * 554.37 * t + 0.3)
        + 0.06 * np.sin(2 * np.pi * 1318.5 * t + 1.1)
    )

    # chirp in the middle half, with raised-cosine fades
    t0, t1 = 0.25 * dur, 0.75 * dur
    f0, f1 = 150.0, 6500.0
    in_chirp = (t >= t0) & (t < t1)
    tc = t[in_chirp] - t0
    k = (f1 - f0) / (t1 - t0)
    phase = 2 * np.pi * (f0 * tc + 0.5 * k * tc * tc)
    fade = np.minimum(1.0, np.minimum(tc, (t1 - t0) - tc) / 0.05)
    fade = 0.5 - 0.5 * np.cos(np.pi * fade)
    x[in_chirp] += 0.25 * fade * np.sin(phase)

    # tone bursts in the last quarter
    tb = t >= 0.75 * dur
    gate = (np.floor((t[tb] - 0.75 * dur) / 0.2) % 2 == 0).astype(np.float64)
    x[tb] += 0.15 * gate * np.sin(2 * np.pi * 3000.0 * t[tb])

    # deterministic noise, roughly Gaussian, zero mean
    u = sum(_uniform(n, seed * 4 + j) for j in range(4)) - 2.0  # in [-2, 2)
    x += noise * 0.5 * u

    return np.clip(x, -1.0, 1.0).astype(np.float32)


if __name__ == "__main__":  # pragma: no cover - manual inspection
    c = make_clip()
    print(c.shape, c.dtype, float(c.min()), float(c.max()), float(np.sqrt(np.mean(c**2))))
