"""Finding the two GGUF files a Model needs: local paths, env vars, or the Hugging Face hub.

Order: explicit arguments, then ``PYLFM_MODEL`` / ``PYLFM_MMPROJ``, then the default
repository on the hub (downloaded once into huggingface-hub's standard cache).
``model`` may be a ``.gguf`` path, a directory holding both GGUFs, or a hub repo id.

Which files, when a folder or a repository holds several (`pick_files`): the official
repositories hold four GGUFs per quantization, e.g. LiquidAI/LFM2.5-Audio-1.5B-GGUF has
``LFM2.5-Audio-1.5B-Q8_0.gguf`` (the text model), ``mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf``
(the audio encoder), and ``vocoder-…`` / ``tokenizer-…`` for speech output;
LiquidAI/LFM2-Audio-1.5B-GGUF names them ``mmproj-audioencoder-…`` and ``audiodecoder-…``.

1. Roles come from the name: ``mmproj…`` is an audio encoder; ``vocoder-``,
   ``tokenizer-``, ``audiodecoder-``, ``detokenizer-`` (and any ``…decoder…``) are
   speech-output files, never used for transcription; the rest are text models. In a
   local folder the GGUF headers decide between text model and mmproj as well, so files
   with other names work, and files of other architectures are left out.
2. The text model: the requested quantization (the last ``-`` part of the name:
   ``Q8_0``, ``Q4_K_M``, ``F16``, ...), else F16, BF16, Q8_0, F32, in that order. Two
   different models at the same rank are an error that lists them.
3. The mmproj: one of the same model (its name minus ``mmproj-`` and
   ``audioencoder-``), preferring the text model's quantization, then F16, BF16, Q8_0,
   F32; if no mmproj is named after the model and there is exactly one, that one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

from ..errors import ModelNotFoundError

DEFAULT_REPO = "LiquidAI/LFM2.5-Audio-1.5B-GGUF"
DEFAULT_QUANT = "Q8_0"

_HOW_TO_PASS_LOCAL = (
    "Pass local files instead: pylfm.Model(model='LFM2.5-Audio-1.5B-Q8_0.gguf', "
    "mmproj='mmproj-LFM2.5-Audio-1.5B-Q8_0.gguf') (CLI: --model/--mmproj), or set "
    "PYLFM_MODEL and PYLFM_MMPROJ; `pylfm convert CHECKPOINT_DIR` makes both from a checkpoint."
)


def resolve(model: Optional[str | os.PathLike] = None, mmproj: Optional[str | os.PathLike] = None,
            quant: str = DEFAULT_QUANT) -> Tuple[Path, Path]:
    """Returns (model_path, mmproj_path), downloading from the hub if needed."""
    model = model if model is not None else os.environ.get("PYLFM_MODEL") or None
    mmproj = mmproj if mmproj is not None else os.environ.get("PYLFM_MMPROJ") or None
    if model is None:
        if mmproj is not None:
            raise ModelNotFoundError("an mmproj was given without a model; pass model= too. " + _HOW_TO_PASS_LOCAL)
        return _from_hub(DEFAULT_REPO, quant)

    path = Path(model).expanduser()
    if path.is_dir():
        names = [p.name for p in path.glob("*.gguf")]
        found_model, found_mmproj = pick_files(names, quant, kinds=_local_kinds(path, names))
        model_path = path / found_model
        mmproj_path = Path(mmproj).expanduser() if mmproj is not None else path / found_mmproj
    elif path.suffix.lower() == ".gguf" or path.exists() or mmproj is not None:
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {path}. " + _HOW_TO_PASS_LOCAL)
        model_path = path
        mmproj_path = Path(mmproj).expanduser() if mmproj is not None else _mmproj_next_to(path, quant)
    elif _looks_like_repo_id(str(model)):
        return _from_hub(str(model), quant)
    else:
        raise ModelNotFoundError(f"model not found: {model!r} is neither a file, a directory nor a hub repo id. "
                                 + _HOW_TO_PASS_LOCAL)
    if not mmproj_path.is_file():
        raise ModelNotFoundError(f"mmproj file not found: {mmproj_path}. " + _HOW_TO_PASS_LOCAL)
    return model_path, mmproj_path


# ---------------------------------------------------------------------- choosing files
_FALLBACK_QUANTS = ("F16", "BF16", "Q8_0", "F32")
_SPEECH_OUTPUT_PREFIXES = ("vocoder", "tokenizer", "audiodecoder", "detokenizer")
_MMPROJ_PREFIX = re.compile(r"^mmproj(?:[-_.]audio[-_]?encoder)?[-_.]?", re.IGNORECASE)
_QUANT = re.compile(r"^(?:[BF]F?(?:16|32|64)|I?Q\d\w*|TQ\d\w*|MXFP4\w*)$", re.IGNORECASE)


def role(name: str, kind: Optional[str] = None) -> str:
    """The role of a GGUF file by its name: "model", "mmproj" or "speech" (speech
    output). ``kind``, what the file's header says ("model", "mmproj", "other"),
    overrides the name except for speech-output files."""
    base = Path(name).name.lower()
    if base.split("-", 1)[0] in _SPEECH_OUTPUT_PREFIXES or "decoder" in base:
        return "speech"
    if kind is not None:
        return kind
    return "mmproj" if base.startswith("mmproj") else "model"


def split_quant(name: str) -> Tuple[str, Optional[str]]:
    """(model name, quantization) of a GGUF file name: "LFM2.5-Audio-1.5B-Q8_0.gguf" ->
    ("lfm2.5-audio-1.5b", "Q8_0"); mmproj names lose their "mmproj-[audioencoder-]"
    prefix, so a model and its mmproj have the same model name."""
    stem = Path(name).name
    if stem.lower().endswith(".gguf"):
        stem = stem[:-5]
    stem = _MMPROJ_PREFIX.sub("", stem) if stem.lower().startswith("mmproj") else stem
    head, sep, tail = stem.rpartition("-")
    if sep and head and _QUANT.match(tail):
        return head.lower(), tail.upper()
    return stem.lower(), None


def pick_files(names: Sequence[str], quant: str = DEFAULT_QUANT,
               kinds: Optional[Dict[str, Optional[str]]] = None) -> Tuple[str, str]:
    """Chooses the text model and the audio mmproj among GGUF file names (see the module
    docstring for the rules). ``kinds`` maps names to what their headers say they are
    ("model", "mmproj", "other"; None when unreadable)."""
    ggufs = sorted({n for n in names if n.lower().endswith(".gguf")})
    kinds = kinds or {}
    roles = {n: role(n, kinds.get(n)) for n in ggufs}
    models = [n for n in ggufs if roles[n] == "model"]
    mmprojs = [n for n in ggufs if roles[n] == "mmproj"]
    if not models or not mmprojs:
        raise ModelNotFoundError(
            f"expected a text-model GGUF and an mmproj-*.gguf, found {ggufs or 'no GGUF files'}. "
            + _HOW_TO_PASS_LOCAL)
    model = _best(models, [quant, *_FALLBACK_QUANTS], "text models")
    return model, _pick_mmproj(model, mmprojs, quant)


def _pick_mmproj(model: str, mmprojs: Sequence[str], quant: str) -> str:
    base, model_quant = split_quant(model)
    same = [n for n in mmprojs if split_quant(n)[0] == base]
    if not same and len(mmprojs) == 1:
        return mmprojs[0]
    order = [q for q in (model_quant, quant, *_FALLBACK_QUANTS) if q]
    return _best(same or list(mmprojs), order, f"mmproj files for {model}")


def _best(candidates: Sequence[str], order: Sequence[str], what: str) -> str:
    """The candidate whose quantization comes first in ``order`` (any quantization after
    those); more than one different model at that rank is an error."""
    if len(candidates) == 1:
        return candidates[0]
    ranks = [q.upper() for q in order]

    def rank(n: str) -> int:
        q = split_quant(n)[1]
        return ranks.index(q) if q in ranks else len(ranks)

    best = min(rank(n) for n in candidates)
    tied = [n for n in candidates if rank(n) == best]
    if len(tied) > 1:
        raise ModelNotFoundError(
            f"cannot tell which to use: several {what} fit equally well: {', '.join(tied)}. Pass the files "
            "themselves (model=..., mmproj=...; CLI: --model/--mmproj).")
    return tied[0]


def _local_kinds(folder: Path, names: Sequence[str]) -> Dict[str, Optional[str]]:
    """What each GGUF's header says it is: an LFM2 text model, an audio mmproj, or other."""
    from ..errors import ModelLoadError
    from .inspect import check_gguf

    kinds: Dict[str, Optional[str]] = {}
    for name in names:
        try:
            info = check_gguf(folder / name)
        except ModelLoadError:
            kinds[name] = None  # unreadable: its name decides, and loading it will say what is wrong
            continue
        if info["kind"] == "mmproj":
            kinds[name] = "mmproj" if info["has_audio"] else "other"
        else:
            kinds[name] = "model" if info["arch"] == "lfm2" else "other"
    return kinds


