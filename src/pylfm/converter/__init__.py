"""Convert a liquid-audio LFM2-Audio checkpoint to the two GGUFs llama.cpp loads.

    from pylfm.converter import convert
    result = convert("LFM2.5-Audio-1.5B", outtype="q8_0")
    result.model_path   # LFM2.5-Audio-1.5B/LFM2.5-Audio-1.5B-Q8_0.gguf        (arch lfm2)
    result.mmproj_path  # LFM2.5-Audio-1.5B/mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf (projector lfm2a)

Every tensor of the checkpoint is accounted for: written to the text model, written
to the mmproj (possibly folded into another tensor), or deliberately skipped (the
audio-output parts, which ASR does not use). A tensor the converter does not know
is an error, as is a missing one or one whose shape disagrees with config.json.
``plan()`` returns that accounting without writing anything.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConversionError
from .checkpoint import Checkpoint
from .mmproj import EncoderHParams, mmproj_writer, plan_mmproj, quantize_mmproj
from .text_model import TextHParams, plan_text, text_writer
from .writer import OUTTYPES, OutTensor, check_outtype, write_gguf

__all__ = ["OUTTYPES", "ConvertResult", "TensorDecision", "convert", "output_paths", "plan", "quantize_mmproj"]

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
    model_path: Path
    mmproj_path: Path
    outtype: str
    name: str


@dataclass(frozen=True)
class TensorDecision:
    """What the converter does with one checkpoint tensor."""

    source: str
    action: str  # "model", "mmproj" or "skip"
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


def _plan(ckpt: Checkpoint, outtype: str) -> _Plan:
    text_hp, text = plan_text(ckpt, outtype)
    enc_hp, mm = plan_mmproj(ckpt, outtype)
    used: dict[str, tuple[str, list[OutTensor]]] = {}
    for action, tensors in (("model", text), ("mmproj", mm)):
        for t in tensors:
            for src in t.sources:
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
    return _Plan(text_hp, text, enc_hp, mm, decisions)


def plan(checkpoint_dir: str | Path, outtype: str = "f16") -> list[TensorDecision]:
    """The per-tensor decisions a conversion would make (validates, writes nothing)."""
    return _plan(Checkpoint(checkpoint_dir), check_outtype(outtype)).decisions


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
        outdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=outdir):
            pass
    except OSError as e:
        raise ConversionError(f"cannot write to {outdir} ({e.strerror or e}); choose another output "
                              "directory (outdir=...)") from e


def convert(checkpoint_dir: str | Path, outdir: str | Path | None = None, outtype: str = "f16",
            name: str | None = None, force: bool = False, progress: bool = True) -> ConvertResult:
    """Convert a checkpoint directory to ``<name>-<TYPE>.gguf`` + ``mmproj-<name>-<TYPE>.gguf``.

    ``outtype`` is one of f32, f16, bf16, q8_0 (norms, biases and convolution kernels
    stay F32 as llama.cpp needs). ``outdir`` defaults to the checkpoint directory and
    ``name`` to its name. Existing outputs are only replaced with ``force=True``. Both
    files are written under temporary names and renamed into place only when both are
    complete. Raises ConversionError with what to do when the input is unusable.
    """
    outtype = check_outtype(outtype)
    ckpt = Checkpoint(checkpoint_dir)
    planned = _plan(ckpt, outtype)
    name = name or default_name(ckpt.dir)
    out = Path(outdir) if outdir is not None else ckpt.dir
    model_path, mmproj_path = output_paths(out, name, outtype)
    existing = [str(path) for path in (model_path, mmproj_path) if path.exists()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise ConversionError(f"{' and '.join(existing)} already {verb}; pass force=True "
                              "(CLI: --force) to overwrite, or choose another outdir or name")
    _ensure_writable(out)
    model_writer = text_writer(ckpt, planned.text_hp, name, outtype)  # reads the tokenizer before writing
    tmp_model = write_gguf(model_writer, planned.text, model_path, progress=progress, desc=model_path.name)
    try:
        tmp_mmproj = write_gguf(mmproj_writer(planned.enc_hp, name, outtype), planned.mmproj, mmproj_path,
                                progress=progress, desc=mmproj_path.name)
    except BaseException:
        tmp_model.unlink(missing_ok=True)
        raise
    os.replace(tmp_model, model_path)
    os.replace(tmp_mmproj, mmproj_path)
    return ConvertResult(model_path, mmproj_path, outtype, name)
