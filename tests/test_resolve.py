"""Model resolution: which text model and mmproj are picked among the files of the
official GGUF repositories and of local folders (by name, and by GGUF header)."""

import os
import shutil

import numpy as np
import pytest

import pylfm
from pylfm.errors import ModelNotFoundError
from pylfm.files.resolve import pick_files, resolve

# The files of the official repositories (Hugging Face file listings; speech output
# needs the vocoder/tokenizer/audiodecoder files, transcription never does).
LFM25_REPO = [
    "LFM2.5-Audio-1.5B-F16.gguf", "LFM2.5-Audio-1.5B-Q4_0.gguf", "LFM2.5-Audio-1.5B-Q8_0.gguf",
    "liquid_audio_chat.py",
    "mmproj-LFM2.5-Audio-1.5B-F16.gguf", "mmproj-LFM2.5-Audio-1.5B-Q4_0.gguf", "mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf",
    "runners/llama-liquid-audio-macos-arm64.zip", "runners/llama-liquid-audio-ubuntu-x64.zip",
    "tokenizer-LFM2.5-Audio-1.5B-F16.gguf", "tokenizer-LFM2.5-Audio-1.5B-Q4_0.gguf",
    "tokenizer-LFM2.5-Audio-1.5B-Q8_0.gguf",
    "vocoder-LFM2.5-Audio-1.5B-F16.gguf", "vocoder-LFM2.5-Audio-1.5B-Q4_0.gguf", "vocoder-LFM2.5-Audio-1.5B-Q8_0.gguf",
]
LFM2_REPO = [
    "LFM2-Audio-1.5B-F16.gguf", "LFM2-Audio-1.5B-Q8_0.gguf",
    "audiodecoder-LFM2-Audio-1.5B-F16.gguf", "audiodecoder-LFM2-Audio-1.5B-Q8_0.gguf",
    "mmproj-audioencoder-LFM2-Audio-1.5B-F16.gguf", "mmproj-audioencoder-LFM2-Audio-1.5B-Q8_0.gguf",
    "runners/ubuntu-x64/lfm2-audio-ubuntu-x64.zip",
]


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0", "F16"])
@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_lfm25_repo(quant, order):
    names = sorted(LFM25_REPO, reverse=order == "reversed")  # the listing's order does not matter
    assert pick_files(names, quant) == (f"LFM2.5-Audio-1.5B-{quant}.gguf", f"mmproj-LFM2.5-Audio-1.5B-{quant}.gguf")


@pytest.mark.parametrize("quant", ["Q8_0", "F16"])
@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_lfm2_repo(quant, order):
    names = sorted(LFM2_REPO, reverse=order == "reversed")
    assert pick_files(names, quant) == (f"LFM2-Audio-1.5B-{quant}.gguf", f"mmproj-audioencoder-LFM2-Audio-1.5B-{quant}.gguf")


def test_missing_quant_falls_back_and_the_mmproj_follows_the_model():
    assert pick_files(LFM2_REPO, "Q4_0") == ("LFM2-Audio-1.5B-F16.gguf", "mmproj-audioencoder-LFM2-Audio-1.5B-F16.gguf")
    assert pick_files(LFM25_REPO, "Q4_K_M") == ("LFM2.5-Audio-1.5B-F16.gguf", "mmproj-LFM2.5-Audio-1.5B-F16.gguf")
    # a Q4_0 model whose Q4_0 mmproj is missing: the best mmproj of the same model
    names = [n for n in LFM25_REPO if n != "mmproj-LFM2.5-Audio-1.5B-Q4_0.gguf"]
    assert pick_files(names, "Q4_0") == ("LFM2.5-Audio-1.5B-Q4_0.gguf", "mmproj-LFM2.5-Audio-1.5B-F16.gguf")


def test_names_are_not_case_or_sort_dependent():
    # lower-case model names sort after "tokenizer-" and "vocoder-": the old sort-order pick took those
    names = ["tokenizer-lfm2.5-audio-1.5b-q8_0.gguf", "vocoder-lfm2.5-audio-1.5b-q8_0.gguf",
             "mmproj-lfm2.5-audio-1.5b-q8_0.gguf", "zz-lfm2.5-audio-1.5b-q8_0.gguf"]
    assert pick_files(names, "q8_0") == ("zz-lfm2.5-audio-1.5b-q8_0.gguf", "mmproj-lfm2.5-audio-1.5b-q8_0.gguf")
    # "BF16" is not "F16"
    names = ["M-BF16.gguf", "M-F16.gguf", "mmproj-M-BF16.gguf", "mmproj-M-F16.gguf"]
    assert pick_files(names, "F16") == ("M-F16.gguf", "mmproj-M-F16.gguf")
    assert pick_files(names, "BF16") == ("M-BF16.gguf", "mmproj-M-BF16.gguf")


