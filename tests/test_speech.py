"""Speech output (LFM2.5-Audio TTS and speech-to-speech) on the real engine.

Tiny checkpoints in liquid-audio's layout (with the audio detokenizer) are converted by
pylfm's converter and run through the native speech engine. Fidelity is anchored to
liquid-audio 1.3.0 by tests/fixtures/speech.{npz,json} (tools/reference/make_speech_fixture.py):
greedy TTS codes, depthformer logits, the detokenizer's waveform, and the exact sequence of
text tokens and audio frames of both generation modes on the "lively" checkpoint variant.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from gguf import GGMLQuantizationType, GGUFReader

import pylfm
from pylfm import _core
from pylfm.engine.prompt import prompt_parts
from pylfm.errors import ModelNotFoundError, SpeechError
from pylfm.files.convert import ConversionError, convert, convert_speech, plan
from pylfm.files.convert.speech import VOCODER_ARCH
from pylfm.files.resolve import speech_files
from pylfm.speech.generate import speech_params
from pylfm.speech.job import SpeechJob
from pylfm.speech.istft import FRAME_SAMPLES, SAMPLE_RATE, StreamingISTFT, istft
from pylfm.speech.result import Speech
from pylfm.speech.voices import tts_system_prompt

FIXTURES = Path(__file__).parent / "fixtures"
FX = np.load(FIXTURES / "speech.npz")
META = json.loads((FIXTURES / "speech.json").read_text())
TTS_TEXT = META["tts"]["text"]
N_FRAMES = META["tts"]["n_frames"]


def tree_digest(d: Path) -> str:
    files = {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
             if p.is_file()}
    return hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    ref, x = ref.astype(np.float64), x.astype(np.float64)
    return float(10 * np.log10((ref ** 2).sum() / max(((x - ref) ** 2).sum(), 1e-300)))


# ---------------------------------------------------------------------- fixtures
def _converted(checkpoint: Path, tmp_path_factory, outtype: str):
    return convert(checkpoint, outdir=tmp_path_factory.mktemp(f"speech-{outtype}"), outtype=outtype, progress=False)


@pytest.fixture(scope="module")
def gguf_f32(tiny_checkpoint, tmp_path_factory):
    return _converted(tiny_checkpoint, tmp_path_factory, "f32")


@pytest.fixture(scope="module")
def model(gguf_f32):
    m = pylfm.Model(gguf_f32.model_path, gguf_f32.mmproj_path, device="cpu", n_threads=2, batch_size=1)
    yield m
    m.close()


@pytest.fixture(scope="module")
def lively(lively_gguf):
    m = pylfm.Model(lively_gguf.model_path, lively_gguf.mmproj_path, device="cpu", n_threads=2, batch_size=1)
    yield m
    m.close()


def steps(model, mode: str, user_text=None, clip=None, max_new_tokens: int = 64) -> np.ndarray:
    """Every generated step as the fixture stores it: [0, token, 0...] or [1, 8 codes]."""
    parts = prompt_parts(META["chat"]["system"], user_text, n_audio=0 if clip is None else 1)
    params = speech_params(interleaved=mode == "interleaved", max_new_tokens=max_new_tokens, detokenize=False)
    job = model.speech_runtime.submit(SpeechJob(parts, [] if clip is None else [clip], params))
    rows = []
    for c in job.run():
        if c.codes is not None:
            rows.append([1] + [int(x) for x in c.codes])
        elif c.token >= 0:
            rows.append([0, c.token] + [0] * 7)
    return np.array(rows, np.int32).reshape(-1, 9)


# ---------------------------------------------------------------------- the fixture's inputs
def test_fixture_matches_the_checkpoint_generator(tiny_checkpoint, lively_checkpoint):
    # When tools/make_tiny_checkpoint.py changes, regenerate the fixture:
    # .venv-ref/bin/python tools/reference/make_speech_fixture.py
    assert tree_digest(tiny_checkpoint) == META["checkpoint"]["sha256"]
    assert tree_digest(lively_checkpoint) == META["checkpoint"]["lively_sha256"]
    assert (tiny_checkpoint / "audio_detokenizer" / "model.safetensors").is_file()


# ---------------------------------------------------------------------- converter
def _reader(path: Path):
    r = GGUFReader(path)
    return {f.name: f.contents() for f in r.fields.values()}, {t.name: t for t in r.tensors}


def test_vocoder_gguf_has_liquids_layout(gguf_f32, tiny_checkpoint):
    assert gguf_f32.vocoder_path.name == "vocoder-tiny-lfm2-audio-F32.gguf"
    assert gguf_f32.tokenizer_path.name == "tokenizer-tiny-lfm2-audio-F32.gguf"
    kv, tensors = _reader(gguf_f32.vocoder_path)
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert kv["general.architecture"] == VOCODER_ARCH
    assert kv["depthformer_n_layer"] == config["depthformer"]["layers"]
    assert kv["depthformer_n_embd"] == config["depthformer"]["dim"]
    # checkpoint names, bounded_attention shortened (convert_vocoder_to_gguf.py)
    assert "depthformer.layers.0.operator.attention.q_layernorm.weight" in tensors
    assert not any("bounded_attention" in n for n in tensors)
    for name in ("depth_linear.weight", "depth_linear.bias", "audio_embedding.embedding.weight",
                 "audio_embedding.to_logits.weight", "audio_embedding.embedding_norm.weight", "emb.emb.weight",
                 "depth_embeddings.7.to_logits.weight", "depthformer.layers.0.feed_forward.w2.weight"):
        assert name in tensors, name
    assert list(tensors["emb.emb.weight"].shape) == [512, 8 * 2048]  # ggml order
    assert list(tensors["audio_embedding.embedding.weight"].shape) == [64, 8 * 2049]
    info = pylfm.inspect(gguf_f32.vocoder_path)
    assert info["kind"] == "vocoder" and info["hparams"]["depthformer layers"] == config["depthformer"]["layers"]
    assert pylfm.inspect(gguf_f32.tokenizer_path)["kind"] == "detokenizer"
    with pytest.raises(pylfm.ModelLoadError, match="it is a vocoder"):
        pylfm.Model(gguf_f32.vocoder_path, gguf_f32.mmproj_path, device="cpu")


def test_tokenizer_gguf_is_an_lfm2_detokenizer(gguf_f32, tiny_checkpoint):
    kv, tensors = _reader(gguf_f32.tokenizer_path)
    det = json.loads((tiny_checkpoint / "audio_detokenizer" / "config.json").read_text())
    assert kv["general.architecture"] == "lfm2"
    assert kv["tokenizer.ggml.model"] == "none"
    assert kv["lfm2.attention.sliding_window"] == det["sliding_window"]
    assert kv["lfm2.embedding_length_out"] == 1282
    assert kv["lfm2.attention.head_count_kv"] == [0 if t == "conv" else det["num_key_value_heads"]
                                                  for t in det["layer_types"]]
    assert list(tensors["dense_2.weight"].shape) == [512, 1282] and "dense_2.bias" in tensors
    assert "emb.emb.weight" not in tensors and "istft.window" not in tensors


def test_speech_outtypes(tiny_checkpoint, tmp_path):
    r = convert_speech(tiny_checkpoint, outdir=tmp_path, outtype="q4_0", progress=False)
    assert r.model_path is None and r.vocoder_path.name.endswith("-Q4_0.gguf")
    _, voc = _reader(r.vocoder_path)
    _, tok = _reader(r.tokenizer_path)
    q4 = GGMLQuantizationType.Q4_0
    assert voc["depthformer.layers.0.feed_forward.w1.weight"].tensor_type == q4
    assert voc["emb.emb.weight"].tensor_type == q4
    assert voc["depth_embeddings.0.embedding_norm.weight"].tensor_type == GGMLQuantizationType.F32
    assert voc["depth_linear.bias"].tensor_type == GGMLQuantizationType.F32
    assert tok["blk.0.shortconv.conv.weight"].tensor_type == GGMLQuantizationType.F32
    assert tok["dense_2.weight"].tensor_type == q4 and tok["dense_2.bias"].tensor_type == GGMLQuantizationType.F32


def test_plan_accounts_for_every_speech_tensor(tiny_checkpoint):
    decisions = plan(tiny_checkpoint)  # speech by default: the checkpoint has it
    actions = {d.action for d in decisions}
    assert actions == {"model", "mmproj", "vocoder", "tokenizer", "skip"}
    by_source = {d.source: d for d in decisions}
    assert by_source["depthformer.layers.0.operator.bounded_attention.k_layernorm.weight"].action == "vocoder"
    assert by_source["audio_detokenizer/emb.emb.weight"].targets == ("emb.emb.weight",)
    assert by_source["audio_detokenizer/lin.weight"].targets == ("dense_2.weight",)
    assert by_source["audio_detokenizer/istft.window"].action == "skip"
    assert by_source["audio_loss_weights"].action == "skip"


def test_asr_only_checkpoint(tiny_tool, tmp_path):
    ckpt = tiny_tool.make_checkpoint(tmp_path / "asr-only", seed=0, detokenizer=False)
    with pytest.raises(ConversionError, match="no speech-output parts"):
        convert(ckpt, outdir=tmp_path / "out", with_speech=True, progress=False)
    r = convert(ckpt, outdir=tmp_path / "out", progress=False)  # default: ASR files only
    assert r.vocoder_path is None and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "asr-only-F16.gguf", "mmproj-asr-only-F16.gguf"]
    m = pylfm.Model(r.model_path, r.mmproj_path, device="cpu", n_threads=2, batch_size=1)
    try:
        with pytest.raises(ModelNotFoundError, match="vocoder-\\*.gguf"):
            m.speak("Hello")
    finally:
        m.close()


# ---------------------------------------------------------------------- fidelity (f32)
def test_tts_codes_match_liquid_audio(model):
    tokens = model._engine.prompt_tokens(prompt_parts(META["tts"]["system"], TTS_TEXT, n_audio=0)
                                         + [("<|audio_start|>", True)], [])
    assert list(tokens) == FX["tts_prompt_ids"].tolist()
    # twice: the second call restores the system turn's cached state instead of evaluating it
    for _ in range(2):
        speech = model.speak(TTS_TEXT, temperature=0, max_duration=N_FRAMES / 12.5)
        assert speech.stop_reason == "length" and len(speech.codes) == N_FRAMES
        np.testing.assert_array_equal(speech.codes, FX["tts_codes"])


def test_depthformer_and_embeddings_match_liquid_audio(model):
    engine = model.speech_runtime
    for i in range(len(FX["tts_hidden"])):
        logits = engine.depth_logits(FX["tts_hidden"][i], FX["tts_codes"][i])
        assert np.abs(logits - FX["tts_depth_logits"][i]).max() < 1e-4  # measured 1e-6
    emb = engine.frame_embedding(FX["tts_codes"][0])
    assert np.abs(emb - FX["tts_frame0_embedding"]).max() < 1e-5


def test_detokenizer_waveform_matches_liquid_audio(model):
    spec = model.speech_runtime.detokenize(FX["tts_codes"])
    assert spec.shape == (6 * N_FRAMES, 1282)
    assert np.abs(spec[:len(FX["detok_spec"])] - FX["detok_spec"]).max() < 1e-3
    wave = istft(spec)
    assert wave.shape == FX["detok_wave"].shape == (N_FRAMES * FRAME_SAMPLES,)
    assert snr_db(FX["detok_wave"], wave) > 80  # issue bound 40 dB; measured 111 dB


@pytest.mark.parametrize("mode,source", [("sequential", "text"), ("sequential", "clip"),
                                         ("interleaved", "text"), ("interleaved", "clip")])
def test_modality_switching_matches_liquid_audio(lively, mode, source):
    ref = FX[f"steps_{mode}_{source}"]
    got = steps(lively, mode, user_text=META["chat"]["text"] if source == "text" else None,
                clip=FX["clip"] if source == "clip" else None)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("outtype,min_frames,max_logit_err,min_snr",
                         [("f16", 10, 1e-2, 40.0),     # measured: 18 frames, 2.2e-3, 51 dB
                          ("q8_0", 0, 0.15, 15.0)])   # measured: 0 frames, 6.1e-2, 22 dB
def test_quantized_bounds(tiny_checkpoint, tmp_path_factory, outtype, min_frames, max_logit_err, min_snr):
    r = _converted(tiny_checkpoint, tmp_path_factory, outtype)
    m = pylfm.Model(r.model_path, r.mmproj_path, device="cpu", n_threads=2, batch_size=1)
    try:
        engine = m.speech_runtime
        err = np.abs(engine.depth_logits(FX["tts_hidden"][0], FX["tts_codes"][0]) - FX["tts_depth_logits"][0]).max()
        assert err < max_logit_err
        assert snr_db(FX["detok_wave"], istft(engine.detokenize(FX["tts_codes"]))) > min_snr
        if min_frames:
            codes = m.speak(TTS_TEXT, temperature=0, max_duration=min_frames / 12.5).codes
            np.testing.assert_array_equal(codes, FX["tts_codes"][:min_frames])
    finally:
        m.close()


# ---------------------------------------------------------------------- behaviour
def test_speak_gives_24khz_audio_of_plausible_length(model):
    s = model.speak("Good morning.", seed=1, max_duration=1.0, progress=True)
    assert isinstance(s, Speech) and s.sample_rate == SAMPLE_RATE == 24000
    assert s.audio.dtype == np.float32 and s.audio.ndim == 1 and np.isfinite(s.audio).all()
    assert 1 <= len(s.codes) <= 13 and len(s.audio) == FRAME_SAMPLES * len(s.codes)
    assert s.duration == pytest.approx(len(s.codes) * 0.08)
    assert s.stop_reason in ("length", "audio_end") and s.audio.std() > 0
    assert {"prefill", "backbone", "depthformer", "detokenizer", "istft", "total", "first_audio"} <= set(s.timings)
    assert 0 < s.timings["first_audio"] <= s.timings["total"]


def test_stream_concatenates_to_the_non_streamed_waveform(model):
    whole = model.speak("A sampled sentence.", temperature=0.8, top_k=64, seed=7, max_duration=1.0)
    chunks = list(model.speak("A sampled sentence.", temperature=0.8, top_k=64, seed=7, max_duration=1.0, stream=True))
    assert len(chunks) >= 2 and all(c.dtype == np.float32 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), whole.audio)
    other = model.speak("A sampled sentence.", temperature=0.8, top_k=64, seed=8, max_duration=1.0)
    assert not np.array_equal(other.codes, whole.codes)  # the seed matters


def test_closing_the_stream_stops_generation(model):
    """Closing a speech stream sets the engine's cancel flag; the engine stops at its next
    step (at most one more frame after the flag), and the model serves the next request."""
    counts = {"events": 0, "at_cancel": None}
    parts = prompt_parts(tts_system_prompt("US female"), "Stop me early.", n_audio=0) + [("<|audio_start|>", True)]
    params = speech_params(start_audio=True, stop_at_audio_end=True, ignore_audio_end=True, max_new_tokens=400,
                     max_audio_frames=375, audio_temperature=0.0, audio_top_k=1, seed=0)
    job = SpeechJob(parts, [], params)

    def count(chunk):  # on the engine thread, as the engine emits them
        if chunk is not None and chunk.codes is not None:
            counts["events"] += 1

    job.on_event = count
    cancel = job.cancel

    def recording_cancel():
        if counts["at_cancel"] is None:
            counts["at_cancel"] = counts["events"]
        cancel()

    job.cancel = recording_cancel
    it = model.speech_runtime.submit(job).chunks()
    got = [next(it) for _ in range(3)]
    assert all(c.codes is not None or c.text == "" for c in got)
    it.close()  # cancels and waits for the engine
    assert job.result_dict["stop_reason"] == "cancelled"
    assert counts["at_cancel"] is not None and counts["events"] <= counts["at_cancel"] + 1
    assert len(job.result_dict["codes"]) < 375
    assert model.scheduler.busy == 0
    assert 1 <= len(model.speak("Still working.", temperature=0, max_duration=0.2).codes) <= 3


def test_streaming_istft_equals_the_whole_istft():
    rng = np.random.default_rng(3)
    rows = np.concatenate([rng.normal(-2, 1, (40, 641)), rng.uniform(-np.pi, np.pi, (40, 641))], 1).astype(np.float32)
    st = StreamingISTFT()
    parts = [st.push(rows[a:b]) for a, b in ((0, 1), (1, 7), (7, 8), (8, 30), (30, 40))] + [st.finish()]
    whole = istft(rows)
    assert whole.shape == (40 * 320,)
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)
    assert len(parts[0]) == 0  # one frame is not enough to finish any sample


def test_chat_both_modes_give_text_and_audio(lively):
    for mode in ("interleaved", "sequential"):
        reply = lively.chat(META["chat"]["text"], mode=mode, temperature=0, max_new_tokens=64)
        assert reply.text and len(reply.audio) > 0 and len(reply.tokens) > 0, mode
        assert len(reply.audio) == FRAME_SAMPLES * len(reply.codes)
    clip_reply = lively.chat(FX["clip"], sample_rate=16000, temperature=0, max_new_tokens=40)
    assert clip_reply.text and len(clip_reply.audio)
    chunks = list(lively.chat(FX["clip"], sample_rate=16000, temperature=0, max_new_tokens=40, stream=True))
    assert "".join(c.text for c in chunks) == clip_reply.text
    np.testing.assert_array_equal(np.concatenate([c.audio for c in chunks]), clip_reply.audio)


def test_save_formats(model, tmp_path):
    s = model.speak("Saved.", temperature=0, max_duration=0.4)
    for ext in ("wav", "flac", "mp3", "ogg"):
        path = s.save(tmp_path / f"out.{ext}")
        data, rate = sf.read(path, dtype="float32")
        assert rate == 24000 and abs(len(data) - len(s.audio)) <= 2400, ext
        if ext in ("wav", "flac"):
            assert np.abs(data - s.audio).max() < 1e-3
    raw = s.save(tmp_path / "out.pcm").read_bytes()
    assert len(raw) == 2 * len(s.audio)
    with pytest.raises(SpeechError, match="not supported"):
        s.save(tmp_path / "out.aac")


# ---------------------------------------------------------------------- bad input
def test_bad_input_gives_clear_errors(model, tmp_path):
    with pytest.raises(SpeechError, match="empty"):
        model.speak("   ")
    with pytest.raises(SpeechError, match="text must be a string"):
        model.speak(b"bytes")
    with pytest.raises(SpeechError, match="unknown voice 'alloy'.*US female"):
        model.speak("Hi", voice="alloy")
    assert model.speak("Hi", voice="uk-male", temperature=0, max_duration=0.1).codes.shape == (2, 8)
    with pytest.raises(SpeechError, match="temperature"):
        model.speak("Hi", temperature=-1)
    with pytest.raises(SpeechError, match="max_duration"):
        model.speak("Hi", max_duration=0)
    with pytest.raises(SpeechError, match="seed"):
        model.speak("Hi", seed=-3)
    with pytest.raises(SpeechError, match="mode"):
        model.chat("Hi", mode="duplex")
    with pytest.raises(SpeechError, match="empty"):
        model.chat("  ")
    with pytest.raises(FileNotFoundError):
        model.chat(str(tmp_path / "missing.wav"))


def test_speech_files_next_to_the_model(gguf_f32, tmp_path, monkeypatch):
    monkeypatch.delenv("PYLFM_VOCODER", raising=False)
    monkeypatch.delenv("PYLFM_DETOKENIZER", raising=False)
    voc, det = speech_files(gguf_f32.model_path)
    assert (voc, det) == (gguf_f32.vocoder_path, gguf_f32.tokenizer_path)
    # the model's quantization is preferred; F16 next
    d = tmp_path / "repo"
    d.mkdir()
    for n in ("LFM2.5-Audio-1.5B-Q4_0.gguf", "vocoder-LFM2.5-Audio-1.5B-F16.gguf", "vocoder-LFM2.5-Audio-1.5B-Q4_0.gguf",
              "vocoder-LFM2.5-Audio-1.5B-Q8_0.gguf", "tokenizer-LFM2.5-Audio-1.5B-F16.gguf",
              "tokenizer-LFM2.5-Audio-1.5B-Q8_0.gguf"):
        (d / n).write_bytes(b"")
    voc, det = speech_files(d / "LFM2.5-Audio-1.5B-Q4_0.gguf")
    assert voc.name == "vocoder-LFM2.5-Audio-1.5B-Q4_0.gguf" and det.name == "tokenizer-LFM2.5-Audio-1.5B-F16.gguf"
    monkeypatch.setenv("PYLFM_VOCODER", str(d / "vocoder-LFM2.5-Audio-1.5B-Q8_0.gguf"))
    assert speech_files(d / "LFM2.5-Audio-1.5B-Q4_0.gguf")[0].name == "vocoder-LFM2.5-Audio-1.5B-Q8_0.gguf"
    with pytest.raises(ModelNotFoundError, match="tokenizer-\\*.gguf"):
        speech_files(tmp_path / "elsewhere" / "m.gguf", vocoder=d / "vocoder-LFM2.5-Audio-1.5B-Q4_0.gguf")


def test_wrong_speech_files(model, gguf_f32, tmp_path):
    with pytest.raises(SpeechError, match="swapped"):
        model.load_speech(vocoder=gguf_f32.tokenizer_path, detokenizer=gguf_f32.vocoder_path)
    with pytest.raises(SpeechError, match="not an LFM2.5-Audio vocoder"):
        model.load_speech(vocoder=gguf_f32.model_path, detokenizer=gguf_f32.tokenizer_path)
    bad = tmp_path / "vocoder-bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(SpeechError):
        model.load_speech(vocoder=bad, detokenizer=gguf_f32.tokenizer_path)
    truncated = tmp_path / "vocoder-cut.gguf"
    truncated.write_bytes(gguf_f32.vocoder_path.read_bytes()[:100_000])
    with pytest.raises(SpeechError, match="truncated"):
        model.load_speech(vocoder=truncated, detokenizer=gguf_f32.tokenizer_path)
    # after the failures, the model still speaks with the right files
    model.load_speech(gguf_f32.vocoder_path, gguf_f32.tokenizer_path)
    assert len(model.speak("Fine.", temperature=0, max_duration=0.1).codes) == 2


def test_vocoder_of_another_width_is_refused(tiny_tool, model, gguf_f32, tmp_path, monkeypatch):
    monkeypatch.setitem(tiny_tool.TINY, "hidden", 32)
    other = convert_speech(tiny_tool.make_checkpoint(tmp_path / "narrow", seed=0), outdir=tmp_path / "o",
                           outtype="f32", progress=False)
    with pytest.raises(SpeechError, match="backbone of width 32.*width 64"):
        model.load_speech(other.vocoder_path, gguf_f32.tokenizer_path)
    model.load_speech(gguf_f32.vocoder_path, gguf_f32.tokenizer_path)


# ---------------------------------------------------------------------- CLI and server
def test_cli_speak_and_chat(gguf_f32, lively_checkpoint, tmp_path, capsys):
    from pylfm.cli import main

    out = tmp_path / "hello.flac"
    rc = main(["speak", "Hello from the command line.", "--model", str(gguf_f32.model_path), "--mmproj",
               str(gguf_f32.mmproj_path), "--device", "cpu", "--threads", "2", "-o", str(out), "--temperature", "0",
               "--max-duration", "0.4", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    data, rate = sf.read(out)
    assert rate == 24000 and len(data) == round(summary["duration"] * 24000) == FRAME_SAMPLES * summary["frames"]
    wav_in = tmp_path / "question.wav"
    sf.write(wav_in, FX["clip"], 16000)
    r = convert(lively_checkpoint, outdir=tmp_path / "lv", outtype="f32", progress=False)
    reply = tmp_path / "reply.wav"
    rc = main(["chat", str(wav_in), "--model", str(r.model_path), "--mmproj", str(r.mmproj_path), "--device", "cpu",
               "--threads", "2", "-o", str(reply), "--temperature", "0", "--max-new-tokens", "40", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.strip() and sf.info(reply).samplerate == 24000
    assert main(["speak", "", "--model", str(gguf_f32.model_path), "--mmproj", str(gguf_f32.mmproj_path),
                 "--device", "cpu"]) == 2
    assert "empty" in capsys.readouterr().err


def test_server_speech_endpoint(model):
    from fastapi.testclient import TestClient

    from pylfm.server import create_app

    with TestClient(create_app(model, model_name="lfm2-audio")) as client:
        body = {"model": "lfm2-audio", "input": "Served speech.", "voice": "US male", "temperature": 0,
                "response_format": "wav", "max_duration": 1.0}
        r = client.post("/v1/audio/speech", json=body)
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        audio, rate = sf.read(io.BytesIO(r.content), dtype="float32")
        direct = model.speak("Served speech.", voice="US male", temperature=0, max_duration=1.0)
        assert rate == 24000 and np.abs(audio - direct.audio).max() < 1e-3
        r = client.post("/v1/audio/speech", json=dict(body, response_format="pcm"))
        assert r.status_code == 200
        pcm = np.frombuffer(r.content, "<i2").astype(np.float32) / 32767
        assert len(pcm) == len(direct.audio) and np.abs(pcm - direct.audio).max() < 1e-3
        r = client.post("/v1/audio/speech", json={"input": "Default format.", "seed": 3, "max_duration": 0.5})
        assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg"
        assert sf.info(io.BytesIO(r.content)).format == "MP3" and sf.info(io.BytesIO(r.content)).samplerate == 24000
        for bad, param in (({"input": ""}, "input"), ({"input": "x", "voice": "alloy"}, "voice"),
                           ({"input": "x", "response_format": "aac"}, "response_format"),
                           ({"input": "x", "speed": 1.5}, "speed"), ({"input": "x" * 5000}, "input")):
            r = client.post("/v1/audio/speech", json=bad)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, bad
        r = client.post("/v1/audio/speech", content=b"not json", headers={"content-type": "application/json"})
        assert r.status_code == 400


def test_all_generation_runs_on_the_engine_thread(model):
    """Speech (streamed or whole) and transcription compute on one thread: a second
    computing thread makes libgomp stop spinning in every worker pool (measured 2x slower
    speech on 2 cores). Every speech event comes from the engine's loop."""
    threads = set()
    parts = prompt_parts(tts_system_prompt("US female"), "Thread check.", n_audio=0) + [("<|audio_start|>", True)]
    params = speech_params(start_audio=True, stop_at_audio_end=True, max_new_tokens=4, max_audio_frames=3,
                     audio_temperature=0.0, audio_top_k=1, seed=0)
    for streamed in (False, True):
        job = SpeechJob(parts, [], params)
        job.on_event = lambda chunk: threads.add(threading.current_thread().name)
        model.speech_runtime.submit(job)
        chunks = list(job.chunks()) if streamed else job.run()
        assert chunks and job.result_dict["stop_reason"] in ("length", "audio_end")
    assert threads == {"pylfm-engine"}
    assert model.scheduler.call(lambda: threading.current_thread().name) == "pylfm-engine"
