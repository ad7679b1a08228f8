"""Live use: conversations with the history kept in the engine, and transcription of
audio as it arrives.

- `Conversation` (`Model.conversation`): multi-turn speech-to-speech; replies stream as
  they decode, can be cut short (barge-in) and truncated to what was played.
- `Transcriber` (`Model.transcriber`): push PCM chunks; Silero VAD finds each utterance,
  which is transcribed with text deltas as it decodes.
- `SpeechDetector` / `TurnDetection`: the turn detection both use (OpenAI's ``server_vad``
  options).
"""

from .conversation import Conversation, ConversationError, Reply
from .transcriber import Transcriber, TranscriberEvent
from .turns import SpeechDetector, SpeechPaused, SpeechResumed, SpeechStarted, TurnDetection, Utterance

__all__ = ["Conversation", "ConversationError", "Reply", "SpeechDetector", "SpeechPaused", "SpeechResumed", "SpeechStarted", "Transcriber",
           "TranscriberEvent", "TurnDetection", "Utterance"]
