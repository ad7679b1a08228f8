"""Opening the native engine (``_core.Engine``: the text GGUF and the mmproj loaded once)
with the checks and error messages a user can act on, and calling into it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Type

from .. import _core
from ..errors import DeviceError, EngineError, ModelLoadError, PylfmError
from .log import drain_llama_log, set_verbose
from .prompt import MEDIA_MARKER

# Context per sequence to start with: a 30 s window (~400 prompt tokens) + 512 generated.
# It grows when a longer window arrives (up to the model's training context).
START_CTX_PER_SEQUENCE = 1024
# llama.cpp's n_batch: the most tokens one llama_decode call takes (prefill chunks).
N_BATCH = 512


def open_engine(model_path: Path, mmproj_path: Path, *, n_threads: int, device: str, n_ctx: Optional[int],
                batch_size: int, flash_attn: bool, verbose: bool, cpu_repack: str = "auto") -> "_core.Engine":
    """Checks the pair of files (`check_pair`) and loads them on ``device`` with
    ``batch_size`` sequence slots; ``n_ctx=None`` sizes each sequence's context to fit
    its window (grown on demand); ``cpu_repack`` is the CPU weight placement policy
    (`pylfm.engine.cpu_weights`). Raises DeviceError or ModelLoadError with what to do."""
    check_pair(model_path, mmproj_path)
    set_verbose(verbose)
    try:
        engine = _core.Engine(str(model_path), str(mmproj_path), n_threads, device,
                              n_ctx or START_CTX_PER_SEQUENCE, N_BATCH, batch_size, flash_attn, n_ctx is None,
                              cpu_repack)
    except ValueError as e:
        if "device" in str(e):
            raise DeviceError(f"{e}. Use device='cpu' or 'auto', or install a GPU build "
                              "(see the README: CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install ...)") from None
        raise ModelLoadError(str(e)) from None
    except RuntimeError as e:
        raise ModelLoadError(f"{e}\nCheck that both files are complete GGUFs converted from the same "
                             "LFM2-Audio checkpoint (`pylfm inspect FILE` shows what a file is).") from None
    finally:
        drain_llama_log()
    if _core.media_marker() != MEDIA_MARKER:  # pragma: no cover - guards a llama.cpp change
        raise ModelLoadError("this llama.cpp uses another media marker; reinstall pylfm")
    return engine


def call_engine(scheduler: Any, fn: Callable[[], Any], cancel: Any = None, *,
                invalid: Type[PylfmError] = PylfmError, failure: str = "inference failed") -> Any:
    """Runs ``fn()`` on the engine's thread (`Scheduler.call`) and returns its result,
    with the native errors as pylfm's: a ValueError (the request cannot run: too long,
    ...) as ``invalid``, a RuntimeError (the engine failed) as PylfmError("<failure>:
    ..."). llama.cpp's log is drained after."""
    try:
        return scheduler.call(fn, cancel)
    except EngineError:
        raise  # the engine is gone: say so as it is
    except ValueError as e:
        raise invalid(str(e)) from None
    except RuntimeError as e:
        raise PylfmError(f"{failure}: {e}") from None
    finally:
        drain_llama_log()


def check_pair(model_path: Path, mmproj_path: Path) -> None:
    """Cheap checks before llama.cpp sees the files, so a wrong file gives a clear
    error rather than a crash deep inside the loader."""
    from ..files.inspect import check_gguf

    m, p = check_gguf(model_path), check_gguf(mmproj_path)
    if m["kind"] == "mmproj" and p["kind"] == "model":
        raise ModelLoadError(f"model and mmproj are swapped: {model_path} is an mmproj and {mmproj_path} a text "
                             "model; pass model=<text model GGUF>, mmproj=<mmproj GGUF>")
    if m["kind"] != "model":
        raise ModelLoadError(f"{model_path} is not a text-model GGUF (it is a {m['kind']}); pass it as mmproj= or "
                             "give the LFM2 text model")
    if p["kind"] != "mmproj":
        raise ModelLoadError(f"{mmproj_path} is not an mmproj GGUF (it is a {p['kind']} of arch {p.get('arch')}); "
                             "pass the mmproj-*.gguf converted with the model")
    if m.get("arch") != "lfm2":
        raise ModelLoadError(f"{model_path} has architecture {m.get('arch')!r}; pylfm runs LFM2-Audio models "
                             "(architecture 'lfm2')")
    if not p.get("has_audio"):
        raise ModelLoadError(f"{mmproj_path} has no audio encoder (projector {p.get('projector')!r}); pass the "
                             "LFM2-Audio mmproj")
    if p.get("projector") not in (None, "lfm2a"):
        raise ModelLoadError(f"{mmproj_path} has projector {p.get('projector')!r}; LFM2-Audio needs 'lfm2a'")
    if m.get("n_embd") and p.get("n_embd") and m["n_embd"] != p["n_embd"]:
        raise ModelLoadError(f"model and mmproj do not belong together: the mmproj projects to {p['n_embd']} "
                             f"dimensions, the model expects {m['n_embd']}; use the mmproj converted with this model")
