"""pylfm.measure.bench and pylfm.measure.evaluate: the synthetic signal, the measuring loop and its
report, the CLI commands, WER/CER and their normalisation, and manifest handling
(including lines that fail without ending the run), all scored on the tiny model's
real transcripts."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import pylfm
from pylfm import cli
from pylfm.audio import load_audio
from pylfm.measure.bench import format_report, run_bench, synth_audio
from pylfm.measure.evaluate import cer, error_counts, evaluate, format_table, normalize_text, wer

RATE = 16000


# --------------------------------------------------------------------------- synthetic signal
def test_synth_audio_is_deterministic_and_speech_like():
    a = synth_audio(5.0)
    assert a.dtype == np.float32 and a.shape == (5 * RATE,)
    assert np.array_equal(a, synth_audio(5.0))
    assert not np.array_equal(a, synth_audio(5.0, seed=1))
    assert np.abs(a).max() <= 1.0
    rms = float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))
    assert 0.03 < rms < 0.2  # about -20 dBFS, far from silence


def test_synth_audio_long_splits_in_pauses_into_full_windows():
    from pylfm.vad import plan_windows

    x = synth_audio(120.0)
    windows = plan_windows(x, RATE, window=30.0, vad="energy")
    assert 4 <= len(windows) <= 6
    assert all(b - a <= 30 * RATE for a, b in windows)
    assert sum(b - a for a, b in windows) > 0.95 * len(x)  # the pauses are kept, not dropped


def test_synth_audio_rejects_bad_length():
    with pytest.raises(ValueError):
        synth_audio(0)


# --------------------------------------------------------------------------- normalisation and scores
def test_normalisation_is_lowercase_strip_punctuation_collapse_whitespace():
    assert normalize_text("  Hello,   World!\tIt's  well-known…  ") == "hello world its wellknown"
    assert normalize_text("«Ça va?» — «Oui.»") == "ça va oui"
    assert normalize_text("$5 + 3% = 2") == "$5 + 3 = 2"  # symbols and digits stay
    assert normalize_text("") == ""


def test_wer_cer_with_and_without_normalisation():
    assert wer("Hello, world!", "hello world") == 0.0
    assert wer("Hello, world!", "hello world", normalize=False) == 1.0  # both words differ as written
    assert cer("Hello, world!", "HELLO WORLD") == 0.0
    assert wer("the cat sat", "the cat sat") == 0.0
    assert wer("the cat sat", "the dog sat") == pytest.approx(1 / 3)
    assert wer("the cat sat", "the cat sat down") == pytest.approx(1 / 3)  # one insertion
    assert wer("a b c d", "") == 1.0
    assert cer("abcd", "abxd") == pytest.approx(0.25)
    assert cer("ab cd", "ab xd") == pytest.approx(0.2)  # spaces count as characters
    # an empty reference has no rate unless the hypothesis is empty too
    assert wer("", "") == 0.0 and wer("...", "") == 0.0
    assert wer("", "surprise") is None
    c = error_counts("the cat sat", "a cat sat on", unit="word")
    assert (c["substitutions"], c["deletions"], c["insertions"], c["errors"], c["ref_len"]) == (1, 0, 1, 2, 3)


# --------------------------------------------------------------------------- on the tiny model
@pytest.fixture(scope="module")
def model(tiny_gguf_f32):
    return pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=2, batch_size=2)


def _model_args(g):
    return ["--model", str(g.model_path), "--mmproj", str(g.mmproj_path), "--device", "cpu", "--threads", "2"]


def test_run_bench_reports_positive_timings(model, device_name):
    r = run_bench(model, synth_audio(3.0), sample_rate=RATE, repeat=2, warmup=1, fixed_tokens=6)
    assert r["n_tokens"] == 6 and r["fixed_tokens"] == 6
    assert r["n_windows"] == 1 and r["n_audio_tokens"] > 0 and r["n_prompt_tokens"] > r["n_audio_tokens"]
    assert r["audio_seconds"] == pytest.approx(3.0)
    assert r["load_ms"] > 0 and r["peak_rss_mb"] > 0
    assert r["device"].split()[0] == device_name and r["threads"] == 2
    assert len(r["runs"]) == 2
    for which in ("median", "min", "max"):
        for key in ("encode_ms", "prefill_ms", "decode_ms", "total_ms", "prefill_tok_s", "decode_tok_s", "rtf"):
            assert r[which][key] > 0, (which, key)
    assert r["min"]["total_ms"] <= r["median"]["total_ms"] <= r["max"]["total_ms"]
    text = format_report(r)
    assert "decode tok/s" in text and "real-time factor" in text and "peak RSS" in text


def test_run_bench_long_audio_counts_windows_and_keeps_decode_within_wall_time(model):
    r = run_bench(model, synth_audio(61.0), sample_rate=RATE, repeat=1, warmup=0, fixed_tokens=3, vad="energy")
    assert r["n_windows"] >= 3 and r["n_tokens"] == 3 * r["n_windows"]
    m = r["median"]
    assert m["encode_ms"] + m["prefill_ms"] + m["decode_ms"] <= m["total_ms"] * 1.0001
    assert m["rtf"] > 0 and m["decode_tok_s"] > 0


def test_bench_cli_json(tiny_gguf_f32, capsys):
    rc = cli.main(["bench", *_model_args(tiny_gguf_f32), "--seconds", "2", "--repeat", "1", "--warmup", "0",
                   "--fixed-tokens", "4", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_tokens"] == 4 and r["audio"].startswith("synthetic 2")
    assert r["median"]["rtf"] > 0 and r["median"]["decode_tok_s"] > 0 and r["load_wall_ms"] > 0


def test_bench_cli_table_with_audio_file(tiny_gguf_f32, tmp_path, capsys):
    wav = tmp_path / "x.wav"
    sf.write(str(wav), synth_audio(2.0), RATE)
    rc = cli.main(["bench", *_model_args(tiny_gguf_f32), "--audio", str(wav), "--repeat", "1", "--warmup", "0",
                   "--fixed-tokens", "3"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "x.wav" in out and "median" in out and "decode tok/s" in out


def _clips(tmp_path, n=3):
    paths = []
    for i in range(n):
        p = tmp_path / f"clip{i}.wav"
        sf.write(str(p), synth_audio(1.5 + 0.5 * i, seed=10 + i), RATE)
        paths.append(p)
    return paths


# The synthetic clips are speech-like bursts, not speech: decoded whole, without a detector.
WHOLE = {"vad": None}


def _words(model, path, tokens=12):
    words = normalize_text(model.transcribe(str(path), max_new_tokens=tokens, **WHOLE).text).split()
    assert words, f"the tiny model gave an empty transcript for {path.name}"
    return words


def _jsonl(path, entries):
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def test_overall_rates_are_corpus_level(model, tmp_path):
    """References made from the model's own output with known edits: one substitution in
    file a, three deletions in file b; overall = total edits / total reference words."""
    a, b = _clips(tmp_path, 2)
    wa, wb = _words(model, a), _words(model, b)
    ref_a = ["zzzq"] + wa[1:]
    ref_b = wb + ["three", "more", "words"]
    manifest = _jsonl(tmp_path / "m.jsonl", [{"audio": a.name, "text": " ".join(ref_a).upper() + "!"},
                                              {"audio": b.name, "text": " ".join(ref_b)}])
    r = evaluate(model, manifest, max_new_tokens=12, **WHOLE)
    fa, fb = r["files"]
    assert (fa["substitutions"], fa["deletions"], fa["insertions"]) == (1, 0, 0)
    assert (fb["substitutions"], fb["deletions"], fb["insertions"]) == (0, 3, 0)
    assert fa["wer"] == pytest.approx(1 / len(ref_a)) and fb["wer"] == pytest.approx(3 / len(ref_b))
    assert r["overall"]["wer"] == pytest.approx(4 / (len(ref_a) + len(ref_b)))
    assert r["overall"]["ref_words"] == len(ref_a) + len(ref_b) and r["overall"]["word_errors"] == 4
    assert r["overall"]["duration"] == pytest.approx(1.5 + 2.0)
    assert r["overall"]["rtf"] > 0 and r["n_scored"] == 2
    # scored as written, the upper-case reference with "!" differs in every word
    raw = evaluate(model, manifest, normalize=False, max_new_tokens=12, **WHOLE)
    assert raw["normalize"] is False and raw["files"][0]["wer"] > fa["wer"]


def test_manifest_errors_are_reported_per_line_and_the_run_goes_on(model, tmp_path):
    good = _clips(tmp_path, 1)[0]
    hyp = " ".join(_words(model, good, 8))
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 20)
    lines = [
        json.dumps({"audio": good.name, "text": hyp}),
        json.dumps({"audio": "missing.wav", "text": "gone"}),
        "{not json",
        "",
        json.dumps({"audio": good.name}),
        json.dumps({"audio": "corrupt.wav", "text": "x"}),
        json.dumps({"audio": str(good), "text": hyp, "id": "abs"}),
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    seen = []
    r = evaluate(model, manifest, on_item=seen.append, max_new_tokens=8, **WHOLE)
    assert r["n_lines"] == 6 and r["n_scored"] == 2 and r["n_failed"] == 4
    assert len(seen) == 6
    errors = {f["line"]: f["error"] for f in r["files"] if "error" in f}
    assert set(errors) == {2, 3, 5, 6}
    assert "not found" in errors[2] and "missing.wav" in errors[2]
    assert "JSON" in errors[3]
    assert '"text"' in errors[5]
    assert errors[6].startswith("AudioError:") and "could not decode" in errors[6]
    assert r["files"][0]["wer"] == 0.0
    assert r["files"][-1]["id"] == "abs" and r["files"][-1]["wer"] == 0.0
    table = format_table(r)
    assert "4 of 6 lines failed" in table and "line 2:" in table and "overall (2 files)" in table


def test_evaluate_accepts_a_list_of_entries(model, tmp_path):
    path = _clips(tmp_path, 1)[0]
    hyp = " ".join(_words(model, path, 8))
    r = evaluate(model, [{"audio": str(path), "text": hyp.upper() + "."}], max_new_tokens=8, **WHOLE)
    assert r["files"][0]["wer"] == 0.0 and r["overall"]["cer"] == 0.0 and r["n_scored"] == 1


def test_eval_self_is_zero_and_other_text_is_positive(model, tmp_path):
    clips = _clips(tmp_path)
    hyps = [model.transcribe(str(p), max_new_tokens=12, **WHOLE).text for p in clips]
    assert all(normalize_text(h) for h in hyps), f"the tiny model gave an empty transcript: {hyps!r}"
    manifest = tmp_path / "self.jsonl"
    manifest.write_text("".join(json.dumps({"audio": p.name, "text": h}) + "\n" for p, h in zip(clips, hyps)))
    r = evaluate(model, manifest, max_new_tokens=12, **WHOLE)
    assert r["n_failed"] == 0 and r["n_scored"] == 3
    assert r["overall"]["wer"] == 0.0 and r["overall"]["cer"] == 0.0
    assert all(f["wer"] == 0.0 and f["rtf"] > 0 for f in r["files"])
    assert r["overall"]["rtf"] > 0 and r["overall"]["duration"] == pytest.approx(1.5 + 2.0 + 2.5)

    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"audio": p.name, "text": "a completely different sentence"}) + "\n"
                             for p in clips))
    r2 = evaluate(model, other, max_new_tokens=12, **WHOLE)
    assert r2["overall"]["wer"] > 0 and r2["overall"]["cer"] > 0


def test_eval_cli_reports_missing_audio_and_finishes(tiny_gguf_f32, model, tmp_path, capsys):
    speech = tmp_path / "speech.wav"  # real speech: the command's default detector passes it to the model
    sf.write(str(speech), load_audio(Path(__file__).parent / "fixtures" / "speech_espeak.flac")[:4 * RATE], RATE)
    hyp = model.transcribe(str(speech), max_new_tokens=8).text
    assert normalize_text(hyp), "the tiny model gave an empty transcript"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"audio": "nope.wav", "text": "lost"}) + "\n"
        + "this is not json\n"
        + json.dumps({"audio": speech.name, "text": hyp}) + "\n")
    rc = cli.main(["eval", str(manifest), *_model_args(tiny_gguf_f32), "--max-new-tokens", "8", "--json"])
    cap = capsys.readouterr()
    assert rc == 1  # a line failed, but only after everything ran and was printed
    r = json.loads(cap.out)
    assert r["n_lines"] == 3 and r["n_failed"] == 2 and r["n_scored"] == 1
    assert r["files"][2]["wer"] == 0.0
    assert "line 1" in cap.err and "nope.wav" in cap.err and "line 2" in cap.err

    rc = cli.main(["eval", str(manifest), *_model_args(tiny_gguf_f32), "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert rc == 1 and "WER %" in out and "2 of 3 lines failed" in out and "normalisation:" in out


def test_eval_cli_missing_manifest_is_an_error(tiny_gguf_f32, tmp_path, capsys):
    rc = cli.main(["eval", str(tmp_path / "none.jsonl"), *_model_args(tiny_gguf_f32)])
    assert rc == 2 and "manifest not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- benchmarks/ scripts
def _load_script(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bare_loop_generates_the_same_tokens_as_pylfm(tiny_gguf_f32):
    """The overhead comparison is like for like: same prompt, same greedy tokens.
    (The bare loop runs in its own process: llama.cpp's log hook is process-wide.)"""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bare_loop.py"
    p = subprocess.run([sys.executable, str(script), "--model", str(tiny_gguf_f32.model_path), "--mmproj",
                        str(tiny_gguf_f32.mmproj_path), "--seconds", "3", "--threads", "2", "--repeat", "1",
                        "--warmup", "0", "--fixed-tokens", "8", "--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    x = synth_audio(3.0)
    m = pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=2, batch_size=1)
    p = m.transcribe(x, sample_rate=RATE, max_new_tokens=8, ignore_eos=True)
    assert r["tokens"] == p.tokens and r["text"] == p.text
    assert r["n_prompt_tokens"] == p.n_prompt_tokens and r["n_audio_tokens"] == p.n_audio_tokens
    assert r["median"]["total_ms"] > 0 and r["median"]["decode_tok_s"] > 0

    p = subprocess.run([sys.executable, str(script), "--compare", "--model", str(tiny_gguf_f32.model_path), "--mmproj",
                        str(tiny_gguf_f32.mmproj_path), "--seconds", "3", "--threads", "2", "--repeat", "2",
                        "--warmup", "0", "--fixed-tokens", "6", "--batch-size", "2", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    c = json.loads(p.stdout)
    assert c["same_tokens"] and len(c["rounds"]) == 2 and c["n_tokens"] == 6
    assert c["pylfm_total_ms"]["median"] > 0 and c["bare_total_ms"]["median"] > 0
    assert isinstance(c["overhead_median"], float)


def test_perf_table_finds_models_and_renders_markdown(tmp_path):
    pt = _load_script("perf_table")
    for f in ("M-F16.gguf", "mmproj-M-F16.gguf", "M-Q8_0.gguf", "mmproj-M-Q8_0.gguf", "M-Q4_0.gguf"):
        (tmp_path / f).write_bytes(b"")
    assert pt.find_pair(tmp_path, "f16") == (tmp_path / "M-F16.gguf", tmp_path / "mmproj-M-F16.gguf")
    assert pt.find_pair(tmp_path, "q4_0") == (tmp_path / "M-Q4_0.gguf", tmp_path / "mmproj-M-Q8_0.gguf")
    assert pt.find_pair(tmp_path, "q5_0") is None

    stats = {"encode_ms": 900.0, "prefill_ms": 2000.0, "decode_ms": 8000.0, "total_ms": 11000.0,
             "prefill_tok_s": 200.0, "decode_tok_s": 8.0, "rtf": 0.3667}
    row = {"qtype": "q8_0", "seconds": 30.0, "threads": 2, "load_ms": 1500.0, "peak_rss_mb": 2100.0,
           "fixed_tokens": 64, "repeat": 3, "warmup": 1, "median": stats, "min": stats, "max": stats}
    over = {"qtype": "q8_0", "seconds": 30.0, "threads": 2, "repeat": 3, "same_tokens": True,
            "pylfm_total_ms": {"median": 11000.0, "min": 10900.0}, "bare_total_ms": {"median": 10890.0, "min": 10850.0},
            "overhead_median": 0.0101, "overhead_min": 10900 / 10850 - 1,
            "pylfm_decode_tok_s": 8.0, "bare_decode_tok_s": 8.01}
    results = {"environment": {"date": "today", "cpu": "cpu", "cpu_count": 2, "platform": "linux", "pylfm": "0",
                               "llama_cpp_python": "0.3.36", "loadavg": [0.5, 0.7]},
               "config": {"batch_size": 4, "note": "Random weights."},
               "rows": [row, {"qtype": "f16", "seconds": 300.0, "threads": 1, "error": "timed out"}],
               "overhead": [over, {"qtype": "f16", "seconds": 30.0, "threads": 1, "error": "exit 1: boom"}]}
    md = pt.markdown(results)
    assert "| q8_0 | 30 s | 2 | 64 | 3 (+1) | 1.50 |" in md and "0.367" in md
    assert "| f16 | 5 min | 1 | | | error: timed out" in md
    assert "+1.01%" in md and "+0.46%" in md and "| yes |" in md and "error: exit 1: boom" in md
    assert "Random weights." in md and "0.50, 0.70" in md
