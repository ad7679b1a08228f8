"""``/v1/realtime`` end to end: a real uvicorn server on loopback, the tiny speech-capable
model on the real engine, and the official ``openai`` SDK's realtime client (plus a raw
``websockets`` client where the test needs what the SDK will not send).

Replies are greedy (the server's ``temperature=0, seed=0``), so what arrives over the
wire is compared with `Model.conversation` run on the same model: the transcript token
for token, the audio sample for sample (PCM16)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from typing import Any, Callable, List, Optional

import numpy as np
import pytest

import openai  # noqa: F401 - test requirements: a missing one must fail, not skip
import websockets  # noqa: F401

import pylfm
from pylfm.server import create_app
from pylfm.server.realtime import RealtimeSettings
from pylfm.server.realtime_audio import PCMA, PCMU, AudioFormat, from_float, parse_format, to_float
from pylfm.server.realtime_events import ClientError, SessionConfig, apply_update
from pylfm.speech.voices import CHAT_SYSTEM_PROMPT

import serving
import voice

KEY = "rt-key-1"
REPLY_STEPS = 20  # most tests' replies: about 1 s of speech
GREEDY = dict(temperature=0.0, seed=0)


@pytest.fixture(scope="module")
def model(lively_gguf):
    m = pylfm.Model(lively_gguf.model_path, lively_gguf.mmproj_path, device="cpu", n_threads=2, batch_size=2,
                    sessions=3)
    yield m
    m.close()


def settings(**kw) -> RealtimeSettings:
    base = dict(max_reply_s=20.0, max_reply_tokens=400, max_message_mib=1.0, **GREEDY)
    base.update(kw)
    return RealtimeSettings(**base)


@pytest.fixture(scope="module")
def server(model):
    with serving.Serving(create_app(model, api_key=KEY, realtime=settings()), key=KEY) as s:
        yield s


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


class Events:
    """The events of one connection, read with timeouts."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.seen: List[Any] = []

    async def until(self, pred: Callable[[Any], bool], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                assert left > 0
                ev = await asyncio.wait_for(self.conn.recv(), left)
            except (AssertionError, asyncio.TimeoutError):
                shown = [e.type if e.type != "error" else f"error {e.error.code}: {e.error.message}"
                         for e in self.seen if not e.type.endswith(".delta")]
                raise AssertionError(f"timed out; seen (but deltas): {shown[-40:]}") from None
            self.seen.append(ev)
            if pred(ev):
                return ev

    async def type(self, *types: str, timeout: float = 30.0) -> Any:
        return await self.until(lambda e: e.type in types, timeout)

    def of(self, t: str) -> List[Any]:
        return [e for e in self.seen if e.type == t]


def sdk(server: serving.Serving, key: Optional[str] = KEY, **kw):
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key or "none", max_retries=0).realtime.connect(
        model="lfm2-audio", **kw)


def reference_reply(model, *, user_text: Optional[str] = None, system: str = CHAT_SYSTEM_PROMPT,
                    history: Optional[list] = None, steps: int = REPLY_STEPS, max_s: float = 20.0):
    with model.conversation(system=system, voice="US female", max_new_tokens=steps, max_duration=max_s,
                            **GREEDY) as c:
        for role, x in history or []:
            c.add_text(x) if role == "user" else c.add_assistant(x)
        c.add_text(user_text)
        return c.reply()


