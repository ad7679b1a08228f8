"""`pylfm corpus` on a real local Ray cluster (num_cpus=2, one per test module) over
generated files, good and broken, with the tiny model: its texts must equal
`Model.transcribe_batch`'s, broken files must be error rows, and resuming (also after
killing a job halfway) must give every file exactly once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

# Ray Data is a test requirement (pip install ".[test]"): a missing one must fail, not skip.
import ray  # noqa: E402

import pylfm  # noqa: E402
from pylfm.corpus import output, transcribe_corpus  # noqa: E402
from pylfm.corpus.inputs import expand_inputs  # noqa: E402

RATE = 16000
MAX_NEW = 16  # generation limit per window: keeps the module fast
MAX_DURATION = 8.0  # the corpus's "too long" limit in these tests
N_GOOD = 14


def chirp(seconds, f0, f1, rate=RATE, amp=0.3):
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / seconds * t * t))).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder of 14 good recordings (wav/flac/ogg, mono/stereo, 16/22.05/44.1 kHz,
    float and int16) and 5 broken files, plus a manifest naming one missing file.
    Returns (folder, manifest, good paths, {broken path: expected error text})."""
    root = tmp_path_factory.mktemp("corpus")
    audio = root / "audio"
    (audio / "nested").mkdir(parents=True)
    good = []
    rng = np.random.default_rng(0)
    for i in range(N_GOOD):
        rate = (RATE, 22050, 44100)[i % 3]
        seconds = 1.0 + 0.3 * i
        # Chirps of different ranges and levels, with noise: the tiny model gives most
        # of them a different text, so a file mixed up with another would show.
        x = chirp(seconds, 100 + 130 * i, 3000 - 150 * i, rate=rate, amp=0.1 + 0.05 * i)
        x += 0.02 * rng.standard_normal(len(x)).astype(np.float32)
        if i % 4 == 1:
            x = np.stack([x, 0.5 * x], axis=1)  # stereo
        ext, subtype = [("wav", "FLOAT"), ("flac", "PCM_16"), ("ogg", "VORBIS"), ("wav", "PCM_16")][i % 4]
        path = (audio / "nested" if i % 5 == 0 else audio) / f"good{i:02d}.{ext}"
        sf.write(path, x, rate, subtype=subtype)
        good.append(str(path))
    broken = {}
    (audio / "notaudio.wav").write_text("this is not audio")
    broken[str(audio / "notaudio.wav")] = "could not decode"
    (audio / "empty.flac").write_bytes(b"")
    broken[str(audio / "empty.flac")] = "AudioError"
    sf.write(audio / "short.wav", chirp(0.02, 200, 300), RATE)
    broken[str(audio / "short.wav")] = "too short"
    sf.write(audio / "long.flac", chirp(MAX_DURATION + 2, 200, 300), RATE)
    broken[str(audio / "long.flac")] = "AudioTooLongError"
    whole = (audio / "good03.wav").read_bytes()
    (audio / "truncated.ogg").write_bytes(whole[:30])  # a header cut short
    broken[str(audio / "truncated.ogg")] = "could not decode"
    missing = str(root / "gone" / "missing.wav")
    broken[missing] = "FileNotFoundError"
    manifest = root / "extra.csv"
    manifest.write_text("path,speaker\ngone/missing.wav,a\naudio/good01.flac,b\n")  # relative to the manifest
    return audio, manifest, good, broken


@pytest.fixture(scope="module")
def expected(corpus, tiny_gguf_f32):
    """What `Model.transcribe_batch` gives in one process for each good file."""
    _, _, good, _ = corpus
    with pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=2,
                     batch_size=4) as model:
        results = model.transcribe_batch(good, max_new_tokens=MAX_NEW)
    assert all(isinstance(r, pylfm.Transcription) for r in results), results
    texts = {p: r.text for p, r in zip(good, results)}
    assert len(set(texts.values())) > N_GOOD // 2, "the tiny model should give different files different text"
    return texts


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module; its address lets CLI subprocesses join it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def run_kwargs(gguf):
    return dict(model=str(gguf.model_path), mmproj=str(gguf.mmproj_path), batch_size=2, files_per_call=2,
                max_duration=MAX_DURATION, max_new_tokens=MAX_NEW, progress=False)


