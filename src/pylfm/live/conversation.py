"""Multi-turn voice conversations with the history kept in the engine.

    conv = model.conversation()                      # "Respond with interleaved text and audio."
    conv.add_audio("question.wav")                   # a user turn (or add_text, or append_audio chunks)
    for chunk in conv.reply(stream=True):            # text and 24 kHz audio as they decode
        play(chunk.audio)
    conv.add_audio(next_question)                    # turn 2 only prefills what is new
    reply = conv.reply()                             # .text, .audio, .codes, .stop_reason, .timings

A conversation owns one of the engine's session slots: its sequence keeps the whole
history between turns, so each turn prefills only its own input (liquid-audio's demo runs
the model over the whole history every turn). The prompt layout is liquid-audio's
ChatState: ``<|startoftext|>`` + the system turn, then ``<|im_start|>user\\n`` + audio/text +
``<|im_end|>\\n``, ``<|im_start|>assistant\\n`` + the reply's text tokens and audio frames +
``<|im_end|>\\n``, and so on.

Barge-in: `cancel` stops a reply within one step, and `truncate(played_ms)` keeps only
what the listener heard: the engine rolls the sequence back to the checkpoint taken at the
start of the reply (LFM2's short-convolution state cannot drop a tail) and the kept part is
prefilled again with the next turn. A conversation longer than ``max_context`` drops its
oldest turns (reported in `dropped_turns` and the log) and carries on.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Union

import numpy as np

from ..errors import PylfmError, SpeechError
from ..speech.generate import check_sampling, choose_seed, frames_for, speech_params
from ..speech.istft import FRAME_SAMPLES, FRAMES_PER_SECOND, SAMPLE_RATE
from ..speech.job import SpeechJob, item_parts
from ..speech.result import Speech, SpeechChunk
from ..speech.voices import MODES, voice_name
from .turns import float_chunk

log = logging.getLogger("pylfm")

IM_END = 7  # <|im_end|>
FRAME_MS = 1000.0 * FRAME_SAMPLES / SAMPLE_RATE  # 80 ms of speech per audio frame
_AUDIO_SAMPLES_PER_TOKEN = 1280  # 16 kHz samples per audio embedding (80 ms)


class ConversationError(PylfmError, ValueError):
    """A conversation was used in a way it cannot be (a reply while another runs, a
    closed conversation, an empty turn, ...)."""


@dataclass
class Reply(Speech):
    """One answer of a conversation: a `Speech` (``text``, ``audio``, ``codes``,
    ``tokens``, ``stop_reason``, ``timings``) plus the order in which its text tokens (0)
    and audio frames (1, the end-of-audio frame included) were generated."""

    order: List[int] = field(default_factory=list)
    items: List[Any] = field(default_factory=list)  # token ids and (8,) frames, in generation order
    item_texts: List[str] = field(default_factory=list)
    truncated: bool = False


@dataclass
class _Turn:
    role: str                                   # "user" | "assistant"
    text: str = ""                              # user text / the reply's text
    audio: List[np.ndarray] = field(default_factory=list)  # user audio (16 kHz)
    items: List[Any] = field(default_factory=list)  # assistant: ints (tokens) and (8,) arrays (frames)
    pieces: List[str] = field(default_factory=list)  # assistant: the text of each item ("" for frames)
    growing: bool = False                       # user: append_audio adds to the last clip
    in_engine: bool = False                     # the whole turn (closing included) is in the sequence
    fed: int = -1                               # assistant turn open in the sequence: items fed so far

    def user_parts(self) -> list:
        parts: list = list(range(len(self.audio)))
        if self.text:
            parts.append((self.text, False))
        return parts

    def item_parts(self, start: int) -> list:
        """The assistant's items from ``start`` as engine prompt parts (token-id arrays and
        frame arrays, in order)."""
        return item_parts(self.items[start:])


class Conversation:
    """A live conversation (see the module docstring); made by `Model.conversation`.

    One reply runs at a time; `cancel` and `close` may be called from any thread."""

    def __init__(self, model: Any, session: int, *, system: Optional[str], voice: Optional[str], mode: str,
                 temperature: float, top_k: Optional[int], text_temperature: float, seed: Optional[int],
                 max_new_tokens: int, max_duration: Optional[float], max_context: int) -> None:
        if mode not in MODES:
            raise SpeechError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self._model = model
        self._session = session
        self.mode = mode
        self.system = system_prompt(system, voice)
        self.temperature, self.top_k = check_sampling(temperature, top_k, "")
        self.text_temperature, _ = check_sampling(text_temperature, 0, "text_")
        self.seed = seed
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise SpeechError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        self.max_new_tokens = max_new_tokens
        self.max_frames = frames_for(max_duration)
        self.max_context = max_context
        self.dropped_turns = 0
        self.n_past = 0  # positions of the history in the engine
        self._turns: List[_Turn] = []
        self._lock = threading.RLock()
        self._job: Optional[SpeechJob] = None
        self._ahead: Optional[SpeechJob] = None  # the user's turn being read ahead (prefill)
        self._ahead_turn: Optional[_Turn] = None  # ... and the turn it took in
        self._ahead_before: List[Any] = []
        self._closed = False
        self._last: Optional[Reply] = None
        self._special_cost: Dict[str, int] = {}
        self._finalizer = weakref.finalize(self, _close_session, model.speech_runtime, session)

    def __repr__(self) -> str:
        return (f"Conversation({len(self._turns)} turns, {self.n_past} positions in the engine, mode={self.mode!r}, "
                f"closed={self._closed})")

    # ------------------------------------------------------------------ the user's turn
    def add_audio(self, audio: Any, *, sample_rate: Optional[int] = None) -> None:
        """Adds audio to the user's turn: anything `pylfm.load_audio` takes (a path,
        bytes, a file object, an array with ``sample_rate``)."""
        from ..audio.load import load_audio

        self._check_open()
        pcm = load_audio(audio, sample_rate=sample_rate, target_rate=self._model.sample_rate)
        with self._lock:
            turn = self._user_turn()
            turn.audio.append(pcm)
            turn.growing = False

    def append_audio(self, chunk: np.ndarray, sample_rate: int) -> None:
        """Adds a chunk of PCM (float or int16, mono) to the user's turn as it arrives;
        the chunks of one turn join into one clip."""
        self._check_open()
        try:
            pcm = _resample(float_chunk(chunk), sample_rate, self._model.sample_rate)
        except ValueError as e:
            raise ConversationError(str(e)) from None
        with self._lock:
            turn = self._user_turn()
            if turn.audio and turn.growing:
                turn.audio[-1] = np.concatenate([turn.audio[-1], pcm])
            else:
                turn.audio.append(pcm)
                turn.growing = True

    def add_text(self, text: str) -> None:
        """Adds text to the user's turn (plain text: special tokens are not parsed)."""
        self._check_open()
        if not isinstance(text, str) or not text.strip():
            raise ConversationError("the user's text is empty")
        with self._lock:
            turn = self._user_turn()
            turn.text = f"{turn.text}\n{text}" if turn.text else text

    def add_assistant(self, reply: Union["Reply", str]) -> None:
        """Adds an assistant turn to the history as if the model had said it: a `Reply`
        (its exact text tokens and audio frames) or plain text."""
        self._check_open()
        with self._lock:
            self._check_idle()
            turn = _Turn("assistant")
            if isinstance(reply, Reply):
                turn.items, turn.pieces, turn.text = list(reply.items), list(reply.item_texts), reply.text
            elif isinstance(reply, str) and reply.strip():
                ids = self._model.speech_runtime.tokenize(reply)
                turn.items, turn.pieces, turn.text = ids, [""] * len(ids), reply
            else:
                raise ConversationError("add_assistant takes a Reply or a non-empty text")
            self._turns.append(turn)

    def prefill(self) -> None:
        """Starts reading the user's turn into the engine now, before asking for the reply
        (returns at once): a live client calls it when the speaker pauses, so that when the
        pause turns out to be the end of the turn, the reply only has to start. Adding to
        the turn afterwards (the speaker went on) takes the read-ahead back out first."""
        self._check_open()
        with self._lock:
            self._check_idle()
            self._take_back()
            if not self._turns or self._turns[-1].role != "user":
                raise ConversationError("there is no user turn to read: add_audio / add_text first")
            self._fit(self.max_new_tokens)
            parts, audio = self._prompt(header=False)
            job = SpeechJob(parts, audio, speech_params(max_new_tokens=0), session=self._session)
            self._ahead, self._ahead_turn = job, self._turns[-1]
            self._ahead_before = [(t, t.in_engine) for t in self._turns]  # what take-back restores
        try:
            self._model.speech_runtime.submit(job)
        except BaseException:
            with self._lock:
                self._ahead = self._ahead_turn = None
            raise

    def discard_turn(self) -> None:
        """Drops the user's turn not yet answered (and takes back what of it was read)."""
        self._check_open()
        with self._lock:
            self._check_idle()
            self._take_back()
            if self._turns and self._turns[-1].role == "user":
                self._turns.pop()

    # ------------------------------------------------------------------ the reply
    def reply(self, *, stream: bool = False, max_duration: Optional[float] = None,
              max_new_tokens: Optional[int] = None, seed: Optional[int] = None
              ) -> Union[Reply, Iterator[SpeechChunk]]:
        """Answers the user's turn (or continues after the last one): the whole `Reply`,
        or with ``stream=True`` an iterator of `SpeechChunk` (text and/or audio) as they
        decode; closing the iterator cancels the reply, and `last_reply` then holds what
        was generated."""
        job = self._start(max_duration, max_new_tokens, seed)
        self._submit(job)
        if stream:
            return self._stream(job)
        try:
            job.run()
        finally:
            if job.done:
                self._settle(job)
        return self._last  # type: ignore[return-value]

    async def areply(self, *, max_duration: Optional[float] = None, max_new_tokens: Optional[int] = None,
                     seed: Optional[int] = None) -> AsyncIterator[SpeechChunk]:
        """`reply` for asyncio: an async iterator of `SpeechChunk` as they decode (the
        event loop never waits on the engine); leaving it early cancels the reply."""
        import asyncio

        loop = asyncio.get_running_loop()
        chunks: "asyncio.Queue[Optional[SpeechChunk]]" = asyncio.Queue()
        job = self._start(max_duration, max_new_tokens, seed)
        job.on_event = lambda chunk: loop.call_soon_threadsafe(chunks.put_nowait, chunk)
        try:
            await asyncio.to_thread(self._submit, job)  # may load the speech GGUFs first
            while True:
                c = await chunks.get()
                if c is None:
                    break
                if c.text or len(c.audio):
                    yield c
            if job.error is not None:
                raise job.error
        finally:
            if not job.done:
                job.cancel()
                await asyncio.to_thread(job.wait)
            self._settle(job)

    def _submit(self, job: SpeechJob) -> None:
        try:
            self._model.speech_runtime.submit(job)
        except BaseException:
            with self._lock:
                if self._job is job:
                    self._job = None
            raise

    def _start(self, max_duration: Optional[float], max_new_tokens: Optional[int], seed: Optional[int]) -> SpeechJob:
        """The job of the next reply (not yet submitted)."""
        self._check_open()
        with self._lock:
            self._check_idle()
            self._finish_ahead()
            if not self._turns or self._turns[-1].role != "user":
                raise ConversationError("there is no user turn to answer: add_audio / add_text first")
            frames = self.max_frames if max_duration is None else frames_for(max_duration)
            steps = self.max_new_tokens if max_new_tokens is None else max_new_tokens
            self._fit(steps)
            parts, audio = self._prompt()
            params = speech_params(interleaved=self.mode == "interleaved", max_new_tokens=steps, max_audio_frames=frames,
                                   audio_temperature=self.temperature, audio_top_k=self.top_k,
                                   text_temperature=self.text_temperature,
                                   seed=choose_seed(seed if seed is not None else self.seed))
            job = SpeechJob(parts, audio, params, session=self._session)
            self._job = job
            return job

    def _stream(self, job: SpeechJob) -> Iterator[SpeechChunk]:
        try:
            for c in job.chunks():
                if c.text or len(c.audio):
                    yield c
        finally:
            self._settle(job)

    @property
    def last_reply(self) -> Optional[Reply]:
        """The latest reply (also after a streamed or cancelled one)."""
        return self._last

    @property
    def replying(self) -> bool:
        return self._job is not None and not self._job.done

    def cancel(self) -> None:
        """Stops the running reply within one engine step (barge-in); what it generated
        stays in the history unless you `truncate` it."""
        job = self._job
        if job is not None:
            job.cancel()
            job.wait()
            with self._lock:
                if self._job is job:
                    self._settle(job)

    def truncate(self, played_ms: float) -> None:
        """Keeps only the part of the last reply that was played (``played_ms`` of its
        audio; its text up to the last frame kept), as OpenAI's
        ``conversation.item.truncate`` does: the conversation goes on as if the assistant
        had said only that."""
        self._check_open()
        if isinstance(played_ms, bool) or not isinstance(played_ms, (int, float)) or not math.isfinite(played_ms) \
                or played_ms < 0:
            raise ConversationError(f"played_ms must be a number >= 0, got {played_ms!r}")
        with self._lock:
            self._check_idle()
            turn = self._turns[-1] if self._turns else None
            if turn is None or turn.role != "assistant" or self._last is None:
                raise ConversationError("there is no reply to truncate: truncate applies to the last reply")
            keep = kept_items(turn.items, played_ms)
            if keep is None:
                return  # everything was played
            if turn.fed > keep:  # the sequence already holds more: back to the reply's start
                self.n_past = self._model.speech_runtime.rollback_session(self._session)
                turn.fed = 0
            turn.items, turn.pieces = turn.items[:keep], turn.pieces[:keep]
            turn.text = "".join(turn.pieces)
            last = self._last
            n_frames = sum(1 for it in turn.items if isinstance(it, np.ndarray) and int(it[0]) != 2048)
            self._last = Reply(audio=last.audio[:n_frames * FRAME_SAMPLES], text=turn.text,
                               codes=last.codes[:n_frames], tokens=[int(t) for t in turn.items if not isinstance(t, np.ndarray)],
                               stop_reason=last.stop_reason, timings=last.timings,
                               order=[1 if isinstance(it, np.ndarray) else 0 for it in turn.items],
                               items=list(turn.items), item_texts=list(turn.pieces), truncated=True)

    def reset(self) -> None:
        """Forgets the whole history (the session's sequence starts afresh); the next
        reply prefills ``system`` (which may be changed before) and the turns added after
        this. For a client that edits what came before (another system prompt, a deleted
        turn): reset, then add the turns it keeps."""
        self._check_open()
        with self._lock:
            self._check_idle()
            self._finish_ahead()  # a read-ahead of the user's turn goes with the rest
            self._model.speech_runtime.reset_session(self._session)
            self._turns = []
            self._ahead_turn, self._ahead_before = None, []
            self.n_past = 0
            self._last = None

    # ------------------------------------------------------------------ state
    @property
    def history(self) -> List[Dict[str, Any]]:
        """The turns so far: role, text, and seconds of audio (user input, or the reply's speech)."""
        out = []
        for t in self._turns:
            if t.role == "user":
                seconds = sum(len(a) for a in t.audio) / self._model.sample_rate
            else:
                seconds = sum(1 for it in t.items if isinstance(it, np.ndarray) and int(it[0]) != 2048) / FRAMES_PER_SECOND
            out.append({"role": t.role, "text": t.text, "audio_seconds": round(seconds, 3)})
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stops any reply and frees the conversation's engine slot."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for job in (self._job, self._ahead):
            if job is not None and not job.done:
                job.cancel()
                job.wait()
        self._finalizer()

    def __enter__(self) -> "Conversation":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise ConversationError("this conversation is closed")

    def _check_idle(self) -> None:
        if self._job is not None and not self._job.done:
            raise ConversationError("a reply is already running; cancel it (barge-in) or wait for it first")

    def _user_turn(self) -> _Turn:
        self._check_idle()
        self._take_back()
        if not self._turns or self._turns[-1].role != "user":
            self._turns.append(_Turn("user"))
        return self._turns[-1]

    def _prompt(self, header: bool = True) -> tuple:
        """The engine parts for everything not yet in the sequence, then (``header``) the
        assistant's header."""
        parts: list = []
        audio: List[np.ndarray] = []
        if self.n_past == 0 and self.system:
            parts += [("<|im_start|>system\n", True), (self.system, False), ("<|im_end|>\n", True)]
        for t in self._turns:
            if t.in_engine:
                continue
            if t.role == "assistant":
                if t.fed < 0:
                    parts.append(("<|im_start|>assistant\n", True))
                items = t.item_parts(max(t.fed, 0))
                parts += items
                parts.append(("<|im_end|>\n", True))
            else:
                parts.append(("<|im_start|>user\n", True))
                for p in t.user_parts():
                    if isinstance(p, int):
                        parts.append(len(audio))
                        audio.append(t.audio[p])
                    else:
                        parts.append(p)
                parts.append(("<|im_end|>\n", True))
        if header:
            parts.append(("<|im_start|>assistant\n", True))
        return parts, audio

    def _finish_ahead(self) -> None:
        """Waits for a read-ahead of the user's turn and records what it took in (lock held)."""
        job = self._ahead
        if job is None:
            return
        job.wait()
        self._ahead = None
        r = job.result_dict
        if job.error is not None or r is None:  # the engine dropped the sequence: send everything again
            self._forget_engine()
            self._ahead_turn = None
            return
        self.n_past = int(r.get("n_past", self.n_past))
        if r.get("turn_taken", False):
            for t in self._turns:
                t.in_engine = True
        else:
            self._ahead_turn = None

    def _take_back(self) -> None:
        """Takes a read-ahead user turn back out of the sequence (lock held): the turn
        changes, so it is read again with the reply."""
        self._finish_ahead()
        turn, self._ahead_turn = self._ahead_turn, None
        if turn is None or not turn.in_engine or not self._turns or self._turns[-1] is not turn:
            return
        self.n_past = self._model.speech_runtime.undo_turn(self._session)
        for t, was_in in self._ahead_before:  # everything the read-ahead sent goes back out
            t.in_engine = was_in

    def _forget_engine(self) -> None:
        """The sequence holds nothing of the history any more: the next request sends it all."""
        for t in self._turns:
            t.in_engine = False
            if t.role == "assistant":
                t.fed = -1
        self.n_past = 0

    def _settle(self, job: SpeechJob) -> None:
        """Records what a finished reply left in the sequence."""
        with self._lock:
            if self._job is not job:
                return
            self._job = None
            r = job.result_dict
            if job.error is not None or r is None:
                # the engine dropped the sequence: the next reply sends the whole history again
                self._forget_engine()
                self._last = None
                return
            self.n_past = int(r.get("n_past", self.n_past))
            if not r.get("turn_taken", False):
                return  # cancelled before the turn was read: it is still to send
            for t in self._turns:
                t.in_engine = True
            speech = job.speech()
            reply = Reply(audio=speech.audio, text=speech.text, codes=speech.codes, tokens=speech.tokens,
                          stop_reason=speech.stop_reason, timings=speech.timings, order=list(r.get("order", [])),
                          items=list(job.items), item_texts=list(job.item_texts))
            turn = _Turn("assistant", text=reply.text, items=list(job.items), pieces=list(job.item_texts))
            turn.fed = int(r.get("n_fed", 0))
            if turn.items and not isinstance(turn.items[-1], np.ndarray) and turn.items[-1] == IM_END:
                turn.items.pop()  # the turn's closing text says it (sequential mode emits it)
                turn.pieces.pop()
                turn.fed = min(turn.fed, len(turn.items))
            self._turns.append(turn)
            self._last = reply

    def _fit(self, steps: int) -> None:
        """Drops the oldest turns when the history, the new turn and the reply would not
        fit ``max_context`` (the sequence is then rebuilt from what is kept)."""
        def cost(t: _Turn) -> int:
            n = 4  # <|im_start|>role\n ... <|im_end|>\n
            if t.role == "user":
                n += sum(math.ceil(len(a) / _AUDIO_SAMPLES_PER_TOKEN) + 1 for a in t.audio)
                n += self._model.count_tokens(t.text) if t.text else 0
            else:
                n += len(t.items)
            return n

        new = sum(cost(t) for t in self._turns if not t.in_engine) + 4
        if self.n_past + new + steps + 2 <= self.max_context:
            return
        system = (self._model.count_tokens(self.system) + 8) if self.system else 1
        costs = [cost(t) for t in self._turns]
        keep_from = 0
        while keep_from < len(self._turns) - 1 and system + sum(costs[keep_from:]) + 4 + steps + 2 > self.max_context:
            keep_from += 1
            while keep_from < len(self._turns) - 1 and self._turns[keep_from].role != "user":
                keep_from += 1  # a history starts with a user turn
        if system + sum(costs[keep_from:]) + 4 + steps + 2 > self.max_context:
            raise ConversationError(f"the user's turn and a reply of {steps} steps do not fit max_context="
                                    f"{self.max_context}; shorten the turn or lower max_new_tokens")
        dropped = keep_from
        self._turns = self._turns[keep_from:]
        self.dropped_turns += dropped
        log.warning("pylfm: conversation longer than max_context=%d: dropped its %d oldest turn(s)",
                    self.max_context, dropped)
        self._model.speech_runtime.reset_session(self._session)
        self._forget_engine()


