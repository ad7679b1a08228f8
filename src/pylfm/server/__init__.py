"""``pylfm serve``: an OpenAI-compatible speech-to-text server.

    pylfm serve --model LFM2.5-Audio-1.5B-Q8_0.gguf --mmproj mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused")
    text = client.audio.transcriptions.create(model="lfm2-audio", file=open("a.wav", "rb")).text

Endpoints
---------
``POST /v1/audio/transcriptions`` (multipart/form-data: ``file``, ``model``,
``response_format`` json/text/srt/vtt/verbose_json, ``stream``, ``temperature``,
``prompt``; see `pylfm.server.app`), ``POST /v1/audio/speech`` (JSON, text to speech
with LFM2.5-Audio; see `pylfm.server.speech`), ``POST /v1/chat/completions`` (audio in,
text and speech out, in Liquid's and OpenAI's shapes; `pylfm.server.chat_completions`),
``/v1/realtime`` (WebSocket: OpenAI's Realtime API, voice conversations and live
transcription; `pylfm.server.realtime`), ``GET /`` (the voice chat page;
`pylfm.server.page`), ``GET /v1/models`` (the one model) and ``GET /health`` (no key
needed: status, the queue and the realtime sessions).

Concurrency and memory
----------------------
All requests share the one loaded `pylfm.Model` and go through its scheduler: windows
of concurrent requests decode together in the engine's sequence slots (continuous
batching, first come first served). Blocking work (audio decoding, speech detection
and window planning, encoding speech output, waiting for a result) runs in a thread
pool, never on the event loop: ``/health`` answers in milliseconds while an hour of
audio is being planned (tests/test_server_limits.py).

``--queue N`` bounds the requests admitted at once (being uploaded, decoded, waiting or
running); the next one is answered ``503`` with ``Retry-After`` at once, before its body
is read. An admitted request holds at most its upload (``--max-upload-mib``, read into
one buffer) and its decoded audio, 16 kHz float32 mono: 62.5 KiB per second, so at most
``A = --max-audio-s x 62.5 KiB``. The audio is decoded and resampled chunk by chunk
(the file's own rate and channels are never held whole); its buffer is allocated once
when the container states the length, else grown by half as samples arrive, which
briefly holds the old and the new buffer: up to ``2.5 x A``. The server's memory beyond
the model and its KV cache is therefore at most about
``N x (max_upload_mib + 2.5 x A)``: 16 x (25 MiB + 2.5 x 3600 x 62.5 KiB)
= 16 x (25 + 549) MiB, about 9190 MiB, with the defaults (220 MiB of it per request is
the one-hour decoded recording itself); lower ``--max-audio-s`` or ``--queue`` on
small machines. A speech request takes a place in the same queue and holds at most its
JSON body (1 MiB) and ``3 x S x 93.75 KiB`` of generated audio, ``S = --max-speech-s``
(300 s: 82 MiB); each place is counted at the larger of the two
(`Service.request_bytes`, `Service.memory_bound`).

A client that disconnects stops its work: before decoding, its request is dropped;
while it runs, its windows stop at the engine's next step and their slots go to other
requests.

Safety
------
The server listens on 127.0.0.1 unless ``--host`` says otherwise. With ``--api-key``
every request but ``/health`` needs ``Authorization: Bearer KEY`` (scheme in any case;
else 401). Uploads larger than ``--max-upload-mib`` get 413 (a declared Content-Length
is checked before reading, and the limit is enforced while reading); audio longer than
``--max-audio-s`` gets 413 (from the container header before decoding where it says
the length). A speech request's body is at most 1 MiB (413), its speech at most
``--max-speech-s`` (input that needs more is 400, never cut silently: see
`pylfm.server.speech`). Input that is not decodable audio gets 400 with the decoder's message, and
so does a request whose prompt and audio do not fit the model's context. Every 5xx is
logged with its request id and the exception. Errors use OpenAI's body:
``{"error": {"message", "type", "param", "code"}}``; each response carries
``X-Request-ID``.

Modules
-------
``app`` (create_app, the transcription route), ``speech`` (the speech route),
``chat_completions``, ``realtime`` (the WebSocket sessions), ``realtime_events`` (the
protocol's session configuration, event names and objects), ``realtime_audio`` (wire
audio formats), ``page`` and ``static/`` (the voice chat page),
``forms`` (request bodies read with their limits: the streamed multipart reader, the
speech JSON; field parsing), ``service`` (the shared model, thread pool, admission and
memory bound), ``disconnect`` (stopping work when a client leaves), ``middleware`` (API
key, request ids) and ``errors`` (OpenAI's error body).
``pylfm serve``'s options and main are `pylfm.cli.serve`.

FastAPI and uvicorn are the ``server`` extra (``pip install "pylfm[server]"``); they are
imported only when the server is built, so importing this package is cheap.
"""

from .app import CUE_FORMATS, RESPONSE_FORMATS, STREAM_FORMATS, create_app
from .errors import APIError, error_body
from .service import DEFAULT_MAX_AUDIO_S, DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_MAX_SPEECH_S, DEFAULT_MODEL_NAME
from .speech import SPEECH_MAX_INPUT, add_speech_routes

__all__ = [
    "CUE_FORMATS",
    "DEFAULT_MAX_AUDIO_S",
    "DEFAULT_MAX_PROMPT_TOKENS",
    "DEFAULT_MAX_SPEECH_S",
    "DEFAULT_MODEL_NAME",
    "RESPONSE_FORMATS",
    "SPEECH_MAX_INPUT",
    "STREAM_FORMATS",
    "APIError",
    "add_speech_routes",
    "create_app",
    "error_body",
]
