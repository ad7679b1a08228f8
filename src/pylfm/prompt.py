"""The chat prompt LFM2-Audio expects (ChatML, as its tokenizer's chat template).

ASR requires the system prompt ``Perform ASR.``; the audio goes in the user turn,
where mtmd replaces its media marker with the audio embeddings. The BOS token
``<|startoftext|>`` is added by the tokenizer (the GGUF's add_bos flag), so the
text here starts at ``<|im_start|>``.
"""

from __future__ import annotations

ASR_SYSTEM_PROMPT = "Perform ASR."
MEDIA_MARKER = "<__media__>"  # mtmd's default marker (checked against the core at load)


def build_prompt(system: str | None = ASR_SYSTEM_PROMPT, user: str | None = None, n_audio: int = 1) -> str:
    """Returns the prompt text for one request: system turn, user turn with the
    audio marker(s) (then the optional user text), and the open assistant turn."""
    parts = []
    if system:
        parts.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    user_content = MEDIA_MARKER * n_audio + (user or "")
    parts.append(f"<|im_start|>user\n{user_content}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)
