"""``pylfm serve``: an OpenAI-compatible speech-to-text server (see `pylfm.server.app`)."""

from .app import (
    CUE_FORMATS,
    DEFAULT_MAX_AUDIO_S,
    DEFAULT_MAX_PROMPT_TOKENS,
    DEFAULT_MODEL_NAME,
    RESPONSE_FORMATS,
    SPEECH_MAX_INPUT,
    STREAM_FORMATS,
    APIError,
    add_arguments,
    add_speech_routes,
    create_app,
    error_body,
    main,
)

__all__ = [
    "CUE_FORMATS",
    "DEFAULT_MAX_AUDIO_S",
    "DEFAULT_MAX_PROMPT_TOKENS",
    "DEFAULT_MODEL_NAME",
    "RESPONSE_FORMATS",
    "SPEECH_MAX_INPUT",
    "STREAM_FORMATS",
    "APIError",
    "add_arguments",
    "add_speech_routes",
    "create_app",
    "error_body",
    "main",
]
