"""Speech output: a checkpoint's audio head and audio detokenizer -> the two GGUFs
that LiquidAI publishes next to the model and mmproj (LFM2.5-Audio-1.5B-GGUF):

- ``vocoder-<name>-<TYPE>.gguf``: the depthformer, ``depth_linear``, the per-codebook
  ``depth_embeddings``, the backbone's ``audio_embedding`` table and the detokenizer's
  code embedding ``emb.emb``. Layout of llama.cpp PR 18641's
  ``tools/liquid-audio/convert_vocoder_to_gguf.py``: checkpoint names kept (with
  ``bounded_attention`` shortened to ``attention``), keys ``depthformer_n_layer`` and
  ``depthformer_n_embd``, the architecture string that tells llama.cpp it is no LLM.
  (That script also copies the detokenizer's transformer, which nothing reads from this
  file; it lives in the tokenizer GGUF.)
- ``tokenizer-<name>-<TYPE>.gguf``: the detokenizer's LFM2 (``audio_detokenizer/``) as an
  ``lfm2`` model llama.cpp loads itself: no vocabulary (tokenizer model ``none``),
  ``sliding_window``, ``embedding_length_out`` 1282 and the output projection ``lin`` as
  ``dense_2`` -- what llama.cpp's converter does for ``Lfm25AudioTokenizer``.

Types: 1-D tensors, biases, norms and short-conv kernels stay F32; the rest takes the
outtype (F16 where a row does not fill the quantization block).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

import gguf

from ...errors import ConversionError
from .checkpoint import Checkpoint, read_safetensors_header
from .text_model import lfm2_ff_dim, lfm2_shapes
from .writer import OUTTYPES, OutTensor, QType, check_outtype, file_type, weight_type

# The architecture string of Liquid's vocoder GGUFs (llama.cpp refuses to run it as an LLM).
VOCODER_ARCH = "this model cannot be used as LLM, use it via --model-vocoder in TTS examples"
AUDIO_VOCAB = 2048 + 1  # codes per codebook + end-of-audio (liquid-audio's audio_vocab_size)
DETOK_CODES = 2048  # the detokenizer's table has no end-of-audio row
DEPTH_HEADS, DEPTH_KV_HEADS = 32, 8  # liquid-audio's MHA defaults, which the depthformer uses
DETOKENIZER_DIR = "audio_detokenizer"

SPEECH_OUTTYPES: dict[str, QType] = {**OUTTYPES, "q4_0": QType.Q4_0}


def check_speech_outtype(outtype: str) -> str:
    return check_outtype(outtype, SPEECH_OUTTYPES, " for the speech GGUFs")


def _tensor_type(name: str, shape: tuple[int, ...], outtype: str) -> QType:
    if len(shape) <= 1 or not name.endswith(".weight") or "norm" in name or ".conv." in name:
        return QType.F32
    return weight_type(shape, SPEECH_OUTTYPES[outtype])


# ---------------------------------------------------------------------- the detokenizer
class DetokenizerCheckpoint:
    """``audio_detokenizer/``: its config.json (an Lfm2Config) and model.safetensors."""

    def __init__(self, directory: Path):
        self.dir = directory
        cfg, weights = directory / "config.json", directory / "model.safetensors"
        if not cfg.is_file() or not weights.is_file():
            raise ConversionError(
                f"{directory} needs config.json and model.safetensors (the LFM2.5 audio detokenizer); "
                "download the whole checkpoint, or convert without speech output (--no-speech)")
        try:
            self.config: dict[str, Any] = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConversionError(f"cannot read {cfg}: {e}") from e
        self.tensors = read_safetensors_header(weights)

    # the same lazy, memory-mapped reading and checking as the main checkpoint
    shape = Checkpoint.shape
    load = Checkpoint.load
    load_as = Checkpoint.load_as
    require = Checkpoint.require


def has_speech(ckpt: Checkpoint) -> bool:
    """Whether the checkpoint holds what speech output needs (audio head + detokenizer)."""
    d = ckpt.dir / DETOKENIZER_DIR
    return ((d / "config.json").is_file() and (d / "model.safetensors").is_file()
            and any(n.startswith("depthformer.") for n in ckpt.tensors))


@dataclass(frozen=True)
class DetokHParams:
    hidden: int
    layer_types: tuple[str, ...]  # conv | attention
    n_head: int
    n_head_kv: int
    ff: int
    vocab: int
    l_cache: int
    norm_eps: float
    rope_theta: float
    context: int
    window: int  # 0: causal attention over everything
    n_out: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_head


def detok_hparams(cfg: dict[str, Any]) -> DetokHParams:
    where = f"{DETOKENIZER_DIR}/config.json"

    def pos_int(key: str, default: Optional[int] = None) -> int:
        value = cfg.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConversionError(f"{where}: {key} must be a positive integer, not {value!r}")
        return value

    n_layer = pos_int("num_hidden_layers")
    kinds = cfg.get("layer_types")
    if not isinstance(kinds, list) or len(kinds) != n_layer or any(
            k not in ("conv", "sliding_attention", "full_attention") for k in kinds):
        raise ConversionError(f"{where}: layer_types must list {n_layer} entries of conv / sliding_attention / "
                              f"full_attention, got {kinds!r}")
    window = int(cfg.get("sliding_window") or 0)
    if "sliding_attention" in kinds and "full_attention" in kinds:
        raise ConversionError(f"{where}: mixes sliding_attention and full_attention layers, which llama.cpp's "
                              "LFM2 cannot represent (a window applies to every attention layer)")
    if "sliding_attention" not in kinds:
        window = 0
    elif window <= 0:
        raise ConversionError(f"{where}: sliding_attention layers need a positive sliding_window")
    if cfg.get("conv_bias", False):
        raise ConversionError(f"{where}: conv_bias is true; llama.cpp's LFM2 has no short-conv biases")
    hidden, n_head = pos_int("hidden_size"), pos_int("num_attention_heads")
    if hidden % n_head:
        raise ConversionError(f"{where}: hidden_size {hidden} is not a multiple of num_attention_heads {n_head}")
    rope = cfg.get("rope_parameters") or {}
    return DetokHParams(
        hidden=hidden,
        layer_types=tuple("conv" if k == "conv" else "attention" for k in kinds),
        n_head=n_head,
        n_head_kv=pos_int("num_key_value_heads"),
        ff=lfm2_ff_dim(cfg),
        vocab=pos_int("vocab_size"),
        l_cache=pos_int("conv_L_cache", 3),
        norm_eps=float(cfg.get("norm_eps", 1e-5)),
        rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 1_000_000.0))),
        context=pos_int("max_position_embeddings", 128000),
        window=window,
        n_out=pos_int("output_size", 1282),
    )


def expected_detok_tensors(hp: DetokHParams) -> dict[str, tuple[int, ...]]:
    """Every tensor of liquid-audio's LFM2AudioDetokenizer with the shape its config implies."""
    shapes = {"emb.emb.weight": (8 * DETOK_CODES, hp.hidden), **lfm2_shapes(hp, hp.hidden)}
    shapes["lin.weight"] = (hp.n_out, hp.hidden)
    shapes["lin.bias"] = (hp.n_out,)
    return shapes


