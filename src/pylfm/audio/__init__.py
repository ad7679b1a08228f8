"""Audio input: anything a user hands us (paths, stdin, pipes, bytes, file objects,
arrays of any dtype and layout) as float32 mono PCM at the model's rate.

- `pylfm.audio.load`: `load_audio`, the array path, the clip-length bounds;
- `pylfm.audio.source`: opening paths, ``"-"``, pipes/FIFOs (with a timeout), bytes;
- `pylfm.audio.decode`: chunked decoding (libsndfile, PyAV/FFmpeg) and resampling.

Voice activity detection and window planning, the other half of this layer, is the
sibling package `pylfm.vad`.
"""

from .load import MAX_WINDOW_S, MIN_SAMPLES_16K, SAMPLE_RATE, AudioInput, duration, load_audio, min_samples

__all__ = ["SAMPLE_RATE", "MIN_SAMPLES_16K", "MAX_WINDOW_S", "AudioInput", "load_audio", "min_samples", "duration"]
