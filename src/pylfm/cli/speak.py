"""``pylfm speak "text" -o out.wav``: text to speech (LFM2.5-Audio).

Loads the model (and its speech GGUFs: vocoder-*.gguf, tokenizer-*.gguf next to it,
or --vocoder/--detokenizer), generates, writes the audio, and reports on stderr (off
with --quiet); --json prints a summary for scripts on stdout. ``pylfm chat``
(`pylfm.cli.chat`) shares the output options and the report defined here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

from ..speech.audio_file import AUDIO_FORMATS
from ..speech.result import Speech
from ..speech.voices import DEFAULT_VOICE, TTS_TEMPERATURE, TTS_TOP_K, VOICES
from .options import (JSON, MAX_DURATION, PROGRESS, QUIET, SEED, SYSTEM, TEMPERATURE, TOP_K,
                      add_speech_model_arguments, load_model, show_progress)


def add_sampling_arguments(g: Any, temperature: float, top_k: int) -> None:
    """The audio sampling options of ``speak`` and ``chat`` (their defaults differ)."""
    TEMPERATURE.add(g, default=temperature, help=f"audio sampling temperature, 0 = greedy (default {temperature})")
    TOP_K.add(g, default=top_k, help=f"audio top-k (default {top_k})")
    SEED.add(g, default=None, help="random seed (default: random)")


def add_output_arguments(p: argparse.ArgumentParser, default: str) -> None:
    o = p.add_argument_group("output")
    o.add_argument("--output", "-o", default=default, help=f"audio file to write (default {default}); the format "
                   f"follows the extension: {', '.join(AUDIO_FORMATS)}")
    o.add_argument("--format", choices=list(AUDIO_FORMATS), default=None, help="audio format (overrides the extension)")
    JSON.add(o, help="print a JSON summary on stdout")
    QUIET.add(o, help="no progress or report on stderr")
    PROGRESS.add(o, help="progress even when stderr is not a terminal")


def add_max_duration(g: Any) -> None:
    MAX_DURATION.add(g, help="longest speech in seconds (default 60)")


def load_speech_model(args: argparse.Namespace):
    """The model with its speech output loaded (errors about the speech GGUFs come now)."""
    model = load_model(args)
    model.load_speech(args.vocoder, args.detokenizer)
    return model


def summary(speech: Speech, path: str) -> Dict[str, Any]:
    return {"output": path, "duration": round(speech.duration, 3), "sample_rate": speech.sample_rate,
            "frames": int(len(speech.codes)), "text": speech.text, "stop_reason": speech.stop_reason,
            "rtf": round(speech.rtf, 3), "timings_ms": {k: round(v, 1) for k, v in speech.timings.items()}}


def report(args: argparse.Namespace, speech: Speech, path: str) -> None:
    """The JSON summary on stdout (--json) and the line on stderr (unless --quiet)."""
    if args.json:
        print(json.dumps(summary(speech, path), ensure_ascii=False, indent=2))
    if not args.quiet:
        first = speech.timings.get("first_audio")
        print(f"wrote {path}: {speech.duration:.2f} s of speech in {speech.timings['total'] / 1000:.2f} s "
              f"({speech.rtf:.2f}x real time" + (f", first audio after {first / 1000:.2f} s" if first else "") +
              f", stop: {speech.stop_reason})", file=sys.stderr)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help="the text to speak; - reads it from stdin")
    add_speech_model_arguments(p)
    g = p.add_argument_group("voice and sampling")
    g.add_argument("--voice", default=DEFAULT_VOICE, help=f"one of: {', '.join(VOICES)} (default {DEFAULT_VOICE})")
    SYSTEM.add(g, default=None, help="a TTS system prompt instead of --voice ('Perform TTS. ...')")
    add_sampling_arguments(g, TTS_TEMPERATURE, TTS_TOP_K)
    add_max_duration(g)
    add_output_arguments(p, "speech.wav")


def main(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    model = load_speech_model(args)
    speech = model.speak(text, voice=args.voice, system=args.system, temperature=args.temperature,
                         top_k=args.top_k, seed=args.seed, max_duration=args.max_duration,
                         progress=show_progress(args))
    path = str(speech.save(args.output, args.format))
    report(args, speech, path)
    return 0
