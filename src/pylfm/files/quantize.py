"""Smaller GGUFs (``pylfm quantize``). Text models go through llama.cpp's own quantizer
(``llama_model_quantize``, every llama.cpp type); mmproj files are re-encoded in Python
(F16, Q8_0), the types llama.cpp's audio encoder runs well."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from gguf import LlamaFileType

from ..atomic import AtomicFile
from ..errors import ConversionError

# The text-model types offered, as llama_ftype values (gguf's copy of llama.h's enum).
MODEL_TYPES = {name: int(LlamaFileType["ALL_F32" if name == "F32" else f"MOSTLY_{name}"]) for name in (
    "F32", "F16", "Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
    "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "BF16")}
MMPROJ_TYPES = ("F32", "F16", "Q8_0")


def quantize(src: Union[str, os.PathLike], dst: Union[str, os.PathLike], qtype: str, *,
             n_threads: int = 0, force: bool = False) -> Path:
    """Writes ``dst``, a ``qtype`` copy of the model or mmproj GGUF ``src``.
    The output appears only when complete (`pylfm.atomic`)."""
    from .inspect import check_gguf

    src, dst, qtype = Path(src), Path(dst), qtype.upper()
    info = check_gguf(src)  # clear errors for missing / non-GGUF / truncated input
    if dst.exists() and not force:
        raise ConversionError(f"{dst} exists; choose another name or pass force=True (--force)")
    if src.resolve() == dst.resolve():
        raise ConversionError("source and destination are the same file")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if info["kind"] == "vocoder":
        raise ConversionError(f"{src} is a speech vocoder GGUF; make another type from the checkpoint: "
                              f"pylfm convert CHECKPOINT --speech-only --speech-outtype {qtype.lower()}")
    if info["kind"] == "mmproj":
        if qtype not in MMPROJ_TYPES:
            raise ConversionError(f"mmproj files can be {', '.join(MMPROJ_TYPES)}, not {qtype}")
    elif qtype not in MODEL_TYPES:
        raise ConversionError(f"unknown type {qtype}; choose one of {', '.join(MODEL_TYPES)}")

    if info["kind"] == "mmproj":
        from .convert import quantize_mmproj  # writes atomically itself

        return quantize_mmproj(src, dst, qtype.lower(), force=force)
    from .. import _core

    with AtomicFile(dst) as out:
        try:
            _core.quantize(str(src), out.tmp, MODEL_TYPES[qtype], n_threads)
        except RuntimeError as e:
            raise ConversionError(str(e)) from None
    return dst

