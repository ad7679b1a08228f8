"""The LFM2 backbone (``lfm.*`` tensors) -> a GGUF of architecture ``lfm2``.

Follows llama.cpp's converter for LFM2: checkpoint names are read with ``lfm.``
as ``model.`` so gguf-py's ``TensorNameMap`` maps them; the short-conv kernel
``conv.conv.weight`` [H, 1, L] is squeezed to [H, L] (ggml's ssm_conv wants 2-D);
the FFN width is LFM2's auto-adjusted one; ``head_count_kv`` is written per layer
with 0 for conv layers (that is how llama.cpp tells conv from attention layers).
The output projection is tied to the token embedding, as in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gguf

from ...errors import ConversionError
from .checkpoint import Checkpoint
from .vocab import add_vocab
from .writer import OUTTYPES, OutTensor, file_type, text_tensor_type

ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LFM2]  # "lfm2"
LAYER_KINDS = ("conv", "full_attention")


@dataclass(frozen=True)
class TextHParams:
    hidden: int
    layer_types: tuple[str, ...]
    n_head: int
    n_head_kv: int
    head_dim: int
    ff: int
    vocab: int
    l_cache: int
    norm_eps: float
    rope_theta: float
    context: int

    @property
    def n_layer(self) -> int:
        return len(self.layer_types)


def _int(cfg: dict[str, Any], key: str, section: str = "lfm") -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConversionError(f"config.json: {section}.{key} must be a positive integer, not {value!r}")
    return value


def lfm2_ff_dim(lfm: dict[str, Any]) -> int:
    """LFM2's FFN width: block_ff_dim (or intermediate_size), auto-adjusted like
    transformers' Lfm2MLP when block_auto_adjust_ff_dim is set."""
    ff = lfm.get("block_ff_dim", lfm.get("intermediate_size"))
    if not isinstance(ff, int) or ff <= 0:
        raise ConversionError("config.json: lfm.intermediate_size (or block_ff_dim) must be a positive integer")
    if lfm.get("block_auto_adjust_ff_dim", True):
        ff = int(2 * ff / 3)
        multiplier = lfm.get("block_ffn_dim_multiplier", 1.0)
        if multiplier is not None:
            multiple_of = int(lfm.get("block_multiple_of", 256))
            ff = int(multiplier * ff)
            ff = multiple_of * ((ff + multiple_of - 1) // multiple_of)
    return ff


def text_hparams(lfm: dict[str, Any]) -> TextHParams:
    n_layer = _int(lfm, "num_hidden_layers")
    layer_types = lfm.get("layer_types")
    if layer_types is None:
        attn = lfm.get("full_attn_idxs", list(range(n_layer)))
        layer_types = ["full_attention" if i in attn else "conv" for i in range(n_layer)]
    if len(layer_types) != n_layer or any(t not in LAYER_KINDS for t in layer_types):
        raise ConversionError(f"config.json: lfm.layer_types must list {n_layer} entries of "
                              f"{' / '.join(LAYER_KINDS)}, got {layer_types!r}")
    if lfm.get("conv_bias", False):
        raise ConversionError("config.json: lfm.conv_bias is true, but llama.cpp's LFM2 has no "
                              "short-conv biases; this checkpoint cannot be converted")
    hidden, n_head = _int(lfm, "hidden_size"), _int(lfm, "num_attention_heads")
    if hidden % n_head:
        raise ConversionError(f"config.json: lfm.hidden_size {hidden} is not a multiple of "
                              f"num_attention_heads {n_head}")
    rope = lfm.get("rope_parameters") or {}
    theta = lfm.get("rope_theta", lfm.get("theta", rope.get("rope_theta", 1_000_000.0)))
    return TextHParams(
        hidden=hidden,
        layer_types=tuple(layer_types),
        n_head=n_head,
        n_head_kv=_int(lfm, "num_key_value_heads"),
        head_dim=hidden // n_head,
        ff=lfm2_ff_dim(lfm),
        vocab=_int(lfm, "vocab_size"),
        l_cache=int(lfm.get("conv_L_cache", 3)),
        norm_eps=float(lfm.get("norm_eps", 1e-5)),
        rope_theta=float(theta),
        context=int(lfm.get("max_position_embeddings", 128000)),
    )


def lfm2_shapes(hp: Any, q_dim: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of an LFM2 backbone under ``lfm.`` (transformers' Lfm2Model layout),
    shaped from ``hp`` (hidden, ff, vocab, l_cache, n_head_kv, head_dim, layer_types) with
    ``q_dim`` query width: the ASR backbone and the audio detokenizer's share it."""
    h, ff, kv = hp.hidden, hp.ff, hp.n_head_kv * hp.head_dim
    shapes: dict[str, tuple[int, ...]] = {"lfm.embed_tokens.weight": (hp.vocab, h)}
    for i, kind in enumerate(hp.layer_types):
        p = f"lfm.layers.{i}."
        if kind == "conv":
            shapes[p + "conv.conv.weight"] = (h, 1, hp.l_cache)
            shapes[p + "conv.in_proj.weight"] = (3 * h, h)
            shapes[p + "conv.out_proj.weight"] = (h, h)
        else:
            shapes[p + "self_attn.q_proj.weight"] = (q_dim, h)
            shapes[p + "self_attn.k_proj.weight"] = (kv, h)
            shapes[p + "self_attn.v_proj.weight"] = (kv, h)
            shapes[p + "self_attn.out_proj.weight"] = (h, q_dim)
            shapes[p + "self_attn.q_layernorm.weight"] = (hp.head_dim,)
            shapes[p + "self_attn.k_layernorm.weight"] = (hp.head_dim,)
        shapes[p + "feed_forward.w1.weight"] = (ff, h)
        shapes[p + "feed_forward.w3.weight"] = (ff, h)
        shapes[p + "feed_forward.w2.weight"] = (h, ff)
        shapes[p + "operator_norm.weight"] = (h,)
        shapes[p + "ffn_norm.weight"] = (h,)
    shapes["lfm.embedding_norm.weight"] = (h,)
    return shapes


def expected_text_tensors(hp: TextHParams) -> dict[str, tuple[int, ...]]:
    """Every ``lfm.*`` tensor of transformers' Lfm2Model with the shape the config implies."""
    return lfm2_shapes(hp, hp.n_head * hp.head_dim)


def plan_text(ckpt: Checkpoint, outtype: str) -> tuple[TextHParams, list[OutTensor]]:
    """Validate the ``lfm.*`` tensors against the config and plan the GGUF tensors."""
    hp = text_hparams(ckpt.lfm)
    expected = expected_text_tensors(hp)
    ckpt.require(expected)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LFM2, hp.n_layer)
    out: list[OutTensor] = []
    for src, shape in expected.items():
        target = names.get_name("model." + src[len("lfm."):], try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ConversionError(f"internal error: gguf-py has no LFM2 name for {src}")
        if src.endswith(".conv.conv.weight"):
            shape = (shape[0], shape[2])  # [H, 1, L] -> [H, L]
        build = partial(ckpt.load_as, src, shape)
        out.append(OutTensor(target, (src,), tuple(shape), text_tensor_type(target, shape, outtype), build))
    return hp, out


def text_writer(ckpt: Checkpoint, hp: TextHParams, name: str, outtype: str) -> gguf.GGUFWriter:
    """A GGUFWriter holding the text model's metadata and tokenizer."""
    w = gguf.GGUFWriter(path=None, arch=ARCH)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_file_type(file_type(OUTTYPES[outtype]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(hp.context)
    w.add_embedding_length(hp.hidden)
    w.add_feed_forward_length(hp.ff)
    w.add_block_count(hp.n_layer)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv([hp.n_head_kv if t == "full_attention" else 0 for t in hp.layer_types])
    w.add_rope_freq_base(hp.rope_theta)
    w.add_layer_norm_rms_eps(hp.norm_eps)
    w.add_vocab_size(hp.vocab)
    w.add_shortconv_l_cache(hp.l_cache)
    add_vocab(w, ckpt.dir, hp.vocab)
    return w
