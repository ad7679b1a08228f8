"""The server at its edges, on the real engine (the tiny model): requests that cannot fit
the model's context, admission while an upload is read and decoded, good requests among
bad ones, uploads in video/audio containers, and speech on a model that cannot speak.

As in test_server.py, the tiny model's text is arbitrary: every answer is compared with
another answer for the same signal (Model.transcribe, or the same server)."""

import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import av
import httpx
import numpy as np
import pytest
import soundfile as sf

import pylfm
from pylfm.errors import ModelLoadError, PylfmError
from pylfm.server import create_app
from pylfm.server.app import transcription_failure

from media_files import encode, speech_like_noise, voice_like  # tests/ helpers
from serving import Serving

RATE = 16000
MAX_NEW = 12
WINDOW = 4.0
HOLD_S = 30.0  # the longest a test holds a request back (a safety net: it is released long before)


def chirp(seconds=1.5, f0=200.0, f1=1800.0, amp=0.3):
    t = np.arange(int(seconds * RATE)) / RATE
    return (amp * np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / seconds * t * t))).astype(np.float32)


def wav(x, rate=RATE, subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def bursts():
    """~9 s of three chirps with pauses: several windows of WINDOW seconds."""
    gap = np.zeros(int(1.5 * RATE), np.float32)
    return np.concatenate([gap, chirp(2.0, 300, 1500), gap, chirp(2.0, 900, 400), gap, chirp(2.0, 200, 2500), gap])


def post(s, files=None, data=None, **kw):
    return httpx.post(s.url + "/v1/audio/transcriptions", files=files, data=data, timeout=kw.pop("timeout", 60), **kw)


def error_of(r):
    body = r.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    assert body["error"]["message"]
    return body["error"]


def transcribe(model, data, **kw):
    return model.transcribe(data, max_new_tokens=MAX_NEW, window=WINDOW, vad="energy", **kw)


@pytest.fixture(scope="module")
def model(tiny_gguf_f32):
    # an ASR-only conversion (conftest converts with_speech=False): it cannot speak
    return pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=1)


@pytest.fixture(scope="module")
def server(model):
    with Serving(create_app(model, vad="energy", max_upload_mib=1, queue_size=16, max_new_tokens=MAX_NEW,
                            window=WINDOW)) as s:
        yield s


class Held:
    """Replaces ``app``'s upload decoder with one that decodes, then waits (on its worker
    thread, as a slow decode would) until `release` for the uploads ``hold(data)`` picks."""

    def __init__(self, app, hold=lambda data: True) -> None:
        self.svc = app.state.pylfm
        self.real = self.svc.decode_audio
        self.hold = hold
        self.entered = threading.Event()
        self.released = threading.Event()

    def __enter__(self) -> "Held":
        def decode(data):
            pcm = self.real(data)
            if self.hold(data):
                self.entered.set()
                assert self.released.wait(HOLD_S), "the test never released the held request"
            return pcm

        self.svc.decode_audio = decode
        return self

    def release(self) -> None:
        self.released.set()

    def __exit__(self, *exc) -> None:
        self.released.set()
        del self.svc.decode_audio  # back to the class's method


# ---------------------------------------------------------------------- 400 for what the request asks
def test_a_request_that_does_not_fit_the_context_is_400(tiny_gguf_f32, caplog):
    """A small fixed context per sequence (n_ctx=128; the engine rounds it up to 256): a
    300-word prompt (within the server's prompt limit) cannot fit beside the audio. Every window fails because of the request: 400
    with the engine's reason, in every answer format, streamed or not, nothing logged as a
    server error; a short prompt still works."""
    small = pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=1, n_ctx=128)
    try:
        long_prompt = "word " * 300
        ctx = small._engine.n_ctx_seq
        assert ctx < small.count_tokens(long_prompt) < 1024  # 1024: the server's --max-prompt-tokens
        one, several = wav(chirp(1.5)), wav(bursts())
        with pytest.raises(PylfmError, match="prompt tokens"):  # what the library says
            small.transcribe(one, prompt=long_prompt, max_new_tokens=MAX_NEW)
        app = create_app(small, vad="energy", max_new_tokens=MAX_NEW, window=WINDOW)
        with Serving(app) as s, caplog.at_level(logging.WARNING, logger="pylfm.server"):
            for data, form in ((one, {}), (several, {}), (one, {"response_format": "verbose_json"}),
                               (one, {"response_format": "srt"}), (one, {"stream": "true"}),
                               (several, {"stream": "true", "response_format": "text"})):
                r = post(s, files={"file": ("a.wav", data)}, data={"prompt": long_prompt, **form})
                assert r.status_code == 400, (form, r.text)
                err = error_of(r)
                assert err["type"] == "invalid_request_error" and err["code"] == "context_length_exceeded"
                assert err["param"] == "prompt" and "prompt tokens" in err["message"] and str(ctx) in err["message"]
            logged = [rec for rec in caplog.records if rec.name.startswith("pylfm.server")]
            assert not [rec for rec in logged if rec.levelno >= logging.WARNING], caplog.text
            ok = post(s, files={"file": ("a.wav", one)}, data={"prompt": "Describe it."})
            assert ok.status_code == 200
            assert ok.json()["text"] == transcribe(small, one, prompt="Describe it.").text
            s.wait_idle()
    finally:
        small.close()


