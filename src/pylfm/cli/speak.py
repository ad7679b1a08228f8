"""``pylfm speak "text" -o out.wav`` and ``pylfm chat in.wav -o reply.wav``.

Both load the model (and its speech GGUFs: vocoder-*.gguf, tokenizer-*.gguf next to
it, or --vocoder/--detokenizer), generate, write the audio, and report on stderr
(off with --quiet); --json prints a summary for scripts on stdout. ``chat`` prints the
answer's text on stdout as it is generated.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

from .speech import AUDIO_FORMATS, CHAT_TEMPERATURE, CHAT_TOP_K, MODES, TTS_TEMPERATURE, TTS_TOP_K, VOICES, Speech


def _speech_model_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import add_model_arguments

    add_model_arguments(p)
    g = p.add_argument_group("speech output")
    g.add_argument("--vocoder", help="audio head GGUF (default: $PYLFM_VOCODER or vocoder-*.gguf next to the model)")
    g.add_argument("--detokenizer", help="audio detokenizer GGUF (default: $PYLFM_DETOKENIZER or tokenizer-*.gguf "
                                         "next to the model)")


def _output_arguments(p: argparse.ArgumentParser, default: str) -> None:
    o = p.add_argument_group("output")
    o.add_argument("--output", "-o", default=default, help=f"audio file to write (default {default}); the format "
                   f"follows the extension: {', '.join(AUDIO_FORMATS)}")
    o.add_argument("--format", choices=list(AUDIO_FORMATS), default=None, help="audio format (overrides the extension)")
    o.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress or report on stderr")
    o.add_argument("--progress", action="store_true", help="progress even when stderr is not a terminal")


def show_progress(args: argparse.Namespace) -> bool:
    from .cli import show_progress as shown

    return shown(args)


def _load(args: argparse.Namespace):
    from .cli import load_model

    model = load_model(args)
    model.load_speech(args.vocoder, args.detokenizer)
    return model


def _summary(speech: Speech, path: str) -> Dict[str, Any]:
    return {"output": path, "duration": round(speech.duration, 3), "sample_rate": speech.sample_rate,
            "frames": int(len(speech.codes)), "text": speech.text, "stop_reason": speech.stop_reason,
            "rtf": round(speech.rtf, 3), "timings_ms": {k: round(v, 1) for k, v in speech.timings.items()}}


def _report(args: argparse.Namespace, speech: Speech, path: str) -> None:
    if args.json:
        print(json.dumps(_summary(speech, path), ensure_ascii=False, indent=2))
    if not args.quiet:
        first = speech.timings.get("first_audio")
        print(f"wrote {path}: {speech.duration:.2f} s of speech in {speech.timings['total'] / 1000:.2f} s "
              f"({speech.rtf:.2f}x real time" + (f", first audio after {first / 1000:.2f} s" if first else "") +
              f", stop: {speech.stop_reason})", file=sys.stderr)


# ---------------------------------------------------------------------- speak
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help="the text to speak; - reads it from stdin")
    _speech_model_arguments(p)
    g = p.add_argument_group("voice and sampling")
    g.add_argument("--voice", default="US female", help=f"one of: {', '.join(VOICES)} (default US female)")
    g.add_argument("--system", default=None, help="a TTS system prompt instead of --voice ('Perform TTS. ...')")
    g.add_argument("--temperature", type=float, default=TTS_TEMPERATURE,
                   help=f"audio sampling temperature, 0 = greedy (default {TTS_TEMPERATURE})")
    g.add_argument("--top-k", type=int, default=TTS_TOP_K, help=f"audio top-k (default {TTS_TOP_K})")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    g.add_argument("--max-duration", type=float, default=None, help="longest speech in seconds (default 60)")
    _output_arguments(p, "speech.wav")


def main(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    model = _load(args)
    speech = model.speak(text, voice=args.voice, system=args.system, temperature=args.temperature,
                         top_k=args.top_k, seed=args.seed, max_duration=args.max_duration,
                         progress=show_progress(args))
    path = str(speech.save(args.output, args.format))
    _report(args, speech, path)
    return 0


# ---------------------------------------------------------------------- chat
def add_chat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", help="the spoken message (audio file; - reads it from stdin)")
    p.add_argument("--text", default=None, help="a text message instead of audio")
    _speech_model_arguments(p)
    g = p.add_argument_group("answer")
    g.add_argument("--mode", choices=MODES, default="interleaved",
                   help="interleaved (text and audio in a fixed pattern, default) or sequential")
    g.add_argument("--system", default=None, help="system prompt (default: 'Respond with interleaved text and audio.')")
    g.add_argument("--temperature", type=float, default=CHAT_TEMPERATURE,
                   help=f"audio sampling temperature, 0 = greedy (default {CHAT_TEMPERATURE})")
    g.add_argument("--top-k", type=int, default=CHAT_TOP_K, help=f"audio top-k (default {CHAT_TOP_K})")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    g.add_argument("--max-new-tokens", type=int, default=1024, help="text tokens + audio frames (default 1024)")
    g.add_argument("--max-duration", type=float, default=None, help="longest speech in seconds (default 60)")
    _output_arguments(p, "reply.wav")


def main_chat(args: argparse.Namespace) -> int:
    from .speech import CHAT_SYSTEM_PROMPT, SpeechError

    if (args.input is None) == (args.text is None):
        raise SpeechError("give the message either as an audio file or with --text, not both")
    message: Any = args.text
    if args.input is not None:
        message = sys.stdin.buffer.read() if args.input == "-" else args.input
    model = _load(args)
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
    _report(args, speech, path)
    return 0
