"""Looking into GGUF files cheaply: what a file is, and whether it is whole.

``inspect_gguf`` describes a file (architecture or projector type, the main
hyper-parameters, tensor count and types, size); ``format_info`` renders that for
people; ``check_gguf`` is the quick validation done before handing a file to the
engine, raising ModelLoadError with a clear message for a missing, foreign or
truncated file.

Only the header is parsed (key/values and tensor infos); tensor data is never read.
A file is truncated when its data section is shorter than its tensors need, which
the tensor offsets and sizes in the header tell without reading the data.
"""

from __future__ import annotations

import argparse

import struct
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .errors import ModelLoadError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

_SCALARS: dict[int, str] = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


class _Truncated(Exception):
    pass


class _Header:
    """Key/values and tensor infos of a GGUF, parsed from the start of the file."""

    def __init__(self, f: BinaryIO):
        self.f = f
        if f.read(4) != MAGIC:
            raise ValueError("no GGUF magic")
        (self.version,) = self._unpack("<I")
        if self.version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {self.version}")
        n_tensors, n_kv = self._unpack("<QQ")
        if n_tensors > 10_000_000 or n_kv > 10_000_000:
            raise ValueError("implausible header counts")
        self.kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            (vtype,) = self._unpack("<I")
            self.kv[key] = self._value(vtype)
        self.tensors: list[tuple[str, tuple[int, ...], int, int]] = []  # name, ne, type, offset
        for _ in range(n_tensors):
            name = self._string()
            (n_dims,) = self._unpack("<I")
            if n_dims > 8:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            ne = self._unpack("<" + "Q" * n_dims)
            ttype, offset = self._unpack("<IQ")
            self.tensors.append((name, tuple(ne), ttype, offset))
        alignment = int(self.kv.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
        pos = f.tell()
        self.data_offset = pos + (-pos % alignment)

    def _read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise _Truncated()
        return data

    def _unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self._read(struct.calcsize(fmt)))

    def _string(self) -> str:
        (n,) = self._unpack("<Q")
        if n > 1 << 30:
            raise ValueError("implausible string length")
        return self._read(n).decode("utf-8", errors="replace")

    def _value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self._unpack(_SCALARS[vtype])[0]
        if vtype == GGUFValueType.STRING:
            return self._string()
        if vtype == GGUFValueType.ARRAY:
            sub, n = self._unpack("<IQ")
            if n > 1 << 32:
                raise ValueError("implausible array length")
            if sub in _SCALARS:
                fmt = _SCALARS[sub]
                return list(struct.unpack("<" + fmt[1:] * n, self._read(struct.calcsize(fmt) * n)))
            return [self._value(sub) for _ in range(n)]
        raise ValueError(f"unknown value type {vtype}")


def _tensor_nbytes(ne: tuple[int, ...], ttype: int) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
    n = 1
    for d in ne:
        n *= d
    return n // block * size


def _read(path: str | Path) -> tuple[Path, _Header, int]:
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: no such GGUF file" + ("" if not p.exists() else " (it is a directory)"))
    size = p.stat().st_size
    try:
        with open(p, "rb") as f:
            header = _Header(f)
    except _Truncated:
        raise ModelLoadError(f"{p} is truncated: the file ends inside its header ({size} bytes); "
                             "the download or conversion was interrupted, get the file again") from None
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{p} is not a GGUF model file ({e}); pass a .gguf produced by "
                             "`pylfm convert` or downloaded from a GGUF repository") from None
    except OSError as e:
        raise ModelLoadError(f"cannot read {p}: {e}") from e
    return p, header, size


def _data_end(header: _Header) -> int:
    end = header.data_offset
    for name, ne, ttype, offset in header.tensors:
        try:
            nbytes = _tensor_nbytes(ne, ttype)
        except (ValueError, KeyError):
            raise ModelLoadError(f"tensor {name!r} has an unknown type {ttype}; the file needs a newer "
                                 "llama.cpp or is corrupt") from None
        end = max(end, header.data_offset + offset + nbytes)
    return end


def _kind(kv: dict[str, Any]) -> str:
    """model | mmproj | vocoder (speech output's audio head) | detokenizer (its audio detokenizer)."""
    from .converter.speech import VOCODER_ARCH

    arch = kv.get("general.architecture")
    if arch == "clip":
        return "mmproj"
    if arch == VOCODER_ARCH:
        return "vocoder"
    if kv.get("tokenizer.ggml.model") == "none" and kv.get(f"{arch}.embedding_length_out"):
        return "detokenizer"
    return "model"


def check_gguf(path: str | Path) -> dict[str, Any]:
    """Validate a GGUF cheaply before loading it; raise ModelLoadError if it is unusable.

    Returns {'kind': 'model'|'mmproj'|'vocoder'|'detokenizer', 'arch', 'projector', 'has_audio': bool,
    'n_embd'}.
    """
    p, header, size = _read(path)
    end = _data_end(header)
    if end > size:
        raise ModelLoadError(
            f"{p} is truncated: its tensors need {end} bytes but the file has {size}; the download "
            "or conversion was interrupted, get or convert the file again")
    kv = header.kv
    kind = _kind(kv)
    arch = kv.get("general.architecture")
    projector = kv.get("clip.projector_type") or kv.get("clip.audio.projector_type")
    # the width the text model takes / the mmproj produces: they must agree for a pair
    n_embd = kv.get(f"{arch}.embedding_length") if kind == "model" else kv.get("clip.audio.projection_dim")
    return {
        "kind": kind,
        "arch": arch,
        "projector": projector,
        "has_audio": bool(kv.get("clip.has_audio_encoder", False)),
        "n_embd": n_embd,
    }


