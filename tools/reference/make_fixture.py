"""Build the liquid-audio reference fixture for tests/test_fidelity.py.

Regenerate (from the repository root):

    bash tools/reference/setup_env.sh                  # once: .venv-ref with liquid-audio 1.3.0 + torch
    .venv-ref/bin/python tools/reference/make_fixture.py
    # writes tests/fixtures/reference.npz and tests/fixtures/reference.json

Regenerate whenever tools/make_tiny_checkpoint.py or tools/test_clip.py changes:
tests/test_fidelity.py fails (checkpoint hash / clip mismatch) until you do.

What it does:
  1. builds the tiny checkpoint with tools/make_tiny_checkpoint.make_checkpoint(dir, seed=0);
  2. loads it with the official implementation,
     LFM2AudioModel.from_pretrained(Path(dir), device="cpu", dtype=torch.float32), and checks that
     the load is strict (every state_dict key present in the safetensors with the same shape and
     value, no unused tensors) -- liquid-audio itself loads through accelerate's
     load_checkpoint_in_model, which silently leaves missing weights at their random init;
  3. builds the ASR prompt the way liquid-audio's README does (ChatState; system "Perform ASR.",
     user turn = the audio, then "<|im_start|>assistant\\n") for tools/test_clip.make_clip(),
     trying noise seeds from CLIP_DEFAULTS["seed"] up until all 32 greedy steps are decisive
     (top-1/top-2 margin >= MIN_MARGIN) and varied; the chosen parameters go into the json;
  4. records the log-mel features, the audio embeddings the LFM receives (conformer + audio_adapter
     output, rows of the prefill input at the AUDIO_IN positions), the prompt token ids (audio
     positions = -1), the logits after prefill, and N=32 raw greedy steps (argmax, fed back through
     embed_tokens, *not* stopping at <|im_end|>) with the top-1/top-2 margin and full logits at each
     step; plus what liquid-audio's own generate_sequential yields (it stops at <|im_end|>=7 and
     switches to audio frames at <|audio_start|>=128).

Everything runs in float32 on the CPU (ChatState is built with dtype=torch.float32; liquid-audio's
default bfloat16 mel would make the reference depend on rounding). The model is put in eval() mode
(from_pretrained does not do it: dropout would otherwise be active).

Only NumPy/json/hashlib are imported at module level, so tests can import ``checkpoint_digest``
and the constants without torch.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
FIXTURE_DIR = ROOT / "tests" / "fixtures"

SYSTEM_PROMPT = "Perform ASR."
N_STEPS = 32
# The clip's noise seed is searched from CLIP_DEFAULTS["seed"] upwards until every one of the
# N_STEPS greedy steps has a top-1/top-2 logit margin >= MIN_MARGIN (and the tokens are varied),
# so that the f32 comparison can demand exact agreement at all steps.
MIN_MARGIN = 0.03
MAX_CLIP_TRIES = 40
SEED = 0
# Files of the checkpoint directory whose bytes determine the fixture. The tokenizer files are
# included because the prompt token ids come from them.
DIGEST_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

IM_END = 7  # liquid-audio generate_sequential stops after yielding this
AUDIO_START = 128  # generate_sequential switches to audio-frame output after this
TEXT_END = 130
ENDOFTEXT = 2  # llama.cpp marks it end-of-generation too


def checkpoint_digest(ckpt_dir: str | Path) -> dict:
    """sha256 of each of DIGEST_FILES that exists, and a combined sha256 over them."""
    ckpt_dir = Path(ckpt_dir)
    files = {}
    for name in DIGEST_FILES:
        p = ckpt_dir / name
        if p.is_file():
            files[name] = hashlib.sha256(p.read_bytes()).hexdigest()
    combined = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()
    return {"combined": combined, "files": files}


def llamacpp_style_mel(x: np.ndarray, n_mels: int, sr: int = 16000, n_fft: int = 512, win: int = 400, hop: int = 160):
    """Log-mel computed the way llama.cpp's mtmd conformer preprocessor (LFM2A) does, in NumPy.

    Written from the parameters read in tools/mtmd/mtmd-audio.cpp (mtmd_audio_preprocessor_conformer):
    zero "center" padding of n_fft/2 on both sides, pre-emphasis 0.97 on the real samples (the
    first one kept), symmetric Hann(400) zero-padded to 512 in the middle, |X|^2, Slaney-scale mel
    filterbank with Slaney area norm (fmin 0, fmax sr/2), natural log of (x + 2^-24), per-feature
    normalisation over the first len//hop frames (mean, unbiased std, +1e-5 after sqrt), the rest
    of the frames (the one extra frame from centering) set to 0. Used only as a diagnostic: its
    distance to liquid-audio's mel is recorded in reference.json.
    """
    x = np.asarray(x, dtype=np.float64)
    L = len(x)
    pad = n_fft // 2
    xp = np.zeros(L + 2 * pad)
    xp[pad : pad + L] = x
    xp[pad + 1 : pad + L] = x[1:] - 0.97 * x[:-1]
    i = np.arange(win)
    hann = 0.5 * (1.0 - np.cos(2 * np.pi * i / (win - 1)))
    w = np.zeros(n_fft)
    off = (n_fft - win) // 2
    w[off : off + win] = hann
    n_len = (len(xp) - n_fft) // hop + 1
    frames = np.stack([xp[k * hop : k * hop + n_fft] * w for k in range(n_len)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (n_len, n_fft/2+1)

    def hz2mel(f):
        f = np.asarray(f, dtype=np.float64)
        lin = f * 3.0 / 200.0
        logp = 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f < 1000.0, lin, logp)

    def mel2hz(m):
        m = np.asarray(m, dtype=np.float64)
        lin = m * 200.0 / 3.0
        logp = 1000.0 * np.exp((m - 15.0) * (np.log(6.4) / 27.0))
        return np.where(m < 15.0, lin, logp)

    mpts = np.linspace(hz2mel(0.0), hz2mel(sr / 2), n_mels + 2)
    hz = mel2hz(mpts)
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        fl, fc, fr = hz[m], hz[m + 1], hz[m + 2]
        up = (freqs - fl) / max(fc - fl, 1e-30)
        down = (fr - freqs) / max(fr - fc, 1e-30)
        fb[m] = np.maximum(0.0, np.minimum(up, down)) * (2.0 / (fr - fl))
    mel = np.log(fb @ power.T + 2.0**-24)  # (n_mels, n_len)
    eff = L // hop
    mean = mel[:, :eff].mean(axis=1, keepdims=True)
    std = mel[:, :eff].std(axis=1, ddof=1, keepdims=True) + 1e-5
    out = np.zeros_like(mel)
    out[:, :eff] = (mel[:, :eff] - mean) / std
    return out.astype(np.float32)


def _strict_load_report(model, ckpt_dir: Path) -> dict:
    """Compare the model's state_dict with the safetensors file(s), key by key.

    ``ok`` means: no missing or unexpected key, torch's ``load_state_dict(strict=True)`` accepts
    the file, and every tensor liquid-audio ends up with equals the file's. Two things torch
    tolerates are listed under ``notes`` instead of failing: a 1-element tensor for a 0-d buffer
    (torch's backward-compatibility rule, e.g. BatchNorm ``num_batches_tracked``), and tied
    parameters (one tensor under two names) given different values in the file (the last one
    loaded wins).
    """
    import copy

    import torch
    from safetensors.torch import load_file

    files = sorted(ckpt_dir.glob("*.safetensors"))
    sd_file = {}
    for f in files:
        sd_file.update(load_file(str(f)))
    sd_model = model.state_dict()
    missing = sorted(set(sd_model) - set(sd_file))
    unexpected = sorted(set(sd_file) - set(sd_model))
    common = sorted(set(sd_model) & set(sd_file))

    # names that are one tensor (tied parameters)
    by_ptr: dict = {}
    for k in common:
        by_ptr.setdefault(sd_model[k].data_ptr(), []).append(k)
    tied = {k for names in by_ptr.values() if len(names) > 1 for k in names}

    shape_mismatch, notes, value_mismatch = [], [], []
    for k in common:
        ms, fs = tuple(sd_model[k].shape), tuple(sd_file[k].shape)
        if ms != fs:
            if ms == () and fs == (1,):
                notes.append(f"{k}: file shape (1,) for a 0-d buffer (accepted by torch; should be ())")
            else:
                shape_mismatch.append(f"{k}: model {ms} file {fs}")
            continue
        if not torch.equal(sd_model[k].to(torch.float64), sd_file[k].to(torch.float64)):
            if k in tied:
                group = next(n for n in by_ptr.values() if k in n)
                notes.append(f"{k}: tied with {[n for n in group if n != k]} but the file holds other values")
            else:
                value_mismatch.append(k)

    try:
        copy.deepcopy(model).load_state_dict(sd_file, strict=True)
        torch_strict = "ok"
    except RuntimeError as e:  # pragma: no cover - reported, not expected
        torch_strict = str(e)[:2000]

    ok = not (missing or unexpected or shape_mismatch or value_mismatch) and torch_strict == "ok"
    return {
        "ok": ok,
        "n_model_keys": len(sd_model),
        "n_file_keys": len(sd_file),
        "missing": missing,
        "unexpected": unexpected,
        "shape_mismatch": shape_mismatch,
        "value_mismatch": value_mismatch,
        "torch_load_state_dict_strict": torch_strict,
        "notes": notes,
        "file_dtypes": sorted({str(v.dtype) for v in sd_file.values()}),
        "n_params": int(sum(v.numel() for v in sd_file.values())),
    }


def build(out_dir: Path, ckpt_dir: Path | None = None, allow_nonstrict: bool = False) -> dict:
    import importlib.metadata as md

    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(TOOLS))
    from test_clip import CLIP_DEFAULTS, make_clip  # noqa: E402

    from liquid_audio import ChatState, LFM2AudioModel, LFM2AudioProcessor, LFMModality

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)

    tmp = None
    if ckpt_dir is None:
        from make_tiny_checkpoint import make_checkpoint  # noqa: E402

        tmp = tempfile.TemporaryDirectory(prefix="pylfm-tiny-")
        ckpt_dir = Path(tmp.name) / "tiny"
        make_checkpoint(ckpt_dir, seed=SEED)
    ckpt_dir = Path(ckpt_dir)
    digest = checkpoint_digest(ckpt_dir)
    config = json.loads((ckpt_dir / "config.json").read_text())

    # --- load (Path, not str: a str is sent to huggingface_hub.snapshot_download) ---
    model = LFM2AudioModel.from_pretrained(ckpt_dir, device="cpu", dtype=torch.float32).eval()
    load = _strict_load_report(model, ckpt_dir)
    strict_ok = load["ok"]
    print("strict load:", "OK" if strict_ok else "FAILED", json.dumps(load, indent=1))
    if not strict_ok and not allow_nonstrict:
        raise SystemExit("tiny checkpoint does not load strictly in liquid-audio (see above)")

    proc = LFM2AudioProcessor.from_pretrained(ckpt_dir, device="cpu").eval()
    tok = proc.text

    def make_chat(wave):
        """The ASR prompt exactly as in liquid-audio's README (ChatState)."""
        chat = ChatState(proc, dtype=torch.float32)
        chat.new_turn("system")
        chat.add_text(SYSTEM_PROMPT)
        chat.end_turn()
        chat.new_turn("user")
        chat.add_audio(wave, CLIP_DEFAULTS["rate"])
        chat.end_turn()
        chat.new_turn("assistant")
        return chat

    def prefill(chat):
        return model._prefill(
            text=chat.text,
            audio_in=chat.audio_in,
            audio_in_lens=chat.audio_in_lens,
            audio_out=chat.audio_out,
            modality_flag=chat.modality_flag,
        )

    W = model.lfm.embed_tokens.weight

    def greedy(in_emb):
        """Raw greedy loop: same recurrence as generate_sequential, no stop."""
        cache = None
        x = in_emb
        toks, margins, step_logits = [], [], []
        for _ in range(N_STEPS):
            out = model.lfm(inputs_embeds=x, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = F.linear(out.last_hidden_state[0, -1], W)
            top2 = torch.topk(logits, 2)
            nxt = logits.argmax(keepdim=True)
            toks.append(int(nxt))
            margins.append(float(top2.values[0] - top2.values[1]))
            step_logits.append(logits.float().numpy())
            x = model.lfm.embed_tokens(nxt)[None, :]
        return toks, margins, step_logits

    # --- choose the clip: the first noise seed whose 32 greedy steps are all decisive ---
    # (a near-tie in the reference makes every later step incomparable, whatever the engine)
    base = {k: CLIP_DEFAULTS[k] for k in ("seconds", "rate", "seed", "noise")}
    tried = []
    best = None
    with torch.no_grad():
        for seed in range(base["seed"], base["seed"] + MAX_CLIP_TRIES):
            params = dict(base, seed=seed)
            wave = torch.from_numpy(make_clip(**params))[None, :]
            toks, margins, _ = greedy(prefill(make_chat(wave)))
            low = next((i for i, m in enumerate(margins) if m < MIN_MARGIN), N_STEPS)
            runs = max(len(list(g)) for _, g in itertools.groupby(toks))
            good = low == N_STEPS and len(set(toks)) >= 12 and runs <= 3
            tried.append({"seed": seed, "first_low_margin_step": low, "min_margin": min(margins),
                          "distinct": len(set(toks))})
            print(f"clip seed {seed}: first margin < {MIN_MARGIN} at step {low}, min margin "
                  f"{min(margins):.4f}, {len(set(toks))} distinct")
            if best is None or low > best[1]:
                best = (params, low)
            if good:
                break
    params = best[0]
    if best[1] < N_STEPS:
        print(f"WARNING: no clip seed gave {N_STEPS} decisive steps; using seed {params['seed']}")

    # --- clip and mel ---
    clip = make_clip(**params)
    wave = torch.from_numpy(clip)[None, :]
    mel_b, mel_len = proc.audio(wave, torch.tensor([wave.shape[1]]))
    mel = mel_b[0].float().numpy()  # (n_mels, n_frames) -- what ChatState.add_audio stores
    n_valid = int(mel_len[0])
    mel_llama = llamacpp_style_mel(clip, n_mels=mel.shape[0])
    if mel_llama.shape == mel.shape:
        mel_diff = float(np.max(np.abs(mel_llama - mel)))
    else:
        mel_diff = None
    print(f"mel {mel.shape} valid {n_valid}; llama.cpp-style mel {mel_llama.shape} max|diff| {mel_diff}")

    chat = make_chat(wave)
    assert np.array_equal(chat.audio_in.numpy(), mel), "ChatState mel differs from processor mel"
    flags = chat.modality_flag[0].tolist()
    text_ids = chat.text[0].tolist()
    prompt_ids, it = [], iter(text_ids)
    for f in flags:
        prompt_ids.append(next(it) if f == LFMModality.TEXT else -1)
    n_audio = sum(1 for f in flags if f == LFMModality.AUDIO_IN)
    audio_pos = [i for i, f in enumerate(flags) if f == LFMModality.AUDIO_IN]
    assert audio_pos == list(range(audio_pos[0], audio_pos[0] + n_audio)), "audio positions not contiguous"

    with torch.no_grad():
        # --- prefill input; audio embeddings = its rows at the audio positions ---
        in_emb = prefill(chat)
        audio_emb = in_emb[0, audio_pos].float().numpy()
        toks, margins, step_logits = greedy(in_emb)

        # --- what liquid-audio itself yields ---
        la_out = []
        la_audio_frames = 0
        for t in model.generate_sequential(**chat, max_new_tokens=N_STEPS):
            if t.numel() == 1:
                la_out.append(int(t))
            else:
                la_audio_frames += 1

        # --- consistency: one full (uncached) forward over prompt + greedy tokens ---
        full = torch.cat([in_emb, model.lfm.embed_tokens(torch.tensor(toks[:-1]))[None]], 1)
        hid = model.lfm(inputs_embeds=full, use_cache=False).last_hidden_state[0, -N_STEPS:]
        full_logits = F.linear(hid, W).numpy()
        full_vs_cached = float(np.max(np.abs(full_logits - np.stack(step_logits))))

    step_logits = np.stack(step_logits).astype(np.float32)
    first_logits = step_logits[0]

    def first_index(v):
        return toks.index(v) if v in toks else None

    n_prefix = 0
    for a, b in zip(la_out, toks):
        if a != b:
            break
        n_prefix += 1
    assert n_prefix == len(la_out) or la_audio_frames > 0, (la_out, toks)

    vocab = int(config["lfm"]["vocab_size"])
    prompt_text_pieces = [tok.decode([i]) if i >= 0 else "<AUDIO>" for i in prompt_ids]

    meta = {
        "format": 1,
        "generator": "tools/reference/make_fixture.py",
        "versions": {
            "liquid-audio": md.version("liquid-audio"),
            "torch": torch.__version__,
            "torchaudio": md.version("torchaudio"),
            "transformers": md.version("transformers"),
            "accelerate": md.version("accelerate"),
            "librosa": md.version("librosa"),
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "checkpoint": {
            "maker": "tools/make_tiny_checkpoint.py:make_checkpoint",
            "seed": SEED,
            "sha256": digest["combined"],
            "files_sha256": digest["files"],
            "strict_load": strict_ok,
            "load_report": load,
            "vocab_size": vocab,
            "hidden_size": int(config["lfm"]["hidden_size"]),
            "preprocessor": config.get("preprocessor"),
        },
        "clip": {
            "function": "tools/test_clip.py:make_clip",
            "params": params,
            "seed_search": {"min_margin": MIN_MARGIN, "tried": tried},
            "n_samples": int(clip.shape[0]),
            "sha256_f32": hashlib.sha256(clip.tobytes()).hexdigest(),
        },
        "mel": {
            "shape": list(mel.shape),
            "valid_frames": n_valid,
            "note": "ChatState keeps all STFT frames (len//hop + 1); the last (and any pad_to padding) is 0",
            "llamacpp_style_numpy_max_abs_diff": mel_diff,
        },
        "prompt": {
            "system": SYSTEM_PROMPT,
            "ids": prompt_ids,
            "pieces": prompt_text_pieces,
            "n_audio": n_audio,
            "audio_start_index": audio_pos[0],
            "special_tokens_around_audio": False,
        },
        "audio_emb": {"shape": list(audio_emb.shape)},
        "greedy": {
            "n_steps": N_STEPS,
            "tokens": toks,
            "margins": margins,
            "n_distinct": len(set(toks)),
            "text": tok.decode(toks),
            "first_im_end": first_index(IM_END),
            "first_endoftext": first_index(ENDOFTEXT),
            "first_audio_start": first_index(AUDIO_START),
            "first_text_end": first_index(TEXT_END),
            "liquid_audio_generate_sequential": {
                "text_tokens": la_out,
                "audio_frames": la_audio_frames,
                "stops_after": len(la_out) if la_out and la_out[-1] == IM_END else None,
                "matches_raw_greedy_prefix": n_prefix,
            },
            "full_vs_cached_logits_max_abs_diff": full_vs_cached,
        },
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out_dir / "reference.npz",
        clip=clip,
        mel=mel.astype(np.float32),
        audio_emb=audio_emb.astype(np.float32),
        prompt_ids=np.asarray(prompt_ids, dtype=np.int32),
        first_logits=first_logits.astype(np.float32),
        greedy_tokens=np.asarray(toks, dtype=np.int32),
        greedy_margins=np.asarray(margins, dtype=np.float32),
        **({"step_logits": step_logits} if vocab <= 4096 else {}),
    )
    (out_dir / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=FIXTURE_DIR, help="output folder (default tests/fixtures)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="use this checkpoint dir instead of making one")
    ap.add_argument("--allow-nonstrict", action="store_true", help="write the fixture even if the load is not strict")
    a = ap.parse_args(argv)
    meta = build(a.out, a.checkpoint, a.allow_nonstrict)
    g = meta["greedy"]
    print("prompt ids:", meta["prompt"]["ids"][: meta["prompt"]["audio_start_index"] + 1], "...",
          meta["prompt"]["ids"][meta["prompt"]["audio_start_index"] + meta["prompt"]["n_audio"] - 1 :])
    print("n_audio:", meta["prompt"]["n_audio"], "audio_emb:", meta["audio_emb"]["shape"])
    print("greedy:", g["tokens"])
    print("margins: min %.4f median %.4f" % (min(g["margins"]), float(np.median(g["margins"]))))
    print("distinct:", g["n_distinct"], "liquid-audio yields:", g["liquid_audio_generate_sequential"])
    for p in ("reference.npz", "reference.json"):
        print(p, (a.out / p).stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
