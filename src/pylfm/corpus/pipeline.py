"""The Ray Data pipeline of a corpus job:

    locations --(CPU tasks: read + decode to 16 kHz mono)--> PCM
              --(actor pool: one pylfm.Model per actor, transcribe_batch)--> rows
              --(Ray Data writer)--> Parquet / JSON Lines files under --out

Each actor loads its model once and keeps it for the whole job; two calls may run in
an actor at once, so the model's scheduler always has the next batch's windows ready
when the slots of the previous batch's last windows free up.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow as pa

from ..audio.load import SAMPLE_RATE, load_audio
from . import output
from .inputs import is_url

log = logging.getLogger("pylfm.corpus")

DECODED = pa.schema([("path", pa.string()), ("pcm", pa.large_binary()), ("duration", pa.float64()),
                     ("error", pa.string())])


# ---------------------------------------------------------------------- CPU tasks
def decode_batch(batch: pa.Table, max_duration: Optional[float]) -> pa.Table:
    """Ray Data task: each location read and decoded to float32 mono PCM at 16 kHz.
    A file that cannot be read, is not audio or is too long gets ``error`` instead."""
    rows = []
    for path in batch.column("path").to_pylist():
        try:
            pcm = _decode(path, max_duration)
            rows.append({"path": path, "pcm": pcm.tobytes(), "duration": len(pcm) / SAMPLE_RATE, "error": None})
        except Exception as e:  # noqa: BLE001 - any failure of one file is that file's row
            rows.append({"path": path, "pcm": b"", "duration": None, "error": output.error_text(e)})
    return pa.Table.from_pylist(rows, schema=DECODED)


def _decode(path: str, max_duration: Optional[float]) -> np.ndarray:
    if is_url(path):
        import fsspec

        with fsspec.open(path, "rb") as f:
            source: Any = f.read()
    else:
        source = path
    # A file longer than max_duration is refused from its header, or as soon as decoding
    # passes the limit (AudioTooLongError), before it costs memory.
    return load_audio(source, target_rate=SAMPLE_RATE, max_duration=max_duration)


# ---------------------------------------------------------------------- actors
class Transcriber:
    """Ray Data actor: one `pylfm.Model` loaded in ``__init__`` and used for every batch."""

    def __init__(self, model: Optional[str], mmproj: Optional[str], device: str, n_threads: Optional[int],
                 batch_size: Optional[int], options: Dict[str, Any]) -> None:
        from ..model import Model

        self.model = Model(model, mmproj, device=device, n_threads=n_threads, batch_size=batch_size)
        self.options = options
        self.model_name = self.model.model_path.name
        log.info("actor loaded %s on %s", self.model_name, self.model.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths = batch.column("path").to_pylist()
        errors = batch.column("error").to_pylist()
        todo = [i for i, e in enumerate(errors) if e is None]
        pcms = [np.frombuffer(batch.column("pcm")[i].as_py(), dtype=np.float32) for i in todo]
        results = self.model.transcribe_batch(pcms, sample_rate=SAMPLE_RATE, **self.options) if pcms else []
        rows: List[Dict[str, Any]] = [output.error_row(p, e) for p, e in zip(paths, errors)]
        for i, result in zip(todo, results):
            rows[i] = output.result_row(paths[i], result, model=self.model_name, device=self.model.device)
        return output.to_table(rows)


# ---------------------------------------------------------------------- the job
def build_dataset(locations: List[str], *, model: Optional[str], mmproj: Optional[str], actors: int,
                  gpus_per_actor: float, cpus_per_actor: float, n_threads: Optional[int], device: str,
                  batch_size: Optional[int], files_per_call: int, max_duration: Optional[float],
                  options: Dict[str, Any]) -> Any:
    """The lazy Ray Dataset of output rows (nothing runs until it is written)."""
    import ray.data

    # Small read blocks so that decoding spreads over tasks and results stream out.
    blocks = max(1, min(len(locations), math.ceil(len(locations) / files_per_call)))
    ds = ray.data.from_items([{"path": p} for p in locations], override_num_blocks=blocks)
    # Decoding takes no reserved CPU: it is brief next to transcription, and the actors
    # reserve the CPUs their llama.cpp threads spin on.
    ds = ds.map_batches(decode_batch, batch_format="pyarrow", batch_size=files_per_call,
                        fn_kwargs={"max_duration": max_duration}, num_cpus=0,
                        compute=ray.data.TaskPoolStrategy(size=min(blocks, 2 * actors + 1)))
    return ds.map_batches(
        Transcriber, batch_format="pyarrow", batch_size=files_per_call,
        fn_constructor_kwargs=dict(model=model, mmproj=mmproj, device=device, n_threads=n_threads,
                                   batch_size=batch_size, options=options),
        compute=ray.data.ActorPoolStrategy(size=actors, max_concurrent_calls_per_actor=2,
                                           enable_true_multi_threading=True),
        num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None)


def write(ds: Any, out: str, fmt: str) -> None:
    """Runs the job. Writers reserve no CPU, so that each file is written as soon as
    its rows exist, even while the actors hold every CPU."""
    if fmt == "parquet":
        ds.write_parquet(out, ray_remote_args={"num_cpus": 0})
    else:
        ds.write_json(out, ray_remote_args={"num_cpus": 0}, force_ascii=False)