# Hyper-parameters worth showing, as (label, key suffix); the text model's keys are
# prefixed by its architecture, the mmproj's by "clip.audio." / "clip.vision.".
_TEXT_KEYS = (
    ("layers", "block_count"), ("embedding", "embedding_length"), ("ffn", "feed_forward_length"),
    ("heads", "attention.head_count"), ("kv heads", "attention.head_count_kv"),
    ("context", "context_length"), ("vocab", "vocab_size"), ("rope theta", "rope.freq_base"),
    ("rms eps", "attention.layer_norm_rms_epsilon"), ("conv L", "shortconv.l_cache"),
)
_CLIP_KEYS = (
    ("layers", "block_count"), ("embedding", "embedding_length"), ("ffn", "feed_forward_length"),
    ("heads", "attention.head_count"), ("projection", "projection_dim"), ("mel bins", "num_mel_bins"),
    ("norm eps", "attention.layer_norm_epsilon"),
)


def inspect_gguf(path: str | Path) -> dict[str, Any]:
    """Describe a GGUF: name, kind, architecture / projector, hyper-parameters, tensors, size."""
    p, header, size = _read(path)
    kv = header.kv
    kind = _kind(kv)
    arch = kv.get("general.architecture")
    if kind in ("model", "detokenizer"):
        prefix, keys = f"{arch}.", _TEXT_KEYS
    elif kind == "vocoder":
        prefix, keys = "", (("depthformer layers", "depthformer_n_layer"), ("depthformer width", "depthformer_n_embd"))
    else:
        prefix = "clip.audio." if kv.get("clip.has_audio_encoder") else "clip.vision."
        keys = _CLIP_KEYS
    hparams: dict[str, Any] = {}
    for label, key in keys:
        if prefix + key in kv:
            value = kv[prefix + key]
            if isinstance(value, list):  # e.g. per-layer kv heads: 0 marks a conv layer
                value = max(value) if value else 0
            hparams[label] = value
    complete = _data_end(header) <= size  # also rejects unknown tensor types
    types = Counter(GGMLQuantizationType(t).name for _, _, t, _ in header.tensors)
    n_params = 0
    for _, ne, _, _ in header.tensors:
        n = 1
        for d in ne:
            n *= d
        n_params += n
    tokens = kv.get("tokenizer.ggml.tokens")
    return {
        "path": str(p),
        "name": kv.get("general.name"),
        "kind": kind,
        "arch": arch,
        "projector": kv.get("clip.projector_type") or kv.get("clip.audio.projector_type"),
        "has_audio": bool(kv.get("clip.has_audio_encoder", False)),
        "file_type": kv.get("general.file_type"),
        "hparams": hparams,
        "n_tokens": len(tokens) if isinstance(tokens, list) else None,
        "tensor_count": len(header.tensors),
        "tensor_types": dict(sorted(types.items(), key=lambda kv_: -kv_[1])),
        "n_params": n_params,
        "file_size": size,
        "complete": complete,
    }


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def format_info(info: dict[str, Any]) -> str:
    """A human-readable, multi-line description of inspect_gguf()'s result."""
    what = {"mmproj": f"mmproj, projector {info['projector']}",
            "vocoder": "speech output: audio head (depthformer, audio embeddings)",
            "detokenizer": f"speech output: audio detokenizer, architecture {info['arch']}"}.get(
        info["kind"], f"text model, architecture {info['arch']}")
    lines = [f"{info.get('name') or Path(info['path']).name}: {what}",
             f"  file:     {info['path']} ({_human_bytes(info['file_size'])}"
             + ("" if info.get("complete", True) else ", TRUNCATED") + ")"]
    if info["hparams"]:
        lines.append("  hparams:  " + ", ".join(
            f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in info["hparams"].items()))
    if info.get("n_tokens"):
        lines.append(f"  vocab:    {info['n_tokens']} tokens")
    types = ", ".join(f"{n} {t}" for t, n in info["tensor_types"].items())
    lines.append(f"  tensors:  {info['tensor_count']} ({types}), {info['n_params'] / 1e6:.1f} M parameters")
    return "\n".join(lines)


def add_arguments(p: "argparse.ArgumentParser") -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="GGUF files (text model or mmproj)")
    p.add_argument("--json", action="store_true", help="print JSON")


def main(args: "argparse.Namespace") -> int:
    import json

    infos = [inspect_gguf(f) for f in args.files]
    if args.json:
        print(json.dumps(infos[0] if len(infos) == 1 else infos, indent=2))
    else:
        print("\n\n".join(format_info(i) for i in infos))
    return 0 if all(i.get("complete", True) for i in infos) else 1