def test_only_failures_caused_by_the_request_are_4xx():
    def job(*errors):
        segments = [SimpleNamespace(error=e) for e in errors]
        return SimpleNamespace(transcription=lambda: SimpleNamespace(segments=segments))

    too_long = "the request needs 190 prompt tokens but a sequence's context holds 128; use shorter audio windows"
    exc = PylfmError(f"transcription failed: {too_long}")
    assert transcription_failure(exc, job(too_long, too_long), "p").status == 400
    assert transcription_failure(exc, job(too_long), None).param == "file"
    for other in (job(too_long, "audio encoding failed"), job("prompt evaluation failed"), job()):
        err = transcription_failure(exc, other, "p")
        assert err.status == 500 and err.type == "server_error"
        assert err.message.startswith("transcription failed: ") and "failed: transcription failed" not in err.message


# ---------------------------------------------------------------------- admission
def test_decoding_holds_the_admission_place(model):
    """queue_size=1: while the one admitted request is being decoded, the next gets 503 with
    Retry-After (before its body is read); once it is answered, a new request gets in."""
    data = wav(chirp(1.5))
    want = transcribe(model, data).text
    app = create_app(model, vad="energy", queue_size=1, max_new_tokens=MAX_NEW, window=WINDOW)
    with Serving(app) as s, Held(app) as held, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, s, files={"file": ("a.wav", data)})
        assert held.entered.wait(HOLD_S)
        assert s.health()["queue"]["admitted"] == 1
        for _ in range(2):
            busy = post(s, files={"file": ("b.wav", data)})
            assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1
            assert error_of(busy)["code"] == "server_busy"
        assert not first.done()
        held.release()
        r = first.result(HOLD_S)
        assert r.status_code == 200 and r.json()["text"] == want
        s.wait_idle()
        again = post(s, files={"file": ("c.wav", data)})
        assert again.status_code == 200 and again.json()["text"] == want


