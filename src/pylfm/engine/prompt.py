"""The chat prompt LFM2-Audio expects (ChatML, as its tokenizer's chat template).

ASR requires the system prompt ``Perform ASR.``; the audio goes in the user turn. The
BOS token ``<|startoftext|>`` is added by the tokenizer (the GGUF's add_bos flag).

A prompt is a list of parts for the engine: ``(text, special)`` pairs and audio
indexes. Only the template's own text is tokenized with special tokens parsed; the
caller's ``system`` and ``user`` text is plain text, so ``<|im_end|>`` or the media
marker typed by a client are ordinary characters and cannot forge a chat turn or an
audio slot. The split points fall on pre-tokenizer boundaries (special tokens and
newlines), so the ids are exactly those of the whole prompt tokenized at once.
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

ASR_SYSTEM_PROMPT = "Perform ASR."
MEDIA_MARKER = "<__media__>"  # mtmd's default marker (checked against the core at load)

Part = Union[Tuple[str, bool], int]


def prompt_parts(system: Optional[str] = ASR_SYSTEM_PROMPT, user: Optional[str] = None, n_audio: int = 1) -> List[Part]:
    """The engine prompt for one request: system turn, user turn with the audio clip(s)
    (then the optional user text), and the open assistant turn."""
    parts: List[Part] = []
    if system:
        parts += [("<|im_start|>system\n", True), (system, False), ("<|im_end|>\n", True)]
    parts.append(("<|im_start|>user\n", True))
    parts += list(range(n_audio))
    if user:
        parts.append((user, False))
    parts.append(("<|im_end|>\n<|im_start|>assistant\n", True))
    return parts


def build_prompt(system: Optional[str] = ASR_SYSTEM_PROMPT, user: Optional[str] = None, n_audio: int = 1) -> str:
    """The same prompt as one string, with the media marker where the audio goes (for
    display and for tools that take a text template)."""
    return "".join(MEDIA_MARKER if isinstance(p, int) else p[0] for p in prompt_parts(system, user, n_audio))
