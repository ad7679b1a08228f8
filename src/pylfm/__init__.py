"""pylfm: LiquidAI's LFM2-Audio speech models from Python, on llama.cpp's multimodal engine.

    import pylfm
    text = pylfm.transcribe("a.wav")                    # default model, "Perform ASR." injected

    model = pylfm.Model("LFM2.5-Audio-1.5B-Q8_0.gguf", mmproj="mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf")
    result = model.transcribe("a.wav")                  # .text, .tokens, .segments, .timings
    segments, info = model.transcribe_segments("long.mp3")

Names are imported lazily so that ``import pylfm`` (and the converter) do not load
llama.cpp's libraries until a model is used.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Model": "pylfm.model",
    "Transcription": "pylfm.results",
    "TranscriptionInfo": "pylfm.results",
    "Timings": "pylfm.results",
    "transcribe": "pylfm.model",
    "system_info": "pylfm.model",
    "TranscribeOptions": "pylfm.options",
    "TranscriptionJob": "pylfm.job",
    "LoopGuard": "pylfm.loop_guard",
    "Segment": "pylfm.formats",
    "Speech": "pylfm.speech",
    "SpeechChunk": "pylfm.speech",
    "SpeechError": "pylfm.speech",
    "load_audio": "pylfm.audio",
    "VadOptions": "pylfm.vad",
    "plan_windows": "pylfm.vad",
    "convert": "pylfm.converter",
    "quantize": "pylfm.quant",
    "inspect": "pylfm.gguf_info",
    "PylfmError": "pylfm.errors",
    "AudioError": "pylfm.errors",
    "AudioTooLongError": "pylfm.errors",
    "ModelLoadError": "pylfm.errors",
    "ModelNotFoundError": "pylfm.errors",
    "DeviceError": "pylfm.errors",
    "ConversionError": "pylfm.errors",
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
            from .device import explain_import_error

            raise explain_import_error(e) from e
        value = getattr(module, _RENAMED.get(name, name))
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pylfm' has no attribute {name!r}")


def __dir__():
    return __all__
