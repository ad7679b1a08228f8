"""Do an LFM2-Audio GGUF's hyper-parameters agree with its tensors?

llama.cpp cross-checks most tensor shapes against the header when it loads a model,
but trusts a few values outright, and a wrong one aborts the whole process (a
GGML_ASSERT) instead of failing the load: a block count of 0, a NaN norm epsilon, an
mmproj whose head count, width or mel-bin count does not match its tensors, a norm
weight stored as F16, a position table too short for pylfm's longest window. One
flipped bit in the header is enough. `check_hparams` compares those values with the
tensor shapes the same header lists, before llama.cpp sees the file.

Only the LFM2 text model (arch ``lfm2``) and the LFM2-Audio encoder (projector
``lfm2a``) are checked; the tensor names are those of llama.cpp's loaders.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

from .options import MAX_WINDOW_S

Tensor = Tuple[str, Tuple[int, ...], int, int]  # name, ne, type, offset (gguf_info's header)

_MAX_LAYERS = 512  # LLAMA_MAX_LAYERS
_F32 = 0  # GGML_TYPE_F32


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
        if len(ne) == 1 and ttype != _F32:
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