def wait_released(server: serving.Serving, timeout: float = 10.0) -> float:
    """Seconds until no conversation slot is held and the engine is idle."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        h = server.health()
        if h["realtime"]["slots_held"] == 0 and h["queue"]["decoding"] == 0 and h["realtime"]["connections"] == 0:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"slots still held: {server.health()}")


async def text_turn(conn, ev: Events, text: str, **response) -> Any:
    await conn.send({"type": "conversation.item.create",
                     "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
    await conn.send({"type": "response.create", **({"response": response} if response else {})})
    return await ev.type("response.done")


def reply_of(ev: Events, response_id: str):
    audio = voice.from_b64([e.delta for e in ev.seen if e.type == "response.output_audio.delta"
                            and e.response_id == response_id])
    text = "".join(e.delta for e in ev.seen if e.type == "response.output_audio_transcript.delta"
                   and e.response_id == response_id)
    return text, audio


# ---------------------------------------------------------------------- speech to speech
def test_a_reply_over_the_wire_is_the_models_reply_sample_for_sample(server, model):
    async def main():
        async with sdk(server) as conn:
            ev = Events(conn)
            created = await ev.type("session.created")
            assert created.session.type == "realtime" and created.session.audio.output.voice == "US female"
            await conn.send({"type": "session.update", "session": {"type": "realtime",
                                                                   "max_output_tokens": REPLY_STEPS}})
            await ev.type("session.updated")
            done = await text_turn(conn, ev, "Hello there, how are you?")
            return ev, done

    ev, done = run(main())
    assert done.response.status in ("completed", "incomplete"), done.response
    text, audio = reply_of(ev, done.response.id)
    ref = reference_reply(model, user_text="Hello there, how are you?")
    assert len(ref.audio) > 0 and text == ref.text
    np.testing.assert_array_equal(audio, np.frombuffer(from_float(ref.audio, AudioFormat()), "<i2"))
    item = done.response.output[0]
    assert item.role == "assistant" and item.content[0].transcript == text
    # the GA event order of one reply
    order = [e.type for e in ev.seen if e.type.startswith(("response.", "conversation.item.")) and
             not e.type.endswith(".delta")]
    order = order[order.index("response.created"):]
    assert order[-1] == "response.done"
    assert {"response.output_item.added", "response.content_part.added", "response.output_audio.done",
            "response.output_audio_transcript.done", "response.content_part.done",
            "response.output_item.done"} <= set(order)
    wait_released(server)


def test_server_vad_turns_transcripts_and_a_second_turn_with_history(server, model):
    utt = voice.utterances()

    async def main():
        async with sdk(server) as conn:
            ev = Events(conn)
            await ev.type("session.created")
            await conn.send({"type": "session.update", "session": {
                "type": "realtime", "max_output_tokens": REPLY_STEPS,
                "audio": {"input": {"transcription": {"model": "lfm2-audio"},
                                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}}}}})
            await ev.type("session.updated")
            dones = []
            for k in (0, 1):
                for chunk in voice.b64_chunks(np.concatenate([utt[k], voice.silence(0.8)])):
                    await conn.send({"type": "input_audio_buffer.append", "audio": chunk})
                dones.append(await ev.type("response.done"))
            await ev.until(lambda e: e.type == "conversation.item.input_audio_transcription.completed"
                           and len(ev.of("conversation.item.input_audio_transcription.completed")) >= 2)
            return ev, dones

    ev, dones = run(main())
    started, stopped = ev.of("input_audio_buffer.speech_started"), ev.of("input_audio_buffer.speech_stopped")
    committed = ev.of("input_audio_buffer.committed")
    assert len(started) == len(stopped) == len(committed) == 2
    assert [s.item_id for s in stopped] == [c.item_id for c in committed]
    assert stopped[0].audio_end_ms > started[0].audio_start_ms >= 0
    assert committed[1].previous_item_id == dones[0].response.output[0].id  # user, model, user, model
    for d in dones:
        assert d.response.status in ("completed", "incomplete")
        text, audio = reply_of(ev, d.response.id)
        assert len(audio) > 0 and text == d.response.output[0].content[0].transcript
    # the user's words: deltas add up to the transcript, one per committed item
    for c in committed:
        completed = [e for e in ev.of("conversation.item.input_audio_transcription.completed") if e.item_id == c.item_id]
        deltas = "".join(e.delta for e in ev.of("conversation.item.input_audio_transcription.delta")
                         if e.item_id == c.item_id)
        assert len(completed) == 1 and completed[0].transcript and completed[0].transcript == deltas
        assert completed[0].usage.type == "duration" and completed[0].usage.seconds > 1
    wait_released(server)


def test_manual_turns_and_truncation_leave_the_history_the_user_heard(server, model):
    utt = voice.utterances()

    async def main():
        async with sdk(server) as conn:
            ev = Events(conn)
            await ev.type("session.created")
            await conn.send({"type": "session.update", "session": {
                "type": "realtime", "max_output_tokens": REPLY_STEPS, "audio": {"input": {"turn_detection": None}}}})
            await ev.type("session.updated")
            for chunk in voice.b64_chunks(utt[0]):
                await conn.send({"type": "input_audio_buffer.append", "audio": chunk})
            await conn.send({"type": "input_audio_buffer.commit"})
            committed = await ev.type("input_audio_buffer.committed")
            assert not ev.of("input_audio_buffer.speech_started")  # no VAD
            await conn.send({"type": "response.create"})
            done = await ev.type("response.done")
            item = done.response.output[0].id
            await conn.send({"type": "conversation.item.truncate", "item_id": item, "content_index": 0,
                             "audio_end_ms": 160})
            truncated = await ev.type("conversation.item.truncated")
            done2 = await text_turn(conn, ev, "And then?")
            return ev, committed, done, truncated, done2

    ev, committed, done, truncated, done2 = run(main())
    assert truncated.item_id == done.response.output[0].id and truncated.audio_end_ms == 160
    assert committed.item_id and done2.response.status in ("completed", "incomplete")
    assert not ev.of("error")
    wait_released(server)


def test_barge_in_by_voice_cancels_the_reply_and_the_next_turn_answers(server):
    utt = voice.utterances()

    async def main():
        async with sdk(server) as conn:
            ev = Events(conn)
            await ev.type("session.created")
            await conn.send({"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 80,
                                                                   "audio": {"input": {"turn_detection": {
                "type": "server_vad", "silence_duration_ms": 300, "interrupt_response": True}}}}})
            await ev.type("session.updated")
            for chunk in voice.b64_chunks(np.concatenate([utt[0], voice.silence(0.5)])):
                await conn.send({"type": "input_audio_buffer.append", "audio": chunk})
            first = await ev.type("response.output_audio.delta")
            t0 = time.monotonic()
            for chunk in voice.b64_chunks(np.concatenate([utt[2], voice.silence(0.6)])):  # the user talks over it
                await conn.send({"type": "input_audio_buffer.append", "audio": chunk})
            cancelled = await ev.until(lambda e: e.type == "response.done" and e.response.id == first.response_id)
            cut_after = time.monotonic() - t0
            played = 80 * 3
            await conn.send({"type": "conversation.item.truncate", "item_id": first.item_id, "content_index": 0,
                             "audio_end_ms": played})
            await ev.type("conversation.item.truncated")
            second = await ev.until(lambda e: e.type == "response.done" and e.response.id != first.response_id)
            return ev, first, cancelled, cut_after, second

    ev, first, cancelled, cut_after, second = run(main())
    assert cancelled.response.status == "cancelled"
    assert cancelled.response.status_details.reason == "turn_detected"
    _, audio = reply_of(ev, first.response_id)
    frames = cancelled.response.usage.output_token_details.audio_tokens
    assert len(audio) <= frames * 1920 and frames < 50, "the reply ran to its end"
    assert second.response.status in ("completed", "incomplete")
    assert cut_after < 10
    wait_released(server)


def test_response_cancel_stops_a_reply_within_a_step_and_the_slot_is_reused(server, model):
    async def main():
        async with sdk(server) as conn:
            ev = Events(conn)
            await ev.type("session.created")
            await conn.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a story."}]}})
            await conn.send({"type": "response.create"})
            first = await ev.type("response.output_audio.delta")
            await conn.send({"type": "response.cancel"})
            done = await ev.type("response.done")
            await conn.send({"type": "response.cancel"})  # nothing runs now
            err = await ev.type("error")
            return ev, first, done, err

    ev, first, done, err = run(main())
    assert done.response.status == "cancelled" and done.response.status_details.reason == "client_cancelled"
    assert err.error.code == "response_cancel_not_active"
    _, audio = reply_of(ev, first.response_id)
    assert len(audio) < 20 * 24000
    assert model.scheduler.busy == 0
    wait_released(server)


def test_instructions_changed_mid_conversation_rebuild_the_history(server, model):
    async def main():
        async with sdk(server) as conn:
            ev = Events(conn)
            await ev.type("session.created")
            await conn.send({"type": "session.update", "session": {"max_output_tokens": REPLY_STEPS}})
            first = await text_turn(conn, ev, "Hi.")
            await conn.send({"type": "session.update", "session": {"instructions": "Answer briefly.",
                                                                   "audio": {"output": {"voice": "UK male"}}}})
            updated = await ev.type("session.updated")
            second = await text_turn(conn, ev, "What now?")
            return ev, first, updated, second

    ev, first, updated, second = run(main())
    assert updated.session.instructions == "Answer briefly." and updated.session.audio.output.voice == "UK male"
    text1, _ = reply_of(ev, first.response.id)
    text2, audio2 = reply_of(ev, second.response.id)
    with model.conversation(system="Respond with interleaved text and audio.", voice="US female",
                            max_new_tokens=REPLY_STEPS, max_duration=20.0, **GREEDY) as c:
        c.add_text("Hi.")
        r1 = c.reply()
    assert r1.text == text1
    with model.conversation(system="Answer briefly.", voice="UK male", max_new_tokens=REPLY_STEPS, max_duration=20.0,
                            **GREEDY) as c:
        c.add_text("Hi.")
        c.add_assistant(r1)
        c.add_text("What now?")
        r2 = c.reply()
    assert text2 == r2.text
    np.testing.assert_array_equal(audio2, np.frombuffer(from_float(r2.audio, AudioFormat()), "<i2"))
    wait_released(server)


def test_text_replies_16_khz_input_and_switching_the_session_type(server, model):
    utt16 = voice.utterances(16000)

    async def main():
        async with sdk(server) as conn:
            ev = Events(conn)
            await ev.type("session.created")
            assert server.health()["realtime"]["slots_held"] == 1
            await conn.send({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 16000}}}}})
            switched = await ev.type("session.updated")
            held_as_transcription = server.health()["realtime"]["slots_held"]
            for chunk in voice.b64_chunks(np.concatenate([utt16[2], voice.silence(0.7, 16000)]), rate=16000):
                await conn.send({"type": "input_audio_buffer.append", "audio": chunk})
            heard = await ev.type("conversation.item.input_audio_transcription.completed")
            await conn.send({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"],
                                                                   "audio": {"input": {"turn_detection": None}}}})
            back = await ev.type("session.updated")
            done = await text_turn(conn, ev, "Write something.", max_output_tokens=12)
            return ev, switched, held_as_transcription, heard, back, done

    ev, switched, held, heard, back, done = run(main())
    assert switched.session.type == "transcription" and held == 0 and heard.transcript
    assert back.session.type == "realtime" and back.session.output_modalities == ["text"]
    text = "".join(e.delta for e in ev.of("response.output_text.delta"))
    assert done.response.status == "completed" and not ev.of("response.output_audio.delta")
    assert done.response.output[0].content[0].type == "output_text" and done.response.output[0].content[0].text == text
    wait_released(server)


def test_a_long_conversation_drops_its_oldest_turns_and_goes_on(model, caplog):
    async def main(srv):
        async with sdk(srv, key=None) as conn:
            ev = Events(conn)
            await ev.type("session.created")
            await conn.send({"type": "session.update", "session": {"max_output_tokens": 24}})
            statuses = []
            for k in range(8):
                statuses.append((await text_turn(conn, ev, f"Turn {k}: tell me about the number {k} in detail."))
                                .response.status)
            return statuses

    with serving.Serving(create_app(model, realtime=settings(max_context=256))) as srv:
        statuses = run(main(srv))
        wait_released(srv)
    assert all(s in ("completed", "incomplete") for s in statuses)
    assert any("dropped its" in r.getMessage() for r in caplog.records)  # past max_context, and it went on


# ---------------------------------------------------------------------- transcription sessions
def test_transcription_session_streams_the_users_transcripts(server, model):
    utt = voice.utterances()

    async def main():
        async with sdk(server, extra_query={"intent": "transcription"}) as conn:
            ev = Events(conn)
            created = await ev.type("session.created")
            assert created.session.type == "transcription"
            for u in utt:
                for chunk in voice.b64_chunks(np.concatenate([u, voice.silence(0.7)])):
                    await conn.send({"type": "input_audio_buffer.append", "audio": chunk})
            while len(ev.of("conversation.item.input_audio_transcription.completed")) < 3:
                await ev.type("conversation.item.input_audio_transcription.completed")
            await conn.send({"type": "response.create"})
            err = await ev.type("error")
            return ev, err

    ev, err = run(main())
    assert err.error.code == "invalid_session_type"
    assert len(ev.of("input_audio_buffer.committed")) == 3
    assert not [e for e in ev.seen if e.type.startswith("response.")]
    texts = [e.transcript for e in ev.of("conversation.item.input_audio_transcription.completed")]
    assert all(texts)
    assert server.health()["realtime"]["slots_held"] == 0  # a transcription session holds no conversation slot
    wait_released(server)


# ---------------------------------------------------------------------- errors, limits, auth
def test_every_bad_client_message_gets_an_error_event_and_the_session_goes_on(server):
    bad = [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_event"),
        (json.dumps({"no": "type"}), "invalid_event"),
        (json.dumps({"type": "no.such.event"}), "unknown_event"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "***"}), "invalid_value"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}), "invalid_value"),
        (json.dumps({"type": "input_audio_buffer.append"}), "invalid_value"),
        (json.dumps({"type": "session.update", "session": {"audio": {"output": {"voice": "alloy"}}}}), "invalid_value"),
        (json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {
            "type": "server_vad", "threshold": 2}}}}}), "invalid_value"),
        (json.dumps({"type": "session.update", "session": {"type": "video"}}), "invalid_value"),
        (json.dumps({"type": "session.update", "session": {"tools": [{"type": "function", "name": "f"}]}}),
         "unsupported"),
        (json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcm",
                                                                                          "rate": 1}}}}}),
         "invalid_value"),
        (json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty"),
        (json.dumps({"type": "response.cancel"}), "response_cancel_not_active"),
        (json.dumps({"type": "response.create"}), "no_user_turn"),
        (json.dumps({"type": "response.create", "response": {"conversation": "none"}}), "unsupported"),
        (json.dumps({"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0,
                     "audio_end_ms": 10}), "item_not_found"),
        (json.dumps({"type": "conversation.item.delete", "item_id": "nope"}), "item_not_found"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "robot",
                                                                  "content": [{"type": "input_text", "text": "x"}]}}),
         "invalid_value"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "function_call", "name": "f"}}),
         "unsupported"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "system",
                                                                  "content": [{"type": "input_text", "text": "x"}]}}),
         "unsupported"),
        (json.dumps({"type": "output_audio_buffer.clear"}), "unsupported"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (1024 * 1024 + 8)}), "message_too_large"),
    ]

    async def main():
        async with sdk(server) as conn:
            ev = Events(conn)
            await ev.type("session.created")
            await conn.send({"type": "session.update", "session": {"max_output_tokens": 12}})
            await ev.type("session.updated")
            codes = []
            for k, (raw, _) in enumerate(bad):
                if raw.startswith("{"):
                    d = json.loads(raw)
                    d["event_id"] = f"evt_{k}"
                    raw = json.dumps(d)
                await conn.send_raw(raw)
                e = await ev.type("error")
                codes.append((e.error.code, e.error.event_id))
            await conn.send_raw(b"\x00\x01binary")
            codes.append(((await ev.type("error")).error.code, None))
            done = await text_turn(conn, ev, "Still there?")
            return codes, done

    codes, done = run(main())
    assert [c for c, _ in codes[:-1]] == [c for _, c in bad]
    assert codes[-1][0] == "invalid_event"
    for k, (raw, code) in enumerate(bad):
        if raw.startswith("{") and code != "message_too_large":  # that one is not read
            assert codes[k][1] == f"evt_{k}"  # the error names the client event it answers
    assert done.response.status in ("completed", "incomplete")
    wait_released(server)


def test_auth_by_header_or_browser_subprotocol(server):
    import websockets.asyncio.client as wsc

    async def main():
        # a wrong key: an error event, then close 1008
        async with sdk(server, key="wrong") as conn:
            ev = Events(conn)
            err = await ev.type("error")
            with pytest.raises(Exception):
                await asyncio.wait_for(conn.recv(), 5)
            code = conn._connection.close_code
        # what browsers send: the key as a subprotocol
        url = server.url.replace("http", "ws") + "/v1/realtime"
        async with wsc.connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            proto = ws.subprotocol
        async with wsc.connect(url, subprotocols=["realtime"]) as ws:
            no_key = json.loads(await asyncio.wait_for(ws.recv(), 10))
        return err, code, first, proto, no_key

    err, code, first, proto, no_key = run(main())
    assert err.error.code == "invalid_api_key" and code == 1008
    assert first["type"] == "session.created" and proto == "realtime"
    assert no_key["type"] == "error" and no_key["error"]["code"] == "invalid_api_key"
    wait_released(server)


def test_abrupt_disconnect_mid_reply_frees_the_slot_within_a_step(server, model, caplog):
    import logging
    import re

    import websockets.asyncio.client as wsc

    caplog.set_level(logging.INFO, logger="pylfm.server")

    async def main():
        url = server.url.replace("http", "ws") + "/v1/realtime"
        ws = await wsc.connect(url, additional_headers={"Authorization": f"Bearer {KEY}"})
        await ws.recv()
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Talk for a while."}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        while json.loads(await ws.recv())["type"] != "response.output_audio.delta":
            pass
        assert server.health()["realtime"]["slots_held"] == 1
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        ws.transport.abort()
        return time.monotonic()

    t_gone = run(main())
    wait_released(server)
    assert time.monotonic() - t_gone < 10  # a 400-step reply would still be running (seconds per 20 steps here)
    assert model.speech_runtime.open_sessions == 0
    freed = [r.getMessage() for r in caplog.records if "slot was freed" in r.getMessage()]
    assert freed and "(client gone), a reply was stopped" in freed[-1], freed
    ms = float(re.search(r"freed in (\d+) ms", freed[-1]).group(1))
    assert ms < 2000, freed[-1]  # the reply stops at the engine's next step, then the slot is closed


def test_limits_close_with_codes_that_say_why(model):
    import websockets.asyncio.client as wsc
    from websockets.exceptions import ConnectionClosed

    async def closed(ws) -> tuple:
        events = []
        try:
            while True:
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        except ConnectionClosed:
            pass
        return events, ws.close_code

    async def main(url_full, url_idle):
        out = {}
        # conversation slots: 3 in the model; a 4th realtime session is refused, a transcription one is not
        held = [await wsc.connect(url_full) for _ in range(3)]
        for ws in held:
            assert json.loads(await ws.recv())["type"] == "session.created"
        refused = await wsc.connect(url_full)
        out["slots"] = await closed(refused)
        async with wsc.connect(url_full + "?intent=transcription") as t:
            out["transcription_ok"] = json.loads(await t.recv())["type"]
        for ws in held:
            await ws.close()
        # idle and length limits
        ws = await wsc.connect(url_idle)
        out["idle"] = await closed(ws)
        return out

    with serving.Serving(create_app(model, realtime=settings())) as full, \
            serving.Serving(create_app(model, realtime=settings(idle_timeout_s=0.5))) as idle:
        out = run(main(full.url.replace("http", "ws") + "/v1/realtime", idle.url.replace("http", "ws") + "/v1/realtime"))
        wait_released(full)
        wait_released(idle)
    events, code = out["slots"]
    assert code == 1013 and events[-1]["error"]["code"] == "session_limit_reached"
    assert out["transcription_ok"] == "session.created"
    events, code = out["idle"]
    assert code == 1000 and events[-1]["error"]["code"] == "idle_timeout"

    async def connections(url):
        a = await wsc.connect(url)
        await a.recv()
        b = await wsc.connect(url)
        got = await closed(b)
        await a.close()
        return got

    with serving.Serving(create_app(model, realtime=settings(max_connections=1))) as one:
        events, code = run(connections(one.url.replace("http", "ws") + "/v1/realtime"))
        wait_released(one)
    assert code == 1013 and events[-1]["error"]["code"] == "session_limit_reached"

    async def expire(url):
        ws = await wsc.connect(url)
        return await closed(ws)

    with serving.Serving(create_app(model, realtime=settings(max_session_s=0.5))) as short:
        events, code = run(expire(short.url.replace("http", "ws") + "/v1/realtime"))
        wait_released(short)
    assert code == 1000 and events[-1]["error"]["code"] == "session_expired"


def test_a_client_listening_to_a_long_reply_is_not_idle(model):
    """The idle timeout counts from the last client event or the end of the last reply:
    a reply longer than the timeout plays to its end, then the idle session is closed."""
    async def main(url):
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0).realtime.connect(
                model="lfm2-audio") as conn:
            ev = Events(conn)
            await ev.type("session.created")
            t0 = time.monotonic()
            done = await text_turn(conn, ev, "Tell me a long story.", max_output_tokens=200)
            took = time.monotonic() - t0
            err = await ev.type("error", timeout=10)
            return done, took, err

    with serving.Serving(create_app(model, realtime=settings(idle_timeout_s=0.4))) as srv:
        done, took, err = run(main(srv.url))
        wait_released(srv)
    assert took > 0.4  # the reply outlasted the timeout...
    assert done.response.status in ("completed", "incomplete")  # ...and ran to its end (or its 200 steps),
    assert done.response.status == "completed" or done.response.status_details.reason == "max_output_tokens"
    assert err.error.code == "idle_timeout"


def test_beta_clients_get_the_beta_names_and_flat_session(server):
    import websockets.asyncio.client as wsc

    async def main():
        url = server.url.replace("http", "ws") + "/v1/realtime"
        async with wsc.connect(url, additional_headers={"Authorization": f"Bearer {KEY}",
                                                        "OpenAI-Beta": "realtime=v1"}) as ws:
            seen = [json.loads(await ws.recv())]
            await ws.send(json.dumps({"type": "session.update", "session": {
                "modalities": ["text", "audio"], "voice": "UK female", "input_audio_format": "pcm16",
                "output_audio_format": "pcm16", "turn_detection": None, "input_audio_transcription": None,
                "max_response_output_tokens": 12}}))
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            while seen[-1]["type"] != "response.done":
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            return seen

    seen = run(main())
    types = [e["type"] for e in seen]
    assert seen[0]["session"]["voice"] == "US female" and seen[0]["session"]["input_audio_format"] == "pcm16"
    updated = next(e for e in seen if e["type"] == "session.updated")
    assert updated["session"]["voice"] == "UK female" and updated["session"]["turn_detection"] is None
    assert "response.audio.delta" in types and "response.audio_transcript.delta" in types
    assert "response.output_audio.delta" not in types
    assert "conversation.item.created" in types and "conversation.item.added" in types


def test_g711_mu_law_in_and_out(server):
    utt = voice.utterances(rate=8000)

    async def main():
        async with sdk(server) as conn:
            ev = Events(conn)
            await ev.type("session.created")
            await conn.send({"type": "session.update", "session": {"max_output_tokens": 24, "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
                "output": {"format": {"type": "audio/pcmu"}}}}})
            up = await ev.type("session.updated")
            raw = from_float(utt[0], AudioFormat(PCMU, 8000))
            await conn.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(raw).decode()})
            await conn.send({"type": "input_audio_buffer.commit"})
            await conn.send({"type": "response.create"})
            done = await ev.type("response.done")
            out = b"".join(base64.b64decode(e.delta) for e in ev.of("response.output_audio.delta"))
            return up, done, out

    up, done, out = run(main())
    assert up.session.audio.input.format.type == "audio/pcmu"
    assert done.response.status in ("completed", "incomplete") and len(out) > 0
    frames = done.response.usage.output_token_details.audio_tokens
    assert abs(len(out) - 640 * frames) <= 640  # one byte per 8 kHz sample: 640 per 80 ms frame


def test_a_model_without_speech_serves_transcription_sessions_only(tiny_gguf_f32):
    import websockets.asyncio.client as wsc
    from websockets.exceptions import ConnectionClosed

    async def main(url):
        async with wsc.connect(url) as ws:
            err = json.loads(await asyncio.wait_for(ws.recv(), 30))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            code = ws.close_code
        async with wsc.connect(url + "?intent=transcription") as ws:
            created = json.loads(await asyncio.wait_for(ws.recv(), 30))
        return err, code, created

    m = pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=2, batch_size=1,
                    sessions=1)
    try:
        with serving.Serving(create_app(m)) as srv:
            err, code, created = run(main(srv.url.replace("http", "ws") + "/v1/realtime"))
            wait_released(srv)
    finally:
        m.close()
    assert err["error"]["code"] == "speech_unavailable" and code == 1011
    assert created["type"] == "session.created" and created["session"]["type"] == "transcription"


# ---------------------------------------------------------------------- no server
def test_audio_formats_and_g711_round_trip():
    x = (0.8 * np.sin(np.linspace(0, 60, 8000))).astype(np.float32)
    for kind in (PCMU, PCMA):
        fmt = AudioFormat(kind, 8000)
        y = to_float(from_float(x, fmt), fmt)
        assert np.abs(y - x).max() < 0.02
        codes = bytes(range(256))
        assert from_float(to_float(codes, fmt), fmt) == codes or kind == PCMU  # mu-law has two zeros
    assert parse_format("g711_alaw") == AudioFormat(PCMA, 8000)
    assert parse_format({"type": "audio/pcm", "rate": 16000}).rate == 16000
    for bad in ({"type": "audio/pcm", "rate": 100}, "mp3", {"type": "audio/pcmu", "rate": 16000}, 3):
        with pytest.raises(ValueError):
            parse_format(bad)


def test_session_update_reads_both_dialects_and_changes_nothing_on_error():
    cfg = SessionConfig()
    ga = apply_update(cfg, {"type": "realtime", "instructions": "Be brief.", "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "m"},
                  "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 300,
                                     "create_response": False}},
        "output": {"voice": "uk-male"}}}, 1024)
    assert ga.instructions == "Be brief." and ga.voice == "UK male" and ga.transcribe_input
    assert ga.turn_detection.threshold == 0.6 and ga.turn_detection.silence_duration_ms == 300 and not ga.create_response
    beta = apply_update(cfg, {"voice": "US male", "input_audio_format": "g711_ulaw", "turn_detection": None,
                              "modalities": ["text"], "max_response_output_tokens": 50}, 1024)
    assert beta.voice == "US male" and beta.input_format.type == PCMU and beta.turn_detection is None
    assert beta.output_modalities == ("text",) and beta.max_output_tokens == 50
    semantic = apply_update(cfg, {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}, 1024)
    assert semantic.turn_detection.silence_duration_ms == 250
    for bad in ({"voice": "alloy"}, {"turn_detection": {"type": "server_vad", "silence_duration_ms": -1}},
                {"max_output_tokens": 0}, {"modalities": ["video"]}, {"audio": {"output": {"speed": 2.0}}}):
        with pytest.raises(ClientError):
            apply_update(cfg, bad, 1024)
