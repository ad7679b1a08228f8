"""Live use on the real engine: conversations whose history stays in the engine, barge-in
with truncation, speech batched with transcription, and streaming transcription.

Tiny checkpoints in liquid-audio's layout are converted by pylfm's converter (F32, so
greedy decoding is exact enough to compare token for token) and run through the engine.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pylfm
from pylfm.live import ConversationError, Reply, TurnDetection
from pylfm.speech.istft import FRAME_SAMPLES

RATE = 16000
FIXTURES = Path(__file__).parent / "fixtures"
CLIP = np.load(FIXTURES / "speech.npz")["clip"]  # the speech fixture's 16 kHz test clip


def tone(seconds: float, freq: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * freq * t * (1 + 0.3 * t)) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def model(lively_gguf):
    m = pylfm.Model(lively_gguf.model_path, lively_gguf.mmproj_path, device="cpu", n_threads=2, batch_size=2,
                    sessions=3)
    yield m
    m.close()


GREEDY = dict(temperature=0.0, text_temperature=0.0, seed=0)


def items_of(reply: Reply):
    return [("a", tuple(int(c) for c in it)) if isinstance(it, np.ndarray) else ("t", int(it)) for it in reply.items]


# ---------------------------------------------------------------------- conversations
def test_three_turns_equal_the_same_history_sent_at_once(model):
    turns = [("audio", CLIP), ("text", "Tell me more."), ("audio", tone(1.5, 300))]
    with model.conversation(**GREEDY, max_new_tokens=40) as a:
        replies = []
        for kind, x in turns:
            a.add_audio(x, sample_rate=RATE) if kind == "audio" else a.add_text(x)
            replies.append(a.reply())
        n_past_after_2 = a.n_past
    assert all(len(r.items) > 0 for r in replies)
    assert any(len(r.codes) for r in replies) and any(r.tokens for r in replies)
    with model.conversation(**GREEDY, max_new_tokens=40) as b:
        for (kind, x), r in zip(turns[:2], replies[:2]):
            b.add_audio(x, sample_rate=RATE) if kind == "audio" else b.add_text(x)
            b.add_assistant(r)
        b.add_audio(turns[2][1], sample_rate=RATE)
        once = b.reply()
    assert items_of(once) == items_of(replies[2])
    np.testing.assert_array_equal(once.codes, replies[2].codes)
    assert n_past_after_2 > 0


def test_each_turn_prefills_only_what_is_new(model):
    with model.conversation(**GREEDY, max_new_tokens=12) as conv:
        prompts = []
        for i in range(3):
            conv.add_audio(tone(1.0, 200 + 50 * i, seed=i), sample_rate=RATE)
            before = conv.n_past
            r = conv.reply()
            prompts.append(conv.n_past - before - sum(1 for _ in r.items))
        # the same-sized turn costs the same each time, however long the history is
        assert max(prompts[1:]) - min(prompts[1:]) <= 1 and prompts[0] > prompts[1]


def test_truncated_reply_leaves_the_history_of_one_that_never_had_the_cut_part(model):
    with model.conversation(**GREEDY, max_new_tokens=48) as a:
        a.add_audio(CLIP, sample_rate=RATE)
        full = a.reply()
        frames = sum(1 for it in full.items if isinstance(it, np.ndarray))
        assert frames >= 4, "the reply needs a few frames to cut"
        a.truncate(2 * 80 - 10)  # two frames were played (the second one partly)
        kept = a.last_reply
        assert kept.truncated and len(kept.codes) == 2 and len(kept.audio) == 2 * FRAME_SAMPLES
        a.add_text("And then?")
        after_cut = a.reply()
    with model.conversation(**GREEDY, max_new_tokens=48) as b:
        b.add_audio(CLIP, sample_rate=RATE)
        b.add_assistant(kept)
        b.add_text("And then?")
        never_had_it = b.reply()
    assert items_of(after_cut) == items_of(never_had_it)


def test_barge_in_cancels_within_a_frame_and_the_conversation_goes_on(model):
    with model.conversation(**GREEDY, max_new_tokens=400, max_duration=30) as conv:
        conv.add_audio(CLIP, sample_rate=RATE)
        seen = 0
        stream = conv.reply(stream=True)
        for chunk in stream:
            seen += len(chunk.audio) > 0
            if seen == 3:
                break
        stream.close()  # the listener started talking
        r = conv.last_reply
        assert r is not None and r.stop_reason == "cancelled"
        assert len(r.codes) <= 6, "generation went on long after the cancel"
        assert model.scheduler.busy == 0
        conv.truncate(80)
        conv.add_text("Sorry, go on.")
        again = conv.reply(max_new_tokens=10)
        assert again.items and again.stop_reason in ("length", "stop")


def test_reset_then_replaying_the_turns_under_another_system_prompt_is_a_fresh_conversation(model):
    from pylfm.live.conversation import kept_items, system_prompt

    with model.conversation(**GREEDY, max_new_tokens=16) as a:
        a.add_text("One.")
        first = a.reply()
        a.system = system_prompt("Answer briefly.", "UK male")
        a.reset()
        assert a.n_past == 0 and a.history == [] and a.last_reply is None
        a.add_text("One.")
        a.add_assistant(first)
        a.add_text("Two.")
        got = a.reply()
    with model.conversation(system="Answer briefly.", voice="UK male", **GREEDY, max_new_tokens=16) as b:
        b.add_text("One.")
        b.add_assistant(first)
        b.add_text("Two.")
        want = b.reply()
    assert items_of(got) == items_of(want)
    frames = [i for i, it in enumerate(first.items) if isinstance(it, np.ndarray)]
    if len(frames) >= 2:
        assert kept_items(first.items, 80) == frames[0] + 1 and kept_items(first.items, 0) == 0
        assert kept_items(first.items, 80 * len(frames) + 1) is None


def test_async_reply_gives_the_same_answer(model):
    import asyncio

    with model.conversation(**GREEDY, max_new_tokens=20) as conv:
        conv.add_audio(CLIP, sample_rate=RATE)
        whole = conv.reply()
    with model.conversation(**GREEDY, max_new_tokens=20) as conv:
        conv.add_audio(CLIP, sample_rate=RATE)

        async def collect():
            return [c async for c in conv.areply()]

        chunks = asyncio.run(collect())
        assert "".join(c.text for c in chunks) == whole.text
        np.testing.assert_array_equal(np.concatenate([c.audio for c in chunks]), whole.audio)
        assert items_of(conv.last_reply) == items_of(whole)


def test_two_conversations_and_a_transcription_decode_together(model):
    def alone():
        with model.conversation(**GREEDY, max_new_tokens=24) as c:
            c.add_audio(CLIP, sample_rate=RATE)
            return items_of(c.reply())

    ref_a = alone()
    ref_t = model.transcribe(tone(2.0, 440), sample_rate=RATE, max_new_tokens=24, ignore_eos=True,
                             loop_guard=None).tokens
    out = {}

    def talk(name):
        with model.conversation(**GREEDY, max_new_tokens=24) as c:
            c.add_audio(CLIP, sample_rate=RATE)
            out[name] = items_of(c.reply())

    threads = [threading.Thread(target=talk, args=(n,)) for n in ("x", "y")]
    for t in threads:
        t.start()
    tr = model.transcribe(tone(2.0, 440), sample_rate=RATE, max_new_tokens=24, ignore_eos=True, loop_guard=None)
    for t in threads:
        t.join()
    assert out["x"] == ref_a and out["y"] == ref_a and tr.tokens == ref_t
    stats = model.engine_stats()
    assert stats["max_rows"] >= 3, "the two replies and the transcription never shared a decode step"


def test_bad_input_gives_clear_errors(model):
    with model.conversation() as conv:
        with pytest.raises(ConversationError, match="no user turn"):
            conv.reply()
        with pytest.raises(ConversationError, match="no user turn to read"):
            conv.prefill()  # a read-ahead needs a user turn too
        with pytest.raises(ConversationError, match="empty"):
            conv.add_text("   ")
        with pytest.raises(ConversationError, match="sample_rate"):
            conv.append_audio(np.zeros(320, np.float32), sample_rate=7)
        with pytest.raises(pylfm.AudioError):
            conv.add_audio(np.full(1600, np.nan, np.float32), sample_rate=RATE)
        with pytest.raises(ConversationError, match="truncate"):
            conv.truncate(100)
        conv.add_text("Hello?")
        stream = conv.reply(stream=True, max_new_tokens=200)
        next(stream)
        with pytest.raises(ConversationError, match="already running"):
            conv.reply()
        stream.close()
    with pytest.raises(ConversationError, match="closed"):
        conv.add_text("anyone?")
    held = [model.conversation() for _ in range(model.sessions)]
    try:
        with pytest.raises(ConversationError, match="in use"):
            model.conversation()
    finally:
        for c in held:
            c.close()
    model.conversation().close()  # the slots came back


def test_a_conversation_longer_than_its_context_drops_its_oldest_turns(model):
    with model.conversation(**GREEDY, max_new_tokens=20, max_context=256) as conv:
        for i in range(8):
            conv.add_audio(tone(1.2, 250 + 30 * i, seed=i), sample_rate=RATE)
            r = conv.reply()
            assert r.items
            assert conv.n_past <= 256
        assert conv.dropped_turns > 0
        assert conv.history[0]["role"] == "user"


# ---------------------------------------------------------------------- streaming transcription
def speechy(seconds: float, seed: int) -> np.ndarray:
    """Voiced-sounding audio (harmonics with a syllable rhythm) that Silero takes for speech."""
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.1 * x * envelope).astype(np.float32)


def test_turn_detection_finds_the_utterances_of_a_stream():
    from pylfm.live import SpeechDetector

    espeak = _espeak_or_skip()
    pcm = np.concatenate([np.zeros(RATE // 2), espeak("hello there"), np.zeros(RATE), espeak("how are you"),
                          np.zeros(RATE)]).astype(np.float32)
    det = SpeechDetector(TurnDetection(silence_duration_ms=500))
    events = []
    for i in range(0, len(pcm), 320):
        events += det.push(pcm[i:i + 320])
    utts = [e for e in events if type(e).__name__ == "Utterance"]
    assert len(utts) == 2
    assert 0.1 < utts[0].start < 0.6 and utts[1].start > utts[0].end


def _espeak_or_skip():
    import shutil
    import subprocess

    import soundfile as sf

    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")

    def say(text: str) -> np.ndarray:
        import io

        wav = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout
        data, rate = sf.read(io.BytesIO(wav), dtype="float32")
        import soxr

        return soxr.resample(data, rate, RATE).astype(np.float32)

    return say


def test_streaming_transcriber_gives_the_texts_of_the_same_spans(model):
    espeak = _espeak_or_skip()
    pcm = np.concatenate([np.zeros(RATE // 2), espeak("one two three"), np.zeros(RATE), espeak("four five six"),
                          np.zeros(RATE)]).astype(np.float32)
    t = model.transcriber(turn_detection=TurnDetection(silence_duration_ms=400), max_new_tokens=24)
    for i in range(0, len(pcm), 320):  # 20 ms chunks
        t.push(pcm[i:i + 320])
    t.close()
    events = list(t.events())
    done = [e for e in events if e.type == "completed"]
    assert len(done) == 2
    for e in done:
        span = pcm[round(e.start * RATE):round(e.end * RATE)]
        assert e.text == model.transcribe(span, sample_rate=RATE, max_new_tokens=24).text
        deltas = "".join(d.text for d in events if d.type == "delta" and d.utterance == e.utterance)
        assert deltas == e.text
    kinds = [e.type for e in events if e.utterance == 0]
    assert kinds.index("speech_started") < kinds.index("speech_stopped") < kinds.index("completed")


def test_manual_commit_and_bad_chunks(model):
    t = model.transcriber(turn_detection=None, max_new_tokens=8)
    t.push((tone(0.5, 300) * 32767).astype(np.int16))
    k = t.commit()
    assert k == 0 and t.commit() is None
    with pytest.raises(ValueError, match="mono"):
        t.push(np.zeros((2, 320), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        t.push(np.full(320, np.inf, np.float32))
    t.close()
    events = list(t.events())
    assert [e.type for e in events if e.type in ("speech_stopped", "completed")] == ["speech_stopped", "completed"]
    with pytest.raises(ValueError, match="closed"):
        t.push(np.zeros(320, np.float32))


# ---------------------------------------------------------------------- a spoken conversation
def test_voice_chat_answers_each_utterance_and_yields_to_the_user(model):
    """A recording plays the microphone in real time; the speaker is drained in real
    time. The first question is answered; talking over the second reply interrupts it,
    and the conversation keeps only what was played of it."""
    from pylfm.live.voice import SPEAKER_RATE, Speaker, VoiceChat

    espeak = _espeak_or_skip()
    q1, q2 = espeak("hello, how are you"), espeak("tell me a long story please")
    mic = np.concatenate([np.zeros(RATE // 4), q1, np.zeros(int(1.6 * RATE)), q2, np.zeros(int(0.7 * RATE)),
                          espeak("stop"), np.zeros(RATE)]).astype(np.float32)
    speaker = Speaker()
    done = threading.Event()

    def sound_card():  # takes 20 ms of audio every 20 ms, as a sound card's callback would
        while not done.is_set():
            speaker.take(SPEAKER_RATE // 50)
            time.sleep(0.02)

    def microphone():
        t0 = time.monotonic()
        for i in range(0, len(mic), 320):
            time.sleep(max(0.0, t0 + i / RATE - time.monotonic()))
            yield mic[i:i + 320]

    threading.Thread(target=sound_card, daemon=True).start()
    events = []
    with model.conversation(**GREEDY, max_new_tokens=400, max_duration=20) as conv:
        chat = VoiceChat(conv, turn_detection=TurnDetection(silence_duration_ms=300), on_event=events.append)
        chat.run(microphone(), speaker)
        done.set()
        history = conv.history
    assert chat.replies >= 2 and chat.interruptions >= 1, events
    assert [h["role"] for h in history][:4] == ["user", "assistant", "user", "assistant"]
    cut = [h for h in history if h["role"] == "assistant"][1]
    assert cut["audio_seconds"] < 3.0, "the interrupted reply kept more than was played (about 1 s)"


def test_live_chat_without_a_sound_library_says_what_to_install(monkeypatch, capsys):
    import builtins

    from pylfm.cli import main

    real_import = builtins.__import__

    def no_sounddevice(name, *a, **kw):
        if name == "sounddevice":
            raise ImportError("No module named 'sounddevice'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_sounddevice)
    assert main(["chat", "--live"]) == 2
    err = capsys.readouterr().err
    assert "pylfm[mic]" in err and "libportaudio2" in err


def test_a_turn_read_ahead_gives_the_reply_of_one_read_with_it(model):
    """prefill() reads the user's turn while they pause; the reply then equals a reply to
    the same turn read with it. Adding to the turn afterwards takes the read-ahead back."""
    with model.conversation(**GREEDY, max_new_tokens=24) as a:
        a.add_audio(CLIP, sample_rate=RATE)
        first = a.reply()
        a.add_audio(tone(1.0, 330), sample_rate=RATE)
        plain = a.reply()
    with model.conversation(**GREEDY, max_new_tokens=24) as b:
        b.add_audio(CLIP, sample_rate=RATE)
        b.prefill()
        b.add_audio(tone(0.5, 500), sample_rate=RATE)  # they went on: taken back, read again later
        b.discard_turn()
        b.add_audio(CLIP, sample_rate=RATE)
        b.prefill()
        assert items_of(b.reply()) == items_of(first)
        b.add_audio(tone(1.0, 330), sample_rate=RATE)
        b.prefill()
        read_ahead = b.reply()
    assert items_of(read_ahead) == items_of(plain)


def test_turn_detection_reports_pauses_that_equal_the_utterance():
    from pylfm.live import SpeechDetector, SpeechPaused, SpeechResumed

    espeak = _espeak_or_skip()
    words = espeak("one two three four")
    pcm = np.concatenate([np.zeros(RATE // 2), words, np.zeros(int(0.25 * RATE)), words,
                          np.zeros(RATE)]).astype(np.float32)
    det = SpeechDetector(TurnDetection(silence_duration_ms=500))
    events = []
    for i in range(0, len(pcm), 320):
        events += det.push(pcm[i:i + 320])
    kinds = [type(e).__name__ for e in events]
    assert "SpeechResumed" in kinds, kinds  # the short pause between the two phrases
    pauses = [e for e in events if isinstance(e, SpeechPaused)]
    utt = [e for e in events if type(e).__name__ == "Utterance"]
    assert len(utt) == 1 and pauses[-1].start == utt[0].start and pauses[-1].end == utt[0].end
    np.testing.assert_array_equal(pauses[-1].pcm, utt[0].pcm)
    assert isinstance(events[kinds.index("SpeechResumed")], SpeechResumed)


def test_interim_hypotheses_come_before_the_final_transcript(model):
    espeak = _espeak_or_skip()
    speech = espeak("this is a longer sentence that keeps going for a while so that we see hypotheses")
    pcm = np.concatenate([np.zeros(RATE // 4), speech, np.zeros(RATE)]).astype(np.float32)
    t = model.transcriber(interim=True, interim_interval=0.5, max_new_tokens=16)
    t0 = time.monotonic()
    for i in range(0, len(pcm), 320):  # in real time: hypotheses need time to decode
        time.sleep(max(0.0, t0 + i / RATE - time.monotonic()))
        t.push(pcm[i:i + 320])
    t.close()
    events = list(t.events())
    kinds = [e.type for e in events]
    assert "interim" in kinds and kinds.index("interim") < kinds.index("completed"), kinds
    for e in events:
        if e.type == "interim":
            stable = e.stable.split()
            assert e.utterance == 0 and e.text.split()[:len(stable)] == stable  # agreed words lead the hypothesis
