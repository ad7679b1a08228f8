"""The checkpoint -> GGUF converter, the tiny checkpoint maker and the GGUF inspector."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, TokenType
from gguf.quants import dequantize
from safetensors.numpy import load_file, save_file

from pylfm.errors import ConversionError, ModelLoadError
from pylfm.files.convert import ConvertResult, convert, plan, quantize_mmproj
from pylfm.files.inspect import check_gguf, format_info, inspect_gguf

Q = GGMLQuantizationType

# The fields of liquid-audio 1.3.0's config dataclasses (LFM2AudioConfig, whose
# text/audio loss multipliers have defaults, ConformerEncoderConfig, PreprocessorConfig,
# DepthformerConfig): from_pretrained() passes config.json's sections as keyword
# arguments, so an unknown or missing key fails there.
LA_TOP = {"architectures", "codebooks", "tie_audio_embeddings", "semantic_codebook_factor", "codebook_weight",
          "interleaved_n_text", "interleaved_n_audio", "preprocessor", "encoder", "lfm", "depthformer"}
LA_ENCODER = {"feat_in", "feat_out", "n_layers", "d_model", "subsampling", "subsampling_factor",
              "subsampling_conv_channels", "causal_downsampling", "reduction", "reduction_position",
              "reduction_factor", "ff_expansion_factor", "self_attention_model", "n_heads", "att_context_size",
              "xscaling", "untie_biases", "pos_emb_max_len", "conv_kernel_size", "conv_norm_type",
              "conv_context_size", "dropout", "dropout_pre_encoder", "dropout_emb", "dropout_att"}
LA_PREPROCESSOR = {"sample_rate", "normalize", "window_size", "window_stride", "window", "features", "n_fft",
                   "log", "frame_splicing", "dither", "pad_to", "pad_value"}
LA_DEPTHFORMER = {"layers", "dim", "tie"}


def read_gguf(path: Path) -> tuple[dict, dict]:
    """(key -> value, tensor name -> (type, float32 array in numpy order))."""
    reader = GGUFReader(path)
    kv = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        tensors[t.name] = (t.tensor_type, dequantize(t.data, t.tensor_type).reshape(shape))
    return kv, tensors


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ggufs_in(directory: Path) -> list[Path]:
    """GGUFs and partial (temporary) outputs anywhere under ``directory``."""
    return sorted(p for p in directory.rglob("*") if p.name.endswith((".gguf", ".partial")))


def copy_checkpoint(src: Path, dst: Path, *, link_weights: bool = True) -> Path:
    """A copy of a checkpoint directory; the weights symlinked unless asked otherwise."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            if link_weights and f.suffix == ".safetensors":
                (dst / f.name).symlink_to(f)
            else:
                shutil.copy(f, dst / f.name)
    return dst


# --- the tiny checkpoint ---------------------------------------------------------------

def test_tiny_checkpoint_layout(tiny_checkpoint: Path) -> None:
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert set(config) == LA_TOP
    assert set(config["encoder"]) == LA_ENCODER
    assert set(config["preprocessor"]) == LA_PREPROCESSOR
    assert set(config["depthformer"]) == LA_DEPTHFORMER
    assert config["architectures"] == ["Lfm2AudioForConditionalGeneration"]
    lfm = config["lfm"]
    assert lfm["model_type"] == "lfm2" and lfm["architectures"] == ["Lfm2ForCausalLM"]
    assert set(lfm["layer_types"]) == {"conv", "full_attention"}
    enc = config["encoder"]
    assert (enc["d_model"], enc["n_heads"], enc["conv_kernel_size"]) == (512, 8, 9)  # llama.cpp's LFM2A

    tensors = load_file(tiny_checkpoint / "model.safetensors")
    for prefix in ("lfm.", "conformer.", "audio_adapter.", "audio_embedding.", "depthformer.",
                   "depth_linear.", "depth_embeddings."):
        assert any(n.startswith(prefix) for n in tensors), prefix
    assert {"codebook_offsets", "audio_loss_weights"} <= set(tensors)
    counter = tensors["conformer.layers.0.conv.batch_norm.num_batches_tracked"]
    assert counter.dtype == np.int64 and counter.shape == ()  # a 0-d tensor, as torch saves it
    # depthformer.tie: a tied embedding's to_logits holds the same values (one Parameter in torch).
    depth0 = "depth_embeddings.0."
    assert np.array_equal(tensors[depth0 + "to_logits.weight"], tensors[depth0 + "embedding.weight"])
    assert not np.array_equal(tensors["audio_embedding.to_logits.weight"], tensors["audio_embedding.embedding.weight"])
    # Special and reserved ids get small embeddings (so greedy decoding seldom ends early).
    embed = tensors["lfm.embed_tokens.weight"]
    assert np.abs(embed[:256]).max() < 0.1 < embed[256:].std()


