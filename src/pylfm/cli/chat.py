"""``pylfm chat in.wav -o reply.wav``: speech-to-speech (or ``--text``) answers;
``pylfm chat --live``: a spoken conversation through the microphone and speakers.

Prints the answer's text on stdout as it is generated and writes its speech; the
options and the report are those of ``pylfm speak`` (`pylfm.cli.speak`). ``--live``
needs ``sounddevice`` (``pip install "pylfm[mic]"``) and a sound card; it talks until
Ctrl-C, with turn detection and barge-in (`pylfm.live.voice`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import SpeechError
from .errors import CommandError
from ..speech.voices import CHAT_MAX_NEW_TOKENS, CHAT_SYSTEM_PROMPT, CHAT_TEMPERATURE, CHAT_TOP_K, MODES
from .options import MAX_NEW_TOKENS, SYSTEM, add_speech_model_arguments, show_progress
from .speak import add_max_duration, add_output_arguments, add_sampling_arguments, load_speech_model, report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", help="the spoken message (audio file; - reads it from stdin)")
    p.add_argument("--text", default=None, help="a text message instead of audio")
    p.add_argument("--live", action="store_true",
                   help="talk through the microphone and speakers until Ctrl-C (needs pylfm[mic])")
    p.add_argument("--voice", default=None, help="live: one of the model's voices (US female, US male, UK female, UK male)")
    p.add_argument("--silence-ms", type=float, default=500.0,
                   help="live: silence that ends your turn, in ms (default 500)")
    add_speech_model_arguments(p)
    g = p.add_argument_group("answer")
    g.add_argument("--mode", choices=MODES, default="interleaved",
                   help="interleaved (text and audio in a fixed pattern, default) or sequential")
    SYSTEM.add(g, default=None, help=f"system prompt (default: {CHAT_SYSTEM_PROMPT!r})")
    add_sampling_arguments(g, CHAT_TEMPERATURE, CHAT_TOP_K)
    MAX_NEW_TOKENS.add(g, default=CHAT_MAX_NEW_TOKENS,
                       help=f"text tokens + audio frames (default {CHAT_MAX_NEW_TOKENS})")
    add_max_duration(g)
    add_output_arguments(p, "reply.wav")


def main(args: argparse.Namespace) -> int:
    if args.live:
        return live(args)
    if (args.input is None) == (args.text is None):
        raise SpeechError("give the message either as an audio file or with --text, not both")
    message: Any = args.text
    if args.input is not None:
        message = sys.stdin.buffer.read() if args.input == "-" else args.input
    model = load_speech_model(args)
    opts = dict(mode=args.mode, system=args.system or CHAT_SYSTEM_PROMPT, temperature=args.temperature,
                top_k=args.top_k, seed=args.seed, max_new_tokens=args.max_new_tokens, max_duration=args.max_duration)

    def show(text: str) -> None:  # the answer's text goes to stdout as it comes
        sys.stdout.write(text)
        sys.stdout.flush()

    speech = model.chat(message, on_text=None if args.json else show, progress=show_progress(args) and args.json,
                        **opts)
    if not args.json:
        sys.stdout.write("\n")
    path = str(speech.save(args.output, args.format))
    report(args, speech, path)
    return 0


MIC_RATE, BLOCK = 16000, 320  # 20 ms blocks from the microphone
_INSTALL = ('pylfm chat --live needs sounddevice and PortAudio: pip install "pylfm[mic]" '
            "(on Debian/Ubuntu also: sudo apt-get install libportaudio2)")


def sound_devices() -> Any:
    """The sounddevice module, once an input and an output device are known to exist;
    CommandError saying what to install or plug in otherwise."""
    try:
        import sounddevice
    except (ImportError, OSError) as e:  # OSError: the package is there, PortAudio is not
        raise CommandError(f"{_INSTALL} ({e})") from None
    for kind, what in (("input", "microphone"), ("output", "speaker")):
        try:
            sounddevice.query_devices(kind=kind)
        except Exception as e:  # noqa: BLE001 - PortAudio's own error types
            raise CommandError(f"no {what} found ({e}); plug one in, or use `pylfm chat FILE` with a recording") from None
    return sounddevice


def live(args: argparse.Namespace) -> int:
    """A spoken conversation until Ctrl-C."""
    import queue

    from ..live.turns import TurnDetection
    from ..live.voice import SPEAKER_RATE, Speaker, VoiceChat

    if args.input is not None or args.text is not None:
        raise SpeechError("--live takes no message: you speak into the microphone")
    sd = sound_devices()
    model = load_speech_model(args)
    conv = model.conversation(mode=args.mode, system=args.system, voice=args.voice, temperature=args.temperature,
                              top_k=args.top_k, seed=args.seed, max_new_tokens=args.max_new_tokens,
                              max_duration=args.max_duration)
    blocks: "queue.Queue[Any]" = queue.Queue()
    speaker = Speaker()

    def heard(indata: Any, frames: int, time: Any, status: Any) -> None:
        blocks.put(indata[:, 0].copy())

    def play(outdata: Any, frames: int, time: Any, status: Any) -> None:
        outdata[:, 0] = speaker.take(frames)

    def microphone():
        while True:
            yield blocks.get()

    def say(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def note(event: str) -> None:
        if event == "reply_done":
            sys.stdout.write("\n")
        elif event == "interrupted" and not args.quiet:
            sys.stderr.write("[interrupted]\n")
        elif event == "listening" and not args.quiet:
            sys.stderr.write("listening: speak, pause to let it answer, talk over it to interrupt (Ctrl-C ends)\n")

    chat = VoiceChat(conv, turn_detection=TurnDetection(silence_duration_ms=args.silence_ms), on_text=say, on_event=note)
    try:
        with sd.InputStream(samplerate=MIC_RATE, channels=1, dtype="float32", blocksize=BLOCK, callback=heard), \
                sd.OutputStream(samplerate=SPEAKER_RATE, channels=1, dtype="float32", callback=play):
            chat.run(microphone(), speaker)
    except KeyboardInterrupt:
        conv.cancel()
    finally:
        conv.close()
    return 0
