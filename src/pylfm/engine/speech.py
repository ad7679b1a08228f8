"""`SpeechRuntime`: speech output (LFM2.5-Audio) on one loaded model.

A `pylfm.Model` owns one. It loads the speech GGUFs (the audio head ``vocoder-*.gguf``
and the audio detokenizer ``tokenizer-*.gguf``) into the model's engine on first use,
under its own lock, and keeps the paths it loaded. Speech requests (speak, chat, the
replies of conversations: `pylfm.speech.job.SpeechJob`) are jobs of the model's
scheduler, decoded in the engine's loop beside transcription. The runtime also opens
and closes the engine's sessions (the sequences of live conversations) and runs the
audio head's probes. `pylfm.speech` builds prompts and waveforms on top of it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, List, Optional, Union

import numpy as np

from .. import _core
from ..errors import ModelLoadError, SpeechError
from .log import drain_llama_log
from .scheduler import Scheduler

PathArg = Optional[Union[str, os.PathLike]]


class SpeechRuntime:
    """Speech output of one `Model`: the speech GGUFs loaded into the model's engine
    (once, on first use), and the speech requests that run in the engine's loop beside
    transcription. Made by the model; `Model.speech` returns it.

    Args:
        engine: the model's native engine (its backbone is shared).
        scheduler: the model's `Scheduler` (speech requests and the probes go through it).
        model_path: the text model's GGUF (the speech GGUFs are looked for next to it).
        max_sessions: how many sessions (conversations) may be open at once.
    """

    def __init__(self, engine: "_core.Engine", scheduler: Scheduler, model_path: Path, max_sessions: int = 0) -> None:
        self._scheduler = scheduler
        self.max_sessions = max_sessions
        self._sessions: set = set()
        self._engine = engine
        self._model_path = Path(model_path)
        #: the rate audio input (a spoken message) is resampled to
        self.sample_rate: int = engine.sample_rate
        self._lock = threading.RLock()  # re-entrant: a conversation dropped by the GC closes its session here
        self.vocoder_path: Optional[Path] = None
        self.detokenizer_path: Optional[Path] = None

    @property
    def loaded(self) -> bool:
        return self.vocoder_path is not None

    def load(self, vocoder: Optional[Union[str, os.PathLike]] = None,
             detokenizer: Optional[Union[str, os.PathLike]] = None) -> None:
        """Loads the audio head ``vocoder-*.gguf`` and the detokenizer ``tokenizer-*.gguf``
        (default: ``$PYLFM_VOCODER`` / ``$PYLFM_DETOKENIZER``, else found next to the model
        or in its hub repository). Without arguments it does nothing once loaded."""
        from ..files.resolve import speech_files

        with self._lock:
            if self.loaded and vocoder is None and detokenizer is None:
                return
            voc, det = speech_files(self._model_path, vocoder, detokenizer)
            check_speech_files(voc, det)
            try:
                self._scheduler.call(lambda: self._engine.load_speech(str(voc), str(det)))
            except (ValueError, RuntimeError) as e:
                raise SpeechError(f"could not load speech output: {e}") from None
            finally:
                drain_llama_log()
            self.vocoder_path, self.detokenizer_path = voc, det

    def submit(self, job: Any) -> Any:
        """Loads speech output if needed and queues ``job``."""
        self.load()
        self._scheduler.submit(job)
        return job

    # ------------------------------------------------------------------ sessions (live conversations)
    def open_session(self) -> int:
        """Reserves one of the engine's session slots (its sequence keeps a history
        between requests); -1 when all are taken."""
        self.load()
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                return -1
            session = int(self._scheduler.call(self._engine.open_session))
            if session >= 0:
                self._sessions.add(session)
            return session

    @property
    def open_sessions(self) -> int:
        """How many session slots are taken now (read without the lock, which a speech
        load may hold for seconds)."""
        return len(self._sessions)

    def close_session(self, session: int) -> None:
        with self._lock:
            self._sessions.discard(session)
        self._scheduler.call(lambda: self._engine.close_session(session))

    def rollback_session(self, session: int) -> int:
        """Back to the start of the session's last reply; returns the history's length."""
        def run() -> int:
            self._engine.rollback_session(session)
            return self._engine.session_n_past(session)

        return int(self._scheduler.call(run))

    def undo_turn(self, session: int) -> int:
        """Takes the session's last request's prompt back out (a turn read ahead); returns
        the history's length."""
        def run() -> int:
            self._engine.undo_turn(session)
            return self._engine.session_n_past(session)

        return int(self._scheduler.call(run))

    def reset_session(self, session: int) -> None:
        self._scheduler.call(lambda: self._engine.reset_session(session))

    def tokenize(self, text: str) -> List[int]:
        """Token ids of plain text (special tokens not parsed)."""
        return list(self._engine.tokenize_text(text, False))

    # ------------------------------------------------------------------ probes (tests, fidelity)
    def _probe(self, name: str, *args: Any) -> Any:
        self.load()
        return self._scheduler.call(lambda: getattr(self._engine.speech, name)(*args))

    def depth_logits(self, hidden: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Depthformer logits (8, 2049) for a backbone hidden state, codebook j
        conditioned on ``codes[:j]``."""
        return self._probe("depth_logits", hidden, codes)

    def sample_frame(self, hidden: np.ndarray, temperature: float = 0.0, top_k: int = 0, seed: int = 0) -> np.ndarray:
        """One frame's 8 codes for a hidden state."""
        return self._probe("sample_frame", hidden, temperature, top_k, seed)

    def frame_embedding(self, codes: np.ndarray) -> np.ndarray:
        """The backbone's input for a frame: its codes' audio embeddings, summed."""
        return self._probe("frame_embedding", codes)

    def detokenize(self, codes: np.ndarray) -> np.ndarray:
        """The detokenizer's spectrogram rows (6 per frame) for (n, 8) codes, from a fresh state."""
        return self._probe("detokenize", codes)


def check_speech_files(vocoder: Path, detokenizer: Path) -> None:
    """SpeechError unless ``vocoder`` is an audio-head GGUF and ``detokenizer`` an
    audio-detokenizer GGUF (whole files, not swapped)."""
    from ..files.convert.speech import VOCODER_ARCH
    from ..files.inspect import check_gguf

    try:
        v, d = check_gguf(vocoder), check_gguf(detokenizer)
    except ModelLoadError as e:
        raise SpeechError(str(e)) from None
    if v.get("arch") == "lfm2" and d.get("arch") == VOCODER_ARCH:
        raise SpeechError(f"vocoder and detokenizer are swapped: {vocoder} is the detokenizer (tokenizer-*.gguf) and "
                          f"{detokenizer} the vocoder")
    if v.get("arch") != VOCODER_ARCH:
        raise SpeechError(f"{vocoder} is not an LFM2.5-Audio vocoder GGUF (architecture {v.get('arch')!r}); pass "
                          "vocoder-*.gguf")
    if d.get("arch") != "lfm2":
        raise SpeechError(f"{detokenizer} is not an LFM2.5-Audio detokenizer GGUF (architecture {d.get('arch')!r}); "
                          "pass tokenizer-*.gguf")
