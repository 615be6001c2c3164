"""aepipe encode: stream DATA through the encoder on an actor pool, write codes in parallel.

    read (one task per row range) -> map_batches(Encoder) on C actors -> ZarrSink | ParquetSink
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import torch

import pipeline
from pipeline import AepipeError
from pipeline.actors import ModelActor, actor_pool
from pipeline.data import open_source, to_dataset
from pipeline.run import load_run
from pipeline.runtime import user_errors
from pipeline.store import DTYPES, ParquetSink, ZarrSink, chunk_rows_for, id_dtype, quantize, task_rows


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
    return {"aepipe_version": pipeline.__version__, "model": str(Path(run.path).resolve()),
            "model_fingerprint": run.fingerprint, "family": run.meta["family"], "source": data,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **extra}


def check_out(out: Path, overwrite: bool, suffixes=(".zarr", ".parquet")) -> None:
    if out.suffix not in suffixes:
        raise AepipeError(f'{out}: choose an output ending in {" or ".join(suffixes)}')
    if out.exists() and not overwrite:
        raise AepipeError(f"{out} already exists; pass --overwrite to replace it")


def encode(data: str, model: str, out: str | Path, dtype: str = "float32", scores: bool = False,
           batch_size: int = 1024, concurrency: int = 1, num_gpus: float = 0, id_column: str | None = None,
           chunk_rows: int | None = None, overwrite: bool = False) -> dict:
    """Write one code per input row, keyed by id, to OUT (.zarr or .parquet). Returns provenance."""
    if dtype not in DTYPES:
        raise AepipeError(f'unknown --dtype "{dtype}"; choose one of {", ".join(DTYPES)}')
    out = Path(out)
    check_out(out, overwrite)
    run = load_run(model)
    src = open_source(data, id_column or run.meta.get("id_column"))
    src.schema.check_matches(run.schema, data)
    src.schema = run.schema  # columns are read by name, in the order the model was trained on
    d = run.code_dim
    lo, hi = run.code_range()
    attrs = provenance(run, data, n_rows=src.n_rows, code_dim=d, dtype=dtype, scores=scores,
                       ids=getattr(src, "id_column", None) or "row index",
                       quantization={"lo": lo.tolist(), "hi": hi.tolist()} if dtype == "int8" else None)
    chunk_rows = chunk_rows or chunk_rows_for(d * np.dtype(dtype).itemsize)
    ds = to_dataset(src, rows_per_task=task_rows(chunk_rows, 4 * src.schema.size))
    ds = ds.map_batches(Encoder, fn_constructor_kwargs=dict(run_dir=str(run.path), dtype=dtype, scores=scores,
                                                            num_gpus=num_gpus),
                        batch_size=batch_size, batch_format="numpy", **actor_pool(concurrency, num_gpus))
    if out.suffix == ".zarr":
        arrays = {"codes": ("code", (d,), dtype), "ids": ("id", (), id_dtype(src))}
        if scores:
            arrays["scores"] = ("score", (), "float32")
        sink = ZarrSink(out, src.n_rows, arrays, attrs, chunk_rows)
    else:
        cols = {"id": ("id", "scalar"), "code": ("code", "list")}
        if scores:
            cols["score"] = ("score", "scalar")
        sink = ParquetSink(out, src.n_rows, cols, attrs)
    with user_errors():
        ds.write_datasink(sink)
    return attrs
