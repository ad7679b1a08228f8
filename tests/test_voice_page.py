"""The voice chat page (``GET /``) in headless Chromium: Debian's ``chromium`` driven by
Playwright, its microphone a WAV file of real speech (espeak-ng) that loops: a sentence,
then a pause. Hands-free, the page hears the sentence (server VAD), shows the user's
transcript, plays the streamed reply, and when the sentence comes round again while
the reply plays, it stops playback, cancels the reply and truncates it to what it
played.

Skipped, with the reason, only when chromium or playwright is missing; ``.ci/run``
installs both. ``PYLFM_SCREENSHOT=path.png`` saves a screenshot of the page (the docs'
picture comes from here)."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
import soundfile as sf

import pylfm
from pylfm.server import create_app
from pylfm.server.realtime import RealtimeSettings

import serving
import voice

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = "page-key"

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - .ci/run installs it
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install playwright)"),
]


@pytest.fixture(scope="module")
def microphone(tmp_path_factory):
    """A sentence then a 6 s pause, at 48 kHz (Chromium loops the file)."""
    rate = 48000
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    x = np.concatenate([voice.silence(0.5, rate), voice.utterances(rate)[0], voice.silence(6.0, rate)])
    sf.write(path, x, rate, subtype="PCM_16")
    return path


STATE = """() => ({events: window.pylfm.events, users: window.pylfm.users, assistants: window.pylfm.assistants,
    chunks: window.pylfm.audioChunks, played: window.pylfm.played, playedBy: window.pylfm.playedBy,
    truncations: window.pylfm.truncations, sent: window.pylfm.sent, errors: window.pylfm.errors,
    status: document.getElementById('status-text').textContent,
    interrupted: [...document.querySelectorAll('.msg.interrupted')].map(e => e.dataset.id)})"""


def test_talk_hear_the_reply_and_interrupt_it(lively_gguf, microphone):
    model = pylfm.Model(lively_gguf.model_path, lively_gguf.mmproj_path, device="cpu", n_threads=2, batch_size=2,
                        sessions=1)
    app = create_app(model, api_key=KEY, max_new_tokens=16,
                     realtime=RealtimeSettings(max_reply_s=12.0, max_reply_tokens=300))
    try:
        with serving.Serving(app, key=KEY) as server, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone}", "--autoplay-policy=no-user-gesture-required",
                "--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 680})
                errors = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(server.url + "/")
                assert page.title() == "pylfm voice chat"
                page.select_option("#voice", "UK female")
                page.fill("#key", KEY)
                page.click("#connect")

                def state():
                    return page.evaluate(STATE)

                def wait(pred, what, timeout=90.0):
                    deadline = time.monotonic() + timeout
                    while time.monotonic() < deadline:
                        s = state()
                        if pred(s):
                            return s
                        time.sleep(0.25)
                    s = state()
                    raise AssertionError(f"{what}: not seen in {timeout:g} s; status {s['status']!r}, errors "
                                         f"{s['errors']}, events {[e for e in s['events'] if 'delta' not in e][-25:]}")

                s = wait(lambda s: "session.updated" in s["events"], "the session")
                # the user's words appear (the tiny model's transcript of them)
                s = wait(lambda s: any(t.strip() for t in s["users"].values()), "the user's transcript")
                # the reply streams in and plays
                s = wait(lambda s: s["chunks"] > 0 and s["played"] > 0, "the reply playing")
                # the sentence comes round again while a reply plays: it is cut to what was heard
                s = wait(lambda s: any(t["audio_end_ms"] > 0 for t in s["truncations"])
                         and "conversation.item.truncated" in s["events"], "an interruption")
                cut = next(t for t in s["truncations"] if t["audio_end_ms"] > 0)
                assert "response.cancel" in s["sent"] or "response.done" in s["events"]
                assert cut["item"] in s["interrupted"]
                time.sleep(1.0)
                s = state()
                heard = s["playedBy"].get(cut["item"], 0)
                assert heard <= cut["audio_end_ms"] * 24 + 2400, "playback went on after the interruption"
                assert not s["errors"] and not errors, (s["errors"], errors)
                # the bubble now shows what the user heard of the reply
                wait(lambda s: "conversation.item.retrieved" in s["events"], "the truncated reply's text")
                shot = os.environ.get("PYLFM_SCREENSHOT")
                if shot:  # for the docs: a second exchange under way
                    try:
                        wait(lambda s: len([t for t in s["users"].values() if t.strip()]) >= 2
                             and len(s["assistants"]) >= 2, "a second exchange", timeout=30)
                    except AssertionError:
                        pass
                    page.screenshot(path=shot)
                # press to talk: hold the button while speaking; pressing it again cuts the reply short
                page.check("input[name=turns][value=ptt]")
                s = wait(lambda s: s["events"].count("session.updated") >= 2, "press-to-talk mode")
                created = s["events"].count("response.created")
                page.hover("#talk")
                page.mouse.down()
                time.sleep(3.0)
                page.mouse.up()
                wait(lambda s: s["events"].count("response.created") > created, "a reply to the held turn")
                s = wait(lambda s: s["status"] == "speaking", "the reply playing")
                before = len(s["truncations"])
                page.mouse.down()
                time.sleep(1.0)
                page.mouse.up()
                s = wait(lambda s: len(s["truncations"]) > before, "the press cutting the reply short")
                assert "response.cancel" in s["sent"]
                wait(lambda s: s["sent"].count("input_audio_buffer.commit") >= 2, "the second turn sent")
                page.click("#connect")  # Stop
                wait(lambda s: s["status"] == "not connected", "the session closing", timeout=10)
            finally:
                browser.close()
            deadline = time.monotonic() + 10
            while server.health()["realtime"]["slots_held"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.health()["realtime"]["slots_held"] == 0
    finally:
        model.close()
