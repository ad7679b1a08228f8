"""LFM2.5-Audio's voices, the system prompts of text-to-speech and chat, and the
sampling defaults liquid-audio uses for them."""

from __future__ import annotations

from ..errors import SpeechError

VOICES = ("US female", "US male", "UK female", "UK male")
DEFAULT_VOICE = "US female"
CHAT_SYSTEM_PROMPT = "Respond with interleaved text and audio."
MODES = ("interleaved", "sequential")
# liquid-audio's README samples audio with these (TTS: 0.8 / 64; chat: 1.0 / 4); text is greedy.
TTS_TEMPERATURE, TTS_TOP_K = 0.8, 64
CHAT_TEMPERATURE, CHAT_TOP_K = 1.0, 4
CHAT_MAX_NEW_TOKENS = 1024  # text tokens + audio frames of an answer
DEFAULT_MAX_DURATION = 60.0  # seconds of speech per call unless told otherwise


def voice_name(voice: str) -> str:
    """The canonical name of one of `VOICES` ("uk-male" -> "UK male"); SpeechError otherwise."""
    if not isinstance(voice, str):
        raise SpeechError(f"voice must be a string, one of {', '.join(VOICES)}; got {voice!r}")
    key = " ".join(voice.replace("-", " ").replace("_", " ").split()).lower()
    for v in VOICES:
        if v.lower() == key:
            return v
    raise SpeechError(f"unknown voice {voice!r}; LFM2.5-Audio has {', '.join(VOICES)} "
                      "(or pass system='Perform TTS. ...' with your own voice description)")


def tts_system_prompt(voice: str) -> str:
    """``Perform TTS. Use the US female voice.`` for one of `VOICES` (case and separators free)."""
    return f"Perform TTS. Use the {voice_name(voice)} voice."
