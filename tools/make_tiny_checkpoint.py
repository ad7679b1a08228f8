#!/usr/bin/env python3
"""Write a deterministic LFM2-Audio checkpoint in liquid-audio 1.3.0's layout.

    python tools/make_tiny_checkpoint.py OUTDIR [--seed N] [--full-size] [--no-detokenizer]

The directory holds what a real LiquidAI/LFM2.5-Audio-1.5B download holds for
ASR and speech output: ``config.json`` (sections ``lfm`` / ``encoder`` /
``preprocessor`` / ``depthformer`` plus the top-level keys of liquid-audio's
``LFM2AudioConfig``), ``model.safetensors`` (or shards + ``model.safetensors.index.json``)
with every tensor of ``LFM2AudioModel.state_dict()``, a byte-level BPE ``tokenizer.json``
+ ``tokenizer_config.json`` with the LFM2 special tokens at LFM2's ids, and the LFM2.5
audio detokenizer in ``audio_detokenizer/`` (``config.json`` + ``model.safetensors``
with every tensor of liquid-audio's ``LFM2AudioDetokenizer.state_dict()``).
The main weights do not depend on the detokenizer options (own random stream).

The default is a tiny model (encoder width 512, 8 heads and depthwise kernel 9,
which llama.cpp's LFM2A graph hard-codes; everything else small). ``--full-size``
writes random weights with the real LFM2.5-Audio-1.5B dimensions, tensor by
tensor in bf16 shards, for speed benchmarks.

Only numpy, safetensors and tokenizers are needed (no torch). The tensor names
and shapes follow liquid-audio's modules (read for facts, re-derived here):
``LFM2AudioModel`` (model/lfm2_audio.py), ``ConformerEncoder`` /
``ConvSubsampling`` / ``ConformerLayer`` (model/conformer/), ``MLP``
(model/mlp.py), the depthformer blocks (model/transformer.py) and transformers'
``Lfm2Model``, and ``LFM2AudioDetokenizer`` (detokenizer.py).
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

AUDIO_VOCAB = 2048 + 1  # liquid-audio's LFM2AudioModel.audio_vocab_size (codes + end-of-audio)

# --- dimensions -------------------------------------------------------------------

TINY = {
    "hidden": 64,
    "layer_types": ["conv", "full_attention", "conv", "full_attention"],
    "heads": 4,
    "kv_heads": 2,
    "intermediate": 192,  # auto-adjusted by LFM2 to 2/3 -> 128 (multiple_of 32)
    "multiple_of": 32,
    "vocab": 1024,
    "enc_layers": 2,
    "enc_ff_expansion": 1,
    "enc_channels": 16,
    "depth_layers": 1,
    "depth_dim": 64,
    "codebooks": 8,  # keeps audio_embedding at 8*2049 rows, as llama.cpp reads its shape
    "backbone_std": 0.3,  # large enough that greedy decoding wanders over many tokens
    "dtype": "float32",
    "shard_bytes": None,
    # audio detokenizer: liquid-audio hard-codes width 512; the window is smaller than the
    # real 30 so that it matters within a few frames (6 positions per frame)
    "detok_layer_types": ["conv", "sliding_attention", "conv"],
    "detok_heads": 8,
    "detok_kv_heads": 4,
    "detok_intermediate": 768,  # -> 512 after LFM2's auto-adjust (multiple_of 256)
    "detok_vocab": 16,
    "detok_window": 8,
}

FULL = {  # LFM2.5-Audio-1.5B
    "hidden": 2048,
    "layer_types": ["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv",
                    "full_attention", "conv", "full_attention", "conv", "full_attention", "conv",
                    "full_attention", "conv"],
    "heads": 32,
    "kv_heads": 8,
    "intermediate": 12288,  # -> 8192 after LFM2's auto-adjust
    "multiple_of": 256,
    "vocab": 65536,
    "enc_layers": 17,
    "enc_ff_expansion": 4,
    "enc_channels": 256,
    "depth_layers": 6,
    "depth_dim": 1024,
    "codebooks": 8,
    "backbone_std": 0.02,
    "dtype": "bfloat16",
    "shard_bytes": 2 * 1024**3,
    "detok_layer_types": ["conv", "conv", "sliding_attention", "conv", "sliding_attention", "conv",
                          "sliding_attention", "conv"],
    "detok_heads": 16,
    "detok_kv_heads": 8,
    "detok_intermediate": 3456,  # -> 2304 after LFM2's auto-adjust
    "detok_vocab": 65536,
    "detok_window": 30,
}

ENC_D_MODEL = 512  # llama.cpp's LFM2A graph: relative position table width
ENC_HEADS = 8
ENC_KERNEL = 9  # llama.cpp's LFM2A graph: depthwise conv padding
N_MELS = 128

# --- tokenizer --------------------------------------------------------------------

# LFM2's ids 0..13 (LiquidAI/LFM2-Tokenizer), then "<|reserved_N|>" at id N+10 as in
# LFM2's vocab (plain vocabulary entries, not added tokens), with LFM2-Audio's
# modality tokens at 128..132 (liquid-audio hard-codes 128 and 130).
NAMED_SPECIALS = {
    0: "<|pad|>",
    1: "<|startoftext|>",
    2: "<|endoftext|>",
    3: "<|fim_pre|>",
    4: "<|fim_mid|>",
    5: "<|fim_suf|>",
    6: "<|im_start|>",
    7: "<|im_end|>",
    8: "<|tool_list_start|>",
    9: "<|tool_list_end|>",
    10: "<|tool_call_start|>",
    11: "<|tool_call_end|>",
    12: "<|tool_response_start|>",
    13: "<|tool_response_end|>",
    128: "<|audio_start|>",
    129: "<|text_start|>",
    130: "<|text_end|>",
    131: "<|mixed_start|>",
    132: "<|mixed_end|>",
}
N_SPECIAL_IDS = 256  # ids below this are special or reserved; the byte alphabet follows

# The pre-tokenizer regex of LFM2 (llama.cpp maps tokenizer pre "lfm2" to its llama3 regex).
SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_WORDS = """
the of and to in is was for that with as on are by this be from at or an have it not but
which were all they their has been one more when there can will would who about out so
what up into than its time only some other could them these then two first may any like
new now over such our very after most well also made through back years where much before
right too good just how people many must work part because each being life world said
perform speech recognition audio model text voice sound small large tiny random test check
token tokens word words sentence hello morning evening weather today tomorrow system user
assistant answer question listen transcribe record recording minute second hour number zero
seven eight nine three four five six ten hundred thousand million city river mountain ocean
forest garden kitchen window table chair paper letter music song piano guitar violin drum
singer dancer teacher student doctor engineer river bridge train station airport ticket
market coffee bread water apple orange banana lemon sugar salt pepper butter cheese dinner
breakfast lunch summer winter spring autumn north south east west quickly slowly quietly
clearly simply really almost always never often sometimes together between without within
""".split()


def _corpus(seed: int) -> list[str]:
    """Deterministic pseudo-English for training the byte-level BPE."""
    rng = np.random.default_rng(seed + 12345)
    lines = []
    for _ in range(2000):
        n = int(rng.integers(4, 16))
        words = [_WORDS[i] for i in rng.integers(0, len(_WORDS), n)]
        if rng.random() < 0.3:
            words.insert(int(rng.integers(0, n)), str(int(rng.integers(0, 2000))))
        words[0] = words[0].capitalize()
        lines.append(" ".join(words) + str(rng.choice([".", ".", "?", "!", ","])))
    # The chat prompt's own words, so that they become whole tokens.
    lines += ["system\nPerform ASR.", "user\n", "assistant\n"] * 100
    return lines


def special_token_text(token_id: int) -> str:
    return NAMED_SPECIALS.get(token_id, f"<|reserved_{token_id - 10}|>")


def write_tokenizer(outdir: Path, vocab_size: int, seed: int) -> None:
    """tokenizer.json (byte-level BPE) + tokenizer_config.json (ChatML template)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))  # llama.cpp's "lfm2" pre-type ignores merges too
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [special_token_text(i) for i in range(N_SPECIAL_IDS)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A:0",
        pair="<|startoftext|> $A:0 $B:1",
        special_tokens=[("<|startoftext|>", 1)],
    )
    data = json.loads(tok.to_str())
    # LFM2 keeps its reserved tokens as ordinary vocabulary entries; only the named
    # ones are added (special) tokens.
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] in NAMED_SPECIALS]
    for t in data["added_tokens"]:
        t.update(special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
    vocab = data["model"]["vocab"]
    assert all(vocab[special_token_text(i)] == i for i in range(N_SPECIAL_IDS)), "special ids moved"
    (outdir / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")

    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|pad|>",
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "spaces_between_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "use_default_system_prompt": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (outdir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")


# --- config -----------------------------------------------------------------------

def lfm_ff_dim(intermediate: int, multiple_of: int, multiplier: float = 1.0) -> int:
    """transformers' Lfm2MLP width with block_auto_adjust_ff_dim."""
    ff = int(multiplier * int(2 * intermediate / 3))
    return multiple_of * ((ff + multiple_of - 1) // multiple_of)


def depth_ff_dim(dim: int) -> int:
    """liquid-audio's GLU width (ff_dim=4*dim, swiglu 2/3, multiple_of 256)."""
    ff = int(2 * (4 * dim) / 3)
    return 256 * ((ff + 255) // 256)


def make_config(dims: dict) -> dict:
    n_layers = len(dims["layer_types"])
    lfm = {
        "architectures": ["Lfm2ForCausalLM"],
        "model_type": "lfm2",
        "vocab_size": dims["vocab"],
        "hidden_size": dims["hidden"],
        "intermediate_size": dims["intermediate"],
        "block_ff_dim": dims["intermediate"],
        "block_auto_adjust_ff_dim": True,
        "block_ffn_dim_multiplier": 1.0,
        "block_multiple_of": dims["multiple_of"],
        "num_hidden_layers": n_layers,
        "num_attention_heads": dims["heads"],
        "num_key_value_heads": dims["kv_heads"],
        "max_position_embeddings": 128000,
        "norm_eps": 1e-05,
        "conv_L_cache": 3,
        "conv_bias": False,
        "layer_types": list(dims["layer_types"]),
        "rope_theta": 1000000.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "use_cache": True,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 7,
        "torch_dtype": dims["dtype"],
    }
    encoder = {
        "feat_in": N_MELS,
        "feat_out": -1,
        "n_layers": dims["enc_layers"],
        "d_model": ENC_D_MODEL,
        "subsampling": "dw_striding",
        "subsampling_factor": 8,
        "subsampling_conv_channels": dims["enc_channels"],
        "causal_downsampling": False,
        "reduction": None,
        "reduction_position": None,
        "reduction_factor": 1,
        "ff_expansion_factor": dims["enc_ff_expansion"],
        "self_attention_model": "rel_pos",
        "n_heads": ENC_HEADS,
        "att_context_size": [-1, -1],
        "xscaling": False,
        "untie_biases": True,
        "pos_emb_max_len": 5000,
        "conv_kernel_size": ENC_KERNEL,
        "conv_norm_type": "batch_norm",
        "conv_context_size": None,
        "dropout": 0.1,
        "dropout_pre_encoder": 0.1,
        "dropout_emb": 0.0,
        "dropout_att": 0.1,
    }
    preprocessor = {
        "sample_rate": 16000,
        "normalize": "per_feature",
        "window_size": 0.025,
        "window_stride": 0.01,
        "window": "hann",
        "features": N_MELS,
        "n_fft": 512,
        "log": True,
        "frame_splicing": 1,
        "dither": 1e-05,
        "pad_to": 0,
        "pad_value": 0.0,
    }
    return {
        "architectures": ["Lfm2AudioForConditionalGeneration"],
        "codebooks": dims["codebooks"],
        "tie_audio_embeddings": False,
        "semantic_codebook_factor": 100,
        "codebook_weight": "log",
        "interleaved_n_text": 6,
        "interleaved_n_audio": 12,
        "preprocessor": preprocessor,
        "encoder": encoder,
        "lfm": lfm,
        "depthformer": {"layers": dims["depth_layers"], "dim": dims["depth_dim"], "tie": True},
    }


DETOK_WIDTH = 512  # liquid-audio's LFM2AudioDetokenizer hard-codes FusedEmbedding(512) and Linear(512, 1282)
DETOK_CODEBOOKS = 8
DETOK_CODES = 2048  # codes per codebook (the end-of-audio code never reaches the detokenizer)
DETOK_OUTPUT = 1282  # 641 log-magnitudes + 641 phases (n_fft 1280)
N_FFT = 1280


def detokenizer_config(dims: dict) -> dict:
    """``audio_detokenizer/config.json``: a transformers Lfm2Config, as liquid-audio's
    processor reads it (``Lfm2Config.from_pretrained``), with ``sliding_attention`` layers,
    the window and the output width that llama.cpp's converter (Lfm25AudioTokenizer) reads."""
    return {
        "architectures": ["Lfm25AudioTokenizer"],
        "model_type": "lfm2",
        "vocab_size": dims["detok_vocab"],
        "hidden_size": DETOK_WIDTH,
        "intermediate_size": dims["detok_intermediate"],
        "block_ff_dim": dims["detok_intermediate"],
        "block_auto_adjust_ff_dim": True,
        "block_ffn_dim_multiplier": 1.0,
        "block_multiple_of": 256,
        "num_hidden_layers": len(dims["detok_layer_types"]),
        "num_attention_heads": dims["detok_heads"],
        "num_key_value_heads": dims["detok_kv_heads"],
        "max_position_embeddings": 128000,
        "norm_eps": 1e-05,
        "conv_L_cache": 3,
        "conv_bias": False,
        "layer_types": list(dims["detok_layer_types"]),
        "sliding_window": dims["detok_window"],
        "output_size": DETOK_OUTPUT,
        "rope_theta": 1000000.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "use_cache": False,
        "torch_dtype": dims["dtype"],
    }


# --- tensors ----------------------------------------------------------------------

# An initializer gets a seeded generator and the shape and returns the array.
Init = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


@dataclass(frozen=True)
class Spec:
    name: str
    shape: tuple[int, ...]
    init: Init
    dtype: str = "float"  # "float" (checkpoint dtype) or "int64"
    same_as: str | None = None  # a tied weight: the same values as that tensor


def around(center: float, std: float) -> Init:
    def init(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        data = rng.standard_normal(shape, dtype=np.float32)
        data *= np.float32(std)  # in place: full-size tensors reach 512 MB
        data += np.float32(center)
        return data
    return init


def normal(std: float) -> Init:
    return around(0.0, std)


def uniform(low: float, high: float) -> Init:
    return lambda rng, shape: rng.uniform(low, high, shape).astype(np.float32)


def constant(values: np.ndarray) -> Init:
    return lambda rng, shape: values.reshape(shape)


def fan_in(std_scale: float, fan: int) -> Init:
    return normal(std_scale / math.sqrt(fan))


def token_embeddings(std: float) -> Init:
    """Ordinary tokens at ``std``; special/reserved rows tiny, so that greedy decoding
    rarely lands on an end-of-generation or reserved id and runs many steps."""
    def init(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        table = normal(std)(rng, shape)
        table[:N_SPECIAL_IDS] *= np.float32(0.01 / std)
        return table
    return init


def boosted(init: Init, rows: dict[int, float]) -> Init:
    """``init`` with some rows scaled (a larger row norm makes that logit win more often)."""
    def wrapped(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        table = init(rng, shape)
        for row, factor in rows.items():
            table[row] *= np.float32(factor)
        return table
    return wrapped


# --lively: rows scaled so that greedy decoding of random weights switches modality now and
# then: <|audio_start|> (128) and <|text_end|> (130) in the text embedding (tied LM head),
# and the end-of-audio code 2048 of the first codebook. Test-only variant.
LIVELY_TEXT_ROWS = {128: 100.0, 130: 60.0}  # x the special rows' 0.01/std scale (3x, 2x an ordinary row)
LIVELY_EOA_FACTOR = 2.2


def subsampled(n: int) -> int:
    """Frequency bins left after three stride-2, kernel-3, padding-1 convolutions."""
    for _ in range(3):
        n = (n + 2 - 3) // 2 + 1
    return n


def tensor_specs(config: dict, dims: dict, lively: bool = False) -> list[Spec]:
    """Every tensor of liquid-audio's LFM2AudioModel.state_dict(), in module order."""
    lfm, enc, dep = config["lfm"], config["encoder"], config["depthformer"]
    h, std = lfm["hidden_size"], dims["backbone_std"]
    head_dim = h // lfm["num_attention_heads"]
    kv = lfm["num_key_value_heads"] * head_dim
    ff = lfm_ff_dim(lfm["intermediate_size"], lfm["block_multiple_of"], lfm["block_ffn_dim_multiplier"])
    embed_init = token_embeddings(std)
    if lively:
        embed_init = boosted(embed_init, LIVELY_TEXT_ROWS)
    specs: list[Spec] = [Spec("lfm.embed_tokens.weight", (lfm["vocab_size"], h), embed_init)]
    for i, kind in enumerate(lfm["layer_types"]):
        p = f"lfm.layers.{i}."
        if kind == "conv":
            specs += [
                Spec(p + "conv.conv.weight", (h, 1, lfm["conv_L_cache"]), normal(0.5)),
                Spec(p + "conv.in_proj.weight", (3 * h, h), normal(std)),
                Spec(p + "conv.out_proj.weight", (h, h), normal(std)),
            ]
        else:
            specs += [
                Spec(p + "self_attn.q_proj.weight", (h, h), normal(std)),
                Spec(p + "self_attn.k_proj.weight", (kv, h), normal(std)),
                Spec(p + "self_attn.v_proj.weight", (kv, h), normal(std)),
                Spec(p + "self_attn.out_proj.weight", (h, h), normal(std)),
                Spec(p + "self_attn.q_layernorm.weight", (head_dim,), around(1.0, 0.1)),
                Spec(p + "self_attn.k_layernorm.weight", (head_dim,), around(1.0, 0.1)),
            ]
        specs += [
            Spec(p + "feed_forward.w1.weight", (ff, h), normal(std)),
            Spec(p + "feed_forward.w3.weight", (ff, h), normal(std)),
            Spec(p + "feed_forward.w2.weight", (h, ff), normal(std)),
            Spec(p + "operator_norm.weight", (h,), around(1.0, 0.1)),
            Spec(p + "ffn_norm.weight", (h,), around(1.0, 0.1)),
        ]
    specs.append(Spec("lfm.embedding_norm.weight", (h,), around(1.0, 0.1)))

    # Conformer: dw_striding subsampling (Sequential indices 0,2,3,5,6 hold weights).
    d, c = enc["d_model"], enc["subsampling_conv_channels"]
    d_ff = d * enc["ff_expansion_factor"]
    k = enc["conv_kernel_size"]
    small = around(0.0, 0.1)
    specs += [
        Spec("conformer.pre_encode.conv.0.weight", (c, 1, 3, 3), fan_in(1.0, 9)),
        Spec("conformer.pre_encode.conv.0.bias", (c,), small),
    ]
    for dw, pw in ((2, 3), (5, 6)):
        specs += [
            Spec(f"conformer.pre_encode.conv.{dw}.weight", (c, 1, 3, 3), fan_in(1.0, 9)),
            Spec(f"conformer.pre_encode.conv.{dw}.bias", (c,), small),
            Spec(f"conformer.pre_encode.conv.{pw}.weight", (c, c, 1, 1), fan_in(1.0, c)),
            Spec(f"conformer.pre_encode.conv.{pw}.bias", (c,), small),
        ]
    flat = c * subsampled(enc["feat_in"])
    specs += [
        Spec("conformer.pre_encode.out.weight", (d, flat), fan_in(1.0, flat)),
        Spec("conformer.pre_encode.out.bias", (d,), small),
    ]
    def norm(name: str) -> list[Spec]:
        return [Spec(name + ".weight", (d,), around(1.0, 0.1)), Spec(name + ".bias", (d,), small)]

    def linear(name: str, n_out: int, n_in: int, bias: bool = True) -> list[Spec]:
        out = [Spec(name + ".weight", (n_out, n_in), fan_in(1.0, n_in))]
        return out + ([Spec(name + ".bias", (n_out,), small)] if bias else [])

    for i in range(enc["n_layers"]):
        p = f"conformer.layers.{i}."
        specs += norm(p + "norm_feed_forward1")
        specs += linear(p + "feed_forward1.linear1", d_ff, d) + linear(p + "feed_forward1.linear2", d, d_ff)
        specs += norm(p + "norm_conv")
        specs += [
            Spec(p + "conv.pointwise_conv1.weight", (2 * d, d, 1), fan_in(1.0, d)),
            Spec(p + "conv.pointwise_conv1.bias", (2 * d,), small),
            Spec(p + "conv.depthwise_conv.weight", (d, 1, k), fan_in(1.0, k)),
            Spec(p + "conv.depthwise_conv.bias", (d,), small),
            Spec(p + "conv.batch_norm.weight", (d,), around(1.0, 0.1)),
            Spec(p + "conv.batch_norm.bias", (d,), small),
            Spec(p + "conv.batch_norm.running_mean", (d,), small),
            Spec(p + "conv.batch_norm.running_var", (d,), uniform(0.5, 1.5)),
            Spec(p + "conv.batch_norm.num_batches_tracked", (), constant(np.array(1000, np.int64)), "int64"),
            Spec(p + "conv.pointwise_conv2.weight", (d, d, 1), fan_in(1.0, d)),
            Spec(p + "conv.pointwise_conv2.bias", (d,), small),
        ]
        specs += norm(p + "norm_self_att")
        for proj in ("linear_q", "linear_k", "linear_v", "linear_out"):
            specs += linear(p + f"self_attn.{proj}", d, d)
        specs += linear(p + "self_attn.linear_pos", d, d, bias=False)
        heads = enc["n_heads"]
        specs += [
            Spec(p + "self_attn.pos_bias_u", (heads, d // heads), small),
            Spec(p + "self_attn.pos_bias_v", (heads, d // heads), small),
        ]
        specs += norm(p + "norm_feed_forward2")
        specs += linear(p + "feed_forward2.linear1", d_ff, d) + linear(p + "feed_forward2.linear2", d, d_ff)
        specs += norm(p + "norm_out")

    # Adapter: LayerNorm -> Linear -> GELU -> Linear (Sequential indices 0, 1, 3).
    specs += [
        Spec("audio_adapter.model.0.weight", (d,), around(1.0, 0.1)),
        Spec("audio_adapter.model.0.bias", (d,), small),
        Spec("audio_adapter.model.1.weight", (h, d), fan_in(1.0, d)),
        Spec("audio_adapter.model.1.bias", (h,), small),
        Spec("audio_adapter.model.3.weight", (h, h), fan_in(1.0, h)),
        Spec("audio_adapter.model.3.bias", (h,), small),
    ]

    # Audio output (not used for ASR, but part of the state dict).
    # A tied SharedEmbedding's to_logits is the embedding Parameter itself; the state
    # dict still lists both names, with equal values.
    cb = config["codebooks"]
    tied = "audio_embedding.embedding.weight" if config["tie_audio_embeddings"] else None
    specs += [
        Spec("audio_embedding.embedding.weight", (AUDIO_VOCAB * cb, h), fan_in(1.0, h)),
        Spec("audio_embedding.embedding_norm.weight", (h,), around(1.0, 0.1)),
        Spec("audio_embedding.to_logits.weight", (AUDIO_VOCAB * cb, h), fan_in(1.0, h), same_as=tied),
        Spec("codebook_offsets", (cb,), constant(np.arange(cb, dtype=np.int64) * AUDIO_VOCAB), "int64"),
        Spec("audio_loss_weights", (cb,), constant(
            np.exp(np.linspace(1.0, 0.0, cb) * math.log(config["semantic_codebook_factor"])).astype(np.float32))),
    ]
    dd = dep["dim"]
    dhead = dd // 32  # liquid-audio's MHA default: 32 heads, gqa_dim 8
    for i in range(dep["layers"]):
        p = f"depthformer.layers.{i}."
        dff = depth_ff_dim(dd)
        specs += [
            Spec(p + "operator.qkv_proj.weight", (dd + 2 * dhead * 8, dd), fan_in(1.0, dd)),
            Spec(p + "operator.out_proj.weight", (dd, dd), fan_in(0.5, dd)),
            Spec(p + "operator.bounded_attention.q_layernorm.weight", (dhead,), around(1.0, 0.1)),
            Spec(p + "operator.bounded_attention.k_layernorm.weight", (dhead,), around(1.0, 0.1)),
            Spec(p + "feed_forward.w1.weight", (dff, dd), fan_in(1.0, dd)),
            Spec(p + "feed_forward.w3.weight", (dff, dd), fan_in(1.0, dd)),
            Spec(p + "feed_forward.w2.weight", (dd, dff), fan_in(0.5, dff)),
            Spec(p + "operator_norm.weight", (dd,), around(1.0, 0.1)),
            Spec(p + "ffn_norm.weight", (dd,), around(1.0, 0.1)),
        ]
    specs += [
        Spec("depth_linear.weight", (dd * cb, h), fan_in(1.0, h)),
        Spec("depth_linear.bias", (dd * cb,), small),
    ]
    for i in range(cb):
        p = f"depth_embeddings.{i}."
        tied = p + "embedding.weight" if dep["tie"] else None
        rows = fan_in(1.0, dd)
        if lively and i == 0:
            rows = boosted(rows, {AUDIO_VOCAB - 1: LIVELY_EOA_FACTOR})
        specs += [
            Spec(p + "embedding.weight", (AUDIO_VOCAB, dd), rows),
            Spec(p + "embedding_norm.weight", (dd,), around(1.0, 0.1)),
            Spec(p + "to_logits.weight", (AUDIO_VOCAB, dd), rows, same_as=tied),
        ]
    return specs


def detokenizer_specs(config: dict) -> list[Spec]:
    """Every tensor of liquid-audio's LFM2AudioDetokenizer.state_dict() (detokenizer.py):
    FusedEmbedding ``emb.emb``, the ``lfm`` Lfm2Model, ``lin`` and the ISTFT window buffer."""
    h = config["hidden_size"]
    head_dim = h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    ff = lfm_ff_dim(config["intermediate_size"], config["block_multiple_of"], config["block_ffn_dim_multiplier"])
    proj = fan_in(1.0, h)
    specs = [
        Spec("emb.emb.weight", (DETOK_CODEBOOKS * DETOK_CODES, h), normal(1.0)),  # torch's Embedding init
        Spec("lfm.embed_tokens.weight", (config["vocab_size"], h), normal(0.02)),  # unused: inputs are embeddings
    ]
    for i, kind in enumerate(config["layer_types"]):
        p = f"lfm.layers.{i}."
        if kind == "conv":
            specs += [
                Spec(p + "conv.conv.weight", (h, 1, config["conv_L_cache"]), normal(0.5)),
                Spec(p + "conv.in_proj.weight", (3 * h, h), proj),
                Spec(p + "conv.out_proj.weight", (h, h), proj),
            ]
        else:
            specs += [
                Spec(p + "self_attn.q_proj.weight", (h, h), proj),
                Spec(p + "self_attn.k_proj.weight", (kv, h), proj),
                Spec(p + "self_attn.v_proj.weight", (kv, h), proj),
                Spec(p + "self_attn.out_proj.weight", (h, h), proj),
                Spec(p + "self_attn.q_layernorm.weight", (head_dim,), around(1.0, 0.1)),
                Spec(p + "self_attn.k_layernorm.weight", (head_dim,), around(1.0, 0.1)),
            ]
        specs += [
            Spec(p + "feed_forward.w1.weight", (ff, h), proj),
            Spec(p + "feed_forward.w3.weight", (ff, h), proj),
            Spec(p + "feed_forward.w2.weight", (h, ff), fan_in(1.0, ff)),
            Spec(p + "operator_norm.weight", (h,), around(1.0, 0.1)),
            Spec(p + "ffn_norm.weight", (h,), around(1.0, 0.1)),
        ]
    bins = DETOK_OUTPUT // 2

    def lin_weight(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        w = normal(1.0 / math.sqrt(h))(rng, shape)
        w[:bins] *= np.float32(0.5)  # log-magnitudes of moderate spread, phases spread wider
        w[bins:] *= np.float32(2.0)
        return w

    def lin_bias(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        b = normal(0.1)(rng, shape)
        b[:bins] -= np.float32(3.0)  # quiet: exp(-3) per bin
        return b

    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # torch.hann_window (periodic)
    specs += [
        Spec("lfm.embedding_norm.weight", (h,), around(1.0, 0.1)),
        Spec("lin.weight", (DETOK_OUTPUT, h), lin_weight),
        Spec("lin.bias", (DETOK_OUTPUT,), lin_bias),
        Spec("istft.window", (N_FFT,), constant(window.astype(np.float32))),
    ]
    return specs


def tensor_data(spec: Spec, seed: int) -> np.ndarray:
    # One generator per tensor, keyed by its name: tensors can be made in any order.
    rng = np.random.default_rng([seed, zlib.crc32((spec.same_as or spec.name).encode())])
    data = spec.init(rng, spec.shape)
    # np.asarray, not np.ascontiguousarray: the latter turns 0-d tensors (a batch norm's
    # num_batches_tracked) into shape [1], which torch would refuse to load.
    return np.asarray(data, dtype=np.int64 if spec.dtype == "int64" else np.float32)


# --- safetensors writing ----------------------------------------------------------

_ST_DTYPES = {"float32": ("F32", 4), "bfloat16": ("BF16", 2), "int64": ("I64", 8)}


def to_bf16_bits(data: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even), as uint16."""
    bits = data.astype(np.float32).view(np.uint32)
    bits = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
    return (bits >> 16).astype(np.uint16)


def _stored_dtype(spec: Spec, dtype: str) -> str:
    return "int64" if spec.dtype == "int64" else dtype


def _shards(specs: list[Spec], dtype: str, shard_bytes: int | None) -> list[list[Spec]]:
    shards: list[list[Spec]] = [[]]
    size = 0
    for spec in specs:
        nbytes = int(np.prod(spec.shape, dtype=np.int64)) * _ST_DTYPES[_stored_dtype(spec, dtype)][1]
        if shard_bytes and shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    return shards


def write_safetensors_streaming(path: Path, specs: list[Spec], seed: int, dtype: str) -> int:
    """Write one safetensors file tensor by tensor (memory stays near one tensor).

    The header is known in advance from the shapes, so no tensor is held back.
    """
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        code, size = _ST_DTYPES[_stored_dtype(spec, dtype)]
        nbytes = int(np.prod(spec.shape, dtype=np.int64)) * size
        header[spec.name] = {"dtype": code, "shape": list(spec.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for spec in specs:
            data = tensor_data(spec, seed)
            if _stored_dtype(spec, dtype) == "bfloat16":
                data = to_bf16_bits(data)
            f.write(data.tobytes())
    return offset


def write_weights(outdir: Path, specs: list[Spec], seed: int, dtype: str, shard_bytes: int | None) -> None:
    shards = _shards(specs, dtype, shard_bytes)
    if len(shards) == 1 and dtype == "float32":
        # The plain case goes through the safetensors library itself.
        from safetensors.numpy import save_file

        save_file({s.name: tensor_data(s, seed) for s in specs}, str(outdir / "model.safetensors"),
                  metadata={"format": "pt"})
        return
    if len(shards) == 1:
        write_safetensors_streaming(outdir / "model.safetensors", specs, seed, dtype)
        return
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_safetensors_streaming(outdir / fname, shard, seed, dtype)
        weight_map.update({s.name: fname for s in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (outdir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


# --- entry points -----------------------------------------------------------------

def make_checkpoint(outdir: str | Path, seed: int = 0, full_size: bool = False, *,
                    dtype: str | None = None, shard_bytes: int | None = None,
                    detokenizer: bool = True, lively: bool = False) -> Path:
    """Write a checkpoint directory and return its path.

    ``dtype`` ("float32" or "bfloat16") and ``shard_bytes`` (split the weights into
    shards of about that size, with an index) override the defaults: float32 in one
    file for the tiny model, bfloat16 in 2 GiB shards for ``full_size``.
    ``detokenizer`` writes the LFM2.5 audio detokenizer (``audio_detokenizer/``) that
    speech output needs. ``lively`` (tests of speech output) enlarges a few embedding rows
    so that greedy decoding switches between text and audio: ``<|audio_start|>``,
    ``<|text_end|>`` and the end-of-audio code come up now and then.
    """
    dims = dict(FULL if full_size else TINY)
    if dtype is not None:
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, not {dtype!r}")
        dims["dtype"] = dtype
    if shard_bytes is not None:
        dims["shard_bytes"] = shard_bytes
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    config = make_config(dims)
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    write_tokenizer(out, TINY["vocab"], seed)  # a small BPE; the converter pads it to vocab_size
    write_weights(out, tensor_specs(config, dims, lively), seed, dims["dtype"], dims["shard_bytes"])
    if detokenizer:
        write_detokenizer(out / "audio_detokenizer", dims, seed)
    return out


def write_detokenizer(outdir: Path, dims: dict, seed: int) -> Path:
    """``audio_detokenizer/`` (config.json + model.safetensors), as LiquidAI/LFM2.5-Audio-1.5B
    ships it next to the model for speech output."""
    outdir.mkdir(parents=True, exist_ok=True)
    config = detokenizer_config(dims)
    (outdir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    # Its own seed stream, so the main weights do not depend on whether it is written.
    write_weights(outdir, detokenizer_specs(config), seed + 7919, dims["dtype"], None)
    return outdir


def parameter_count(full_size: bool = False) -> int:
    dims = FULL if full_size else TINY
    specs = tensor_specs(make_config(dims), dims) + detokenizer_specs(detokenizer_config(dims))
    return sum(int(np.prod(s.shape, dtype=np.int64)) for s in specs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-size", action="store_true",
                        help="random weights with the real LFM2.5-Audio-1.5B dimensions (about 3 GB)")
    parser.add_argument("--no-detokenizer", action="store_true",
                        help="leave out audio_detokenizer/ (an ASR-only checkpoint)")
    parser.add_argument("--detokenizer-only", action="store_true",
                        help="only (re)write audio_detokenizer/ into an existing checkpoint directory")
    parser.add_argument("--lively", action="store_true",
                        help="test variant whose greedy decoding switches between text and audio")
    args = parser.parse_args(argv)
    if args.detokenizer_only:
        dims = FULL if args.full_size else TINY
        out = write_detokenizer(Path(args.outdir) / "audio_detokenizer", dims, args.seed)
        print(f"wrote {out}", file=sys.stderr)
        return 0
    out = make_checkpoint(args.outdir, seed=args.seed, full_size=args.full_size,
                          detokenizer=not args.no_detokenizer, lively=args.lively)
    print(f"wrote {out} ({parameter_count(args.full_size) / 1e6:.1f} M parameters)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
