"""``pylfm convert CHECKPOINT_DIR [--outtype f16] [--outdir D] [--name N] [--force]
[--with-speech | --no-speech | --speech-only] [--speech-outtype T]``"""

from __future__ import annotations

import argparse

from ..files.convert import OUTTYPES, convert, convert_speech, plan
from ..files.convert.speech import SPEECH_OUTTYPES
from .options import FORCE, QUIET


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory (config.json, model.safetensors, tokenizer.json)")
    parser.add_argument("--outtype", default="f16", choices=list(OUTTYPES), help="tensor type (default f16)")
    parser.add_argument("--outdir", "-o", help="output directory (default: the checkpoint directory)")
    parser.add_argument("--name", help="model name in the file names (default: the checkpoint directory's name)")
    FORCE.add(parser)
    QUIET.add(parser)
    parser.add_argument("--plan", action="store_true", help="only list what happens to each tensor")
    speech = parser.add_mutually_exclusive_group()
    speech.add_argument("--with-speech", dest="speech", action="store_const", const=True, default=None,
                        help="also write vocoder-*.gguf and tokenizer-*.gguf for speech output (default: when "
                             "the checkpoint has audio_detokenizer/)")
    speech.add_argument("--no-speech", dest="speech", action="store_const", const=False,
                        help="only the ASR GGUFs (model + mmproj)")
    speech.add_argument("--speech-only", dest="speech", action="store_const", const="only",
                        help="only the two speech-output GGUFs")
    parser.add_argument("--speech-outtype", choices=list(SPEECH_OUTTYPES), default=None,
                        help="type of the speech GGUFs (default: --outtype; q4_0 allowed)")


def main(args: argparse.Namespace) -> int:
    speech = getattr(args, "speech", None)
    if args.plan:
        for d in plan(args.checkpoint, args.outtype, with_speech=None if speech == "only" else speech):
            print(f"{d.action:9} {d.source}: {d.reason}")
        return 0
    if speech == "only":
        result = convert_speech(args.checkpoint, outdir=args.outdir, outtype=args.speech_outtype or args.outtype,
                                name=args.name, force=args.force, progress=not args.quiet)
    else:
        result = convert(args.checkpoint, outdir=args.outdir, outtype=args.outtype, name=args.name,
                         force=args.force, progress=not args.quiet, with_speech=speech,
                         speech_outtype=args.speech_outtype)
    for path in (result.model_path, result.mmproj_path, result.vocoder_path, result.tokenizer_path):
        if path is not None:
            print(path)
    return 0
