"""`pylfm quantize`: smaller GGUFs. Text models go through llama.cpp's own
quantizer (``llama_model_quantize``, every llama.cpp type); mmproj files are
re-encoded in Python (F16, Q8_0), the types llama.cpp's audio encoder runs well."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Union

from .errors import ConversionError

# llama_ftype values (llama.h)
MODEL_TYPES = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15,
    "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30, "BF16": 32,
}
MMPROJ_TYPES = ("F32", "F16", "Q8_0")


def quantize(src: Union[str, os.PathLike], dst: Union[str, os.PathLike], qtype: str, *,
             n_threads: int = 0, force: bool = False) -> Path:
    """Writes ``dst``, a ``qtype`` copy of the model or mmproj GGUF ``src``.
    The output appears only when complete (written to a temp file, then renamed)."""
    from .gguf_info import check_gguf

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
        from .converter import quantize_mmproj  # writes atomically itself

        return quantize_mmproj(src, dst, qtype.lower(), force=force)
    from . import _core

    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    os.close(fd)
    try:
        try:
            _core.quantize(str(src), tmp, MODEL_TYPES[qtype], n_threads)
        except RuntimeError as e:
            raise ConversionError(str(e)) from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="input GGUF (text model or mmproj)")
    p.add_argument("dst", help="output GGUF")
    p.add_argument("type", help=f"model: {', '.join(MODEL_TYPES)}; mmproj: {', '.join(MMPROJ_TYPES)}")
    p.add_argument("--threads", "-t", type=int, default=0, help="threads (default: all)")
    p.add_argument("--force", action="store_true", help="overwrite dst")


def main(args: argparse.Namespace) -> int:
    out = quantize(args.src, args.dst, args.type, n_threads=args.threads, force=args.force)
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB, {args.type.upper()})")
    return 0
