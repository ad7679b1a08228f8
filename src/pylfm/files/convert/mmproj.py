"""The audio encoder (``conformer.*`` + ``audio_adapter.*``) -> an mmproj GGUF of
projector type ``lfm2a``, as llama.cpp's clip.cpp loads it.

Tensor names come from gguf-py's ``TensorNameMap`` for the mmproj arch. Transforms
(as in llama.cpp's converter for LFM2-Audio):

- batch norm of the conv module is folded: a = w / sqrt(var + 1e-5), b = bias - mean * a
  (clip.cpp applies it as x * a + b);
- depthwise [C, 1, K] and pointwise [O, I, 1] conv weights become 2-D;
- pre-encode conv biases [C] become [C, 1, 1] (they are added to [W, H, C] maps).

``audio_embedding.embedding.weight`` (an audio-output table) is written as
``a.position_embd.weight``: clip.cpp takes the projector's output width from its
first dimension and bounds the input length by its row count, and the LFM2A graph
asserts it exists. The other audio-output tensors are skipped.

clip.cpp's LFM2A graph hard-codes an encoder width of 512 (its relative position
table) and a depthwise kernel of 9, and implements exactly dw_striding x8
subsampling with rel_pos attention and batch norm; other encoder settings are
refused here rather than producing a file that computes something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

from ...atomic import AtomicFile
from ...errors import ConversionError
from .checkpoint import Checkpoint
from .writer import OUTTYPES, OutTensor, check_outtype, file_type, mmproj_tensor_type, write_gguf

PROJECTOR = gguf.VisionProjectorType.LFM2A  # "lfm2a"
AUDIO_VOCAB = 2048 + 1  # liquid-audio: audio codes per codebook + end-of-audio
BATCH_NORM_EPS = 1e-5  # torch.nn.BatchNorm1d's default, which liquid-audio uses
LAYER_NORM_EPS = 1e-5
PRE_ENCODE_CONVS = (0, 2, 3, 5, 6)  # Sequential indices holding weights in dw_striding x8

# What clip.cpp's LFM2A implementation supports (config key -> required value).
ENGINE_ENCODER = {
    "d_model": 512,
    "conv_kernel_size": 9,
    "subsampling": "dw_striding",
    "subsampling_factor": 8,
    "self_attention_model": "rel_pos",
    "conv_norm_type": "batch_norm",
    "xscaling": False,
    "causal_downsampling": False,
}


@dataclass(frozen=True)
class EncoderHParams:
    d_model: int
    n_layer: int
    n_head: int
    ff: int
    channels: int
    feat_in: int
    kernel: int
    projection: int  # the LFM hidden size the adapter projects to
    audio_rows: int  # rows of audio_embedding.embedding (2049 * codebooks)

    @property
    def freq_out(self) -> int:
        """Mel bins left after the three stride-2 (kernel 3, padding 1) convolutions."""
        n = self.feat_in
        for _ in range(3):
            n = (n + 2 - 3) // 2 + 1
        return n


def encoder_hparams(config: dict[str, Any]) -> EncoderHParams:
    enc, lfm = config["encoder"], config["lfm"]
    for key, want in ENGINE_ENCODER.items():
        if enc.get(key, want) != want:
            raise ConversionError(
                f"config.json: encoder.{key} is {enc.get(key)!r}, but llama.cpp's LFM2-Audio encoder "
                f"(projector lfm2a) only implements {want!r}; this checkpoint cannot be converted")
    if enc.get("reduction") or enc.get("feat_out", -1) not in (-1, None, enc.get("d_model")):
        raise ConversionError("config.json: encoder.reduction / encoder.feat_out are not supported by "
                              "llama.cpp's LFM2-Audio encoder")

    def pos_int(section: dict[str, Any], key: str, where: str) -> int:
        value = section.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConversionError(f"config.json: {where}.{key} must be a positive integer, not {value!r}")
        return value

    d = pos_int(enc, "d_model", "encoder")
    heads = pos_int(enc, "n_heads", "encoder")
    if d % heads:
        raise ConversionError(f"config.json: encoder.d_model {d} is not a multiple of n_heads {heads}")
    channels = enc.get("subsampling_conv_channels", -1)
    codebooks = config.get("codebooks", 8)
    return EncoderHParams(
        d_model=d,
        n_layer=pos_int(enc, "n_layers", "encoder"),
        n_head=heads,
        ff=d * pos_int(enc, "ff_expansion_factor", "encoder"),
        channels=d if channels == -1 else int(channels),
        feat_in=pos_int(enc, "feat_in", "encoder"),
        kernel=enc.get("conv_kernel_size", 9),
        projection=pos_int(lfm, "hidden_size", "lfm"),
        audio_rows=AUDIO_VOCAB * int(codebooks),
    )


def _fold_batch_norm(ckpt: Checkpoint, prefix: str, part: str) -> np.ndarray:
    """Batch norm as a per-channel affine map, computed in float32 like llama.cpp's converter."""
    weight = ckpt.load(prefix + "weight")
    var = ckpt.load(prefix + "running_var")
    scale = weight / np.sqrt(var + np.float32(BATCH_NORM_EPS))
    if part == "weight":
        return scale
    return ckpt.load(prefix + "bias") - ckpt.load(prefix + "running_mean") * scale