DETOK_SKIPPED = {"istft.window": "the ISTFT's Hann window (a fixed buffer); computed at run time"}


def plan_tokenizer(det: DetokenizerCheckpoint, outtype: str) -> tuple[DetokHParams, list[OutTensor]]:
    """The detokenizer's LFM2 -> tensors of the ``lfm2`` tokenizer GGUF."""
    hp = detok_hparams(det.config)
    expected = expected_detok_tensors(hp)
    det.require(expected)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LFM2, len(hp.layer_types))
    out: list[OutTensor] = []
    for src, shape in expected.items():
        if src == "emb.emb.weight":
            continue  # read by the audio head (vocoder GGUF), as in Liquid's files
        key = "dense_2_out" + src[len("lin"):] if src.startswith("lin.") else "model." + src[len("lfm."):]
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ConversionError(f"internal error: gguf-py has no LFM2 name for {src}")
        if src.endswith(".conv.conv.weight"):
            shape = (shape[0], shape[2])
        out.append(OutTensor(target, (src,), tuple(shape), _tensor_type(target, shape, outtype),
                             partial(det.load_as, src, shape)))
    return hp, out


def tokenizer_writer(hp: DetokHParams, name: str, outtype: str) -> gguf.GGUFWriter:
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LFM2]
    w = gguf.GGUFWriter(path=None, arch=arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"{name} audio detokenizer")
    w.add_file_type(file_type(SPEECH_OUTTYPES[outtype]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(hp.context)
    w.add_embedding_length(hp.hidden)
    w.add_feed_forward_length(hp.ff)
    w.add_block_count(len(hp.layer_types))
    w.add_head_count(hp.n_head)
    w.add_head_count_kv([hp.n_head_kv if k != "conv" else 0 for k in hp.layer_types])
    w.add_rope_freq_base(hp.rope_theta)
    w.add_layer_norm_rms_eps(hp.norm_eps)
    w.add_vocab_size(hp.vocab)
    w.add_shortconv_l_cache(hp.l_cache)
    if hp.window:
        w.add_sliding_window(hp.window)
    w.add_embedding_length_out(hp.n_out)
    w.add_tokenizer_model("none")
    return w


# ---------------------------------------------------------------------- the audio head
@dataclass(frozen=True)
class VocoderHParams:
    n_layer: int
    dim: int
    codebooks: int
    hidden: int  # the backbone's width
    tied_depth: bool

    @property
    def head_dim(self) -> int:
        return self.dim // DEPTH_HEADS


def _depth_ff(dim: int) -> int:
    ff = int(2 * (4 * dim) / 3)  # liquid-audio's GLU: 4*dim, swiglu 2/3, multiple of 256
    return 256 * ((ff + 255) // 256)


def vocoder_hparams(ckpt: Checkpoint) -> VocoderHParams:
    dep = ckpt.config.get("depthformer")
    if not isinstance(dep, dict):
        raise ConversionError("config.json has no 'depthformer' section; this checkpoint cannot produce speech")
    n_layer, dim, codebooks = dep.get("layers"), dep.get("dim"), ckpt.config.get("codebooks")
    for key, value in (("depthformer.layers", n_layer), ("depthformer.dim", dim), ("codebooks", codebooks)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConversionError(f"config.json: {key} must be a positive integer, not {value!r}")
    if dim % DEPTH_HEADS:
        raise ConversionError(f"config.json: depthformer.dim {dim} is not a multiple of {DEPTH_HEADS} heads")
    if codebooks != 8:
        raise ConversionError(f"config.json: codebooks is {codebooks}; the LFM2.5 detokenizer takes 8")
    return VocoderHParams(n_layer, dim, codebooks, int(ckpt.lfm["hidden_size"]), bool(dep.get("tie", True)))


def expected_vocoder_tensors(hp: VocoderHParams) -> dict[str, tuple[int, ...]]:
    d, hd, ff = hp.dim, hp.head_dim, _depth_ff(hp.dim)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(hp.n_layer):
        p = f"depthformer.layers.{i}."
        shapes[p + "operator.qkv_proj.weight"] = (d + 2 * DEPTH_KV_HEADS * hd, d)
        shapes[p + "operator.out_proj.weight"] = (d, d)
        shapes[p + "operator.bounded_attention.q_layernorm.weight"] = (hd,)
        shapes[p + "operator.bounded_attention.k_layernorm.weight"] = (hd,)
        shapes[p + "feed_forward.w1.weight"] = (ff, d)
        shapes[p + "feed_forward.w3.weight"] = (ff, d)
        shapes[p + "feed_forward.w2.weight"] = (d, ff)
        shapes[p + "operator_norm.weight"] = (d,)
        shapes[p + "ffn_norm.weight"] = (d,)
    shapes["depth_linear.weight"] = (d * hp.codebooks, hp.hidden)
    shapes["depth_linear.bias"] = (d * hp.codebooks,)
    for i in range(hp.codebooks):
        p = f"depth_embeddings.{i}."
        shapes[p + "embedding.weight"] = (AUDIO_VOCAB, d)
        shapes[p + "embedding_norm.weight"] = (d,)
        shapes[p + "to_logits.weight"] = (AUDIO_VOCAB, d)
    n = AUDIO_VOCAB * hp.codebooks
    shapes["audio_embedding.embedding.weight"] = (n, hp.hidden)
    shapes["audio_embedding.embedding_norm.weight"] = (hp.hidden,)
    shapes["audio_embedding.to_logits.weight"] = (n, hp.hidden)
    return shapes


def vocoder_name(src: str) -> str:
    """Checkpoint name -> vocoder GGUF name (convert_vocoder_to_gguf.py's only rename)."""
    return src.replace("bounded_attention", "attention")


def plan_vocoder(ckpt: Checkpoint, det: DetokenizerCheckpoint, outtype: str) -> tuple[VocoderHParams, list[OutTensor]]:
    hp = vocoder_hparams(ckpt)
    expected = expected_vocoder_tensors(hp)
    # A tied SharedEmbedding's to_logits is its embedding: a checkpoint may list it once.
    source = {n: n for n in expected}
    for n in expected:
        if n.endswith("to_logits.weight") and n not in ckpt.tensors:
            twin = n.replace("to_logits", "embedding")
            if n.startswith("depth_embeddings.") and hp.tied_depth:
                source[n] = twin
    ckpt.require({source[n]: shape for n, shape in expected.items()})
    out = []
    for n, shape in expected.items():
        target = vocoder_name(n)
        out.append(OutTensor(target, (source[n],), shape, _tensor_type(target, shape, outtype),
                             partial(ckpt.load_as, source[n], shape)))
    shape = det.shape("emb.emb.weight")  # checked by plan_tokenizer
    out.append(OutTensor("emb.emb.weight", (f"{DETOKENIZER_DIR}/emb.emb.weight",), shape,
                         _tensor_type("emb.emb.weight", shape, outtype), partial(det.load_as, "emb.emb.weight", shape)))
    return hp, out


def vocoder_writer(hp: VocoderHParams, name: str, outtype: str) -> gguf.GGUFWriter:
    w = gguf.GGUFWriter(path=None, arch=VOCODER_ARCH)
    w.add_name(f"{name} audio head")
    w.add_uint32("general.file_type", int(file_type(SPEECH_OUTTYPES[outtype])))
    w.add_uint32("depthformer_n_layer", hp.n_layer)
    w.add_uint32("depthformer_n_embd", hp.dim)
    return w


# ---------------------------------------------------------------------- both
@dataclass
class SpeechPlan:
    vocoder_hp: VocoderHParams
    vocoder: list[OutTensor]
    tokenizer_hp: DetokHParams
    tokenizer: list[OutTensor]
    detok_sources: dict[str, tuple[str, tuple[str, ...], str]]  # source -> (action, targets, reason)


def plan_speech(ckpt: Checkpoint, outtype: str) -> SpeechPlan:
    """Validate and plan both speech GGUFs; every detokenizer tensor is accounted for."""
    det = DetokenizerCheckpoint(ckpt.dir / DETOKENIZER_DIR)
    tok_hp, tok = plan_tokenizer(det, outtype)
    voc_hp, voc = plan_vocoder(ckpt, det, outtype)
    decisions: dict[str, tuple[str, tuple[str, ...], str]] = {}
    for action, tensors in (("vocoder", voc), ("tokenizer", tok)):
        for t in tensors:
            for src in t.sources:
                if src.startswith(DETOKENIZER_DIR + "/"):
                    src = src[len(DETOKENIZER_DIR) + 1:]
                elif action == "vocoder":
                    continue  # a main-checkpoint tensor; accounted for with the others
                decisions[src] = (action, (t.name,), f"written as {t.name}")
    for src in det.tensors:
        if src in decisions:
            continue
        if src in DETOK_SKIPPED:
            decisions[src] = ("skip", (), DETOK_SKIPPED[src])
        else:
            raise ConversionError(
                f"unexpected tensor {src!r} in {det.dir}: not part of liquid-audio's LFM2AudioDetokenizer; "
                "check that this is an LFM2.5-Audio checkpoint")
    return SpeechPlan(voc_hp, voc, tok_hp, tok, decisions)


def speech_paths(outdir: Path, name: str, outtype: str) -> tuple[Path, Path]:
    """(vocoder, tokenizer) paths, named as in LiquidAI's GGUF repositories."""
    tag = check_speech_outtype(outtype).upper()
    return outdir / f"vocoder-{name}-{tag}.gguf", outdir / f"tokenizer-{name}-{tag}.gguf"