def test_tiny_tokenizer_special_ids(tiny_checkpoint: Path) -> None:
    data = json.loads((tiny_checkpoint / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    expected = {"<|pad|>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2, "<|im_start|>": 6, "<|im_end|>": 7,
                "<|audio_start|>": 128, "<|text_end|>": 130, "<|reserved_4|>": 14}
    assert {t: vocab[t] for t in expected} == expected
    added = {t["content"]: t["id"] for t in data["added_tokens"]}
    assert added["<|im_end|>"] == 7 and added["<|text_end|>"] == 130
    assert "<|reserved_4|>" not in added  # LFM2's reserved tokens are plain vocabulary entries
    config = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"]
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == \
        ("<|startoftext|>", "<|im_end|>", "<|pad|>")


def test_tiny_checkpoint_is_deterministic(tiny_tool, tiny_checkpoint: Path, tmp_path: Path) -> None:
    again = tiny_tool.make_checkpoint(tmp_path / "again", seed=0)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        assert file_digest(again / name) == file_digest(tiny_checkpoint / name), name
    other = tiny_tool.make_checkpoint(tmp_path / "other", seed=1)
    assert file_digest(other / "model.safetensors") != file_digest(tiny_checkpoint / "model.safetensors")


def test_full_size_dimensions(tiny_tool) -> None:
    """--full-size describes LFM2.5-Audio-1.5B (checked without writing 3 GB)."""
    from pylfm.files.convert.mmproj import encoder_hparams
    from pylfm.files.convert.text_model import text_hparams

    config = tiny_tool.make_config(tiny_tool.FULL)
    text = text_hparams(config["lfm"])
    assert (text.hidden, text.n_layer, text.n_head, text.n_head_kv, text.vocab, text.ff) == \
        (2048, 16, 32, 8, 65536, 8192)
    assert text.layer_types.count("full_attention") == 6
    enc = encoder_hparams(config)
    assert (enc.d_model, enc.n_layer, enc.n_head, enc.ff, enc.channels, enc.kernel) == (512, 17, 8, 2048, 256, 9)
    assert 1.4e9 < tiny_tool.parameter_count(full_size=True) < 1.55e9


def test_sharded_checkpoint_matches_single_file(tiny_tool, tiny_checkpoint: Path, tmp_path: Path) -> None:
    sharded = tiny_tool.make_checkpoint(tmp_path / "sharded", seed=0, shard_bytes=8 * 1024 * 1024)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    single = load_file(tiny_checkpoint / "model.safetensors")
    merged = {}
    for shard in shards:  # read back with the safetensors library itself
        merged.update(load_file(sharded / shard))
    assert set(merged) == set(single) == set(index["weight_map"])
    assert all(np.array_equal(merged[n], single[n]) for n in single)


# --- accounting ------------------------------------------------------------------------

def test_every_tensor_is_written_or_skipped(tiny_checkpoint: Path, tiny_gguf_f32: ConvertResult) -> None:
    decisions = plan(tiny_checkpoint, with_speech=False)  # speech output: tests/test_speech.py
    sources = set(load_file(tiny_checkpoint / "model.safetensors"))
    assert {d.source for d in decisions} == sources
    assert len(decisions) == len(sources)
    assert {d.action for d in decisions} == {"model", "mmproj", "skip"}
    for d in decisions:
        assert d.reason
        if d.action == "model":
            assert d.source.startswith("lfm.") and d.targets
        elif d.action == "mmproj":
            assert d.source.startswith(("conformer.", "audio_adapter.", "audio_embedding.embedding.weight"))
        else:
            assert not d.targets
            assert d.source.startswith(("depthformer.", "depth_linear.", "depth_embeddings.", "audio_embedding.",
                                        "codebook_offsets", "audio_loss_weights")) \
                or d.source.endswith("num_batches_tracked")
    # ... and every GGUF tensor comes from some checkpoint tensor.
    _, model = read_gguf(tiny_gguf_f32.model_path)
    _, mmproj = read_gguf(tiny_gguf_f32.mmproj_path)
    assert set(model) == {t for d in decisions if d.action == "model" for t in d.targets}
    assert set(mmproj) == {t for d in decisions if d.action == "mmproj" for t in d.targets}


# --- what the GGUFs hold ---------------------------------------------------------------

def test_output_names(tiny_gguf_f32: ConvertResult, tiny_gguf_q8: ConvertResult) -> None:
    assert tiny_gguf_f32.model_path.name == "tiny-lfm2-audio-F32.gguf"
    assert tiny_gguf_f32.mmproj_path.name == "mmproj-tiny-lfm2-audio-F32.gguf"
    assert tiny_gguf_q8.model_path.name == "tiny-lfm2-audio-Q8_0.gguf"
    assert ggufs_in(tiny_gguf_f32.model_path.parent) == sorted(
        [tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path])  # no temporary file left


def test_text_model_hparams_equal_config(tiny_checkpoint: Path, tiny_gguf_f32: ConvertResult) -> None:
    lfm = json.loads((tiny_checkpoint / "config.json").read_text())["lfm"]
    kv, tensors = read_gguf(tiny_gguf_f32.model_path)
    assert kv["general.architecture"] == "lfm2"
    assert kv["lfm2.block_count"] == lfm["num_hidden_layers"]
    assert kv["lfm2.embedding_length"] == lfm["hidden_size"]
    assert kv["lfm2.feed_forward_length"] == 128  # 192 auto-adjusted: int(2*192/3), multiple of 32
    assert kv["lfm2.attention.head_count"] == lfm["num_attention_heads"]
    assert kv["lfm2.attention.head_count_kv"] == [
        lfm["num_key_value_heads"] if t == "full_attention" else 0 for t in lfm["layer_types"]]
    assert kv["lfm2.context_length"] == lfm["max_position_embeddings"]
    assert kv["lfm2.vocab_size"] == lfm["vocab_size"]
    assert kv["lfm2.shortconv.l_cache"] == lfm["conv_L_cache"]
    assert kv["lfm2.rope.freq_base"] == pytest.approx(lfm["rope_theta"])
    assert kv["lfm2.attention.layer_norm_rms_epsilon"] == pytest.approx(lfm["norm_eps"])
    assert kv["general.name"] == "tiny-lfm2-audio"
    assert tensors["blk.0.shortconv.conv.weight"][1].shape == (lfm["hidden_size"], lfm["conv_L_cache"])
    assert "blk.1.attn_q.weight" in tensors and "blk.0.attn_q.weight" not in tensors


def test_text_model_tokenizer(tiny_checkpoint: Path, tiny_gguf_f32: ConvertResult) -> None:
    kv, _ = read_gguf(tiny_gguf_f32.model_path)
    vocab = json.loads((tiny_checkpoint / "tokenizer.json").read_text())["model"]["vocab"]
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "lfm2"
    assert len(tokens) == len(types) == kv["lfm2.vocab_size"]
    assert all(tokens[i] == t for t, i in vocab.items())
    assert (kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.eos_token_id"],
            kv["tokenizer.ggml.padding_token_id"]) == (1, 7, 0)
    assert kv["tokenizer.ggml.add_bos_token"] is True and kv["tokenizer.ggml.add_eos_token"] is False
    assert [types[i] for i in (0, 1, 2, 6, 7, 128, 130)] == [TokenType.CONTROL] * 7
    assert types[14] == TokenType.NORMAL and types[300] == TokenType.NORMAL
    assert kv["tokenizer.ggml.merges"] and "<|im_start|>" in kv["tokenizer.chat_template"]


def test_mmproj_hparams_equal_config(tiny_checkpoint: Path, tiny_gguf_f32: ConvertResult) -> None:
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    enc = config["encoder"]
    kv, tensors = read_gguf(tiny_gguf_f32.mmproj_path)
    assert kv["general.architecture"] == "clip" and kv["general.type"] == "mmproj"
    assert kv["clip.projector_type"] == "lfm2a" and kv["clip.has_audio_encoder"] is True
    assert kv["clip.audio.embedding_length"] == enc["d_model"]
    assert kv["clip.audio.feed_forward_length"] == enc["d_model"] * enc["ff_expansion_factor"]
    assert kv["clip.audio.block_count"] == enc["n_layers"]
    assert kv["clip.audio.attention.head_count"] == enc["n_heads"]
    assert kv["clip.audio.projection_dim"] == config["lfm"]["hidden_size"]
    assert kv["clip.audio.num_mel_bins"] == enc["feat_in"]
    assert kv["clip.audio.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    # clip.cpp takes the projection width from this table and bounds the input by its rows.
    assert tensors["a.position_embd.weight"][1].shape == (2049 * config["codebooks"], config["lfm"]["hidden_size"])
    # Every tensor clip.cpp's LFM2A loader asks for is present.
    wanted = [f"a.conv1d.{i}.{p}" for i in (0, 2, 3, 5, 6) for p in ("weight", "bias")]
    wanted += ["a.pre_encode.out.weight", "a.pre_encode.out.bias"]
    wanted += [f"mm.a.mlp.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")]
    for il in range(enc["n_layers"]):
        for t in ("ffn_norm", "ffn_norm_1", "ffn_up", "ffn_down", "ffn_up_1", "ffn_down_1", "norm_conv",
                  "conv_norm", "conv_dw", "conv_pw1", "conv_pw2", "attn_q", "attn_k", "attn_v", "attn_out",
                  "ln1", "ln2"):
            wanted += [f"a.blk.{il}.{t}.weight", f"a.blk.{il}.{t}.bias"]
        wanted += [f"a.blk.{il}.linear_pos.weight", f"a.blk.{il}.pos_bias_u", f"a.blk.{il}.pos_bias_v"]
    assert sorted(set(wanted) - set(tensors)) == []


def test_tensor_transforms(tiny_checkpoint: Path, tiny_gguf_f32: ConvertResult) -> None:
    ckpt = load_file(tiny_checkpoint / "model.safetensors")
    _, model = read_gguf(tiny_gguf_f32.model_path)
    _, mm = read_gguf(tiny_gguf_f32.mmproj_path)
    assert np.array_equal(model["token_embd.weight"][1], ckpt["lfm.embed_tokens.weight"])
    assert np.array_equal(model["token_embd_norm.weight"][1], ckpt["lfm.embedding_norm.weight"])
    assert np.array_equal(model["blk.0.shortconv.conv.weight"][1], ckpt["lfm.layers.0.conv.conv.weight"][:, 0, :])
    assert np.array_equal(model["blk.0.ffn_gate.weight"][1], ckpt["lfm.layers.0.feed_forward.w1.weight"])

    p = "conformer.layers.1.conv."
    scale = ckpt[p + "batch_norm.weight"] / np.sqrt(ckpt[p + "batch_norm.running_var"] + np.float32(1e-5))
    shift = ckpt[p + "batch_norm.bias"] - ckpt[p + "batch_norm.running_mean"] * scale
    np.testing.assert_allclose(mm["a.blk.1.conv_norm.weight"][1], scale, rtol=1e-6)
    np.testing.assert_allclose(mm["a.blk.1.conv_norm.bias"][1], shift, rtol=1e-6, atol=1e-7)
    assert np.array_equal(mm["a.blk.1.conv_dw.weight"][1], ckpt[p + "depthwise_conv.weight"][:, 0, :])
    assert np.array_equal(mm["a.blk.1.conv_pw1.weight"][1], ckpt[p + "pointwise_conv1.weight"][:, :, 0])
    assert mm["a.conv1d.3.bias"][1].shape == (16, 1, 1)
    assert mm["a.conv1d.2.weight"][1].shape == (16, 1, 3, 3)
    assert np.array_equal(mm["a.blk.0.pos_bias_u"][1], ckpt["conformer.layers.0.self_attn.pos_bias_u"])
    assert np.array_equal(mm["mm.a.mlp.3.weight"][1], ckpt["audio_adapter.model.3.weight"])


def test_outtypes_shrink_and_keep_f32_where_needed(tiny_gguf_f32: ConvertResult, tiny_gguf_f16: ConvertResult,
                                                   tiny_gguf_q8: ConvertResult) -> None:
    for kind in ("model_path", "mmproj_path"):
        sizes = [getattr(r, kind).stat().st_size for r in (tiny_gguf_f32, tiny_gguf_f16, tiny_gguf_q8)]
        assert sizes[0] > sizes[1] > sizes[2], (kind, sizes)
    _, f32 = read_gguf(tiny_gguf_f32.model_path)
    _, f16 = read_gguf(tiny_gguf_f16.model_path)
    _, q8 = read_gguf(tiny_gguf_q8.model_path)
    assert {t for t, _ in f32.values()} == {Q.F32}
    assert f16["token_embd.weight"][0] == Q.F16 and q8["token_embd.weight"][0] == Q.Q8_0
    assert q8["blk.1.attn_q.weight"][0] == Q.Q8_0
    for name in ("token_embd_norm.weight", "blk.0.shortconv.conv.weight", "blk.1.attn_q_norm.weight"):
        assert f16[name][0] == q8[name][0] == Q.F32, name
    np.testing.assert_allclose(q8["token_embd.weight"][1], f32["token_embd.weight"][1], atol=0.02)

    _, m16 = read_gguf(tiny_gguf_f16.mmproj_path)
    _, mq8 = read_gguf(tiny_gguf_q8.mmproj_path)
    assert mq8["a.blk.0.attn_q.weight"][0] == Q.Q8_0 and m16["a.blk.0.attn_q.weight"][0] == Q.F16
    assert mq8["mm.a.mlp.1.weight"][0] == Q.Q8_0
    for name in ("a.blk.0.conv_dw.weight", "a.blk.0.conv_pw1.weight", "a.blk.0.conv_norm.weight",
                 "a.conv1d.0.weight", "a.blk.0.pos_bias_u", "a.blk.0.ln1.weight", "a.pre_encode.out.bias"):
        assert m16[name][0] == mq8[name][0] == Q.F32, name
    assert mq8["a.position_embd.weight"][0] == Q.F16


def test_bf16_sharded_checkpoint(tiny_tool, tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = tiny_tool.make_checkpoint(tmp_path / "bf16", seed=0, dtype="bfloat16", shard_bytes=8 * 1024 * 1024)
    assert (ckpt / "model.safetensors.index.json").is_file()
    result = convert(ckpt, outdir=tmp_path / "out", outtype="f32", progress=False)
    _, tensors = read_gguf(result.model_path)
    reference = load_file(tiny_checkpoint / "model.safetensors")["lfm.embed_tokens.weight"]
    bits = tiny_tool.to_bf16_bits(reference).astype(np.uint32) << 16
    assert np.array_equal(tensors["token_embd.weight"][1], bits.view(np.float32))


def test_requantize_mmproj(tiny_gguf_f32: ConvertResult, tiny_gguf_q8: ConvertResult, tmp_path: Path) -> None:
    out = quantize_mmproj(tiny_gguf_f32.mmproj_path, tmp_path / "mmproj-Q8_0.gguf", "q8_0")
    kv_a, a = read_gguf(out)
    kv_b, b = read_gguf(tiny_gguf_q8.mmproj_path)
    assert kv_a == kv_b
    assert a.keys() == b.keys()
    assert all(a[n][0] == b[n][0] and np.array_equal(a[n][1], b[n][1]) for n in a)
    with pytest.raises(ConversionError, match="exists"):
        quantize_mmproj(tiny_gguf_f32.mmproj_path, out, "f16")
    with pytest.raises(ConversionError, match="not an mmproj"):
        quantize_mmproj(tiny_gguf_f32.model_path, tmp_path / "x.gguf", "f16")


# --- bad input -------------------------------------------------------------------------

def test_no_config(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    (ckpt / "config.json").unlink()
    with pytest.raises(ConversionError, match="no config.json"):
        convert(ckpt, outdir=tmp_path / "out", progress=False)
    assert ggufs_in(tmp_path) == []


def test_other_architecture(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())["lfm"]  # a plain LFM2 text config
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="not an LFM2-Audio model"):
        convert(ckpt, outdir=tmp_path / "out", progress=False)
    assert ggufs_in(tmp_path) == []


def test_missing_tensor(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt", link_weights=False)
    tensors = load_file(ckpt / "model.safetensors")
    del tensors["conformer.layers.1.self_attn.linear_pos.weight"]
    save_file(tensors, ckpt / "model.safetensors")
    with pytest.raises(ConversionError, match="linear_pos.weight"):
        convert(ckpt, outdir=tmp_path / "out", progress=False)
    assert ggufs_in(tmp_path) == []


def test_shape_disagrees_with_config(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config["lfm"]["vocab_size"] = 2048
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="embed_tokens.weight.*shape.*2048"):
        convert(ckpt, outdir=tmp_path / "out", progress=False)
    assert ggufs_in(tmp_path) == []


def test_unexpected_tensor(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # An index can add a shard with a tensor liquid-audio's model does not have.
    ckpt = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    names = load_file(ckpt / "model.safetensors").keys()
    save_file({"lora_A.weight": np.zeros((2, 2), np.float32)}, ckpt / "extra.safetensors")
    weight_map = {n: "model.safetensors" for n in names} | {"lora_A.weight": "extra.safetensors"}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ConversionError, match="unexpected tensor 'lora_A.weight'"):
        plan(ckpt)
    with pytest.raises(ConversionError, match="unexpected tensor"):
        convert(ckpt, outdir=tmp_path / "out", progress=False)
    assert ggufs_in(tmp_path) == []


def test_no_tokenizer(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(ConversionError, match="no tokenizer.json"):
        convert(ckpt, outdir=tmp_path / "out", progress=False)
    assert ggufs_in(tmp_path) == []


def test_unwritable_outdir(tiny_checkpoint: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConversionError, match="cannot write to"):
        convert(tiny_checkpoint, outdir=blocker / "out", progress=False)
    assert ggufs_in(tmp_path) == []


def test_existing_output_needs_force(tiny_checkpoint: Path, tiny_gguf_f32: ConvertResult, tmp_path: Path) -> None:
    first = convert(tiny_checkpoint, outdir=tmp_path, outtype="f32", progress=False, with_speech=False)
    before = file_digest(first.model_path)
    assert before == file_digest(tiny_gguf_f32.model_path)  # the conversion is deterministic
    with pytest.raises(ConversionError, match="already exist.*force"):
        convert(tiny_checkpoint, outdir=tmp_path, outtype="f32", progress=False, with_speech=False)
    again = convert(tiny_checkpoint, outdir=tmp_path, outtype="f32", force=True, progress=False, with_speech=False)
    assert again == first and file_digest(again.model_path) == before
    assert ggufs_in(tmp_path) == sorted([first.model_path, first.mmproj_path])


def test_unknown_outtype(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="outtype"):
        convert(tiny_checkpoint, outdir=tmp_path, outtype="q4_k", progress=False)


# --- inspecting and checking GGUFs -------------------------------------------------------

def test_inspect(tiny_gguf_q8: ConvertResult) -> None:
    info = inspect_gguf(tiny_gguf_q8.model_path)
    assert info["kind"] == "model" and info["arch"] == "lfm2" and info["projector"] is None
    assert info["name"] == "tiny-lfm2-audio"
    assert info["hparams"]["layers"] == 4 and info["hparams"]["embedding"] == 64
    assert info["tensor_count"] == sum(info["tensor_types"].values()) and "Q8_0" in info["tensor_types"]
    assert info["file_size"] == tiny_gguf_q8.model_path.stat().st_size and info["complete"]
    assert info["n_tokens"] == 1024

    mm = inspect_gguf(tiny_gguf_q8.mmproj_path)
    assert mm["kind"] == "mmproj" and mm["projector"] == "lfm2a" and mm["has_audio"]
    assert mm["hparams"]["embedding"] == 512 and mm["hparams"]["projection"] == 64
    text = format_info(mm)
    assert "lfm2a" in text and "tensors" in text and "Q8_0" in text


def test_check_gguf(tiny_gguf_f16: ConvertResult, tmp_path: Path) -> None:
    assert check_gguf(tiny_gguf_f16.model_path) == {"kind": "model", "arch": "lfm2", "projector": None,
                                                    "has_audio": False, "n_embd": 64}
    assert check_gguf(tiny_gguf_f16.mmproj_path) == {"kind": "mmproj", "arch": "clip", "projector": "lfm2a",
                                                     "has_audio": True, "n_embd": 64}
    with pytest.raises(ModelLoadError, match="no such"):
        check_gguf(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        check_gguf(junk)
    data = tiny_gguf_f16.mmproj_path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])  # data section short
    with pytest.raises(ModelLoadError, match="truncated"):
        check_gguf(cut)
    assert inspect_gguf(cut)["complete"] is False
    cut.write_bytes(data[:200])  # inside the header
    with pytest.raises(ModelLoadError, match="truncated"):
        check_gguf(cut)


# --- the engine ------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["tiny_gguf_f32", "tiny_gguf_f16", "tiny_gguf_q8"])
def test_converted_ggufs_load_and_transcribe(which: str, request: pytest.FixtureRequest) -> None:
    import pylfm

    g = request.getfixturevalue(which)
    model = pylfm.Model(g.model_path, g.mmproj_path, device="cpu", n_threads=2)
    t = np.arange(32000) / 16000
    r = model.transcribe((0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t)).astype(np.float32), sample_rate=16000,
                         max_new_tokens=24, ignore_eos=True)
    assert r.n_tokens == 24 and len(set(r.tokens)) > 8, r.tokens  # varied, not one repeated token


def test_engine_tokenizes_like_the_checkpoint(tiny_checkpoint: Path, tiny_gguf_f32: ConvertResult) -> None:
    """The GGUF's vocab, merges and pre-tokenizer reproduce tokenizer.json's ids."""
    import pylfm
    import tokenizers

    reference = tokenizers.Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))
    model = pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=2)
    user = "Summarize this: the quick brown fox, 42 times!"
    ids = model.prompt_tokens(np.full(16000, 0.1, np.float32), sample_rate=16000, prompt=user)
    audio_at = ids.index(-1)
    after = [t for t in ids[audio_at:] if t >= 0]
    expected = reference.encode(user + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).ids
    assert after == expected
    before = reference.encode("<|startoftext|><|im_start|>system\nPerform ASR.<|im_end|>\n<|im_start|>user\n",
                              add_special_tokens=False).ids
    assert ids[:audio_at] == before
