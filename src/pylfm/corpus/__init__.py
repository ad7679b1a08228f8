"""Transcribe corpora (thousands to millions of recordings) with Ray Data, on one
machine or a cluster. Needs the extra: ``pip install "pylfm[ray]"``.

    from pylfm.corpus import transcribe_corpus
    summary = transcribe_corpus(["calls/"], "transcripts/", model="M.gguf", mmproj="mmproj-M.gguf")

Audio is read and decoded on CPU tasks, transcribed on a pool of actors that each load
one `pylfm.Model` once (one GPU per actor when the cluster has GPUs), and written by
Ray Data as Parquet or JSON Lines with one row per input (see `pylfm.corpus.output`).
A file that fails is a row with ``error`` set; the job goes on. ``resume=True`` skips
inputs the output already has, so a killed job continues where it stopped.

``import pylfm`` never imports ray; this package imports it only when a job runs.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, Optional

from .inputs import expand_inputs
from .output import FORMATS, read_existing

__all__ = ["transcribe_corpus", "CorpusSummary", "expand_inputs", "read_existing", "FORMATS"]

log = logging.getLogger("pylfm.corpus")

#: Files longer than this (seconds) become error rows unless the caller says otherwise.
DEFAULT_MAX_DURATION_S = 4 * 3600.0


@dataclass
class CorpusSummary:
    """What a corpus job did (the CLI prints it as JSON)."""

    out: str
    format: str
    inputs: int  # distinct input files named
    skipped: int  # already in the output (resume)
    written: int  # rows written by this run (errors included)
    errors: int  # of those, rows with an error
    seconds: float  # wall time of the Ray job (0 when there was nothing to do)
    files_per_second: float
    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    threads: Optional[int]
    device: str

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def transcribe_corpus(inputs: Iterable[str], out: str, *, model: Optional[str] = None,
                      mmproj: Optional[str] = None, fmt: Optional[str] = None, resume: bool = False,
                      actors: Optional[int] = None, gpus_per_actor: Optional[float] = None,
                      cpus_per_actor: Optional[float] = None, threads: Optional[int] = None,
                      device: Optional[str] = None, batch_size: Optional[int] = None, files_per_call: Optional[int] = None,
                      max_duration: Optional[float] = DEFAULT_MAX_DURATION_S, path_column: Optional[str] = None,
                      address: Optional[str] = None, num_cpus: Optional[int] = None, progress: bool = True,
                      **options: Any) -> CorpusSummary:
    """Transcribes every audio file named by ``inputs`` into ``out`` with Ray Data.

    Args:
        inputs: paths, globs, folders (searched recursively) and manifests (CSV, JSON
            Lines or Parquet with a ``path``/``audio`` column), local or fsspec URLs.
        out: the output folder (local path or URL, e.g. ``s3://bucket/transcripts``).
        model, mmproj: as for `pylfm.Model`; every actor must be able to load them
            (a path on a shared filesystem, or a hub repo id each worker downloads).
        fmt: "parquet" or "jsonl" (default: from ``out``'s suffix, else parquet).
        resume: skip inputs that already have a row in ``out``; without it, an ``out``
            that already holds results is an error (so nothing is transcribed twice).
        actors: model copies (default: one per GPU, or one per node without GPUs).
        gpus_per_actor: GPUs each actor reserves (default 1 when the cluster has GPUs).
        cpus_per_actor: CPUs each actor reserves (default 1 with GPUs, else all of a node's).
        threads: llama.cpp CPU threads per actor (default: ``cpus_per_actor``).
        device: the model's device (default "auto" with GPUs, else "cpu").
        batch_size: sequences each model decodes at once (`pylfm.Model`'s batch_size;
            default: its device's, 4 on the CPU, 32 on a GPU).
        files_per_call: files per actor call and per output file (default 4 x batch_size).
        max_duration: longer files are error rows (seconds; None for no limit).
        address: a Ray cluster to join ("auto", "ray://host:10001"); default:
            ``$RAY_ADDRESS``, else an already initialised Ray, else a new local cluster.
        num_cpus: CPUs of a new local cluster (default: all).
        progress: Ray Data's progress bars on stderr.
        **options: `pylfm.TranscribeOptions` fields (system, prompt, max_new_tokens, ...).

    Returns:
        A `CorpusSummary`.
    """
    from ..transcription.options import TranscribeOptions

    TranscribeOptions(**options)  # bad options fail here, not in every actor
    fmt = _format(out, fmt)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_duration is not None and not max_duration > 0:
        raise ValueError(f"max_duration must be > 0 seconds (or None for no limit), got {max_duration}")
    model, mmproj = _absolute(model), _absolute(mmproj)
    locations = expand_inputs(inputs, path_column=path_column)

    existing = read_existing(out, fmt, repair=resume)
    if existing.files and not resume:
        raise FileExistsError(f"{out} already holds {len(existing.paths)} results; pass --resume to add the "
                              "missing ones, or choose another --out")
    todo = [p for p in locations if p not in existing.paths]
    skipped = len(locations) - len(todo)
    if resume and existing.files:
        _note(progress, f"resume: {skipped} of {len(locations)} inputs are already in {out}"
              + (f" ({len(existing.set_aside)} cut-short file(s) set aside)" if existing.set_aside else ""))

    plan = dict(actors=actors or 1, gpus_per_actor=gpus_per_actor or 0.0, cpus_per_actor=cpus_per_actor or 1.0,
                threads=threads, device=device or "cpu")
    seconds = 0.0
    written = errors = 0
    if todo:
        import ray

        _init_ray(address, num_cpus, progress)
        plan = _plan(actors, gpus_per_actor, cpus_per_actor, threads, device)
        if files_per_call is None:  # the model's slots, 4 times over (its default: the device's)
            from ..engine.device import CPU_BATCH_SIZE, GPU_BATCH_SIZE

            files_per_call = 4 * (batch_size or (GPU_BATCH_SIZE if plan["gpus_per_actor"] else CPU_BATCH_SIZE))
        _note(progress, f"{len(todo)} files on {plan['actors']} actor(s) "
              f"({plan['gpus_per_actor']:g} GPU, {plan['cpus_per_actor']:g} CPU, {plan['threads']} threads each)")
        from . import pipeline

        ds = pipeline.build_dataset(
            todo, model=model, mmproj=mmproj, actors=plan["actors"], gpus_per_actor=plan["gpus_per_actor"],
            cpus_per_actor=plan["cpus_per_actor"], n_threads=plan["threads"], device=plan["device"],
            batch_size=batch_size, files_per_call=files_per_call, max_duration=max_duration, options=options)
        start = time.perf_counter()
        try:
            pipeline.write(ds, out, fmt)
        except ray.exceptions.RayError as e:
            raise RuntimeError(_job_failure(e)) from None
        seconds = time.perf_counter() - start
        after = read_existing(out, fmt)
        written = len(after.paths) - len(existing.paths)
        errors = after.errors - existing.errors
    return CorpusSummary(out=out, format=fmt, inputs=len(locations), skipped=skipped, written=written,
                         errors=errors, seconds=round(seconds, 3),
                         files_per_second=round(written / seconds, 3) if seconds else 0.0,
                         actors=plan["actors"], gpus_per_actor=plan["gpus_per_actor"],
                         cpus_per_actor=plan["cpus_per_actor"], threads=plan["threads"], device=plan["device"])


def _format(out: str, fmt: Optional[str]) -> str:
    if fmt is None:
        suffix = os.path.splitext(out.rstrip("/"))[1].lower()
        fmt = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}.get(suffix, "parquet")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def _absolute(path: Optional[str]) -> Optional[str]:
    """A model path that exists here is passed to the actors as an absolute path (the
    same on every node of a shared filesystem); anything else (a hub repo id) as is."""
    if path is None:
        return None
    path = os.fspath(path)
    return os.path.abspath(path) if os.path.exists(path) else path


def _init_ray(address: Optional[str], num_cpus: Optional[int], progress: bool) -> None:
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: Dict[str, Any] = dict(address=address, log_to_driver=progress,
                                      logging_level=logging.INFO if progress else logging.WARNING)
        if address is None:
            kwargs["num_cpus"] = num_cpus
            kwargs["include_dashboard"] = False
        ray.init(**kwargs)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = progress
    if not progress:
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def _plan(actors: Optional[int], gpus_per_actor: Optional[float], cpus_per_actor: Optional[float],
          threads: Optional[int], device: Optional[str]) -> Dict[str, Any]:
    """Actor count and per-actor resources from what the cluster has."""
    import ray

    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus else 0.0
    if gpus_per_actor and gpus_per_actor > gpus:
        raise ValueError(f"each actor asks for {gpus_per_actor:g} GPU(s) but the cluster has {gpus:g}; "
                         "lower --gpus-per-actor (0 runs on CPUs)")
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = min((n["Resources"].get("CPU", 0) for n in nodes), default=1) or 1
    if cpus_per_actor is None:
        cpus_per_actor = 1.0 if gpus_per_actor else float(node_cpus)
    if cpus_per_actor > node_cpus:
        raise ValueError(f"each actor asks for {cpus_per_actor:g} CPUs but the smallest node has {node_cpus:g}; "
                         "lower --cpus-per-actor")
    if actors is None:
        actors = int(gpus // gpus_per_actor) if gpus_per_actor else max(1, len(nodes))
    if actors < 1:
        raise ValueError(f"actors must be >= 1, got {actors}")
    return dict(actors=actors, gpus_per_actor=float(gpus_per_actor), cpus_per_actor=float(cpus_per_actor),
                threads=threads or max(1, math.floor(cpus_per_actor)),
                device=device or ("auto" if gpus_per_actor else "cpu"))


def _job_failure(e: BaseException) -> str:
    text = str(e)
    for line in text.splitlines()[::-1]:  # the root cause is the last exception line
        if "Error" in line and ":" in line:
            return f"the Ray job failed: {line.strip()}"
    return f"the Ray job failed: {text.splitlines()[0] if text else type(e).__name__}"


def _note(progress: bool, message: str) -> None:
    if progress:
        print(f"pylfm corpus: {message}", file=sys.stderr)