def expected_encoder_tensors(hp: EncoderHParams) -> dict[str, tuple[int, ...]]:
    """Every conformer / adapter tensor liquid-audio's modules have, with its shape."""
    d, c, ff = hp.d_model, hp.channels, hp.ff
    shapes: dict[str, tuple[int, ...]] = {}
    for i in PRE_ENCODE_CONVS:
        depthwise_or_first = i in (0, 2, 5)
        in_ch = 1 if depthwise_or_first else c
        k = 3 if depthwise_or_first else 1
        shapes[f"conformer.pre_encode.conv.{i}.weight"] = (c, in_ch, k, k)
        shapes[f"conformer.pre_encode.conv.{i}.bias"] = (c,)
    shapes["conformer.pre_encode.out.weight"] = (d, c * hp.freq_out)
    shapes["conformer.pre_encode.out.bias"] = (d,)
    for i in range(hp.n_layer):
        p = f"conformer.layers.{i}."
        for norm in ("norm_feed_forward1", "norm_self_att", "norm_conv", "norm_feed_forward2", "norm_out"):
            shapes[p + norm + ".weight"] = (d,)
            shapes[p + norm + ".bias"] = (d,)
        for ffn in ("feed_forward1", "feed_forward2"):
            shapes[p + ffn + ".linear1.weight"] = (ff, d)
            shapes[p + ffn + ".linear1.bias"] = (ff,)
            shapes[p + ffn + ".linear2.weight"] = (d, ff)
            shapes[p + ffn + ".linear2.bias"] = (d,)
        for proj in ("linear_q", "linear_k", "linear_v", "linear_out"):
            shapes[p + f"self_attn.{proj}.weight"] = (d, d)
            shapes[p + f"self_attn.{proj}.bias"] = (d,)
        shapes[p + "self_attn.linear_pos.weight"] = (d, d)
        shapes[p + "self_attn.pos_bias_u"] = (hp.n_head, d // hp.n_head)
        shapes[p + "self_attn.pos_bias_v"] = (hp.n_head, d // hp.n_head)
        shapes[p + "conv.pointwise_conv1.weight"] = (2 * d, d, 1)
        shapes[p + "conv.pointwise_conv1.bias"] = (2 * d,)
        shapes[p + "conv.depthwise_conv.weight"] = (d, 1, hp.kernel)
        shapes[p + "conv.depthwise_conv.bias"] = (d,)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[p + "conv.batch_norm." + stat] = (d,)
        shapes[p + "conv.pointwise_conv2.weight"] = (d, d, 1)
        shapes[p + "conv.pointwise_conv2.bias"] = (d,)
    shapes["audio_adapter.model.0.weight"] = (d,)
    shapes["audio_adapter.model.0.bias"] = (d,)
    shapes["audio_adapter.model.1.weight"] = (hp.projection, d)
    shapes["audio_adapter.model.1.bias"] = (hp.projection,)
    shapes["audio_adapter.model.3.weight"] = (hp.projection, hp.projection)
    shapes["audio_adapter.model.3.bias"] = (hp.projection,)
    shapes["audio_embedding.embedding.weight"] = (hp.audio_rows, hp.projection)
    return shapes


def plan_mmproj(ckpt: Checkpoint, outtype: str) -> tuple[EncoderHParams, list[OutTensor]]:
    """Validate the encoder tensors against the config and plan the mmproj tensors."""
    hp = encoder_hparams(ckpt.config)
    expected = expected_encoder_tensors(hp)
    ckpt.require(expected)
    # The map expands "{bid}" for this many blocks: enough for the encoder layers and for
    # the Sequential indices of the pre-encode convs (up to 6) and the adapter (up to 3).
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, max(hp.n_layer, 8))
    out: list[OutTensor] = []
    for src, shape in expected.items():
        if ".conv.batch_norm." in src and not src.endswith((".weight", ".bias")):
            continue  # running stats: folded into the weight and bias below
        target = names.get_name(src, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ConversionError(f"internal error: gguf-py has no mmproj name for {src}")
        if ".conv.batch_norm." in src:
            prefix, part = src.rsplit(".", 1)  # part: "weight" or "bias"
            stats = ("weight", "running_var") if part == "weight" else ("weight", "bias", "running_mean", "running_var")
            sources = tuple(f"{prefix}.{stat}" for stat in stats)
            build = partial(_fold_batch_norm, ckpt, prefix + ".", part)
        else:
            if src.startswith("conformer.pre_encode.conv.") and src.endswith(".bias"):
                shape = (shape[0], 1, 1)
            elif ".conv.depthwise_conv.weight" in src:
                shape = (shape[0], shape[2])
            elif ".conv.pointwise_conv" in src and src.endswith(".weight"):
                shape = (shape[0], shape[1])
            sources = (src,)
            build = partial(ckpt.load_as, src, shape)
        out.append(OutTensor(target, sources, tuple(shape), mmproj_tensor_type(target, shape, outtype), build))
    return hp, out


def mmproj_writer(hp: EncoderHParams, name: str, outtype: str) -> gguf.GGUFWriter:
    """A GGUFWriter holding every key clip.cpp reads for an LFM2A audio projector."""
    w = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    w.add_type(gguf.GGUFType.MMPROJ)
    w.add_name(name)
    w.add_file_type(file_type(OUTTYPES[outtype]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_clip_has_audio_encoder(True)
    w.add_clip_projector_type(PROJECTOR)
    w.add_audio_projection_dim(hp.projection)
    w.add_audio_embedding_length(hp.d_model)
    w.add_audio_feed_forward_length(hp.ff)
    w.add_audio_block_count(hp.n_layer)
    w.add_audio_head_count(hp.n_head)
    w.add_audio_attention_layernorm_eps(LAYER_NORM_EPS)
    w.add_audio_num_mel_bins(hp.feat_in)
    return w


# --- re-quantizing an existing mmproj ---------------------------------------------------

_INTERNAL_KEYS = ("GGUF.", "general.architecture")  # written by GGUFWriter itself


def _dequantized(data: np.ndarray, qtype: gguf.GGMLQuantizationType, shape: tuple[int, ...]) -> np.ndarray:
    return dequantize(data, qtype).reshape(shape)


def quantize_mmproj(src: str | Path, dst: str | Path, outtype: str, *, force: bool = False,
                    progress: bool = False) -> Path:
    """Re-write an mmproj GGUF with its weights stored as ``outtype`` (f32/f16/bf16/q8_0).

    Tensors that llama.cpp needs in F32 (convolutions, norms, biases) stay F32 whatever
    the source type; the rest are dequantized and stored as ``outtype``.
    """
    outtype = check_outtype(outtype)
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ConversionError(f"no such mmproj file: {src}")
    if dst.exists() and not force:
        raise ConversionError(f"{dst} already exists; pass force=True to overwrite it")
    try:
        reader = GGUFReader(src)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{src} is not a readable GGUF file: {e}") from e
    arch = reader.get_field("general.architecture")
    if arch is None or arch.contents() != "clip":
        found = arch.contents() if arch else None
        raise ConversionError(f"{src} is not an mmproj GGUF (general.architecture is {found!r}, "
                              "expected 'clip')")

    w = gguf.GGUFWriter(path=None, arch="clip")
    for field in reader.fields.values():
        if field.name.startswith(_INTERNAL_KEYS) or field.name == gguf.Keys.General.FILE_TYPE:
            continue
        if field.name == gguf.Keys.General.ALIGNMENT:
            w.data_alignment = int(field.contents())
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    w.add_file_type(file_type(OUTTYPES[outtype]))

    tensors: list[OutTensor] = []
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        build = partial(_dequantized, t.data, t.tensor_type, shape)
        tensors.append(OutTensor(t.name, (t.name,), shape, mmproj_tensor_type(t.name, shape, outtype), build))
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(w, tensors, AtomicFile(dst), progress=progress, desc=dst.name).commit()
    return dst
