"""pylfm: LiquidAI's LFM2-Audio speech models from Python, on llama.cpp's multimodal engine.

    import pylfm
    text = pylfm.transcribe("a.wav")                    # default model, "Perform ASR." injected

    model = pylfm.Model("LFM2.5-Audio-1.5B-Q8_0.gguf", mmproj="mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf")
    result = model.transcribe("a.wav")                  # .text, .tokens, .segments, .timings
    segments, info = model.transcribe_segments("long.mp3")

Names are imported lazily so that ``import pylfm`` (and the converter) do not load
llama.cpp's libraries until a model is used. docs/architecture.md describes the layers
of the package.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Model": "pylfm.model",
    "transcribe": "pylfm.model",
    "Transcription": "pylfm.transcription.results",
    "TranscriptionInfo": "pylfm.transcription.results",
    "Timings": "pylfm.transcription.results",
    "TranscribeOptions": "pylfm.transcription.options",
    "TranscriptionJob": "pylfm.transcription.job",
    "LoopGuard": "pylfm.transcription.loop_guard",
    "Segment": "pylfm.transcription.formats",
    "Speech": "pylfm.speech.result",
    "SpeechChunk": "pylfm.speech.result",
    "system_info": "pylfm.engine.device",
    "load_audio": "pylfm.audio.load",
    "VadOptions": "pylfm.vad",
    "plan_windows": "pylfm.vad",
    "convert": "pylfm.files.convert",
    "quantize": "pylfm.files.quantize",
    "inspect": "pylfm.files.inspect",
    "PylfmError": "pylfm.errors",
    "AudioError": "pylfm.errors",
    "AudioTooLongError": "pylfm.errors",
    "ModelLoadError": "pylfm.errors",
    "ModelNotFoundError": "pylfm.errors",
    "DeviceError": "pylfm.errors",
    "ConversionError": "pylfm.errors",
    "SpeechError": "pylfm.errors",
    "TranscriptionCancelled": "pylfm.errors",
    "TranscriptionTimeout": "pylfm.errors",
}
_RENAMED = {"inspect": "inspect_gguf"}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        try:
            module = import_module(_EXPORTS[name])
        except ImportError as e:  # e.g. a CUDA build on a machine without the NVIDIA driver
            from .engine.device import explain_import_error

            raise explain_import_error(e) from e
        value = getattr(module, _RENAMED.get(name, name))
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pylfm' has no attribute {name!r}")


def __dir__():
    return __all__
