"""Make tests/fixtures/speech_espeak.flac (+ .json): a short real speech recording with
known utterance times, for the VAD tests (which then need no espeak-ng).

    apt-get install -y espeak-ng
    python tools/make_speech_fixture.py            # writes tests/fixtures/speech_espeak.*

Three sentences by three espeak-ng voices, 16 kHz mono 16-bit FLAC, after pauses of
0.6-1.2 s. The JSON lists each utterance's start and end (seconds; the synthesised clip
without its own leading/trailing silence, see tools/speech_synth.py), text and voice.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speech_synth as synth  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UTTERANCES = [
    ("Could you send me the recording when you get a chance?", "en-us+m3", 165, 0.8),
    ("The weather forecast says it will rain all weekend.", "en-gb+f2", 150, 1.2),
    ("Thank you very much.", "en-029+f4", 175, 0.6),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "speech_espeak"),
                    help="output path without extension")
    args = ap.parse_args()
    clips = []
    for text, voice, wpm, _ in UTTERANCES:
        clip = synth.trim(synth.speak(text, voice, wpm))
        clips.append(clip * np.float32(0.7 / np.abs(clip).max()))
    x, truth = synth.assemble(clips, [p for *_, p in UTTERANCES], tail=0.7)
    sf.write(args.out + ".flac", x, synth.RATE, subtype="PCM_16")
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    meta = {
        "made_by": "tools/make_speech_fixture.py",
        "espeak_ng": version,
        "rate": synth.RATE,
        "utterances": [{"start": s / synth.RATE, "end": e / synth.RATE, "text": u[0], "voice": u[1]}
                       for (s, e), u in zip(truth, UTTERANCES)],
    }
    Path(args.out + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    size = Path(args.out + ".flac").stat().st_size
    print(f"{args.out}.flac: {len(x) / synth.RATE:.2f} s, {size / 1024:.0f} KiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
