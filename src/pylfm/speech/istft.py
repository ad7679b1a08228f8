"""The waveform of the audio detokenizer's spectrogram: liquid-audio's inverse STFT in
NumPy, streamed (`StreamingISTFT`) or whole (`istft`), and the output constants."""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 24000  # the detokenizer's output rate
N_FFT = 1280
HOP = 320
UPSAMPLE = 6  # spectrogram frames per audio frame
FRAME_SAMPLES = HOP * UPSAMPLE  # 1920 samples = 80 ms per audio frame (12.5 frames/s)
FRAMES_PER_SECOND = SAMPLE_RATE / FRAME_SAMPLES


class StreamingISTFT:
    """liquid-audio's ``ISTFT(n_fft=1280, hop=320, win=1280, padding="same")``, fed a few
    spectrogram frames at a time.

    Each row holds ``n_fft/2+1`` log-magnitudes then as many phases. A frame is
    ``irfft(exp(logmag) * e^(i*phase)) * hann`` (periodic window), overlap-added at ``hop``;
    the sum is divided by the overlap-added squared window and ``(n_fft-hop)/2`` samples
    are trimmed at both ends, so T frames give ``T*hop`` samples. Samples are returned
    as soon as no later frame can change them; `finish` returns the rest. The chunks
    join to exactly what one call over all frames gives.
    """

    def __init__(self, n_fft: int = N_FFT, hop: int = HOP) -> None:
        self.n_fft, self.hop = n_fft, hop
        self.pad = (n_fft - hop) // 2
        self.bins = n_fft // 2 + 1
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
        self._acc = np.zeros(0, np.float64)  # overlap-added samples from position self._start on
        self._env = np.zeros(0, np.float64)
        self._start = 0  # first position not yet returned (untrimmed coordinates)
        self.n_frames = 0

    def push(self, rows: np.ndarray) -> np.ndarray:
        """Adds spectrogram rows (k, 2*(n_fft/2+1)); returns the samples now final."""
        rows = np.asarray(rows, np.float32)
        if rows.ndim != 2 or rows.shape[1] != 2 * self.bins:
            raise ValueError(f"spectrogram rows must be (k, {2 * self.bins}), got {rows.shape}")
        k = rows.shape[0]
        if k:
            spec = np.exp(rows[:, :self.bins].astype(np.float64)) * np.exp(1j * rows[:, self.bins:].astype(np.float64))
            frames = np.fft.irfft(spec, n=self.n_fft, axis=1) * self.window
            end = (self.n_frames + k - 1) * self.hop + self.n_fft
            grow = end - self._start - len(self._acc)
            if grow > 0:
                self._acc = np.concatenate([self._acc, np.zeros(grow)])
                self._env = np.concatenate([self._env, np.zeros(grow)])
            w2 = self.window.astype(np.float64) ** 2
            for i in range(k):
                at = (self.n_frames + i) * self.hop - self._start
                self._acc[at:at + self.n_fft] += frames[i]
                self._env[at:at + self.n_fft] += w2
            self.n_frames += k
        return self._emit(self.n_frames * self.hop)  # no later frame starts before this

    def finish(self) -> np.ndarray:
        """The remaining samples (up to ``n_frames * hop`` in all)."""
        if self.n_frames == 0:
            return np.zeros(0, np.float32)
        return self._emit(self.n_frames * self.hop + self.pad)

    def _emit(self, final: int) -> np.ndarray:
        final = min(final, self.n_frames * self.hop + self.pad)
        lo = max(self._start, self.pad)
        if final <= lo:
            return np.zeros(0, np.float32)
        a, b = lo - self._start, final - self._start
        out = (self._acc[a:b] / self._env[a:b]).astype(np.float32)
        self._acc, self._env = self._acc[b:], self._env[b:]
        self._start = final
        return out


def istft(rows: np.ndarray) -> np.ndarray:
    """The whole waveform of spectrogram rows (the test oracle of `StreamingISTFT`, and
    the direct form of liquid-audio's ISTFT)."""
    rows = np.asarray(rows, np.float64)
    bins = N_FFT // 2 + 1
    t = rows.shape[0]
    if t == 0:
        return np.zeros(0, np.float32)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    frames = np.fft.irfft(np.exp(rows[:, :bins]) * np.exp(1j * rows[:, bins:]), n=N_FFT, axis=1) * window
    size = (t - 1) * HOP + N_FFT
    y, env = np.zeros(size), np.zeros(size)
    for i in range(t):
        y[i * HOP:i * HOP + N_FFT] += frames[i]
        env[i * HOP:i * HOP + N_FFT] += window ** 2
    pad = (N_FFT - HOP) // 2
    return (y[pad:-pad] / env[pad:-pad]).astype(np.float32)
