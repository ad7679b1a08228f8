"""The LFM2 tokenizer, from ``tokenizer.json`` into GGUF ``tokenizer.ggml.*`` keys.

LFM2 uses a byte-level BPE (GPT-2 style tokens and merges). llama.cpp knows its
pre-tokenizer as ``lfm2``. Token types follow llama.cpp's converter: added tokens
that are special (or look like ``<|...|>``) are CONTROL, other added tokens are
USER_DEFINED, the rest NORMAL, and ids the tokenizer does not fill up to the
model's vocab_size are ``[PAD<id>]`` UNUSED. Merges, special-token ids, the
add_bos/add_eos flags and the chat template come from gguf-py's ``SpecialVocab``
(reading tokenizer.json / tokenizer_config.json).
"""

from __future__ import annotations

import json
from pathlib import Path

from gguf import GGUFWriter, SpecialVocab, TokenType

from ...errors import ConversionError

PRE_TOKENIZER = "lfm2"


def _looks_special(text: str) -> bool:
    return text.startswith("<|") and text.endswith("|>")


def read_vocab(directory: Path, n_vocab: int) -> tuple[list[str], list[int]]:
    """Token texts and types for ids 0..n_vocab-1."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise ConversionError(f"no tokenizer.json in {directory}; the checkpoint needs its tokenizer "
                              "(tokenizer.json and tokenizer_config.json) to be converted")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        vocab: dict[str, int] = model["vocab"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"cannot read the vocabulary in {path}: {e}") from e
    if model.get("type", "BPE") != "BPE":
        raise ConversionError(f"{path} holds a {model.get('type')} tokenizer; LFM2 uses byte-level BPE")

    texts: dict[int, str] = {i: t for t, i in vocab.items()}
    added: dict[int, bool] = {}  # id -> special
    for tok in data.get("added_tokens", []):
        texts[int(tok["id"])] = tok["content"]
        added[int(tok["id"])] = bool(tok.get("special", False))
    if texts and max(texts) >= n_vocab:
        raise ConversionError(
            f"{path} has token id {max(texts)} but the model's vocab_size (config.json lfm.vocab_size) "
            f"is {n_vocab}; the tokenizer does not belong to these weights")

    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        text = texts.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(text)
            types.append(TokenType.CONTROL if added[i] or _looks_special(text) else TokenType.USER_DEFINED)
        else:
            tokens.append(text)
            types.append(TokenType.NORMAL)
    return tokens, types


def add_vocab(writer: GGUFWriter, directory: Path, n_vocab: int) -> None:
    tokens, types = read_vocab(directory, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = SpecialVocab(directory, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise ConversionError(f"{directory / 'tokenizer.json'} has no BPE merges; "
                              "the tokenizer is incomplete, download it again")
    special.add_to_gguf(writer, quiet=True)