def test_two_models_in_one_folder_pair_by_name():
    names = ["LFM2.5-Audio-1.5B-Q8_0.gguf", "mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf",
             "LFM2.5-Audio-1.5B-JP-F16.gguf", "mmproj-LFM2.5-Audio-1.5B-JP-F16.gguf"]
    assert pick_files(names, "Q8_0") == ("LFM2.5-Audio-1.5B-Q8_0.gguf", "mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf")
    with pytest.raises(ModelNotFoundError, match="several text models fit equally well: "
                                                 "LFM2.5-Audio-1.5B-JP-Q8_0.gguf, LFM2.5-Audio-1.5B-Q8_0.gguf"):
        pick_files([n.replace("JP-F16", "JP-Q8_0") for n in names], "Q8_0")


def test_no_usable_pair_is_a_clear_error():
    with pytest.raises(ModelNotFoundError, match="mmproj"):
        pick_files(["LFM2.5-Audio-1.5B-Q8_0.gguf", "vocoder-LFM2.5-Audio-1.5B-Q8_0.gguf"])
    with pytest.raises(ModelNotFoundError, match="text-model"):
        pick_files(["mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf", "tokenizer-LFM2.5-Audio-1.5B-Q8_0.gguf"])


# --------------------------------------------------------------------------- local folders, real files
def _link(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def test_official_layout_folder_loads_the_right_pair(tiny_gguf_f32, tmp_path):
    """A folder laid out like LiquidAI/LFM2.5-Audio-1.5B-GGUF, with the speech-output
    files present (here: copies of the text model, which is what a tokenizer GGUF looks
    like to a header check: arch lfm2), loads and transcribes."""
    g = tiny_gguf_f32
    for q in ("F16", "Q8_0"):
        _link(g.model_path, tmp_path / f"LFM2.5-Audio-1.5B-{q}.gguf")
        _link(g.mmproj_path, tmp_path / f"mmproj-LFM2.5-Audio-1.5B-{q}.gguf")
        _link(g.model_path, tmp_path / f"tokenizer-LFM2.5-Audio-1.5B-{q}.gguf")
        _link(g.mmproj_path, tmp_path / f"vocoder-LFM2.5-Audio-1.5B-{q}.gguf")
    assert resolve(tmp_path) == (tmp_path / "LFM2.5-Audio-1.5B-Q8_0.gguf", tmp_path / "mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf")
    assert resolve(tmp_path, quant="F16")[1] == tmp_path / "mmproj-LFM2.5-Audio-1.5B-F16.gguf"
    # a model file alone: its mmproj is found next to it
    assert resolve(tmp_path / "LFM2.5-Audio-1.5B-F16.gguf") == (
        tmp_path / "LFM2.5-Audio-1.5B-F16.gguf", tmp_path / "mmproj-LFM2.5-Audio-1.5B-F16.gguf")
    with pylfm.Model(tmp_path, device="cpu", n_threads=2) as m:
        assert (m.model_path.name, m.mmproj_path.name) == ("LFM2.5-Audio-1.5B-Q8_0.gguf",
                                                           "mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf")
        t = np.arange(16000) / 16000
        assert m.transcribe((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sample_rate=16000,
                            max_new_tokens=4, ignore_eos=True, vad=None).n_tokens == 4


def test_folder_with_other_names_uses_the_headers(tiny_gguf_f32, tmp_path):
    """Names that say nothing: the GGUF headers tell the text model from the mmproj,
    and a GGUF of another architecture is not taken for either."""
    _link(tiny_gguf_f32.model_path, tmp_path / "text.gguf")
    _link(tiny_gguf_f32.mmproj_path, tmp_path / "audio.gguf")
    assert resolve(tmp_path) == (tmp_path / "text.gguf", tmp_path / "audio.gguf")
    assert resolve(tmp_path / "text.gguf") == (tmp_path / "text.gguf", tmp_path / "audio.gguf")
    # an unreadable GGUF may be anything: it is not passed over silently
    (tmp_path / "notes.gguf").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ModelNotFoundError, match="several text models"):
        resolve(tmp_path)


def test_model_file_without_any_mmproj_next_to_it(tiny_gguf_f32, tmp_path):
    _link(tiny_gguf_f32.model_path, tmp_path / "M-F32.gguf")
    _link(tiny_gguf_f32.model_path, tmp_path / "tokenizer-M-F32.gguf")
    with pytest.raises(ModelNotFoundError, match="no mmproj given for M-F32.gguf and none next to it"):
        resolve(tmp_path / "M-F32.gguf")
