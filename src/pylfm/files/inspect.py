"""Looking into GGUF files cheaply: what a file is, whether it is whole, and whether
its hyper-parameters agree with its tensors.

``inspect_gguf`` describes a file (architecture or projector type, the main
hyper-parameters, tensor count and types, size); ``format_info`` renders that for
people; ``check_gguf`` is the quick validation done before handing a file to the
engine, raising ModelLoadError with a clear message for a missing, foreign,
truncated or corrupt file.

Only the header is parsed (key/values and tensor infos); tensor data is never read.
A file is truncated when its data section is shorter than its tensors need, which
the tensor offsets and sizes in the header tell without reading the data. Lengths and
counts in the header are checked against the file's size before they are used, so a
corrupt header (a flipped bit in an array length) is an error, never a huge allocation.

Why not gguf's ``GGUFReader`` (used where tensor data is needed: re-quantizing an
mmproj)? It parses every metadata array element into numpy views, and ``check_gguf``
runs on every model load. Measured 2026-12-03 (2-core AMD EPYC VM, warm page cache,
median of 5; random-weight full-size LFM2.5-Audio converted to F16 by ``pylfm convert``,
whose vocabulary has 65,536 tokens): the 2.2 GiB text model takes 55-73 ms here and
2.6-3.0 s with ``GGUFReader``; the 309 MiB mmproj 3-5 ms and 44-65 ms. On the tiny test
model: 1.3 ms and 64 ms. The gguf package still supplies the enums and block sizes.

Consistency (`check_hparams`, part of ``check_gguf``): llama.cpp cross-checks most
tensor shapes against the header when it loads a model, but trusts a few values
outright, and a wrong one aborts the whole process (a GGML_ASSERT) instead of failing
the load: a block count of 0, a NaN norm epsilon, an mmproj whose head count, width or
mel-bin count does not match its tensors, a norm weight stored as F16, a position
table too short for pylfm's longest window. One flipped bit in the header is enough.
`check_hparams` compares those values with the tensor shapes the same header lists,
before llama.cpp sees the file.

Only the LFM2 text model (arch ``lfm2``) and the LFM2-Audio encoder (projector
``lfm2a``) are checked; the tensor names are those of llama.cpp's loaders.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterable, Optional, Sequence, Tuple

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..audio.load import MAX_WINDOW_S
from ..errors import ModelLoadError

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
    """The header needs more bytes than the file has (cut short, or a corrupt count)."""


class _Corrupt(ValueError):
    """The header has the GGUF magic but values no real file has."""


# Bounds far above any real GGUF, so that a corrupt header is rejected before it
# makes us allocate or loop over what it claims (a flipped bit in a length field).
_MAX_STRING = 1 << 24  # 16 MiB: chat templates are kilobytes
_MAX_ARRAY = 1 << 24  # 16 M elements: vocabularies are ~10^5
_KEEP_ARRAY = 1 << 12  # longer arrays are skipped over and kept as an ArrayInfo
_MAX_DIMS = 4  # GGML_MAX_DIMS
# The fewest bytes one entry can take: key/value = key length (8) + type (4) + a 1-byte
# value; tensor info = name length (8) + n_dims (4) + type (4) + offset (8).
_MIN_KV_BYTES, _MIN_TENSOR_BYTES = 13, 24


class ArrayInfo:
    """A long metadata array, skipped over while parsing: its element type and length."""

    def __init__(self, vtype: int, length: int) -> None:
        self.vtype, self.length = vtype, length

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"<array of {self.length} {GGUFValueType(self.vtype).name.lower()}>"


class _Header:
    """Key/values and tensor infos of a GGUF, parsed from the start of the file.

    Every length and count is checked against the bytes left in the file before it is
    used, so a corrupt header costs neither memory nor time."""

    def __init__(self, f: BinaryIO, size: int):
        self.f = f
        self.size = size
        self.pos = 0
        if f.read(4) != MAGIC:
            raise ValueError("no GGUF magic")
        self.pos = 4
        (self.version,) = self._unpack("<I")
        if self.version not in (2, 3):
            raise ValueError(f"GGUF version {self.version}; llama.cpp reads versions 2 and 3")
        n_tensors, n_kv = self._unpack("<QQ")
        if n_tensors * _MIN_TENSOR_BYTES + n_kv * _MIN_KV_BYTES > size - self.pos:
            raise _Truncated(f"its header declares {n_tensors} tensors and {n_kv} metadata entries, more "
                             f"than {size} bytes can hold")
        self.kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            (vtype,) = self._unpack("<I")
            self.kv[key] = self._value(vtype, key)
        self.tensors: list[tuple[str, tuple[int, ...], int, int]] = []  # name, ne, type, offset
        for _ in range(n_tensors):
            name = self._string()
            (n_dims,) = self._unpack("<I")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions")
            ne = self._unpack("<" + "Q" * n_dims)
            ttype, offset = self._unpack("<IQ")
            self.tensors.append((name, tuple(ne), ttype, offset))
        alignment = self.kv.get("general.alignment", DEFAULT_ALIGNMENT)
        if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0 \
                or alignment & (alignment - 1):
            raise _Corrupt(f"general.alignment is {alignment!r}, not a power of two")
        self.data_offset = self.pos + (-self.pos % alignment)

    def _read(self, n: int) -> bytes:
        if n > self.size - self.pos:
            raise _Truncated(self._past_end())
        data = self.f.read(n)
        if len(data) != n:  # the file shrank while we read it
            raise _Truncated(self._past_end())
        self.pos += n
        return data

    def _past_end(self) -> str:
        return f"its header runs past the end of the file ({self.size} bytes)"

    def _skip(self, n: int) -> None:
        if n > self.size - self.pos:
            raise _Truncated(self._past_end())
        self.f.seek(n, 1)
        self.pos += n

    def _unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self._read(struct.calcsize(fmt)))

    def _string_length(self) -> int:
        (n,) = self._unpack("<Q")
        if n > _MAX_STRING:
            raise _Corrupt(f"a string of {n} bytes in the header")
        return n

    def _string(self) -> str:
        return self._read(self._string_length()).decode("utf-8", errors="replace")

    def _value(self, vtype: int, key: str) -> Any:
        if vtype in _SCALARS:
            return self._unpack(_SCALARS[vtype])[0]
        if vtype == GGUFValueType.STRING:
            return self._string()
        if vtype == GGUFValueType.ARRAY:
            sub, n = self._unpack("<IQ")
            if n > _MAX_ARRAY:
                raise _Corrupt(f"{key!r} is an array of {n} elements")
            if sub == GGUFValueType.ARRAY:
                raise _Corrupt(f"{key!r} is an array of arrays, which GGUF readers do not support")
            if sub in _SCALARS:
                itemsize = struct.calcsize(_SCALARS[sub])
                if n > _KEEP_ARRAY:
                    self._skip(n * itemsize)
                    return ArrayInfo(sub, n)
                fmt = _SCALARS[sub]
                return list(struct.unpack("<" + fmt[1:] * n, self._read(itemsize * n)))
            if sub == GGUFValueType.STRING:
                if n > _KEEP_ARRAY:
                    for _ in range(n):
                        self._skip(self._string_length())
                    return ArrayInfo(sub, n)
                return [self._string() for _ in range(n)]
            raise _Corrupt(f"{key!r} is an array of unknown type {sub}")
        raise _Corrupt(f"{key!r} has an unknown value type {vtype}")


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
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = _Header(f, size)
    except _Truncated as e:
        raise ModelLoadError(f"{p} is truncated or corrupt: {e}; the download or conversion was interrupted "
                             "or the file was damaged, get or convert it again") from None
    except _Corrupt as e:
        raise ModelLoadError(f"{p} is a corrupt GGUF: {e}; get or convert the file again") from None
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{p} is not a GGUF model file ({e}); pass a .gguf produced by "
                             "`pylfm convert` or downloaded from a GGUF repository") from None
    except OSError as e:
        raise ModelLoadError(f"cannot read {p}: {e.strerror or e}") from None
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
    from .convert.speech import VOCODER_ARCH  # lazily: checking a file does not load the converter

    arch = kv.get("general.architecture")
    if arch == "clip":
        return "mmproj"
    if arch == VOCODER_ARCH:
        return "vocoder"
    if kv.get("tokenizer.ggml.model") == "none" and kv.get(f"{arch}.embedding_length_out"):
        return "detokenizer"
    return "model"


def check_gguf(path: str | Path) -> dict[str, Any]:
    """Validate a GGUF cheaply before loading it; raise ModelLoadError if it is unusable
    (missing, not a GGUF, truncated, or a header whose values disagree with its tensors).

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
    try:
        check_hparams(kv, header.tensors)
    except ValueError as e:
        raise ModelLoadError(f"{p} is a corrupt GGUF: {e}; get or convert the file again") from None
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
            if isinstance(value, ArrayInfo):  # thousands of values: not a hyper-parameter
                continue
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
        "n_tokens": len(tokens) if isinstance(tokens, (list, ArrayInfo)) else None,
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