def test_an_upload_in_progress_holds_the_admission_place(model):
    """The same while the body is still arriving (a slow client)."""
    data = wav(chirp(1.5))
    want = transcribe(model, data).text
    go_on = threading.Event()
    boundary = "pylfmTestBoundary"

    def slow_body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
               "Content-Type: audio/wav\r\n\r\n").encode() + data[: len(data) // 2]
        assert go_on.wait(HOLD_S)
        yield data[len(data) // 2:] + f"\r\n--{boundary}--\r\n".encode()

    app = create_app(model, vad="energy", queue_size=1, max_new_tokens=MAX_NEW, window=WINDOW)
    with Serving(app) as s, ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, s.url + "/v1/audio/transcriptions", content=slow_body(), timeout=60,
                            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        deadline = time.monotonic() + HOLD_S
        while s.health()["queue"]["admitted"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        busy = post(s, files={"file": ("b.wav", data)})
        assert busy.status_code == 503 and "Retry-After" in busy.headers
        go_on.set()
        r = first.result(HOLD_S)
        assert r.status_code == 200 and r.json()["text"] == want
        s.wait_idle()
        assert post(s, files={"file": ("c.wav", data)}).json()["text"] == want


# ---------------------------------------------------------------------- the event loop
MIB = 2 ** 20


@pytest.fixture(scope="session")
def largest_upload(tmp_path_factory):
    """The largest recording `pylfm serve` accepts with its default limits: one hour
    (--max-audio-s 3600) of speech-like noise in a FLAC under 25 MiB (--max-upload-mib):
    8-bit samples at 16 kHz. Made once per test session."""
    path = tmp_path_factory.mktemp("largest") / "hour.flac"
    sf.write(str(path), speech_like_noise(3600.0, RATE, seed=3), RATE, format="FLAC", subtype="PCM_S8")
    return path


def test_health_answers_while_the_largest_upload_is_decoded_and_planned(model, largest_upload):
    """The default server decodes an hour of audio (~1.5 s here) and runs Silero over it
    (~10 s) for one request; meanwhile /health, polled every 20 ms, answers within 100 ms
    (p99): no request's audio work runs on the event loop."""
    from pylfm.server.service import DEFAULT_MAX_AUDIO_S

    app = create_app(model)  # every limit at its default
    svc = app.state.pylfm
    data = largest_upload.read_bytes()
    assert svc.options.max_duration == DEFAULT_MAX_AUDIO_S == 3600 and svc.options.vad == "silero"
    assert 20 * MIB < len(data) <= svc.max_upload_bytes == 25 * MIB
    latencies, admitted = [], []
    with Serving(app) as s, httpx.Client(base_url=s.url, timeout=30) as poll, ThreadPoolExecutor(1) as pool:
        poll.get("/health")  # the polling connection is open before the upload starts
        answer = pool.submit(post, s, files={"file": ("hour.flac", data)}, timeout=600)
        while not answer.done():
            t0 = time.perf_counter()
            r = poll.get("/health")
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200
            admitted.append(r.json()["queue"]["admitted"])
            time.sleep(0.02)
        r = answer.result()
    assert r.status_code == 200 and r.json()["text"] == "", r.text  # noise: no window is decoded
    p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
    slowest = [round(x * 1000) for x in sorted(latencies)[-3:]]
    assert p99 < 0.100, (f"/health p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, slowest {slowest} ms "
                         f"over {len(latencies)} polls")
    # and the polls did span the work: the request was in the server for most of them
    assert sum(n == 1 for n in admitted) >= 100, f"{len(latencies)} polls, {sum(admitted)} with the request in"


# ---------------------------------------------------------------------- good and bad together
def test_good_requests_among_bad_ones_get_their_own_answers(server, model):
    """Bad requests in flight beside good ones (one good one held mid-decode until every
    bad one is answered): the bad get their 4xx, the good the text they get alone."""
    good_a, good_b = wav(chirp(1.5)), wav(chirp(2.0, 900, 300))
    alone = {d: post(server, files={"file": ("g.wav", d)}).json()["text"] for d in (good_a, good_b)}
    assert alone[good_a] == transcribe(model, good_a).text and alone[good_b] == transcribe(model, good_b).text
    bad = [  # (files, form, expected status)
        ({"file": ("notes.txt", b"just some text\n" * 40)}, None, 400),  # not audio: fails in the decoder
        ({"file": ("cut.wav", good_a[:30])}, None, 400),  # a header without its data
        ({"file": ("big.wav", b"RIFF" + b"\0" * (3 * 1024 * 1024))}, None, 413),  # over --max-upload-mib 1
        ({"file": ("a.wav", good_a)}, {"temperature": "hot"}, 400),
        ({"file": ("a.wav", good_a)}, {"temperature": "5"}, 400),
        ({"file": ("a.wav", good_a)}, {"response_format": "docx"}, 400),
        ({"file": ("a.wav", good_a)}, {"prompt": "word " * 3000}, 400),  # over --max-prompt-tokens
        (None, {"model": "m"}, 400),  # no file
    ]
    app = server.app
    with Held(app, hold=lambda data: data == good_a) as held, ThreadPoolExecutor(len(bad) + 2) as pool:
        first = pool.submit(post, server, files={"file": ("g.wav", good_a)})
        assert held.entered.wait(HOLD_S)  # the good request is admitted and mid-decode
        other = pool.submit(post, server, files={"file": ("g.wav", good_b)})
        answers = [pool.submit(post, server, files=f, data=d) for f, d, _ in bad]
        statuses = [a.result(HOLD_S).status_code for a in answers]
        assert statuses == [want for _, _, want in bad]
        assert all(error_of(a.result())["type"] == "invalid_request_error" for a in answers)
        assert not first.done()
        held.release()
        for fut, data in ((first, good_a), (other, good_b)):
            r = fut.result(HOLD_S)
            assert r.status_code == 200 and r.json()["text"] == alone[data]
    server.wait_idle()


# ---------------------------------------------------------------------- containers
def av_samples(data: bytes) -> np.ndarray:
    """The samples of the first audio stream as PyAV decodes them (mono)."""
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.audio[0]
        assert stream.codec_context.name == "aac" and stream.rate == RATE
        return np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(stream)]).astype(np.float32)


def test_m4a_and_mp4_uploads_read_like_the_wav_of_their_signal(server, model):
    """An M4A (AAC) voice memo and an MP4 with a video stream beside its AAC audio: the
    same text and tokens as the WAV of the signal they carry (AAC is lossy, so that is
    the signal its decoder gives back, not the one encoded), through the same server."""
    x = voice_like(5.0, RATE, seed=1)[:, None]
    files = {"memo.m4a": encode(x, RATE, "ipod", "aac", bit_rate=64000),
             "clip.mp4": encode(x, RATE, "mp4", "aac", video=True, bit_rate=64000)}
    with av.open(io.BytesIO(files["clip.mp4"])) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]

    def verbose(name, data):
        r = post(server, files={"file": (name, data)}, data={"response_format": "verbose_json"})
        assert r.status_code == 200, r.text
        v = r.json()
        return v["text"], [seg["tokens"] for seg in v["segments"]], round(v["duration"], 2)

    for name, data in files.items():
        carried = av_samples(data)
        assert abs(len(carried) / RATE - 5.0) < 0.1
        got, want = verbose(name, data), verbose(name + ".wav", wav(carried, subtype="FLOAT"))
        assert got == want and got[0] and got[1], name
    # a phone video: 48 kHz stereo AAC beside the video, as the library reads it
    stereo = np.stack([voice_like(4.0, 48000, seed=2), 0.5 * voice_like(4.0, 48000, seed=2)], 1)
    phone = encode(stereo, 48000, "mp4", "aac", video=True, bit_rate=128000)
    ref = transcribe(model, phone, max_segment=WINDOW)
    assert verbose("phone.mp4", phone)[:2] == (ref.text, [s.tokens for s in ref.segments])


