"""``POST /v1/chat/completions`` with audio, end to end: a real uvicorn server on loopback,
the tiny speech-capable model, and the official ``openai`` client sending what Liquid's
own examples, LiveKit's Liquid plugin and OpenAI's audio chat send.

Generation is greedy here (``temperature`` 0 and pylfm's ``audio_temperature`` 0), so
every answer is compared with the library call that does the same thing on the same
model: `Model.chat`, `Model.speak`, `Model.transcribe`."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

import openai  # noqa: F401 - a test requirement

import pylfm
from pylfm.server import create_app
from pylfm.server.realtime import RealtimeSettings
from pylfm.speech.voices import CHAT_SYSTEM_PROMPT

import serving
import voice

KEY = "chat-key"
STEPS = 30
MAX_S = 20.0
GREEDY = {"seed": 0, "audio_temperature": 0, "temperature": 0}


@pytest.fixture(scope="module")
def model(lively_gguf):
    m = pylfm.Model(lively_gguf.model_path, lively_gguf.mmproj_path, device="cpu", n_threads=2, batch_size=2,
                    sessions=1)
    yield m
    m.close()


@pytest.fixture(scope="module")
def server(model):
    app = create_app(model, api_key=KEY, max_new_tokens=24, realtime=RealtimeSettings(max_reply_s=MAX_S))
    with serving.Serving(app, key=KEY) as s:
        yield s


@pytest.fixture(scope="module")
def question():
    """The first spoken sentence as a 16 kHz WAV file's bytes, and the samples."""
    x = voice.utterances(16000)[0]
    return voice.wav_bytes(x, 16000), x