def _mmproj_next_to(model_path: Path, quant: str) -> Path:
    folder = model_path.parent
    names = [p.name for p in folder.glob("*.gguf") if p.name != model_path.name]
    kinds = _local_kinds(folder, names)
    mmprojs = [n for n in sorted(names) if role(n, kinds.get(n)) == "mmproj"]
    if not mmprojs:
        raise ModelNotFoundError(
            f"no mmproj given for {model_path.name} and none next to it: LFM2-Audio needs the audio encoder "
            "GGUF too (mmproj=... or --mmproj, usually named mmproj-<name>-<TYPE>.gguf)")
    return folder / _pick_mmproj(model_path.name, mmprojs, quant)


def _looks_like_repo_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def _from_hub(repo_id: str, quant: str) -> Tuple[Path, Path]:
    try:
        from huggingface_hub import hf_hub_download, list_repo_files
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise ModelNotFoundError("huggingface-hub is not installed. " + _HOW_TO_PASS_LOCAL) from e
    cached = _cached_files(repo_id, quant)  # an earlier download needs no network
    if cached is not None:
        return cached
    try:
        _check_reachable()
        names = list_repo_files(repo_id)
    except Exception as online_error:  # offline, unreachable, unknown repo, auth
        raise ModelNotFoundError(
            f"could not fetch {repo_id} from the Hugging Face hub ({type(online_error).__name__}: "
            f"{str(online_error).splitlines()[0] if str(online_error) else 'no details'}) and it is not in the "
            f"local cache. " + _HOW_TO_PASS_LOCAL) from online_error
    model_name, mmproj_name = pick_files(names, quant)
    return Path(hf_hub_download(repo_id, model_name)), Path(hf_hub_download(repo_id, mmproj_name))


