"""pylfm quantize and the convert / inspect / quantize commands, on the tiny GGUFs."""

import json

import numpy as np
import pytest

import pylfm
import pylfm.files.quantize
from pylfm import cli
from pylfm.errors import ConversionError, ModelLoadError
from pylfm.files.inspect import inspect_gguf


def _chirp():
    t = np.arange(32000) / 16000
    return (0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t)).astype(np.float32)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_K_M"])
def test_quantized_text_model_is_smaller_and_loads(tiny_gguf_f32, tmp_path, qtype):
    out = pylfm.quantize(tiny_gguf_f32.model_path, tmp_path / f"tiny-{qtype}.gguf", qtype)
    assert out.stat().st_size < tiny_gguf_f32.model_path.stat().st_size
    assert out.stat().st_mode & 0o777 == tiny_gguf_f32.model_path.stat().st_mode & 0o777  # not mkstemp's 0600
    info = inspect_gguf(out)
    assert info["file_type"] == pylfm.files.quantize.MODEL_TYPES[qtype]
    if "_K" not in qtype:  # k-quants need rows of 256; the tiny model's 64-wide rows fall back
        assert qtype in info["tensor_types"]
    model = pylfm.Model(out, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=2)
    assert model.transcribe(_chirp(), sample_rate=16000, max_new_tokens=8, ignore_eos=True).n_tokens == 8


def test_quantized_mmproj(tiny_gguf_f32, tmp_path):
    out = pylfm.quantize(tiny_gguf_f32.mmproj_path, tmp_path / "mmproj-q8.gguf", "q8_0")
    assert out.stat().st_size < tiny_gguf_f32.mmproj_path.stat().st_size / 2
    model = pylfm.Model(tiny_gguf_f32.model_path, out, device="cpu", n_threads=2)
    assert model.transcribe(_chirp(), sample_rate=16000, max_new_tokens=4, ignore_eos=True).n_tokens == 4
    with pytest.raises(ConversionError, match="mmproj"):
        pylfm.quantize(tiny_gguf_f32.mmproj_path, tmp_path / "mmproj-q4.gguf", "Q4_K_M")


def test_quantize_bad_input_leaves_nothing(tiny_gguf_f32, tmp_path):
    with pytest.raises(ConversionError, match="unknown type"):
        pylfm.quantize(tiny_gguf_f32.model_path, tmp_path / "x.gguf", "Q9_9")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf_f32.model_path.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="truncated"):
        pylfm.quantize(cut, tmp_path / "y.gguf", "Q8_0")
    existing = tmp_path / "exists.gguf"
    existing.write_bytes(b"keep")
    with pytest.raises(ConversionError, match="exists"):
        pylfm.quantize(tiny_gguf_f32.model_path, existing, "Q8_0")
    assert existing.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf", "exists.gguf"]


def test_commands_convert_quantize_inspect(tiny_checkpoint, tmp_path, capsys):
    assert cli.main(["convert", str(tiny_checkpoint), "-o", str(tmp_path), "--outtype", "f16", "--quiet",
                     "--no-speech"]) == 0
    model, mmproj = capsys.readouterr().out.split()
    assert model.endswith("tiny-lfm2-audio-F16.gguf") and mmproj.endswith("mmproj-tiny-lfm2-audio-F16.gguf")
    assert cli.main(["convert", str(tiny_checkpoint), "-o", str(tmp_path), "--quiet"]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    q4 = str(tmp_path / "tiny-Q4_0.gguf")
    assert cli.main(["quantize", model, q4, "q4_0"]) == 0
    capsys.readouterr()
    assert cli.main(["inspect", q4, mmproj, "--json"]) == 0
    infos = json.loads(capsys.readouterr().out)
    assert infos[0]["arch"] == "lfm2" and "Q4_0" in infos[0]["tensor_types"]
    assert infos[1]["projector"] == "lfm2a" and infos[1]["hparams"]["embedding"] == 512
    assert cli.main(["inspect", mmproj]) == 0
    text = capsys.readouterr().out
    assert "lfm2a" in text and "tensors" in text and "M parameters" in text
