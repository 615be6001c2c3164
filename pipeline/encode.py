"""aepipe encode: stream DATA through the encoder on an actor pool, write codes in parallel.

    read (one task per row range) -> map_batches(Encoder) on C actors -> ZarrSink | ParquetSink
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import torch

import pipeline
from pipeline import AepipeError, remote
from pipeline.actors import ModelActor, model_job
from pipeline.sources import open_for_run
from pipeline.checks import at_least, output_path, positive
from pipeline.run import load_run
from pipeline.runtime import run_interruptibly, user_errors
from pipeline.store import DTYPES, chunk_rows_for, id_dtype, quantize, task_rows


class Encoder(ModelActor):
    """Holds the model on one actor; each call encodes one batch (Ray's batch-inference pattern)."""

    def __init__(self, run_dir: str, dtype: str, scores: bool, num_gpus: float = 0):
        super().__init__(run_dir, num_gpus)
        self.dtype, self.scores = dtype, scores
        self.lo, self.hi = self.run.code_range()

    def __call__(self, batch: dict) -> dict:
        x = torch.from_numpy(self.run.normalizer.apply(batch["x"])).to(self.device)
        with torch.inference_mode():
            z = self.model.encode(x)
            out = {"row": batch["row"], "id": batch["id"],
                   "code": quantize(z.cpu().numpy(), self.dtype, self.lo, self.hi)}
            if self.scores:  # mean squared reconstruction error per row, in the model's units
                err = (self.model.decode(z) - x).pow(2).flatten(1).mean(1)
                out["score"] = err.cpu().numpy()
        return out


def provenance(run, data: str, **extra) -> dict:
    return {"aepipe_version": pipeline.__version__, "model": run.path if remote.is_uri(run.path) else str(Path(run.path).resolve()),
            "model_fingerprint": run.fingerprint, "family": run.meta["family"], "source": data,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **extra}


def check_job_options(batch_size: int, concurrency: int, num_gpus: float) -> None:
    """What every model job (encode, decode, ...) takes, checked before Ray starts."""
    positive("batch_size", batch_size)
    positive("concurrency", concurrency)
    at_least("gpus", num_gpus, 0)


def write(ds, sink) -> None:
    """Run the job into `sink`: Ray errors back as user errors, Ctrl-C removes the partial store."""
    with user_errors():
        run_interruptibly(ds.write_datasink, sink, partial=[sink.tmp])


def encode(data: str, model: str, out: str | Path, dtype: str = "float32", scores: bool = False,
           batch_size: int = 1024, concurrency: int = 1, num_gpus: float = 0, id_column: str | None = None,
           chunk_rows: int | None = None, overwrite: bool = False, address: str | None = None,
           read: dict | None = None) -> dict:
    """Write one code per input row, keyed by id, to OUT (.zarr or .parquet). Returns provenance."""
    if dtype not in DTYPES:
        raise AepipeError(f'unknown --dtype "{dtype}"; choose one of {", ".join(DTYPES)}')
    check_job_options(batch_size, concurrency, num_gpus)
    positive("chunk_rows", chunk_rows)
    run = load_run(model)
    src = open_for_run(data, run.meta, id_column, **(read or {}))
    out = output_path(out, overwrite, (".zarr", ".parquet"), inputs=(data, model))
    src.schema.check_matches(run.schema, data)
    src.schema = run.schema  # columns are read by name, in the order the model was trained on
    d = run.code_dim
    lo, hi = run.code_range()
    attrs = provenance(run, data, n_rows=src.n_rows, code_dim=d, dtype=dtype, scores=scores, notes=src.notes(),
                       ids=getattr(src, "id_column", None) or getattr(src, "id_kind", "row index"),
                       quantization={"lo": lo.tolist(), "hi": hi.tolist()} if dtype == "int8" else None)
    chunk_rows = chunk_rows or chunk_rows_for(d * np.dtype(dtype).itemsize)
    ids_kind = id_dtype(src)
    # everything above is checked without Ray: a mistake costs a second, not a start-up
    ds = model_job(src, Encoder, dict(run_dir=str(run.path), dtype=dtype, scores=scores, num_gpus=num_gpus),
                   batch_size, concurrency, num_gpus, engine="ray", address=address,
                   rows_per_task=task_rows(chunk_rows, 4 * src.schema.size))
    from pipeline.sinks import ParquetSink, ZarrSink

    if out.suffix == ".zarr":
        arrays = {"codes": ("code", (d,), dtype), "ids": ("id", (), ids_kind)}
        if scores:
            arrays["scores"] = ("score", (), "float32")
        sink = ZarrSink(out, src.n_rows, arrays, attrs, chunk_rows)
    else:
        cols = {"id": ("id", "scalar"), "code": ("code", "list")}
        if scores:
            cols["score"] = ("score", "scalar")
        sink = ParquetSink(out, src.n_rows, cols, attrs)
    write(ds, sink)
    if sink.skipped:  # --on-bad-row skip: the store holds fewer rows, and lists the others
        attrs.update(n_rows=src.n_rows - len(sink.skipped), skipped=sink.skipped)
    return attrs
