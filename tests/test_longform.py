"""Long recordings: windows cut at pauses, timed segments, silence, batches, and the
CLI's writers, on the tiny model. The synthetic tone recordings are cut with the energy
detector (Silero rightly hears no speech in tones); real speech goes through Silero."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import pylfm
from pylfm import cli
from pylfm.transcription import formats

RATE = 16000


def synthetic_recording(minutes: float, seed: int = 0):
    """Tone/chirp 'utterances' of 1-6 s separated by 0.6-2 s pauses over faint noise.
    Returns (audio, [(start_s, end_s), ...] of the utterances)."""
    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * RATE)
    audio = (rng.standard_normal(total) * 1e-4).astype(np.float32)
    spans, pos = [], int(0.5 * RATE)
    while True:
        length = int(rng.uniform(1.0, 6.0) * RATE)
        if pos + length > total - RATE:
            break
        t = np.arange(length) / RATE
        f0, f1 = rng.uniform(150, 900), rng.uniform(300, 2500)
        tone = 0.25 * np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / t[-1] * t * t))
        audio[pos:pos + length] += (tone * np.hanning(length) ** 0.1).astype(np.float32)
        spans.append((pos / RATE, (pos + length) / RATE))
        pos += length + int(rng.uniform(0.6, 2.0) * RATE)
    return audio, spans


@pytest.fixture(scope="module")
def model(tiny_gguf_f32):
    return pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=2, batch_size=4)


def test_fifteen_minutes_complete_and_ordered(model):
    audio, spans = synthetic_recording(15)
    r = model.transcribe(audio, sample_rate=RATE, max_new_tokens=3, ignore_eos=True, vad="energy")
    segs = r.segments
    assert r.duration == pytest.approx(15 * 60)
    assert len(segs) >= 15 * 60 / 30  # windows are at most 30 s
    for a, b in zip(segs, segs[1:]):
        assert a.end <= b.start, "segments overlap or are out of order"
    assert all(0 <= s.start < s.end <= r.duration and s.end - s.start <= 30.0 + 1e-6 for s in segs)
    # every utterance lies wholly inside one segment: nothing lost, nothing cut in two
    for a, b in spans:
        assert any(s.start <= a + 0.05 and b - 0.05 <= s.end for s in segs), f"utterance {a:.2f}-{b:.2f}s not covered"
    assert r.text == " ".join(s.text for s in segs)


def test_lazy_segments_match_eager(model):
    audio, _ = synthetic_recording(2, seed=3)
    eager = model.transcribe(audio, sample_rate=RATE, max_new_tokens=6, vad="energy")
    segments, info = model.transcribe_segments(audio, sample_rate=RATE, max_new_tokens=6, vad="energy")
    assert info.duration == pytest.approx(120) and info.n_windows >= 4
    assert info.timings.decode_ms == 0  # nothing decoded until iterated
    lazy = list(segments)
    assert [(s.start, s.end, s.text) for s in lazy] == [(s.start, s.end, s.text) for s in eager.segments]
    assert info.timings.decode_ms > 0


def test_window_batching_gives_the_same_text(model):
    audio, _ = synthetic_recording(2, seed=5)
    one = model.transcribe(audio, sample_rate=RATE, max_new_tokens=6, batch_size=1, vad="energy")
    four = model.transcribe(audio, sample_rate=RATE, max_new_tokens=6, batch_size=4, vad="energy")
    assert one.text == four.text


@pytest.mark.parametrize("noise", [0.0, 1e-4])
def test_silent_minute_gives_no_text(model, noise):
    audio = (np.random.default_rng(1).standard_normal(60 * RATE) * noise).astype(np.float32)
    r = model.transcribe(audio, sample_rate=RATE)
    assert r.text == "" and r.segments == [] and r.tokens == []


# ---------------------------------------------------------------- CLI
def _write_clips(tmp_path, n=3):
    paths = []
    for i in range(n):
        audio, _ = synthetic_recording(0.6, seed=10 + i)
        p = tmp_path / f"clip{i}.wav"
        sf.write(p, audio, RATE)
        paths.append(p)
    return paths


def _model_args(g):
    return ["--model", str(g.model_path), "--mmproj", str(g.mmproj_path), "--device", "cpu", "--threads", "2",
            "--vad", "energy"]


def test_cli_batch_writes_one_file_per_input(tiny_gguf_f32, tmp_path, capsys, device_name):
    clips = _write_clips(tmp_path)
    out = tmp_path / "out"
    rc = cli.main(["transcribe", *map(str, clips), "-f", "all", "-o", str(out), "--quiet",
                   "--max-new-tokens", "6", *_model_args(tiny_gguf_f32)])
    assert rc == 0
    for c in clips:
        for ext in ("txt", "json", "srt", "vtt"):
            assert (out / f"{c.stem}.{ext}").is_file()
        doc = json.loads((out / f"{c.stem}.json").read_text())
        segs = [formats.Segment(**s) for s in doc["segments"]]
        key = [(round(s.start, 3), round(s.end, 3), s.text) for s in segs]
        srt = formats.parse_srt((out / f"{c.stem}.srt").read_text())
        vtt = formats.parse_vtt((out / f"{c.stem}.vtt").read_text())
        assert [(round(s.start, 3), round(s.end, 3), s.text) for s in srt] == key
        assert [(round(s.start, 3), round(s.end, 3), s.text) for s in vtt] == key
        assert (out / f"{c.stem}.txt").read_text().strip() == doc["text"].strip()
        assert doc["device"].split()[0] == device_name and doc["timings"]["decode_ms"] > 0
    assert not list(out.glob("*.part")) and not list(out.glob(".*"))


def test_cli_reports_unreadable_file_and_writes_the_others(tiny_gguf_f32, tmp_path, capsys):
    clips = _write_clips(tmp_path, 2)
    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    out = tmp_path / "out"
    rc = cli.main(["transcribe", str(clips[0]), str(bad), str(clips[1]), "-f", "srt", "-o", str(out), "--quiet",
                   "--max-new-tokens", "4", *_model_args(tiny_gguf_f32)])
    assert rc == 1
    assert "broken.wav" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["clip0.srt", "clip1.srt"]


def test_cli_streams_text_and_json(tiny_gguf_f32, tmp_path, capsys):
    clip = _write_clips(tmp_path, 1)[0]
    assert cli.main(["transcribe", str(clip), "--max-new-tokens", "6", *_model_args(tiny_gguf_f32)]) == 0
    streamed = capsys.readouterr().out
    assert cli.main(["transcribe", str(clip), "--json", "--max-new-tokens", "6", *_model_args(tiny_gguf_f32)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert streamed.strip() == doc["text"].strip() and doc["segments"]


def test_cli_reads_stdin(tiny_gguf_f32, tmp_path):
    clip = _write_clips(tmp_path, 1)[0]
    proc = subprocess.run([sys.executable, "-m", "pylfm.cli", "transcribe", "-", "--json", "--max-new-tokens", "4",
                           *_model_args(tiny_gguf_f32)], input=clip.read_bytes(), capture_output=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["source"] == "-"


def test_cli_bad_input_is_an_error_not_a_crash(tiny_gguf_f32, tmp_path, capsys):
    rc = cli.main(["transcribe", str(tmp_path / "missing.wav"), *_model_args(tiny_gguf_f32)])
    assert rc == 1  # an input failed (2 is for errors that stop everything)
    assert "missing.wav" in capsys.readouterr().err


def test_progress_bar_only_when_asked_or_on_a_terminal(tiny_gguf_f32, tmp_path, capsys):
    audio, _ = synthetic_recording(1.5, seed=4)
    clip = tmp_path / "long.wav"
    sf.write(clip, audio, RATE)
    args = ["transcribe", str(clip), "-f", "txt", "-o", str(tmp_path / "o"), "--max-new-tokens", "2",
            *_model_args(tiny_gguf_f32)]
    assert cli.main(args) == 0
    assert "%|" not in capsys.readouterr().err  # stderr is not a terminal here
    assert cli.main(args + ["--progress"]) == 0
    err = capsys.readouterr().err
    assert "%|" in err and "/90.0 s" in err  # over the file's audio seconds
    assert cli.main(args + ["--progress", "--quiet"]) == 0
    assert "%|" not in capsys.readouterr().err