def audio_message(wav: bytes, text=None) -> dict:
    parts = [{"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}]
    if text:
        parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def pcm16_of(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


def collect(stream):
    """Text, 16-bit audio, audio_chunk floats, the audio dicts and the finish reason of a stream."""
    text, audio, floats, audios, finish, usage = [], [], [], [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        c = chunk.choices[0]
        if c.finish_reason:
            finish = c.finish_reason
        d = c.delta
        if d.content:
            text.append(d.content)
        a = getattr(d, "audio", None)
        if a is not None and not isinstance(a, dict):
            a = a.model_dump(exclude_none=True)  # the SDK's ChoiceDeltaAudio (its extra fields included)
        if a:
            audios.append(a)
            if a.get("data"):
                audio.append(np.frombuffer(base64.b64decode(a["data"]), "<i2"))
        ac = getattr(d, "audio_chunk", None)
        if ac:
            floats.append(np.frombuffer(base64.b64decode(ac["data"]), "<f4"))
    cat = (lambda xs, t: np.concatenate(xs) if xs else np.zeros(0, t))
    return "".join(text), cat(audio, np.int16), cat(floats, np.float32), audios, finish, usage


def test_liquid_streaming_interleaved_is_model_chat(server, model, question):
    wav, _ = question
    client = server.client()
    stream = client.chat.completions.create(
        model="", modalities=["text", "audio"], stream=True, max_tokens=STEPS,
        messages=[{"role": "system", "content": CHAT_SYSTEM_PROMPT}, audio_message(wav)], extra_body=GREEDY)
    text, audio, floats, audios, finish, _ = collect(stream)
    ref = model.chat(wav, mode="interleaved", temperature=0, seed=0, max_new_tokens=STEPS, max_duration=MAX_S)
    assert len(ref.audio) and text == ref.text
    np.testing.assert_array_equal(audio, pcm16_of(ref.audio))
    assert all(a["format"] == "pcm" and a["sample_rate"] == 24000 for a in audios)
    assert not len(floats)  # audio_chunk is for clients of the first shape only (no modalities)
    assert finish in ("stop", "length")
    server.wait_idle()


def test_openai_audio_output_not_streamed_then_a_turn_referring_to_it(server, model, question):
    wav, _ = question
    client = server.client()
    first = client.chat.completions.create(
        model="lfm2-audio", modalities=["text", "audio"], audio={"voice": "UK male", "format": "wav"},
        max_completion_tokens=STEPS, messages=[audio_message(wav)], extra_body=GREEDY)
    msg = first.choices[0].message
    assert msg.content is None and msg.audio.transcript
    audio, rate = sf.read(io.BytesIO(base64.b64decode(msg.audio.data)), dtype="float32")
    ref = model.chat(wav, system=f"{CHAT_SYSTEM_PROMPT} Use the UK male voice.", temperature=0, seed=0,
                     max_new_tokens=STEPS, max_duration=MAX_S)
    assert rate == 24000 and msg.audio.transcript == ref.text
    np.testing.assert_allclose(audio, ref.audio, atol=2 / 32768)
    assert first.usage.completion_tokens > 0 and first.usage.prompt_tokens > 0
    # the next turn sends the answer back by its audio id: the model's own tokens and frames
    second = client.chat.completions.create(
        model="lfm2-audio", modalities=["text", "audio"], audio={"voice": "UK male", "format": "pcm16"},
        max_completion_tokens=STEPS, extra_body=GREEDY,
        messages=[audio_message(wav), {"role": "assistant", "audio": {"id": msg.audio.id}},
                  {"role": "user", "content": "Say more."}])
    assert second.choices[0].message.audio.transcript and second.choices[0].message.audio.id != msg.audio.id
    pcm = np.frombuffer(base64.b64decode(second.choices[0].message.audio.data), "<i2")
    assert len(pcm) > 0
    server.wait_idle()


def test_openai_streamed_audio_carries_its_transcript_and_usage(server, question):
    wav, _ = question
    stream = server.client().chat.completions.create(
        model="lfm2-audio", modalities=["text", "audio"], audio={"voice": "US female", "format": "pcm16"},
        stream=True, stream_options={"include_usage": True}, max_tokens=STEPS, messages=[audio_message(wav)],
        extra_body=GREEDY)
    text, audio, floats, audios, finish, usage = collect(stream)
    transcript = "".join(a.get("transcript", "") for a in audios)
    assert text == "" and transcript and len(audio) > 0 and not len(floats)
    assert any("expires_at" in a for a in audios) and len({a["id"] for a in audios}) == 1
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert finish in ("stop", "length")
    server.wait_idle()


def test_asr_as_liquid_and_livekit_send_it_is_model_transcribe(server, model, question):
    wav, _ = question
    client = server.client()
    for extra in ({}, {"modalities": ["text"]}):  # LiveKit's STT sends no modalities
        stream = client.chat.completions.create(
            model="LFM2.5-Audio", stream=True, max_tokens=512, extra_body={"reset_context": True},
            messages=[{"role": "system", "content": "Perform ASR."}, audio_message(wav)], **extra)
        text, audio, _, _, finish, _ = collect(stream)
        assert text == model.transcribe(wav, max_new_tokens=24).text and not len(audio)
        assert finish in ("stop", "length")  # the tiny model rarely ends a transcript before the limit
    server.wait_idle()


def test_tts_as_liquid_and_livekit_send_it_is_model_speak(server, model):
    client = server.client()
    frames = 24
    ref = model.speak("Hello from the server.", voice="UK male", temperature=0, seed=0, max_duration=frames / 12.5)
    msgs = [{"role": "system", "content": "Perform TTS. Use the UK male voice."},
            {"role": "user", "content": "Hello from the server."}]
    stream = client.chat.completions.create(model="", modalities=["audio"], stream=True, max_tokens=frames,
                                            messages=msgs, extra_body={**GREEDY, "max_duration": frames / 12.5})
    _, audio, floats, _, finish, _ = collect(stream)
    assert len(ref.audio) > 0
    np.testing.assert_array_equal(audio, pcm16_of(ref.audio))
    assert not len(floats) and finish in ("stop", "length")
    # LiveKit's TTS plugin: no modalities, reads delta.audio_chunk (float32)
    stream = client.chat.completions.create(model="LFM2.5-Audio", stream=True, max_tokens=frames, messages=msgs,
                                            extra_body={**GREEDY, "max_duration": frames / 12.5,
                                                        "reset_context": True})
    _, audio, floats, _, _, _ = collect(stream)
    np.testing.assert_array_equal(audio, pcm16_of(ref.audio))
    np.testing.assert_allclose(floats, ref.audio, atol=1e-6)
    server.wait_idle()


def test_bad_requests_get_400_with_openai_error_bodies(server, question, model):
    wav, _ = question
    h = {**server.headers, "Content-Type": "application/json"}
    url = server.url + "/v1/chat/completions"
    good_audio = audio_message(wav)
    cases = [
        ("not json", 400),
        (json.dumps({"messages": []}), 400),
        (json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}), 400),
        (json.dumps({"messages": [{"role": "tool", "content": "x"}]}), 400),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}), 400),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}], "reset_context": False}), 400),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}], "audio": {"voice": "alloy"}}), 400),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True,
                     "audio": {"voice": "US male", "format": "wav"}}), 400),
        (json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}), 400),
        (json.dumps({"messages": [{"role": "user", "content": [{"type": "input_audio",
                                                                "input_audio": {"data": "**", "format": "wav"}}]}]}),
         400),
        (json.dumps({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
            "data": base64.b64encode(b"not audio at all" * 10).decode(), "format": "wav"}}]}]}), 400),
        (json.dumps({"messages": [good_audio], "max_tokens": 0}), 400),
        (json.dumps({"messages": [{"role": "system", "content": "Perform TTS."}, good_audio]}), 400),
    ]
    for body, status in cases:
        r = httpx.post(url, content=body, headers=h, timeout=30)
        assert r.status_code == status, (body[:80], r.text)
        err = r.json()["error"]
        assert err["message"] and err["type"] == "invalid_request_error"
    assert httpx.post(url, content="{}", headers={"Content-Type": "application/json"}).status_code == 401
    with serving.Serving(create_app(model, max_upload_mib=0.05)) as small:
        big = json.dumps({"messages": [audio_message(b"\0" * 1_200_000)]})
        r = httpx.post(small.url + "/v1/chat/completions", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        # the same body sent chunked (no Content-Length): refused as it grows past the limit
        r = httpx.post(small.url + "/v1/chat/completions", content=iter([big[i:i + 65536].encode()
                                                                       for i in range(0, len(big), 65536)]),
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert "--max-upload-mib" in r.json()["error"]["message"]
    server.wait_idle()


def test_a_client_that_leaves_mid_stream_stops_its_generation(server, model, question):
    wav, _ = question
    body = {"messages": [audio_message(wav)], "modalities": ["text", "audio"], "stream": True, "max_tokens": 2000,
            "max_duration": 60}
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", server.url + "/v1/chat/completions", json=body, headers=server.headers) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if '"audio"' in line:
                    break
    t0 = time.monotonic()
    server.wait_idle(timeout=10)
    assert time.monotonic() - t0 < 10
    assert model.scheduler.busy == 0


def test_a_model_without_speech_answers_text_and_501_for_speech(tiny_gguf_f32, question):
    wav, _ = question
    m = pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=2, batch_size=1,
                    sessions=1)
    try:
        with serving.Serving(create_app(m, max_new_tokens=8)) as srv:
            client = srv.client()
            asr = client.chat.completions.create(model="", modalities=["text"], messages=[
                {"role": "system", "content": "Perform ASR."}, audio_message(wav)])
            assert asr.choices[0].message.content == m.transcribe(wav, max_new_tokens=8).text
            with pytest.raises(openai.APIStatusError) as e:
                client.chat.completions.create(model="", modalities=["text", "audio"], messages=[audio_message(wav)])
            assert e.value.status_code == 501 and e.value.body["code"] == "speech_unavailable"
    finally:
        m.close()