def read_rows(out):
    """Every row of an output folder, read back with the plain readers users have."""
    files = sorted(Path(out).iterdir())
    if any(f.suffix == ".parquet" for f in files):
        return pq.read_table(out).to_pylist()
    return [json.loads(line) for f in files if f.suffix == ".json" for line in f.read_text().splitlines()]


def check_complete(rows, corpus, expected):
    _, _, good, broken = corpus
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted(good + list(broken)), "every input exactly once"
    by_path = {r["path"]: r for r in rows}
    for p in good:
        r = by_path[p]
        assert r["error"] is None, r["error"]
        assert r["text"] == expected[p], p
        assert r["segments"] and r["segments"][0]["text"]
        assert r["duration"] > 0.9 and r["device"] == "CPU" and r["model"].endswith(".gguf")
        assert r["timings"]["encode_ms"] > 0 and r["timings"]["decode_ms"] > 0
    for p, message in broken.items():
        r = by_path[p]
        assert r["error"] and message in r["error"], (p, r["error"])
        assert r["text"] is None and r["segments"] == []


def test_corpus_matches_transcribe_batch_and_resumes(cluster, corpus, expected, tiny_gguf_f32, tmp_path):
    audio, manifest, good, broken = corpus
    out = str(tmp_path / "out.parquet")
    summary = transcribe_corpus([str(audio), str(manifest)], out, **run_kwargs(tiny_gguf_f32))
    n = len(good) + len(broken)
    assert (summary.format, summary.inputs, summary.written, summary.skipped) == ("parquet", n, n, 0)
    assert summary.errors == len(broken) and summary.files_per_second > 0
    rows = read_rows(out)
    check_complete(rows, corpus, expected)
    assert pq.read_schema(next(Path(out).glob("*.parquet"))).equals(output.SCHEMA)

    # Running again into the same folder: refused without --resume, a no-op with it.
    with pytest.raises(FileExistsError, match="--resume"):
        transcribe_corpus([str(audio)], out, **run_kwargs(tiny_gguf_f32))
    before = sorted(os.listdir(out))
    again = transcribe_corpus([str(audio), str(manifest)], out, resume=True, **run_kwargs(tiny_gguf_f32))
    assert (again.written, again.skipped, again.seconds) == (0, n, 0.0)
    assert sorted(os.listdir(out)) == before


def test_killed_job_resumes_to_the_complete_set(cluster, corpus, expected, tiny_gguf_f32, tmp_path):
    """The CLI in a subprocess joins the module's cluster (--address), is killed once
    some results are written, and a resumed run completes the set, each file once."""
    audio, manifest, good, broken = corpus
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "pylfm.cli", "corpus", str(audio), str(manifest), "--out", str(out),
           "--model", str(tiny_gguf_f32.model_path), "--mmproj", str(tiny_gguf_f32.mmproj_path),
           "--address", cluster, "--batch-size", "2", "--files-per-call", "2", "--max-new-tokens", str(MAX_NEW),
           "--max-duration", str(MAX_DURATION), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and len(output.read_existing(str(out), "jsonl").paths) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the job ended before it could be killed: {proc.communicate()}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = output.read_existing(str(out), "jsonl").paths
    n = len(good) + len(broken)
    assert 2 <= len(done) < n, f"kill came too late to test resuming ({len(done)} of {n} written)"

    summary = transcribe_corpus([str(audio), str(manifest)], str(out), resume=True, **run_kwargs(tiny_gguf_f32))
    assert summary.skipped == len(done) and summary.written == n - len(done)
    check_complete(read_rows(out), corpus, expected)


