"""Build the liquid-audio reference fixture for speech output (tests/test_speech.py).

Regenerate (from the repository root):

    bash tools/reference/setup_env.sh                          # once: .venv-ref with liquid-audio 1.3.0 + torch
    .venv-ref/bin/python tools/reference/make_speech_fixture.py
    # writes tests/fixtures/speech.npz and tests/fixtures/speech.json

Regenerate whenever tools/make_tiny_checkpoint.py changes (the tests compare checkpoint hashes).

What it records, all in float32 on the CPU with liquid-audio's own modules:
  1. Text-to-speech on the tiny checkpoint (seed 0): the README's TTS prompt (ChatState:
     system "Perform TTS. Use the US female voice.", the text as the user turn, then the
     assistant turn) with <|audio_start|> -- the assistant's first token in liquid-audio's
     training layout (data/mapper.py) -- so that generation starts with audio frames.
     Then N_FRAMES greedy frames with generate_sequential's recurrence (hidden state ->
     _sample_audio_frame -> audio_embedding(codes + offsets).sum(0) fed back). Sentences
     are tried in order until one gives N_FRAMES frames without end-of-audio whose every
     codebook decision has a top-1/top-2 margin >= MIN_MARGIN (a near tie would make the
     comparison depend on rounding). Also: the hidden states and teacher-forced depthformer
     logits of the first frames, and the backbone input of frame 0.
  2. The detokenizer's waveform for those codes (LFM2AudioDetokenizer built as
     LFM2AudioProcessor.audio_detokenizer builds it, minus its unconditional .cuda()), and
     its first spectrogram rows.
  3. On the --lively variant (make_checkpoint(lively=True): rows enlarged so that greedy
     decoding switches modality), everything liquid-audio's generate_sequential and
     generate_interleaved yield (greedy) for a text message and for the test clip, with
     the prompt of the README's chat example ("Respond with interleaved text and audio.").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
FIXTURE_DIR = ROOT / "tests" / "fixtures"

SEED = 0
N_FRAMES = 50
N_PROBE = 2  # frames whose hidden state and depthformer logits are stored
N_SPEC_ROWS = 12
# The depthformer chooses among 2049 codes with logits of spread ~1: over 400 decisions the
# closest top-1/top-2 gap is usually below 1e-3. pylfm's f32 engine agrees with liquid-audio
# to ~1e-6 on these logits, so 2e-4 leaves a factor of 200.
MIN_MARGIN = 2e-4
TTS_SYSTEM = "Perform TTS. Use the US female voice."
CHAT_SYSTEM = "Respond with interleaved text and audio."
CHAT_TEXT = "Tell me about the weather today."
CHAT_STEPS = 64
SENTENCES = (
    "Hello there, how are you doing today?",
    "The quick brown fox jumps over the lazy dog.",
    "Speech synthesis on a small random model.",
    "Seven bridges cross the river near the old station.",
    "Coffee and bread for breakfast, then a walk in the garden.",
    "Please listen to the music in the kitchen.",
    "A tiny model speaks in a voice nobody has heard.",
    "Numbers like one hundred and seven are read aloud.",
)


def tree_digest(ckpt_dir: Path) -> dict:
    """sha256 of every file of a checkpoint directory (with audio_detokenizer/), and combined."""
    files = {str(p.relative_to(ckpt_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(ckpt_dir.rglob("*")) if p.is_file()}
    combined = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()
    return {"combined": combined, "files": files}


def build(out_dir: Path) -> None:
    import importlib.metadata as md

    import torch
    from safetensors.torch import load_file
    from transformers import Lfm2Config

    sys.path.insert(0, str(TOOLS))
    from make_tiny_checkpoint import make_checkpoint  # noqa: E402
    from test_clip import CLIP_DEFAULTS, make_clip  # noqa: E402

    from liquid_audio import ChatState, LFM2AudioModel, LFM2AudioProcessor
    from liquid_audio.detokenizer import LFM2AudioDetokenizer

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    tmp = tempfile.TemporaryDirectory(prefix="pylfm-speech-")
    base = make_checkpoint(Path(tmp.name) / "tiny", seed=SEED)
    lively = make_checkpoint(Path(tmp.name) / "lively", seed=SEED, lively=True)

    def load(ckpt: Path):
        model = LFM2AudioModel.from_pretrained(ckpt, device="cpu", dtype=torch.float32).eval()
        sd = load_file(str(ckpt / "model.safetensors"))
        bad = [k for k, v in model.state_dict().items() if k not in sd or not torch.equal(v, sd[k].to(v.dtype))]
        assert not bad, f"liquid-audio did not load {bad[:3]} from {ckpt}"
        proc = LFM2AudioProcessor.from_pretrained(ckpt, device="cpu").eval()
        return model, proc

    def chat_state(proc, system: str, user, assistant_prefix: str = ""):
        chat = ChatState(proc, dtype=torch.float32)
        chat.new_turn("system")
        chat.add_text(system)
        chat.end_turn()
        chat.new_turn("user")
        if isinstance(user, str):
            chat.add_text(user)
        else:
            chat.add_audio(torch.from_numpy(user)[None, :], CLIP_DEFAULTS["rate"])
        chat.end_turn()
        chat.new_turn("assistant")
        if assistant_prefix:
            chat.add_text(assistant_prefix)
        return chat

    def depth_logits(model, hidden, codes):
        """Each codebook's logits, conditioned on the given codes (_sample_audio_frame's loop)."""
        din = model.depth_linear(hidden).view(model.codebooks, model.depthformer_dim)
        prev = torch.zeros_like(din[0])
        cache, out = None, []
        for i in range(model.codebooks):
            o, cache = model.depthformer.forward_cached((din[i] + prev)[None, None, :], cache)
            out.append(model.depth_embeddings[i].get_logits(o.squeeze()))
            prev = model.depth_embeddings[i](codes[i:i + 1]).squeeze()
        return torch.stack(out)

    def margins_of(logits):
        top2 = torch.topk(logits, 2, dim=-1).values
        return (top2[..., 0] - top2[..., 1]).numpy()

    # ---------------------------------------------------------------- 1. TTS frames
    model, proc = load(base)
    tried, chosen = [], None
    with torch.no_grad():
        for sentence in SENTENCES:
            chat = chat_state(proc, TTS_SYSTEM, sentence, "<|audio_start|>")
            x = model._prefill(**{k: chat[k] for k in chat})
            cache = None
            codes, margins, hidden, logits, emb0 = [], [], [], [], None
            reason = "ok"
            for f in range(N_FRAMES):
                out = model.lfm(inputs_embeds=x, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                h = out.last_hidden_state[0, -1]
                frame = model._sample_audio_frame(h)  # greedy: no temperature
                lg = depth_logits(model, h, frame)
                assert torch.equal(lg.argmax(-1), frame), "teacher-forced logits disagree with _sample_audio_frame"
                if f < N_PROBE:
                    hidden.append(h.numpy().copy())
                    logits.append(lg.numpy())
                codes.append(frame.numpy().astype(np.int32))
                margins.append(margins_of(lg))
                if int(frame[0]) == 2048:
                    reason = f"end of audio at frame {f}"
                    break
                if (frame >= 2048).any():
                    reason = f"code 2048 in frame {f}"
                    break
                x = model.audio_embedding(frame + model.codebook_offsets).sum(0)[None, None, :]
                if f == 0:
                    emb0 = x[0, 0].numpy().copy()
            low = float(np.min(margins))
            tried.append({"text": sentence, "frames": len(codes), "min_margin": low, "result": reason})
            print(f"{sentence!r}: {len(codes)} frames, min margin {low:.4f}, {reason}")
            if reason == "ok" and low >= MIN_MARGIN:
                chosen = (sentence, chat, codes, margins, hidden, logits, emb0)
                break
    if chosen is None:
        raise SystemExit("no sentence gave decisive frames; extend SENTENCES")
    sentence, chat, codes, margins, hidden, logits, emb0 = chosen
    codes = np.stack(codes)
    tts_prompt_ids = chat.text[0].numpy().astype(np.int32)

    # ---------------------------------------------------------------- 2. detokenizer
    det_dir = base / "audio_detokenizer"
    cfg = Lfm2Config.from_pretrained(det_dir / "config.json")
    window = int(getattr(cfg, "sliding_window", 30))
    cfg.layer_types = ["full_attention" if t == "sliding_attention" else t for t in cfg.layer_types]
    det = LFM2AudioDetokenizer(cfg).eval()
    det.load_state_dict(load_file(str(det_dir / "model.safetensors")))
    with torch.no_grad():
        c = torch.from_numpy(codes.T[None].astype(np.int64))
        wave = det(c)[0].numpy()
        e = det.emb(c)
        e = torch.nn.functional.interpolate(e.mT, 6 * e.shape[1], mode="nearest-exact").mT
        idx = torch.arange(e.shape[1])
        d = idx - idx[:, None]
        mask = torch.logical_and(d <= 0, d > -det.sliding_window_size)[None, None]
        spec = det.lin(det.lfm(inputs_embeds=e, attention_mask=mask, use_cache=False).last_hidden_state)[0].numpy()
    assert wave.shape == (N_FRAMES * 1920,), wave.shape

    # ---------------------------------------------------------------- 3. modality switching
    lmodel, lproc = load(lively)
    clip = make_clip(**{k: CLIP_DEFAULTS[k] for k in ("seconds", "rate", "seed", "noise")})
    runs, steps_rows = {}, []
    step_margins: list = []

    real_text, real_audio = lmodel._sample_text_token, lmodel._sample_audio_frame

    def text_token(logits, **kw):
        step_margins.append(float(margins_of(logits)))
        return real_text(logits, **kw)

    def audio_frame(embedding, **kw):
        frame = real_audio(embedding, **kw)
        step_margins.append(float(margins_of(depth_logits(lmodel, embedding, frame)).min()))
        return frame

    lmodel._sample_text_token, lmodel._sample_audio_frame = text_token, audio_frame
    with torch.no_grad():
        for mode in ("sequential", "interleaved"):
            for name, user in (("text", CHAT_TEXT), ("clip", clip)):
                chat = chat_state(lproc, CHAT_SYSTEM, user)
                step_margins.clear()
                gen = lmodel.generate_sequential if mode == "sequential" else lmodel.generate_interleaved
                rows = []
                for t in gen(**{k: chat[k] for k in chat}, max_new_tokens=CHAT_STEPS):
                    if t.numel() == 1:
                        rows.append([0, int(t)] + [0] * 7)
                    else:
                        rows.append([1] + [int(v) for v in t])
                rows = np.array(rows, np.int32).reshape(-1, 9)
                key = f"{mode}_{name}"
                runs[key] = {"n_steps": int(len(rows)), "n_text": int((rows[:, 0] == 0).sum()),
                             "n_audio": int((rows[:, 0] == 1).sum()),
                             "audio_start": int(((rows[:, 0] == 0) & (rows[:, 1] == 128)).sum()),
                             "text_end": int(((rows[:, 0] == 0) & (rows[:, 1] == 130)).sum()),
                             "end_of_audio": int(((rows[:, 0] == 1) & (rows[:, 1] == 2048)).sum()),
                             "min_margin": min(step_margins), "prompt_ids": chat.text[0].tolist()}
                steps_rows.append((key, rows))
                print(key, runs[key]["n_steps"], "steps:", {k: v for k, v in runs[key].items() if k != "prompt_ids"})

    arrays = {
        "tts_prompt_ids": tts_prompt_ids,
        "tts_codes": codes,
        "tts_margins": np.stack(margins).astype(np.float32),
        "tts_hidden": np.stack(hidden).astype(np.float32),
        "tts_depth_logits": np.stack(logits).astype(np.float32),
        "tts_frame0_embedding": emb0.astype(np.float32),
        "detok_wave": wave.astype(np.float32),
        "detok_spec": spec[:N_SPEC_ROWS].astype(np.float32),
        "clip": clip.astype(np.float32),
    }
    for key, rows in steps_rows:
        arrays[f"steps_{key}"] = rows
    meta = {
        "format": 1,
        "generator": "tools/reference/make_speech_fixture.py",
        "versions": {p: md.version(p) for p in ("liquid-audio", "torch", "transformers")},
        "checkpoint": {"seed": SEED, "sha256": tree_digest(base)["combined"],
                       "lively_sha256": tree_digest(lively)["combined"]},
        "tts": {"system": TTS_SYSTEM, "text": sentence, "n_frames": N_FRAMES, "min_margin": MIN_MARGIN,
                "tried": tried, "prompt": "ChatState turns + '<|audio_start|>' in the assistant turn"},
        "detokenizer": {"sliding_window": window, "n_samples": int(wave.shape[0]), "sample_rate": 24000},
        "chat": {"system": CHAT_SYSTEM, "text": CHAT_TEXT, "max_new_tokens": CHAT_STEPS, "runs": runs,
                 "clip": {k: CLIP_DEFAULTS[k] for k in ("seconds", "rate", "seed", "noise")}},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / "speech.npz", **arrays)
    (out_dir / "speech.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out_dir / 'speech.npz'} ({(out_dir / 'speech.npz').stat().st_size // 1024} KiB) and speech.json")
    tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=FIXTURE_DIR)
    build(ap.parse_args().out)


if __name__ == "__main__":
    main()
