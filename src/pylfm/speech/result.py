"""What speech output returns: `Speech` (a whole answer, ``save`` to a file) and
`SpeechChunk` (a piece of a streamed one)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from ..atomic import write_atomic
from ..errors import SpeechError
from .audio_file import encode_audio
from .istft import SAMPLE_RATE

@dataclass
class Speech:
    """Generated speech (and any text the model wrote with it).

    ``audio`` is float32 mono at ``sample_rate`` (24 kHz); ``codes`` the audio frames
    (n, 8) the model generated (12.5 per second); ``timings`` in milliseconds:
    encode (audio input), prefill, backbone, depthformer, detokenizer, istft, total,
    first_audio (from the call to the first audio chunk)."""

    audio: np.ndarray
    sample_rate: int = SAMPLE_RATE
    text: str = ""
    codes: np.ndarray = field(default_factory=lambda: np.zeros((0, 8), np.int32))
    tokens: List[int] = field(default_factory=list)
    stop_reason: str = ""
    timings: Dict[str, float] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return len(self.audio) / self.sample_rate

    @property
    def rtf(self) -> float:
        """Real-time factor: seconds of audio made per second of wall time."""
        total = self.timings.get("total", 0.0) / 1000.0
        return self.duration / total if total > 0 else 0.0

    def save(self, path: Union[str, os.PathLike], format: Optional[str] = None) -> Path:
        """Writes the audio: wav (16-bit), flac, mp3, opus (ogg) or pcm (raw s16le), by
        ``format`` or the file's extension (default wav). The file appears complete
        (`pylfm.atomic.write_atomic`)."""
        path = Path(path)
        fmt = (format or path.suffix.lstrip(".") or "wav").lower()
        fmt = {"ogg": "opus", "raw": "pcm"}.get(fmt, fmt)
        data = encode_audio(self.audio, self.sample_rate, fmt)
        try:
            write_atomic(path, data)
        except OSError as e:
            raise SpeechError(f"cannot write {path}: {e.strerror or e}") from None
        return path

    def __repr__(self) -> str:
        text = self.text if len(self.text) < 60 else self.text[:57] + "..."
        return (f"Speech({self.duration:.2f} s at {self.sample_rate} Hz, {len(self.codes)} frames, text={text!r}, "
                f"stop_reason={self.stop_reason!r})")


@dataclass
class SpeechChunk:
    """A piece of a streamed answer: text, audio (float32, 24 kHz), or both empty.

    ``token`` is the text token the piece came from (-1 for audio); ``codes`` the audio
    frame's 8 codes (None for text); ``end_of_audio`` marks the model's end-of-audio frame."""

    text: str = ""
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    token: int = -1
    codes: Optional[np.ndarray] = None
    end_of_audio: bool = False
