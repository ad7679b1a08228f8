"""How well the speech detectors plan windows on real (synthesised) speech, in quiet and
in noise: Silero VAD (pylfm's default) against the energy detector.

    apt-get install -y espeak-ng          # the speech comes from espeak-ng
    python benchmarks/vad_quality.py      # markdown table on stdout, progress on stderr
    python benchmarks/vad_quality.py --json vad.json --minutes 6 --windows 30,10

Audio: two recordings, made once (seeded): a conversation (ten espeak-ng voices, 130-230
words per minute, random levels, pauses of 0.15-1.5 s) and a near-continuous speaker
(one voice, fast, pauses of 0.15-0.3 s), each ``--minutes`` long, with the utterance
times known from how they were put together. Each is used clean, mixed with white
noise at 20, 10 and 5 dB SNR, with babble (six voices at once) and with music
(synthetic chords and hi-hats) at 10 dB.

For each detector, ``pylfm.vad.plan_windows`` plans the windows and we count:

* speech lost: % of utterance samples in no window;
* edges inside utterances: % of window edges (starts and ends, the recording's own
  ends excluded) that fall inside an utterance, i.e. cut a sentence;
* non-speech sent: % of the audio outside utterances that is inside a window;
* detector time per minute of audio (plan_windows end to end, one CPU thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import speech_synth as synth  # noqa: E402

from pylfm.vad import VadOptions, plan_windows  # noqa: E402

Span = Tuple[int, int]
CONDITIONS = [("clean", None, None), ("white 20 dB", "white", 20), ("white 10 dB", "white", 10),
              ("white 5 dB", "white", 5), ("babble 10 dB", "babble", 10), ("music 10 dB", "music", 10)]


def main(argv: Sequence[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=4.0, help="length of each of the two recordings")
    ap.add_argument("--windows", default="30,10", help="window lengths in seconds, comma-separated")
    ap.add_argument("--detectors", default="silero,energy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = ap.parse_args(argv)
    if not synth.have_espeak():
        print("espeak-ng is needed: apt-get install -y espeak-ng", file=sys.stderr)
        return 2

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    rng = np.random.default_rng(args.seed)
    say(f"synthesising 2 x {args.minutes:g} min of speech with espeak-ng ...")
    recordings = [
        synth.conversation(args.minutes * 60, rng),
        synth.conversation(args.minutes * 60, rng, pause=(0.15, 0.3), voices=["en-us+m3"], wpm=(180, 220)),
    ]
    n_total = sum(len(x) for x, _ in recordings)
    noises = {"white": synth.white(n_total, rng), "music": synth.music(n_total, rng)}
    say("synthesising babble ...")
    noises["babble"] = synth.babble(n_total, rng)

    rows: List[Dict] = []
    for cond, kind, snr in CONDITIONS:
        mixed, offset = [], 0
        for x, truth in recordings:
            if kind is None:
                mixed.append(x)
            else:
                mixed.append(synth.mix(x, truth, noises[kind][offset : offset + len(x)], snr))
            offset += len(x)
        for window in [float(w) for w in args.windows.split(",")]:
            for det in args.detectors.split(","):
                row = measure(mixed, [t for _, t in recordings], det, window)
                row.update(audio=cond, detector=det, window_s=window)
                rows.append(row)
                say(f"{cond:>13} | {det:>6} | {window:g} s | lost {row['speech_lost_pct']:.3f} % | edges in "
                    f"utterances {row['edges_inside_pct']:.1f} % | non-speech sent {row['nonspeech_sent_pct']:.1f} % "
                    f"| {row['seconds_per_audio_minute']:.3f} s/min")
    speed = None
    if "silero" in args.detectors.split(","):
        say("timing Silero: segments side by side against one sequence ...")
        speed = batching_speed(np.concatenate([x for x, _ in recordings]))
    print(table(rows, args))
    if speed:
        print(f"\nSilero on the {2 * args.minutes:g} clean minutes: {speed['batched_s_per_min']:.2f} s per audio minute "
              f"in 60 s segments side by side, {speed['one_sequence_s_per_min']:.2f} s as one sequence "
              f"({speed['speedup']:.1f}x).")
    if args.json:
        Path(args.json).write_text(json.dumps({"minutes_per_recording": args.minutes, "seed": args.seed,
                                               "options": VadOptions().__dict__, "rows": rows,
                                               "silero_batching": speed}, indent=2))
    return 0


def measure(signals: List[np.ndarray], truths: List[List[Span]], detector: str, window: float) -> Dict:
    lost = speech = inside = edges = sent_silence = silence = n_windows = 0
    seconds = 0.0
    for x, truth in zip(signals, truths):
        t = time.perf_counter()
        windows = plan_windows(x, synth.RATE, window=window, vad=detector)
        seconds += time.perf_counter() - t
        n_windows += len(windows)
        is_speech = np.zeros(len(x), bool)
        for s, e in truth:
            is_speech[s:e] = True
        sent = np.zeros(len(x), bool)
        for s, e in windows:
            sent[s:e] = True
        speech += int(is_speech.sum())
        lost += int((is_speech & ~sent).sum())
        silence += int((~is_speech).sum())
        sent_silence += int((sent & ~is_speech).sum())
        cuts = sorted({p for w in windows for p in w} - {0, len(x)})
        edges += len(cuts)
        inside += sum(1 for p in cuts if any(s < p < e for s, e in truth))
    minutes = sum(len(x) for x in signals) / synth.RATE / 60
    return {
        "speech_lost_pct": 100.0 * lost / speech,
        "edges_inside_pct": 100.0 * inside / edges if edges else 0.0,
        "nonspeech_sent_pct": 100.0 * sent_silence / silence,
        "windows": n_windows,
        "edges": edges,
        "seconds_per_audio_minute": seconds / minutes,
    }


def table(rows: List[Dict], args: argparse.Namespace) -> str:
    """One line per audio and window; each cell lists the detectors in ``--detectors`` order."""
    dets = args.detectors.split(",")
    cmd = "python benchmarks/vad_quality.py" + (f" --minutes {args.minutes:g}" if args.minutes != 4 else "")
    lines = [
        f"2 x {args.minutes:g} min of espeak-ng speech, seed {args.seed}, `{cmd}`; cells: " + " / ".join(dets),
        "",
        "| audio | window | speech lost | edges inside utterances | non-speech sent | windows "
        "| detector time per audio minute |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    keys = []
    for r in rows:
        if (r["audio"], r["window_s"]) not in keys:
            keys.append((r["audio"], r["window_s"]))
    for audio, window in keys:
        by = {r["detector"]: r for r in rows if r["audio"] == audio and r["window_s"] == window}

        def cell(fmt, key):
            return " / ".join(fmt.format(by[d][key]) for d in dets if d in by)

        lines.append(f"| {audio} | {window:g} s | {cell('{:.2f} %', 'speech_lost_pct')} "
                     f"| {cell('{:.1f} %', 'edges_inside_pct')} | {cell('{:.0f} %', 'nonspeech_sent_pct')} "
                     f"| {cell('{}', 'windows')} | {cell('{:.2f} s', 'seconds_per_audio_minute')} |")
    return "\n".join(lines)


def batching_speed(x: np.ndarray, repeat: int = 2) -> Dict:
    """Silero's probabilities for ``x``: in segments side by side (pylfm's way) against one
    sequence (Silero's own loop), seconds per audio minute (best of ``repeat``, the two
    alternating), in the same run."""
    from pylfm.vad import silero

    silero.session()
    minutes = len(x) / synth.RATE / 60
    default = silero.SEGMENT_S
    best = {"batched": float("inf"), "sequence": float("inf")}
    try:
        for _ in range(repeat):
            for way, segment in (("batched", default), ("sequence", len(x) / synth.RATE + 1)):
                silero.SEGMENT_S = segment
                t = time.perf_counter()
                silero.speech_probabilities(x)
                best[way] = min(best[way], (time.perf_counter() - t) / minutes)
    finally:
        silero.SEGMENT_S = default
    return {"batched_s_per_min": best["batched"], "one_sequence_s_per_min": best["sequence"],
            "speedup": best["sequence"] / best["batched"]}


if __name__ == "__main__":
    sys.exit(main())
