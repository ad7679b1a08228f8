"""A spoken conversation: microphone -> turn detection -> `Conversation` -> speaker, with
barge-in. `pylfm chat --live` runs it with a sound card (``sounddevice``); tests run it
with a recording as the microphone and a buffer as the speaker.

    chat = VoiceChat(model.conversation(), on_text=print)
    chat.run(microphone_chunks, speaker)      # until the microphone ends

When the speaker pauses, the utterance so far is read into the model at once
(`Conversation.prefill`); when the pause lasts long enough to end the turn, the reply
starts from there (and if the speaker goes on instead, the read-ahead is taken back). The
reply streams into the speaker. When the user starts speaking while a reply
is still playing, the reply is cancelled, the speaker stops, and the conversation keeps
only what was played (`Conversation.truncate`).
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Deque, Iterable, Optional

import numpy as np

from ..speech.istft import SAMPLE_RATE as SPEAKER_RATE  # the reply's audio: 24 kHz
from .turns import RATE, SpeechDetector, SpeechPaused, SpeechResumed, SpeechStarted, TurnDetection, Utterance


class Speaker:
    """What the reply's audio goes to: a buffer a sound card's callback (or a test) takes
    samples from, counting what was played since the current reply began."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: Deque[np.ndarray] = collections.deque()
        self._played = 0  # samples of the current reply taken so far

    def write(self, pcm: np.ndarray) -> None:
        with self._lock:
            self._chunks.append(np.asarray(pcm, np.float32))

    def take(self, n: int) -> np.ndarray:
        """Up to ``n`` samples to play now (zeros pad a short buffer to ``n``)."""
        out = np.zeros(n, np.float32)
        got = 0
        with self._lock:
            while got < n and self._chunks:
                c = self._chunks[0]
                k = min(n - got, len(c))
                out[got:got + k] = c[:k]
                got += k
                if k == len(c):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = c[k:]
            self._played += got
        return out

    @property
    def pending(self) -> int:
        """Samples written but not yet played."""
        with self._lock:
            return sum(len(c) for c in self._chunks)

    def new_reply(self) -> None:
        with self._lock:
            self._played = 0

    def stop(self) -> float:
        """Drops what was not played; returns the milliseconds of the reply played."""
        with self._lock:
            self._chunks.clear()
            return 1000.0 * self._played / SPEAKER_RATE


class VoiceChat:
    """The loop of a spoken conversation (see the module docstring).

    Args:
        conversation: the `Conversation` to talk in.
        turn_detection: when the user's utterances end (`TurnDetection`).
        on_text: called with each piece of the reply's text.
        on_event: called with "listening", "user_started", "user_done", "reply_started",
            "reply_done", "interrupted" as they happen.
    """

    def __init__(self, conversation: Any, *, turn_detection: Optional[TurnDetection] = None,
                 on_text: Optional[Callable[[str], None]] = None,
                 on_event: Optional[Callable[[str], None]] = None) -> None:
        self.conversation = conversation
        self.detector = SpeechDetector(turn_detection or TurnDetection())
        self.on_text = on_text
        self.on_event = on_event
        self.interruptions = 0
        self.replies = 0
        self._reply: Optional[threading.Thread] = None
        self._stream: Any = None
        self._speaker: Optional[Speaker] = None
        self._ahead: Optional[tuple] = None  # (start, end) of the utterance read ahead

    def run(self, microphone: Iterable[np.ndarray], speaker: Speaker) -> None:
        """Listens to ``microphone`` (16 kHz float32 chunks) until it ends; replies go to
        ``speaker``. The last reply is awaited before returning."""
        self._speaker = speaker
        self._event("listening")
        for chunk in microphone:
            for ev in self.detector.push(chunk):
                if isinstance(ev, SpeechStarted):
                    self._event("user_started")
                    if self._busy(speaker):
                        self._interrupt(speaker)
                elif isinstance(ev, SpeechPaused):
                    if not self._busy(speaker):  # read the turn ahead while the pause lasts
                        self.conversation.add_audio(ev.pcm, sample_rate=RATE)
                        self.conversation.prefill()
                        self._ahead = (ev.start, ev.end)
                elif isinstance(ev, SpeechResumed):
                    if self._ahead is not None:
                        self.conversation.discard_turn()
                        self._ahead = None
                elif isinstance(ev, Utterance):
                    self._event("user_done")
                    if self._busy(speaker):
                        self._interrupt(speaker)
                    if self._ahead != (ev.start, ev.end):
                        if self._ahead is not None:
                            self.conversation.discard_turn()
                        self.conversation.add_audio(ev.pcm, sample_rate=RATE)
                    self._ahead = None
                    self._start_reply(speaker)
        if self._reply is not None:
            self._reply.join()

    # ------------------------------------------------------------------ internals
    def _event(self, name: str) -> None:
        if self.on_event is not None:
            self.on_event(name)

    def _busy(self, speaker: Speaker) -> bool:
        generating = self._reply is not None and self._reply.is_alive()
        return generating or speaker.pending > 0

    def _start_reply(self, speaker: Speaker) -> None:
        speaker.new_reply()
        self._stream = self.conversation.reply(stream=True)
        stream = self._stream

        def play() -> None:
            self._event("reply_started")
            try:
                for chunk in stream:
                    if chunk.text and self.on_text is not None:
                        self.on_text(chunk.text)
                    if len(chunk.audio):
                        speaker.write(chunk.audio)
            finally:
                self.replies += 1
                self._event("reply_done")

        self._reply = threading.Thread(target=play, name="pylfm-voice-reply", daemon=True)
        self._reply.start()

    def _interrupt(self, speaker: Speaker) -> None:
        """Barge-in: stop generating and playing; keep what was heard."""
        self.interruptions += 1
        self._event("interrupted")
        self.conversation.cancel()
        if self._reply is not None:
            self._reply.join()
        played = speaker.stop()
        if self.conversation.last_reply is not None:
            self.conversation.truncate(played)