def test_resume_repairs_files_cut_short(tmp_path):
    """A killed write can leave a Parquet file without its footer or a JSON Lines file
    with a cut last line: resume counts only complete rows and leaves a folder that
    standard readers read."""
    def row(p, error=None):
        return output.error_row(p, error) if error else {**output.error_row(p, "x"), "error": None, "text": "t"}

    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    pq.write_table(output.to_table([row("/a"), row("/b", "AudioError: bad")]), pq_dir / "one.parquet")
    pq.write_table(output.to_table([row("/c"), row("/d")]), pq_dir / "two.parquet")
    cut = (pq_dir / "two.parquet").read_bytes()
    (pq_dir / "two.parquet").write_bytes(cut[: len(cut) // 2])
    found = output.read_existing(str(pq_dir), "parquet", repair=True)
    assert found.paths == {"/a", "/b"} and found.errors == 1
    assert [Path(p).name for p in found.set_aside] == ["two.parquet"]
    assert (pq_dir / "_two.parquet.incomplete").exists()
    assert pq.read_table(pq_dir).num_rows == 2  # the folder reads again

    js = tmp_path / "js"
    js.mkdir()
    lines = [json.dumps(row(p)) for p in ("/a", "/b", "/c")]
    (js / "one.json").write_text("\n".join(lines) + "\n")
    (js / "two.json").write_text(lines[0].replace("/a", "/d") + "\n" + lines[1].replace("/b", "/e")[:25])
    assert output.read_existing(str(js), "jsonl").paths == {"/a", "/b", "/c", "/d"}
    assert (js / "two.json").read_text().count("\n") == 1, "without repair nothing is rewritten"
    output.read_existing(str(js), "jsonl", repair=True)
    assert (js / "two.json").read_text() == lines[0].replace("/a", "/d") + "\n"


def test_inputs_globs_folders_and_manifests(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.wav", "a/b/2.flac", "a/notes.txt", "3.mp3"):
        (tmp_path / name).write_bytes(b"x")
    folder = sorted([str(tmp_path / "a" / "1.wav"), str(tmp_path / "a" / "b" / "2.flac")])
    assert expand_inputs([str(tmp_path / "a")]) == folder
    assert expand_inputs([str(tmp_path / "**" / "*.wav"), str(tmp_path / "a")]) == folder  # each once
    (tmp_path / "m.jsonl").write_text('{"audio": "a/1.wav", "text": "hi"}\n\n{"audio": "3.mp3"}\n')
    assert expand_inputs([str(tmp_path / "m.jsonl")]) == [str(tmp_path / "a" / "1.wav"), str(tmp_path / "3.mp3")]
    pq.write_table(pa.table({"file": ["3.mp3", "s3://bucket/x.wav"]}), tmp_path / "m.parquet")
    assert expand_inputs([str(tmp_path / "m.parquet")], path_column="file") == [str(tmp_path / "3.mp3"),
                                                                               "s3://bucket/x.wav"]
    with pytest.raises(ValueError, match="no 'path' or 'audio' column.*--path-column"):
        expand_inputs([str(tmp_path / "m.parquet")])
    with pytest.raises(FileNotFoundError, match="no files match"):
        expand_inputs([str(tmp_path / "*.ogg")])
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        expand_inputs([str(tmp_path / "nope.csv")])


def test_core_package_does_not_import_ray():
    code = ("import sys, pylfm, pylfm.model, pylfm.cli, pylfm.corpus.inputs; "
            "pylfm.cli.build_parser(['transcribe', 'x']); assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_reports_bad_options_clearly(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pylfm.cli", "corpus", str(tmp_path / "*.wav"), "--out",
                        str(tmp_path / "o"), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 2 and "no files match" in r.stderr and "Traceback" not in r.stderr


def test_cli_without_the_extra_says_what_to_install():
    code = ("import sys; sys.modules['ray'] = None; from pylfm.cli import main; "
            "sys.exit(main(['corpus', 'x.wav', '--out', 'o']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2 and 'pip install "pylfm[ray]"' in r.stderr, r.stderr