# ---------------------------------------------------------------------- consistency
Tensor = Tuple[str, Tuple[int, ...], int, int]  # name, ne, type, offset (as `_Header.tensors`)

_MAX_LAYERS = 512  # LLAMA_MAX_LAYERS


def check_hparams(kv: Dict[str, Any], tensors: Sequence[Tensor]) -> None:
    """Raises ValueError naming the first hyper-parameter that disagrees with the tensors
    (or is not a usable number)."""
    shapes = {name: ne for name, ne, _, _ in tensors}
    if kv.get("general.architecture") == "lfm2":
        _check_text(kv, shapes)
    elif (kv.get("clip.projector_type") or kv.get("clip.audio.projector_type")) == "lfm2a":
        _check_audio(kv, shapes)
    else:
        return
    for name, ne, ttype, _ in tensors:
        # norms and biases: every converter (and llama-quantize) keeps them F32, and the
        # ops that use them assert it
        if len(ne) == 1 and ttype != GGMLQuantizationType.F32:
            raise ValueError(f"tensor {name!r} is 1-D but stored as type {ttype}, not F32")


def _check_text(kv: Dict[str, Any], shapes: Dict[str, Tuple[int, ...]]) -> None:
    p = "lfm2."
    n_layer = _count(kv, p + "block_count")
    if not 1 <= n_layer <= _MAX_LAYERS:
        raise ValueError(f"{p}block_count is {n_layer}; llama.cpp takes 1 to {_MAX_LAYERS} layers")
    _same(p + "block_count", n_layer, "the file holds tensors for {} blocks", _n_blocks(shapes, "blk."))
    n_embd = _count(kv, p + "embedding_length")
    _same(p + "embedding_length", n_embd, "token_embd.weight is {} wide", _dim(shapes, "token_embd.weight", 0))
    n_head = _count(kv, p + "attention.head_count")
    if n_head == 0 or n_embd % n_head:
        raise ValueError(f"{p}attention.head_count is {n_head}, which does not divide the width {n_embd}")
    head_dims = {ne[0] for name, ne in shapes.items() if name.endswith(".attn_q_norm.weight")}
    for head_dim in head_dims:
        _same(p + "attention.head_count", n_head, f"heads of {head_dim} (attn_q_norm) make {{}} in {n_embd}",
              n_embd // head_dim if head_dim else None)
    kv_heads = kv.get(p + "attention.head_count_kv", n_head)
    for n_kv in kv_heads if isinstance(kv_heads, list) else [kv_heads]:
        if not isinstance(n_kv, int) or n_kv < 0 or (n_kv and n_head % n_kv):
            raise ValueError(f"{p}attention.head_count_kv holds {n_kv!r}, not a divisor of {n_head} heads")
    _same(p + "feed_forward_length", _count(kv, p + "feed_forward_length"), "blk.0.ffn_up.weight is {} high",
          _dim(shapes, "blk.0.ffn_up.weight", 1))
    _positive_finite(kv, p + "attention.layer_norm_rms_epsilon")
    _positive_finite(kv, p + "rope.freq_base", required=False)


def _check_audio(kv: Dict[str, Any], shapes: Dict[str, Tuple[int, ...]]) -> None:
    p = "clip.audio."
    _same(p + "block_count", _count(kv, p + "block_count"), "the file holds tensors for {} encoder blocks",
          _n_blocks(shapes, "a.blk."))
    n_embd = _count(kv, p + "embedding_length")
    _same(p + "embedding_length", n_embd, "a.blk.0.attn_q.weight is {} wide", _dim(shapes, "a.blk.0.attn_q.weight", 0))
    n_head = _count(kv, p + "attention.head_count")
    if n_head == 0 or n_embd % n_head:
        raise ValueError(f"{p}attention.head_count is {n_head}, which does not divide the width {n_embd}")
    _same(p + "attention.head_count", n_head, "a.blk.0.pos_bias_u has {} heads", _dim(shapes, "a.blk.0.pos_bias_u", 1))
    _same(p + "feed_forward_length", _count(kv, p + "feed_forward_length"), "a.blk.0.ffn_up.weight is {} high",
          _dim(shapes, "a.blk.0.ffn_up.weight", 1))
    # three stride-2 convolutions halve the mel axis (rounding up) before a.pre_encode.out
    n_mel = _count(kv, p + "num_mel_bins")
    channels = _dim(shapes, "a.conv1d.0.weight", 3)
    n_in = _dim(shapes, "a.pre_encode.out.weight", 0)
    if channels and n_in is not None and _ceil_half(n_mel, 3) * channels != n_in:
        raise ValueError(f"{p}num_mel_bins is {n_mel}, which makes {_ceil_half(n_mel, 3) * channels} inputs for "
                         f"a.pre_encode.out.weight ({channels} channels x mel bins / 8), but it takes {n_in}")
    _positive_finite(kv, p + "attention.layer_norm_epsilon")
    # what llama.cpp's LFM2A graph hard-codes: the width of its relative positions, the
    # depthwise kernel (its padding), and a row of a.position_embd per 2 mel frames of a chunk
    if n_embd != 512:
        raise ValueError(f"{p}embedding_length is {n_embd}; llama.cpp's LFM2-Audio encoder needs 512")
    kernel = _dim(shapes, "a.blk.0.conv_dw.weight", 0)
    if kernel is not None and kernel != 9:
        raise ValueError(f"a.blk.0.conv_dw.weight has a kernel of {kernel}; llama.cpp's LFM2-Audio encoder needs 9")
    rows, need = _dim(shapes, "a.position_embd.weight", 1), int(MAX_WINDOW_S * 100) // 2 + 1
    if rows is not None and rows < need:
        raise ValueError(f"a.position_embd.weight has {rows} rows; {MAX_WINDOW_S:g} s windows need {need}")
    mlp = sorted((int(m.group(1)), name) for name in shapes if (m := re.fullmatch(r"mm\.a\.mlp\.(\d+)\.weight", name))
                 and len(shapes[name]) == 2)
    if mlp:
        last = mlp[-1][1]
        _same(p + "projection_dim", _count(kv, p + "projection_dim"), f"{last} is {{}} high", shapes[last][1])


# ---------------------------------------------------------------------- helpers
def _count(kv: Dict[str, Any], key: str) -> int:
    value = kv.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} is {value!r}, not a count")
    return value


def _positive_finite(kv: Dict[str, Any], key: str, required: bool = True) -> None:
    if key not in kv and not required:
        return
    value = kv.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{key} is {value!r}, not a positive number")


def _same(key: str, value: int, what: str, expected: Optional[int]) -> None:
    """``what`` says where ``expected`` comes from, with {} for it."""
    if expected is not None and value != expected:
        raise ValueError(f"{key} is {value} but " + what.format(expected))


def _dim(shapes: Dict[str, Tuple[int, ...]], name: str, axis: int) -> Optional[int]:
    ne = shapes.get(name)
    return ne[axis] if ne is not None and len(ne) > axis else None


def _n_blocks(shapes: Iterable[str], prefix: str) -> Optional[int]:
    ids = {int(m.group(1)) for name in shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.", name))}
    return max(ids) + 1 if ids else None


def _ceil_half(n: int, times: int) -> int:
    for _ in range(times):
        n = -(-n // 2)
    return n
