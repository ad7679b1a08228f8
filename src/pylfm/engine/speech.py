"""`SpeechRuntime`: speech output (LFM2.5-Audio) on one loaded model.

A `pylfm.Model` owns one. It holds the native ``_core.SpeechEngine`` (the audio head
``vocoder-*.gguf`` and the audio detokenizer ``tokenizer-*.gguf`` on the model's
loaded backbone), loaded on first use under its own lock, the paths it was loaded
from, and the model's scheduler, on whose thread every generation runs (`call`,
between transcription steps). `pylfm.speech` builds prompts and waveforms on top of it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .. import _core
from ..errors import ModelLoadError, SpeechError
from .log import drain_llama_log
from .native import call_engine
from .scheduler import Scheduler

PathArg = Optional[Union[str, os.PathLike]]


class SpeechRuntime:
    """Speech output on a loaded model: see the module docstring.

    Args:
        engine: the model's ``_core.Engine`` (its backbone is shared).
        scheduler: the model's `Scheduler` (generations run on its engine thread).
        model_path: the text model, next to which (or in whose hub repository) the
            speech GGUFs are looked for.
    """

    def __init__(self, engine: "_core.Engine", scheduler: Scheduler, model_path: Path) -> None:
        self.model_path = Path(model_path)
        self.scheduler = scheduler
        #: the rate audio input (a spoken message) is resampled to
        self.sample_rate: int = engine.sample_rate
        self.vocoder_path: Optional[Path] = None
        self.detokenizer_path: Optional[Path] = None
        self._backbone = engine
        self._speech: "Optional[_core.SpeechEngine]" = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> "_core.SpeechEngine":
        """The native speech engine, loaded on first use (see `load`)."""
        self.load()
        return self._speech  # type: ignore[return-value]

    def load(self, vocoder: PathArg = None, detokenizer: PathArg = None) -> None:
        """Loads the speech GGUFs (default: ``$PYLFM_VOCODER`` / ``$PYLFM_DETOKENIZER``,
        else found next to the model or in its hub repository); a no-op when they are
        loaded and no file is named. Raises SpeechError or ModelNotFoundError."""
        with self._lock:
            if self._speech is not None and vocoder is None and detokenizer is None:
                return
            from ..files.resolve import speech_files

            voc, det = speech_files(self.model_path, vocoder, detokenizer)
            check_speech_files(voc, det)
            try:
                engine = _core.SpeechEngine(self._backbone, str(voc), str(det))
            except (ValueError, RuntimeError) as e:
                raise SpeechError(f"could not load speech output: {e}") from None
            finally:
                drain_llama_log()
            self._speech = engine
            self.vocoder_path, self.detokenizer_path = voc, det

    def call(self, fn: Callable[[], Any], cancel: "_core.CancelFlag") -> Any:
        """Runs ``fn()`` (a generation: ``self.engine.generate(parts, audio, params,
        on_event, cancel)``) on the model's engine thread, between transcription steps,
        and returns its result; Ctrl-C while waiting sets ``cancel``.

        Raises SpeechError when the request cannot run (too long, ...), PylfmError when
        the engine fails, and whatever ``fn``'s event callback raised."""
        return call_engine(self.scheduler, fn, cancel, invalid=SpeechError, failure="speech generation failed")

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
