"""Convert a liquid-audio LFM2-Audio checkpoint to the two GGUFs llama.cpp loads.

    from pylfm.files.convert import convert
    result = convert("LFM2.5-Audio-1.5B", outtype="q8_0")
    result.model_path   # LFM2.5-Audio-1.5B/LFM2.5-Audio-1.5B-Q8_0.gguf        (arch lfm2)
    result.mmproj_path  # LFM2.5-Audio-1.5B/mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf (projector lfm2a)
    result.vocoder_path, result.tokenizer_path  # speech output, when the checkpoint has it

Every tensor of the checkpoint is accounted for: written to the text model, written
to the mmproj (possibly folded into another tensor), written to the speech-output
GGUFs (``vocoder-*`` / ``tokenizer-*``, see files/convert/speech.py), or deliberately
skipped. A tensor the converter does not know is an error, as is a missing one or one
whose shape disagrees with config.json. ``plan()`` returns that accounting without
writing anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ...atomic import AtomicFile, check_writable_dir, commit_all
from ...errors import ConversionError
from .checkpoint import Checkpoint
from .mmproj import EncoderHParams, mmproj_writer, plan_mmproj, quantize_mmproj
from .speech import (DETOKENIZER_DIR, SpeechPlan, check_speech_outtype, has_speech, plan_speech, speech_paths,
                     tokenizer_writer, vocoder_writer)
from .text_model import TextHParams, plan_text, text_writer
from .writer import OUTTYPES, OutTensor, check_outtype, write_gguf

__all__ = ["OUTTYPES", "ConvertResult", "TensorDecision", "convert", "convert_speech", "output_paths", "plan",
           "quantize_mmproj"]

# Checkpoint tensors that deliberately do not go into either GGUF.
_AUDIO_OUT = "audio output (speech generation); not used for speech recognition"
SKIPPED: tuple[tuple[str, str], ...] = (
    (r"conformer\.layers\.\d+\.conv\.batch_norm\.num_batches_tracked",
     "batch-norm step counter; not needed once the batch norm is folded"),
    (r"audio_embedding\.(embedding_norm|to_logits)\.weight", _AUDIO_OUT),
    (r"depthformer\..+", _AUDIO_OUT),
    (r"depth_linear\..+", _AUDIO_OUT),
    (r"depth_embeddings\..+", _AUDIO_OUT),
    (r"codebook_offsets", _AUDIO_OUT),
    (r"audio_loss_weights", "training only (loss weights per codebook)"),
)


@dataclass(frozen=True)
class ConvertResult:
    model_path: Optional[Path]
    mmproj_path: Optional[Path]
    outtype: str
    name: str
    vocoder_path: Optional[Path] = None  # speech output: audio head (depthformer, embeddings)
    tokenizer_path: Optional[Path] = None  # speech output: the audio detokenizer (lfm2)


@dataclass(frozen=True)
class TensorDecision:
    """What the converter does with one checkpoint tensor."""

    source: str  # detokenizer tensors are named "audio_detokenizer/<name>"
    action: str  # "model", "mmproj", "vocoder", "tokenizer" or "skip"
    targets: tuple[str, ...]  # GGUF tensors it feeds (empty when skipped)
    reason: str


def _skip_reason(name: str) -> str | None:
    for pattern, reason in SKIPPED:
        if re.fullmatch(pattern, name):
            return reason
    return None


@dataclass
class _Plan:
    text_hp: TextHParams
    text: list[OutTensor]
    enc_hp: EncoderHParams
    mmproj: list[OutTensor]
    decisions: list[TensorDecision]
    speech: Optional[SpeechPlan] = None


def _speech_wanted(ckpt: Checkpoint, with_speech: Optional[bool]) -> bool:
    if with_speech is None:
        return has_speech(ckpt)
    if with_speech and not has_speech(ckpt):
        raise ConversionError(
            f"{ckpt.dir} has no speech-output parts (depthformer tensors and {DETOKENIZER_DIR}/ with config.json "
            "and model.safetensors); download the full LFM2.5-Audio checkpoint, or convert without speech "
            "output (--no-speech)")
    return with_speech


def _plan(ckpt: Checkpoint, outtype: str, with_speech: bool = False, speech_outtype: Optional[str] = None) -> _Plan:
    text_hp, text = plan_text(ckpt, outtype)
    enc_hp, mm = plan_mmproj(ckpt, outtype)
    speech = plan_speech(ckpt, speech_outtype or outtype) if with_speech else None
    used: dict[str, tuple[str, list[OutTensor]]] = {}
    outputs = [("model", text), ("mmproj", mm)] + ([("vocoder", speech.vocoder)] if speech else [])
    for action, tensors in outputs:
        for t in tensors:
            for src in t.sources:
                if not src.startswith(DETOKENIZER_DIR + "/"):
                    used.setdefault(src, (action, []))[1].append(t)
    decisions: list[TensorDecision] = []
    unexpected: list[str] = []
    for src in sorted(ckpt.tensors):
        if src in used:
            action, outs = used[src]
            targets = tuple(t.name for t in outs)
            folded = any(len(t.sources) > 1 for t in outs)
            reason = ("batch norm folded into " if folded else "written as ") + ", ".join(targets)
            decisions.append(TensorDecision(src, action, targets, reason))
        elif (reason := _skip_reason(src)) is not None:
            decisions.append(TensorDecision(src, "skip", (), reason))
        else:
            unexpected.append(src)
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ConversionError(
            f"unexpected tensor {unexpected[0]!r}{more} in {ckpt.dir}: it is not part of an LFM2-Audio "
            "model as liquid-audio lays it out, so pylfm cannot tell whether ASR needs it. Check that "
            "this is a LFM2-Audio checkpoint (liquid-audio 1.x); merge or remove adapter weights first")
    if speech is not None:
        for src, (action, targets, reason) in sorted(speech.detok_sources.items()):
            decisions.append(TensorDecision(f"{DETOKENIZER_DIR}/{src}", action, targets, reason))
    return _Plan(text_hp, text, enc_hp, mm, decisions, speech)


def plan(checkpoint_dir: str | Path, outtype: str = "f16", with_speech: Optional[bool] = None) -> list[TensorDecision]:
    """The per-tensor decisions a conversion would make (validates, writes nothing).
    ``with_speech`` as in `convert`."""
    ckpt = Checkpoint(checkpoint_dir)
    return _plan(ckpt, check_outtype(outtype), _speech_wanted(ckpt, with_speech)).decisions


def default_name(directory: Path) -> str:
    """The checkpoint directory's name; for a Hugging Face cache snapshot
    (models--Org--Name/snapshots/<hash>) the repository's name."""
    d = directory.resolve()
    if d.parent.name == "snapshots" and d.parent.parent.name.startswith("models--"):
        return d.parent.parent.name.split("--")[-1]
    return d.name