def _check_reachable(timeout: float = 5.0) -> None:
    """Fails in seconds when the hub cannot be reached, instead of huggingface-hub's
    retries with back-off (about half a minute of noise before the same error)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ConnectionError("HF_HUB_OFFLINE is set")
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"cannot reach {url.hostname}:{port}: {e.strerror or e}") from None


def _cached_files(repo_id: str, quant: str) -> Optional[Tuple[Path, Path]]:
    """The files of an earlier download, when the hub cannot be reached."""
    try:
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.gguf"], local_files_only=True))
        model_name, mmproj_name = pick_files([p.name for p in folder.glob("*.gguf")], quant)
        return folder / model_name, folder / mmproj_name
    except Exception:
        return None


# ---------------------------------------------------------------------- speech output
_QUANT_TAGS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K_M", "Q4_K_S", "Q5_K_M", "Q6_K", "F16", "BF16", "F32")


def _quant_tag(name: str) -> Optional[str]:
    upper = Path(name).stem.upper()
    for tag in sorted(_QUANT_TAGS, key=len, reverse=True):
        if upper.endswith("-" + tag) or upper.endswith("_" + tag) or upper.endswith("." + tag):
            return tag
    return None


def _pick_speech(names: Sequence[str], prefix: str, quant: Optional[str]) -> Optional[str]:
    found = sorted(n for n in names if Path(n).name.lower().startswith(prefix) and n.lower().endswith(".gguf"))
    for q in (quant, "F16", "BF16", "F32"):
        for n in found:
            if q and _quant_tag(n) == q:
                return n
    return found[0] if found else None


def speech_files(model_path: Union[str, os.PathLike], vocoder: Optional[Union[str, os.PathLike]] = None,
                 detokenizer: Optional[Union[str, os.PathLike]] = None) -> Tuple[Path, Path]:
    """The two speech-output GGUFs for a text model: ``vocoder-*.gguf`` (audio head) and
    ``tokenizer-*.gguf`` (audio detokenizer).

    Order: explicit arguments, ``$PYLFM_VOCODER`` / ``$PYLFM_DETOKENIZER``, files next to
    the model (the model's quantization preferred, then F16, BF16, F32, then any), then,
    for a model downloaded from the hub, the same repository.
    """
    model_path = Path(model_path)
    vocoder = vocoder if vocoder is not None else os.environ.get("PYLFM_VOCODER") or None
    detokenizer = detokenizer if detokenizer is not None else os.environ.get("PYLFM_DETOKENIZER") or None
    quant = _quant_tag(model_path.name)
    names = [p.name for p in model_path.parent.glob("*.gguf")] if model_path.parent.is_dir() else []
    voc = Path(vocoder).expanduser() if vocoder is not None else None
    det = Path(detokenizer).expanduser() if detokenizer is not None else None
    if voc is None and (n := _pick_speech(names, "vocoder", quant)):
        voc = model_path.parent / n
    if det is None and (n := _pick_speech(names, "tokenizer", quant)):
        det = model_path.parent / n
    if (voc is None or det is None) and _hub_repo_of(model_path):
        voc, det = _speech_from_hub(_hub_repo_of(model_path), quant, voc, det)  # type: ignore[arg-type]
    for path, what, prefix in ((voc, "vocoder", "vocoder"), (det, "detokenizer", "tokenizer")):
        if path is None:
            raise ModelNotFoundError(
                f"no speech-output GGUFs for {model_path.name}: expected {prefix}-*.gguf next to it in "
                f"{model_path.parent}. LiquidAI/LFM2.5-Audio-1.5B-GGUF ships vocoder-*.gguf and tokenizer-*.gguf; "
                "`pylfm convert --with-speech CHECKPOINT_DIR` writes them; or pass them: "
                "model.load_speech(vocoder=..., detokenizer=...) (CLI: --vocoder/--detokenizer), or set "
                "PYLFM_VOCODER and PYLFM_DETOKENIZER")
        if not path.is_file():
            raise ModelNotFoundError(f"{what} file not found: {path}")
    return voc, det  # type: ignore[return-value]


def _hub_repo_of(path: Path) -> Optional[str]:
    """``Org/Name`` for a file in huggingface-hub's cache (models--Org--Name/snapshots/<rev>/)."""
    parts = path.absolute().parts  # not resolved: cache snapshots are symlinks into blobs/
    for i in range(len(parts) - 2):
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots":
            return "/".join(parts[i][len("models--"):].split("--", 1))
    return None


def _speech_from_hub(repo_id: str, quant: Optional[str], voc: Optional[Path],
                     det: Optional[Path]) -> Tuple[Optional[Path], Optional[Path]]:
    try:
        from huggingface_hub import hf_hub_download, list_repo_files

        _check_reachable()
        names = list_repo_files(repo_id)
    except Exception as e:  # offline, unreachable: say so below
        raise ModelNotFoundError(
            f"the speech-output GGUFs are not in the local copy of {repo_id} and the hub cannot be reached "
            f"({type(e).__name__}); download vocoder-*.gguf and tokenizer-*.gguf from {repo_id} and pass them "
            "with model.load_speech(vocoder=..., detokenizer=...)") from e
    if voc is None and (n := _pick_speech(names, "vocoder", quant)):
        voc = Path(hf_hub_download(repo_id, n))
    if det is None and (n := _pick_speech(names, "tokenizer", quant)):
        det = Path(hf_hub_download(repo_id, n))
    return voc, det
