"""Real speech with known utterance times, synthesised with espeak-ng, and the noises
the VAD benchmark mixes in (white noise, babble, music).

espeak-ng is a Debian package (``apt-get install -y espeak-ng``), not a Python one; the
tests use a committed clip made by tools/make_speech_fixture.py, so only the fixture
script and benchmarks/vad_quality.py need it.

Ground truth: each sentence is synthesised on its own; its utterance is the clip from
the first to the last sample above -45 dB of its peak (espeak-ng adds some silence at
both ends), placed in the recording after a pause of known length.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from typing import List, Sequence, Tuple

import numpy as np
import soundfile as sf
import soxr

RATE = 16000

#: Sentences of everyday length and rhythm (commas give pauses inside utterances).
SENTENCES = [
    "The meeting starts at nine, so please bring the quarterly numbers with you.",
    "I think we should take the train, because the roads will be busy on Friday.",
    "Could you send me the recording when you get a chance?",
    "The weather forecast says it will rain all weekend.",
    "We finished the first version of the report yesterday afternoon.",
    "Turn left at the second traffic light, then keep going until you see the bakery.",
    "Honestly, I did not expect the results to be this good.",
    "Yes.",
    "Let me check my calendar and get back to you.",
    "The new library opens next month, with a large section for children.",
    "She played the violin in the city orchestra for twelve years.",
    "Remember to water the plants while I am away.",
    "Our flight was delayed by three hours, and we missed the connection.",
    "Do you prefer coffee or tea in the morning?",
    "The engineers replaced the old pump, but the pressure is still too low.",
    "Thank you very much.",
    "After dinner, we walked along the river and talked about the future.",
    "The price of the tickets went up again this year.",
    "He fixed the bicycle himself, using a video he found online.",
    "Please read the instructions carefully before you start the machine.",
    "It was a long winter, and everyone was happy to see the first flowers.",
    "No, that is not what I meant.",
    "The children built a small boat out of wood and paper.",
    "We will need at least four more people to finish the project on time.",
    "I left my keys on the kitchen table, next to the blue notebook.",
    "The museum has a new exhibition about the history of the city.",
    "Could you speak a little louder, please?",
    "The doctor said I should rest for a few days.",
    "They moved to a small village in the mountains last spring.",
    "If the server goes down again, call the support team immediately.",
    "Okay, sounds good.",
    "The recipe needs two eggs, a cup of flour, and some butter.",
    "Most of the students passed the exam on the first try.",
    "The old bridge will be closed for repairs until September.",
    "I would like to book a table for two at seven o'clock.",
    "Every morning, the baker opens the shop before sunrise.",
]

#: espeak-ng voices (language + variant) that sound different from each other.
VOICES = ["en-us+m3", "en-gb+f2", "en-gb-scotland+m5", "en-029+f4", "en-us+klatt2",
          "en-gb-x-rp+m7", "en-us+f3", "en-gb+m1", "en-us+f5", "en-gb-x-gbclan+m2"]


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, voice: str, wpm: int, pitch: int = 50) -> np.ndarray:
    """``text`` spoken by espeak-ng, float32 mono at 16 kHz."""
    if not have_espeak():
        raise RuntimeError("espeak-ng is not installed: apt-get install -y espeak-ng")
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    x, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(x, rate, RATE).astype(np.float32)


def trim(x: np.ndarray, floor_db: float = -45.0) -> np.ndarray:
    """``x`` without the leading and trailing silence (below ``floor_db`` of its peak,
    measured in 10 ms windows)."""
    env = np.sqrt(np.convolve(x.astype(np.float64) ** 2, np.ones(160) / 160, mode="same"))
    loud = np.flatnonzero(env > np.abs(x).max() * 10 ** (floor_db / 20))
    return x[loud[0] : loud[-1] + 1] if len(loud) else x[:0]


def assemble(clips: Sequence[np.ndarray], pauses: Sequence[float], tail: float = 1.0
             ) -> Tuple[np.ndarray, List[Tuple[int, int]]]:
    """Each clip after its pause (seconds), then ``tail`` seconds of silence ->
    (signal, utterance spans in samples)."""
    parts, truth, pos = [], [], 0
    for clip, pause in zip(clips, pauses):
        gap = np.zeros(int(pause * RATE), np.float32)
        parts += [gap, clip]
        pos += len(gap)
        truth.append((pos, pos + len(clip)))
        pos += len(clip)
    parts.append(np.zeros(int(tail * RATE), np.float32))
    return np.concatenate(parts), truth


def conversation(seconds: float, rng: np.random.Generator, pause=(0.15, 1.5), voices=VOICES,
                 wpm=(130, 230)) -> Tuple[np.ndarray, List[Tuple[int, int]]]:
    """Sentences by random voices at random rates and levels with pauses drawn from
    ``pause`` (seconds), about ``seconds`` long."""
    clips, pauses, total = [], [], 0.0
    while total < seconds:
        text = SENTENCES[rng.integers(len(SENTENCES))]
        voice = voices[rng.integers(len(voices))]
        clip = trim(speak(text, voice, int(rng.integers(wpm[0], wpm[1] + 1)), int(rng.integers(30, 70))))
        clip *= np.float32(rng.uniform(0.3, 0.9) / max(np.abs(clip).max(), 1e-9))
        clips.append(clip)
        pauses.append(float(rng.uniform(*pause)))
        total += pauses[-1] + len(clip) / RATE
    return assemble(clips, pauses)


# --------------------------------------------------------------------------- noises


def white(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def babble(n: int, rng: np.random.Generator, talkers: int = 6, loop_s: float = 60.0) -> np.ndarray:
    """Several voices talking at once without pauses (a café): a ``loop_s`` loop of
    each talker, repeated from a random offset."""
    out = np.zeros(n, np.float32)
    for t in range(talkers):
        voice = VOICES[t % len(VOICES)]
        talk, total = [], 0
        while total < loop_s * RATE:
            clip = trim(speak(SENTENCES[rng.integers(len(SENTENCES))], voice, int(rng.integers(150, 200))))
            talk.append(clip / max(np.abs(clip).max(), 1e-9))
            total += len(clip)
        loop = np.concatenate(talk)
        out += np.resize(np.roll(loop, int(rng.integers(len(loop)))), n)
    return out


def music(n: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic music: triads of harmonic tones over a bass note, one chord every
    0.5-2 s, each struck and decaying, with a soft hi-hat on the beat."""
    out = np.zeros(n, np.float32)
    scale = [0, 2, 4, 5, 7, 9, 11]
    pos = 0
    while pos < n:
        length = min(int(rng.uniform(0.5, 2.0) * RATE), n - pos)
        t = np.arange(length) / RATE
        env = np.minimum(t / 0.02, 1.0) * np.exp(-t / rng.uniform(0.4, 1.5))
        root = 48 + scale[rng.integers(7)]
        chord = np.zeros(length)
        for note in (root - 12, root, root + 4 - (rng.random() < 0.5), root + 7):
            f = 440.0 * 2 ** ((note - 69) / 12)
            chord += sum(np.sin(2 * np.pi * k * f * t) / k**1.5 for k in range(1, 6))
        hat = np.zeros(length)
        beat = int(0.25 * RATE)
        for b in range(0, length, beat):
            m = min(800, length - b)
            hat[b : b + m] += rng.standard_normal(m) * np.exp(-np.arange(m) / 120) * 0.3
        out[pos : pos + length] = (chord * env + hat).astype(np.float32)
        pos += length
    return out


def mix(speech: np.ndarray, truth: List[Tuple[int, int]], noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech`` plus ``noise`` scaled to ``snr_db`` below the speech's power (measured
    over the utterances only), limited to [-1, 1]."""
    sp = np.concatenate([speech[s:e] for s, e in truth]).astype(np.float64)
    p_speech = float(np.mean(sp**2))
    p_noise = float(np.mean(noise.astype(np.float64) ** 2))
    gain = np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))
    y = speech + np.float32(gain) * noise
    peak = float(np.abs(y).max())
    return (y / peak * 0.99).astype(np.float32) if peak > 0.99 else y.astype(np.float32)
