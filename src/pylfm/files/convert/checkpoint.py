"""Reading a liquid-audio LFM2-Audio checkpoint directory without loading it whole.

The directory holds ``config.json`` (sections ``lfm``, ``encoder``, ``preprocessor``,
``depthformer``), the weights as ``model.safetensors`` or shards listed in
``model.safetensors.index.json``, and ``tokenizer.json`` / ``tokenizer_config.json``.

Safetensors files are parsed here directly (an 8-byte header length, a JSON header,
then raw little-endian data) and memory-mapped, so a tensor is only read when it is
converted; bf16 (how LiquidAI ships the weights) is widened to float32 here since
numpy has no bf16 type.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConversionError

ARCHITECTURE = "Lfm2AudioForConditionalGeneration"

# safetensors dtype code -> (numpy dtype of the raw data, bytes per element)
_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),  # widened to float32 on read
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U8": ("u1", 1),
    "BOOL": ("?", 1),
}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes are: file, dtype code, shape and absolute byte offset."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ValueError("file shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > 100 * 1024 * 1024:
                raise ValueError(f"implausible header length {header_len}")
            header = json.loads(f.read(header_len))
    except (OSError, ValueError) as e:
        raise ConversionError(
            f"{path} is not a readable safetensors file ({e}); the download may be incomplete, "
            "download the checkpoint again") from e
    data_start = 8 + header_len
    file_size = path.stat().st_size
    refs: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in _DTYPES:
            raise ConversionError(f"tensor {name!r} in {path.name} has unsupported dtype {dtype!r}")
        begin, end = info["data_offsets"]
        shape = tuple(int(n) for n in info["shape"])
        if end - begin != int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype][1] or data_start + end > file_size:
            raise ConversionError(
                f"tensor {name!r} in {path.name} runs past the end of the file or has the wrong size; "
                "the file is truncated or corrupt, download the checkpoint again")
        refs[name] = TensorRef(path, dtype, shape, data_start + begin, end - begin)
    return refs


class Checkpoint:
    """A checkpoint directory: its config and a lazy, memory-mapped view of its tensors."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise ConversionError(f"{self.dir} is not a directory; pass the checkpoint directory "
                                  "(the one with config.json and model.safetensors)")
        self.config = self._read_config()
        self.tensors = self._index_tensors()

    # -- config ------------------------------------------------------------------

    def _read_config(self) -> dict[str, Any]:
        path = self.dir / "config.json"
        if not path.is_file():
            raise ConversionError(
                f"no config.json in {self.dir}: point the converter at a LFM2-Audio checkpoint "
                "directory (config.json, model.safetensors, tokenizer.json), e.g. a download of "
                "LiquidAI/LFM2.5-Audio-1.5B")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConversionError(f"cannot read {path}: {e}") from e
        if not isinstance(config, dict):
            raise ConversionError(f"{path} does not hold a JSON object")
        archs = config.get("architectures") or []
        missing = [s for s in ("lfm", "encoder") if not isinstance(config.get(s), dict)]
        if (archs and ARCHITECTURE not in archs) or missing:
            what = ", ".join(archs) or config.get("model_type") or "an unknown architecture"
            if ARCHITECTURE in archs:
                what = f"{ARCHITECTURE} without the {' and '.join(repr(s) for s in missing)} section(s)"
            raise ConversionError(
                f"{path} describes {what}, not an LFM2-Audio model in liquid-audio's layout "
                f"({ARCHITECTURE} with 'lfm' and 'encoder' sections); pylfm converts only those. "
                "For a text-only LFM2 model use llama.cpp's convert_hf_to_gguf.py")
        model_type = config["lfm"].get("model_type", "lfm2")
        if model_type != "lfm2":
            raise ConversionError(f"{path}: the 'lfm' section has model_type {model_type!r}; "
                                  "only an LFM2 backbone (model_type 'lfm2') is supported")
        return config

    @property
    def lfm(self) -> dict[str, Any]:
        return self.config["lfm"]

    @property
    def encoder(self) -> dict[str, Any]:
        return self.config["encoder"]

    # -- tensors -----------------------------------------------------------------

    def _index_tensors(self) -> dict[str, TensorRef]:
        index = self.dir / "model.safetensors.index.json"
        single = self.dir / "model.safetensors"
        if index.is_file():
            try:
                weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ConversionError(f"cannot read {index}: {e}") from e
            files = sorted(set(weight_map.values()))
            absent = [f for f in files if not (self.dir / f).is_file()]
            if absent:
                raise ConversionError(
                    f"{index.name} lists shard(s) missing from {self.dir}: {', '.join(absent)}; "
                    "the download is incomplete, download the missing files")
        elif single.is_file():
            weight_map, files = {}, [single.name]
        else:
            raise ConversionError(
                f"no weights in {self.dir}: expected model.safetensors or "
                "model.safetensors.index.json with its shards")
        refs: dict[str, TensorRef] = {}
        for fname in files:
            for name, ref in read_safetensors_header(self.dir / fname).items():
                if weight_map and weight_map.get(name) != fname:
                    continue  # the index decides which shard owns a tensor
                refs[name] = ref
        lost = [n for n, f in weight_map.items() if n not in refs]
        if lost:
            raise ConversionError(f"{index.name} lists tensor {lost[0]!r} in {weight_map[lost[0]]}, "
                                  "but that shard does not hold it; download the checkpoint again")
        return refs

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def load(self, name: str) -> np.ndarray:
        """The tensor as a float32 array (integers stay integers), in memory of its own.

        Only this tensor's bytes are mapped, and unmapped again once copied, so the
        pages of tensors already converted do not stay in the process's memory.
        """
        ref = self.tensors[name]
        np_dtype = np.dtype(_DTYPES[ref.dtype][0])
        if ref.nbytes == 0:
            return np.zeros(ref.shape, np.float32 if ref.dtype in ("F64", "F32", "F16", "BF16") else np_dtype)
        raw = np.memmap(ref.file, dtype=np_dtype, mode="r", offset=ref.offset, shape=ref.shape)
        try:
            if ref.dtype == "BF16":
                wide = raw.astype(np.uint32)
                wide <<= 16  # bf16 is the upper half of a float32
                return wide.view(np.float32)
            if np_dtype.kind == "f":
                return raw.astype(np.float32)
            return np.array(raw)
        finally:
            del raw  # unmaps

    def load_as(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor reshaped (e.g. a conv kernel's singleton axis dropped)."""
        return self.load(name).reshape(shape)

    def require(self, expected: dict[str, tuple[int, ...]]) -> None:
        """Check that every tensor in ``expected`` exists with the shape config.json implies."""
        missing = [n for n in expected if n not in self.tensors]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ConversionError(
                f"the checkpoint in {self.dir} has no tensor {missing[0]!r}{more}, which config.json "
                "requires; the weights are incomplete or belong to another model, download the "
                "checkpoint again")
        for name, shape in expected.items():
            if self.shape(name) != tuple(shape):
                raise ConversionError(
                    f"tensor {name!r} has shape {list(self.shape(name))} but config.json implies "
                    f"{list(shape)}; config.json and the weights in {self.dir} disagree "
                    "(download the checkpoint again, or fix config.json)")