def output_paths(outdir: str | Path, name: str, outtype: str) -> tuple[Path, Path]:
    """(text model, mmproj) paths: ``<name>-<TYPE>.gguf`` and ``mmproj-<name>-<TYPE>.gguf``."""
    tag = check_outtype(outtype).upper()
    out = Path(outdir)
    return out / f"{name}-{tag}.gguf", out / f"mmproj-{name}-{tag}.gguf"


def _ensure_writable(outdir: Path) -> None:
    try:
        check_writable_dir(outdir)
    except OSError as e:
        raise ConversionError(f"cannot write to {outdir} ({e.strerror or e}); choose another output "
                              "directory (outdir=...)") from e


def _refuse_existing(paths: list[Path], force: bool) -> None:
    existing = [str(path) for path in paths if path.exists()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise ConversionError(f"{' and '.join(existing)} already {verb}; pass force=True "
                              "(CLI: --force) to overwrite, or choose another outdir or name")


def _write_all(jobs: list[tuple[Path, Callable[[], object], list[OutTensor]]], progress: bool) -> None:
    """Write every (path, writer factory, tensors) to temporary files, then move them all
    into place; on any failure the temporary files are removed and nothing is replaced."""
    outs = [AtomicFile(path) for path, _, _ in jobs]  # a read-only target fails before any work
    try:
        for out, (path, make_writer, tensors) in zip(outs, jobs):
            write_gguf(make_writer(), tensors, out, progress=progress, desc=path.name)
    except BaseException:
        for out in outs:
            out.discard()
        raise
    commit_all(outs)


def convert(checkpoint_dir: str | Path, outdir: str | Path | None = None, outtype: str = "f16",
            name: str | None = None, force: bool = False, progress: bool = True,
            with_speech: Optional[bool] = None, speech_outtype: Optional[str] = None) -> ConvertResult:
    """Convert a checkpoint directory to ``<name>-<TYPE>.gguf`` + ``mmproj-<name>-<TYPE>.gguf``,
    and for speech output ``vocoder-<name>-<TYPE>.gguf`` + ``tokenizer-<name>-<TYPE>.gguf``.

    ``outtype`` is one of f32, f16, bf16, q8_0 (norms, biases and convolution kernels
    stay F32 as llama.cpp needs). ``outdir`` defaults to the checkpoint directory and
    ``name`` to its name. ``with_speech``: None (default) writes the speech GGUFs when
    the checkpoint has the audio head and ``audio_detokenizer/``, True requires them,
    False leaves them out; ``speech_outtype`` (default: outtype; q4_0 allowed) is their
    type. Existing outputs are only replaced with ``force=True``. All files are written
    under temporary names and renamed into place only when all are complete. Raises
    ConversionError with what to do when the input is unusable.
    """
    outtype = check_outtype(outtype)
    speech_outtype = check_speech_outtype(speech_outtype or outtype)
    ckpt = Checkpoint(checkpoint_dir)
    planned = _plan(ckpt, outtype, _speech_wanted(ckpt, with_speech), speech_outtype)
    name = name or default_name(ckpt.dir)
    out = Path(outdir) if outdir is not None else ckpt.dir
    model_path, mmproj_path = output_paths(out, name, outtype)
    paths = [model_path, mmproj_path]
    vocoder_path = tokenizer_path = None
    if planned.speech is not None:
        vocoder_path, tokenizer_path = speech_paths(out, name, speech_outtype)
        paths += [vocoder_path, tokenizer_path]
    _refuse_existing(paths, force)
    _ensure_writable(out)
    model_writer = text_writer(ckpt, planned.text_hp, name, outtype)  # reads the tokenizer before writing
    jobs = [(model_path, lambda: model_writer, planned.text),
            (mmproj_path, lambda: mmproj_writer(planned.enc_hp, name, outtype), planned.mmproj)]
    if planned.speech is not None:
        sp = planned.speech
        jobs += [(vocoder_path, lambda: vocoder_writer(sp.vocoder_hp, name, speech_outtype), sp.vocoder),
                 (tokenizer_path, lambda: tokenizer_writer(sp.tokenizer_hp, name, speech_outtype), sp.tokenizer)]
    _write_all(jobs, progress)
    return ConvertResult(model_path, mmproj_path, outtype, name, vocoder_path, tokenizer_path)


def convert_speech(checkpoint_dir: str | Path, outdir: str | Path | None = None, outtype: str = "f16",
                   name: str | None = None, force: bool = False, progress: bool = True) -> ConvertResult:
    """Only the two speech-output GGUFs (``vocoder-*``, ``tokenizer-*``), e.g. to add speech
    to an earlier ASR conversion or to make another quantization (f32, f16, bf16, q8_0, q4_0)."""
    outtype = check_speech_outtype(outtype)
    ckpt = Checkpoint(checkpoint_dir)
    _speech_wanted(ckpt, True)
    sp = plan_speech(ckpt, outtype)
    name = name or default_name(ckpt.dir)
    out = Path(outdir) if outdir is not None else ckpt.dir
    vocoder_path, tokenizer_path = speech_paths(out, name, outtype)
    _refuse_existing([vocoder_path, tokenizer_path], force)
    _ensure_writable(out)
    _write_all([(vocoder_path, lambda: vocoder_writer(sp.vocoder_hp, name, outtype), sp.vocoder),
                (tokenizer_path, lambda: tokenizer_writer(sp.tokenizer_hp, name, outtype), sp.tokenizer)], progress)
    return ConvertResult(None, None, outtype, name, vocoder_path, tokenizer_path)
