"""Finding the two GGUF files a Model needs: local paths, env vars, or the Hugging Face hub.

Order: explicit arguments, then ``PYLFM_MODEL`` / ``PYLFM_MMPROJ``, then the default
repository on the hub (downloaded once into huggingface-hub's standard cache).
``model`` may be a ``.gguf`` path, a directory holding both GGUFs, or a hub repo id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

from .errors import ModelNotFoundError

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
        found_model, found_mmproj = pick_files([p.name for p in path.glob("*.gguf")], quant)
        model_path = path / found_model
        mmproj_path = Path(mmproj).expanduser() if mmproj is not None else path / found_mmproj
    elif path.suffix.lower() == ".gguf" or path.exists() or mmproj is not None:
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {path}. " + _HOW_TO_PASS_LOCAL)
        if mmproj is None:
            raise ModelNotFoundError(
                f"no mmproj given for {path.name}: LFM2-Audio needs the audio encoder GGUF too "
                "(mmproj=... or --mmproj, usually named mmproj-<name>-<TYPE>.gguf next to the model)")
        model_path, mmproj_path = path, Path(mmproj).expanduser()
    elif _looks_like_repo_id(str(model)):
        return _from_hub(str(model), quant)
    else:
        raise ModelNotFoundError(f"model not found: {model!r} is neither a file, a directory nor a hub repo id. "
                                 + _HOW_TO_PASS_LOCAL)
    if not mmproj_path.is_file():
        raise ModelNotFoundError(f"mmproj file not found: {mmproj_path}. " + _HOW_TO_PASS_LOCAL)
    return model_path, mmproj_path


def pick_files(names: Sequence[str], quant: str = DEFAULT_QUANT) -> Tuple[str, str]:
    """Chooses the text model and the audio mmproj among GGUF file names, preferring
    ``quant`` (then F16, then anything) for each; audio *decoder* files are ignored."""
    ggufs = sorted(n for n in names if n.lower().endswith(".gguf"))
    mmprojs = [n for n in ggufs if "mmproj" in Path(n).name.lower()]
    models = [n for n in ggufs if n not in mmprojs and "decoder" not in Path(n).name.lower()]
    if not models or not mmprojs:
        raise ModelNotFoundError(
            f"expected a text-model GGUF and an mmproj-*.gguf, found {list(ggufs) or 'no GGUF files'}. "
            + _HOW_TO_PASS_LOCAL)

    def prefer(candidates: list) -> str:
        for q in (quant, "F16", "BF16", "F32"):
            for n in candidates:
                if q.lower() in Path(n).name.lower():
                    return n
        return candidates[0]

    return prefer(models), prefer(mmprojs)


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