# ---------------------------------------------------------------------- speech without speech GGUFs
def test_speech_on_a_model_without_speech_ggufs_is_501(server, model):
    with pytest.raises(ModelLoadError):
        model.speak("Hello.", max_duration=0.5)
    for fmt in ("wav", "mp3", "pcm"):
        r = httpx.post(server.url + "/v1/audio/speech", timeout=60,
                       json={"model": "lfm2-audio", "input": "Hello.", "response_format": fmt})
        assert r.status_code == 501, (fmt, r.text)
        err = error_of(r)
        assert err["type"] == "server_error" and err["code"] == "speech_unavailable"
        assert "cannot speak" in err["message"] and "vocoder" in err["message"]
    # a bad body is still a 400, and the server goes on transcribing
    assert httpx.post(server.url + "/v1/audio/speech", json={"input": ""}).status_code == 400
    server.wait_idle()
    data = wav(chirp(1.5))
    assert post(server, files={"file": ("a.wav", data)}).json()["text"] == transcribe(model, data).text


# ---------------------------------------------------------------------- speech: bounded like transcriptions
GREEDY = {"temperature": 0, "seed": 0}


@pytest.fixture(scope="module")
def speaker(tiny_speech_f32):
    """The tiny model with its speech GGUFs: it can speak."""
    with pylfm.Model(tiny_speech_f32.model_path, tiny_speech_f32.mmproj_path, device="cpu", n_threads=1,
                     batch_size=2) as m:
        yield m


def speak_post(s, body, **kw):
    return httpx.post(s.url + "/v1/audio/speech", json=body, timeout=kw.pop("timeout", 60), **kw)


