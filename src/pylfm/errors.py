"""Exceptions raised by pylfm. Each message says what went wrong and what to do."""


class PylfmError(Exception):
    """Base class of every error pylfm raises on purpose."""


class AudioError(PylfmError, ValueError):
    """The audio could not be read or is unusable (not audio, empty, too short, NaN/inf)."""


class AudioTooLongError(AudioError):
    """The audio is longer than the caller's ``max_duration`` (or a server's limit).

    Attributes:
        duration: the audio's length in seconds when known (from the container header),
            else None (decoding stopped as soon as the limit was passed).
        limit: the ``max_duration`` in seconds.
    """

    def __init__(self, message: str, duration: "float | None" = None, limit: "float | None" = None) -> None:
        super().__init__(message)
        self.duration = duration
        self.limit = limit


class ModelLoadError(PylfmError):
    """A GGUF could not be loaded: wrong file, wrong pair, truncated, unsupported."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """No model could be found locally or fetched from the Hugging Face hub."""


class DeviceError(PylfmError, ValueError):
    """An unknown or unavailable compute device was requested."""


class ConversionError(PylfmError):
    """A checkpoint could not be converted to GGUF (or a GGUF not quantized)."""


class SpeechError(PylfmError, ValueError):
    """Speech output cannot run as asked (bad input, missing speech GGUFs, an ASR-only model)."""


class TranscriptionCancelled(PylfmError):
    """A transcription was stopped (``cancel=`` was set, or its iterator closed);
    ``partial`` is the `Transcription` of what was decoded before it stopped."""

    def __init__(self, message: str, partial: object = None) -> None:
        super().__init__(message)
        self.partial = partial


class TranscriptionTimeout(TranscriptionCancelled, TimeoutError):
    """A transcription did not finish within its ``timeout=``; ``partial`` as above."""



class EngineError(PylfmError, RuntimeError):
    """The engine cannot run the request: the model was closed, or its engine stopped
    after an internal error (load the model again)."""