def kept_items(items: List[Any], played_ms: float) -> Optional[int]:
    """How many of a reply's items (token ids and (8,) frames, in order) stay when
    ``played_ms`` of its speech was played: up to the last frame heard (partly heard
    counts), with the text before it; None when everything was played."""
    keep_frames = math.ceil(played_ms / FRAME_MS - 1e-9)
    frame_pos = [i for i, it in enumerate(items) if isinstance(it, np.ndarray) and int(it[0]) != 2048]
    if keep_frames >= len(frame_pos):
        return None
    return frame_pos[keep_frames - 1] + 1 if keep_frames > 0 else 0


def system_prompt(system: Optional[str], voice: Optional[str]) -> Optional[str]:
    """The system prompt of a conversation: ``system`` plus "Use the <voice> voice." when a
    voice is named (SpeechError for an unknown voice)."""
    if system is not None and not isinstance(system, str):
        raise SpeechError(f"system must be a string or None, got {type(system).__name__}")
    if voice is None:
        return system
    v = voice_name(voice)
    return f"{system} Use the {v} voice." if system else f"Use the {v} voice."


def _resample(pcm: np.ndarray, rate: int, target: int) -> np.ndarray:
    if isinstance(rate, bool) or not isinstance(rate, int) or not 1000 <= rate <= 1_000_000:
        raise ConversationError(f"sample_rate must be an integer in [1000, 1000000], got {rate!r}")
    if rate == target or not len(pcm):
        return pcm
    import soxr

    return soxr.resample(pcm, rate, target).astype(np.float32)


def _close_session(speech: Any, session: int) -> None:
    try:
        speech.close_session(session)
    except Exception:  # noqa: BLE001 - the model may be closed already: its sessions went with it
        pass