def test_speech_is_never_cut_silently(speaker, caplog):
    """--max-speech-s 0.4 (5 frames), which the tiny model talks past (the library says
    so: stop reason "length"). Without max_duration the input must be spoken whole, so
    that answer is 400 naming the limit in every file format, and a pcm stream (already
    under way when the limit is reached) ends without its last chunk; the same request with
    max_duration 0.4 asks for the cut and gets the library's audio with X-Speech-Stop-Reason
    "length". Text that cannot fit at all, or a larger max_duration, is 400 up front."""
    text = "Hi."
    direct = speaker.speak(text, max_duration=0.4, **GREEDY)
    assert direct.stop_reason == "length" and len(direct.codes) == 5
    with Serving(create_app(speaker, max_speech_s=0.4)) as s, caplog.at_level(logging.WARNING, "pylfm.server"):
        for fmt in ("wav", "mp3", "flac", "opus"):
            r = speak_post(s, {"input": text, "response_format": fmt, **GREEDY})
            assert r.status_code == 400, (fmt, r.text)
            err = error_of(r)
            assert (err["param"], err["code"]) == ("input", "input_too_long")
            assert "at most 0.4 s" in err["message"] and "--max-speech-s" in err["message"]
        with httpx.stream("POST", s.url + "/v1/audio/speech", json={"input": text, "response_format": "pcm", **GREEDY},
                          timeout=60) as r:
            assert r.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete"):
                r.read()  # a broken transfer, never a complete-looking short answer
        assert "speech stream cut" in caplog.text
        for fmt in ("wav", "pcm"):  # asked for: the cut is the answer
            r = speak_post(s, {"input": text, "response_format": fmt, "max_duration": 0.4, **GREEDY})
            assert r.status_code == 200, r.text
            if fmt == "wav":
                assert r.headers["X-Speech-Stop-Reason"] == "length"
                audio, rate = sf.read(io.BytesIO(r.content), dtype="float32")
                assert rate == 24000 and len(audio) == len(direct.audio)
            else:
                assert len(r.content) == 2 * len(direct.audio)
        r = speak_post(s, {"input": text, "max_duration": 0.5})
        assert r.status_code == 400 and error_of(r)["param"] == "max_duration"
        assert "at most 0.4 s" in error_of(r)["message"]
        r = speak_post(s, {"input": "Hello there, friend."})  # 20 characters: at least 0.8 s
        assert r.status_code == 400 and "needs at least 0.8 s of speech" in error_of(r)["message"]
        s.wait_idle()


def test_speech_and_transcriptions_share_the_queue(speaker):
    """queue_size=1: a speech request being prepared holds the one place (/health counts
    it; a transcription and another speech request get 503), and a transcription being
    decoded holds it against speech."""
    app = create_app(speaker, vad="energy", queue_size=1, max_new_tokens=MAX_NEW, window=WINDOW)
    svc = app.state.pylfm
    entered, released = threading.Event(), threading.Event()
    real = svc.speech_job

    def held(text, options):  # on the request's worker thread, as a slow start would
        job = real(text, options)
        entered.set()
        assert released.wait(HOLD_S)
        return job

    body = {"input": "Hi.", "max_duration": 0.4, "response_format": "wav", **GREEDY}
    data = wav(chirp(1.5))
    svc.speech_job = held
    with Serving(app) as s, ThreadPoolExecutor(1) as pool:
        first = pool.submit(speak_post, s, body)
        assert entered.wait(HOLD_S)
        assert s.health()["queue"]["admitted"] == 1
        for busy in (post(s, files={"file": ("a.wav", data)}), speak_post(s, body)):
            assert busy.status_code == 503 and error_of(busy)["code"] == "server_busy", busy.text
        released.set()
        assert first.result(HOLD_S).status_code == 200
        s.wait_idle()
        del svc.speech_job
        with Held(app) as transcribing:
            first = pool.submit(post, s, files={"file": ("a.wav", data)})
            assert transcribing.entered.wait(HOLD_S)
            busy = speak_post(s, body)
            assert busy.status_code == 503, busy.text
            transcribing.release()
            assert first.result(HOLD_S).status_code == 200
        s.wait_idle()
        assert speak_post(s, body).status_code == 200


def test_the_memory_bound_counts_speech_requests(model):
    """Each admitted place is counted at the larger of a transcription's upload and
    decoded audio and a speech request's body and generated audio (README, Server)."""
    svc = create_app(model).state.pylfm
    transcription = 25 * MIB + 2.5 * 16000 * 4 * 3600
    assert svc.request_bytes == int(transcription) and svc.memory_bound == 16 * int(transcription)
    assert 8.9 * 1024 * MIB < svc.memory_bound < 9.0 * 1024 * MIB  # "about 9 GiB"
    svc = create_app(model, max_audio_s=60, max_speech_s=600, queue_size=4).state.pylfm
    speech = 1 * MIB + 3 * 24000 * 4 * 600
    assert svc.request_bytes == int(speech) and speech > 25 * MIB + 2.5 * 16000 * 4 * 60
    assert svc.memory_bound == 4 * int(speech)
    with pytest.raises(ValueError, match="max_speech_s"):
        create_app(model, max_speech_s=0)
