"""Writing a GGUF tensor by tensor, and the rules for which type each tensor gets.

gguf-py's ``GGUFWriter`` can take every tensor's name, shape and type up front
(``add_tensor_info``) and the data afterwards one tensor at a time
(``write_tensor_data``), so a conversion never holds more than one tensor in memory.
The file is written into a `pylfm.atomic.AtomicFile` (a temporary name in the output
directory) that the caller commits once everything succeeded: no partial GGUF is ever
left.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, LlamaFileType
from gguf.quants import quant_shape_to_byte_shape, quantize

from ...atomic import AtomicFile
from ...errors import ConversionError

QType = GGMLQuantizationType

OUTTYPES: dict[str, QType] = {
    "f32": QType.F32,
    "f16": QType.F16,
    "bf16": QType.BF16,
    "q8_0": QType.Q8_0,
}


def file_type(qtype: QType) -> LlamaFileType:
    """``general.file_type`` of a GGUF whose weights are stored as ``qtype`` (gguf's copy
    of llama.h's llama_ftype)."""
    return LlamaFileType.ALL_F32 if qtype == QType.F32 else LlamaFileType[f"MOSTLY_{qtype.name}"]


def check_outtype(outtype: str, types: dict[str, QType] = OUTTYPES, what: str = "") -> str:
    """``outtype`` in lower case; ConversionError unless it is one of ``types``
    (``what`` says which files, e.g. " for the speech GGUFs")."""
    key = outtype.lower()
    if key not in types:
        raise ConversionError(f"unknown outtype {outtype!r}{what}; choose one of {', '.join(types)}")
    return key


def weight_type(shape: Sequence[int], qtype: QType) -> QType:
    """``qtype`` for a quantizable weight, or F16 when its rows do not split into
    ``qtype``'s blocks (as llama.cpp's converter falls back)."""
    block = GGML_QUANT_SIZES[qtype][0]
    return QType.F16 if shape[-1] % block else qtype


def text_tensor_type(name: str, shape: Sequence[int], outtype: str) -> QType:
    """Type of a text-model tensor (GGUF name), following llama.cpp's converter:
    norms, biases and 1-D tensors stay F32, and so does the short-conv kernel
    (ggml's ssm_conv works in F32)."""
    if len(shape) <= 1 or not name.endswith(".weight") or name.endswith("_norm.weight"):
        return QType.F32
    if ".shortconv.conv." in name:
        return QType.F32
    return weight_type(shape, OUTTYPES[outtype])


def mmproj_tensor_type(name: str, shape: Sequence[int], outtype: str) -> QType:
    """Type of an LFM2A mmproj tensor (GGUF name), following llama.cpp's converter:
    F32 for 1-D tensors, biases, the relative-position biases and every convolution
    tensor (pre-encode convs, the conformer conv module and its folded batch norm)."""
    if len(shape) <= 1 or not name.endswith(".weight") or "conv" in name:
        return QType.F32
    if name == "a.position_embd.weight":
        # clip.cpp reads only this table's shape (projection width, longest input);
        # keep it a float type but don't spend F32 (llama.cpp's choice) on it.
        return {"f32": QType.F32, "bf16": QType.BF16}.get(outtype, QType.F16)
    return weight_type(shape, OUTTYPES[outtype])


@dataclass
class OutTensor:
    """One GGUF tensor to write: its name, the checkpoint tensors it is made from,
    the float32 shape ``build`` returns, and the type it is stored as."""

    name: str
    sources: tuple[str, ...]
    shape: tuple[int, ...]
    qtype: QType
    build: Callable[[], np.ndarray]

    def stored(self) -> tuple[np.dtype, tuple[int, ...], int]:
        """(numpy dtype, numpy shape, nbytes) of the array handed to the writer."""
        if self.qtype == QType.F32:
            dtype, shape = np.dtype(np.float32), self.shape
        elif self.qtype == QType.F16:
            dtype, shape = np.dtype(np.float16), self.shape
        else:
            dtype, shape = np.dtype(np.uint8), quant_shape_to_byte_shape(self.shape, self.qtype)
        return dtype, tuple(shape), int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

    def encode(self) -> np.ndarray:
        data = self.build()
        if tuple(data.shape) != self.shape:
            raise ConversionError(f"internal error: {self.name} built with shape {data.shape}, "
                                  f"planned {self.shape}")
        return quantize(np.ascontiguousarray(data, dtype=np.float32), self.qtype)


def write_gguf(writer: GGUFWriter, tensors: Sequence[OutTensor], out: AtomicFile, *,
                progress: bool, desc: str) -> AtomicFile:
    """Write ``writer``'s metadata and ``tensors`` into ``out``'s temporary file.

    The caller commits ``out`` (`pylfm.atomic.commit_all`) once every file of the
    conversion is complete. On any failure ``out`` is discarded (its temporary file
    removed) and the exception propagates.
    """
    for t in tensors:
        dtype, shape, nbytes = t.stored()
        raw = None if t.qtype in (QType.F32, QType.F16) else t.qtype
        writer.add_tensor_info(t.name, shape, dtype, nbytes, raw_dtype=raw)
    total = sum(t.stored()[2] for t in tensors)
    try:
        writer.write_header_to_file(Path(out.tmp))
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr,
                  disable=not progress, leave=False) as bar:
            for t in tensors:
                data = t.encode()
                writer.write_tensor_data(data)
                bar.update(data.nbytes)
                del data
        writer.close()
    except BaseException:
        writer.close()
        out.discard()
        raise
    return out
