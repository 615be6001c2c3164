"""aepipe decode: codes back to data through the decoder, on an actor pool, to Zarr/Parquet/.npy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline import AepipeError
from pipeline.checks import output_path, positive
from pipeline.data import Source, to_dataset
from pipeline.encode import ModelActor, actor_pool, check_job_options, provenance, write
from pipeline.run import load_run
from pipeline.runtime import init_ray, run_interruptibly, user_errors
from pipeline.store import chunk_rows_for, dequantize, id_dtype, open_codes, quant_range


SAMPLE_MAX_BYTES = 2 ** 30  # sample draws in memory on the driver: keep one call under 1 GiB


class Decoder(ModelActor):
    def __init__(self, run_dir: str, dtype: str, lo, hi, num_gpus: float = 0):
        super().__init__(run_dir, num_gpus)
        self.dtype, self.lo, self.hi = dtype, lo, hi

    def __call__(self, batch: dict) -> dict:
        z = torch.from_numpy(dequantize(batch["x"], self.dtype, self.lo, self.hi)).to(self.device)
        with torch.inference_mode():
            x_hat = self.model.decode(z).cpu().numpy()
        return {"row": batch["row"], "id": batch["id"], "x": self.run.normalizer.invert(x_hat)}


class Selection(Source):
    """Rows `positions` of another source, renumbered 0..k-1 (the output's own positions)."""

    def __init__(self, src: Source, positions: np.ndarray):
        self.src, self.positions = src, positions
        self.spec, self.schema, self.n_rows = src.spec, src.schema, len(positions)

    def _read(self, start, stop):
        p = self.positions[start:stop]
        ids, x = [None] * len(p), np.empty((len(p), *self.schema.shape), np.float32)
        order = np.argsort(p, kind="stable")
        sp = p[order]
        cuts = np.flatnonzero(np.diff(sp) > 1024) + 1  # read nearby rows together, far ones apart
        for run in np.split(np.arange(len(sp)), cuts):
            lo, hi = int(sp[run[0]]), int(sp[run[-1]]) + 1
            run_ids, run_x = self.src.read(lo, hi)
            for i in run:
                ids[order[i]], x[order[i]] = run_ids[sp[i] - lo], run_x[sp[i] - lo]
        return np.asarray(ids), x


def select(src: Source, rows: str | None, ids: list[str] | None) -> Source:
    if rows:
        parts = rows.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            a, b = (int(v) if v else d for v, d in zip(parts, (0, src.n_rows)))
        except ValueError:
            raise AepipeError(f'--rows "{rows}": expected A:B, e.g. 0:100') from None
        if not 0 <= a < b <= src.n_rows:
            raise AepipeError(f"--rows {rows}: the store has rows 0:{src.n_rows}")
        return Selection(src, np.arange(a, b))
    if ids:
        all_ids = np.concatenate([src.read(a, b)[0] for a, b in src.ranges()]).astype(str)
        where = {v: i for i, v in enumerate(all_ids)}
        missing = [i for i in ids if i not in where]
        if missing:
            raise AepipeError(f'--ids: no row with id "{missing[0]}" in the store')
        return Selection(src, np.array([where[i] for i in ids]))
    return src


def decode(codes: str, model: str, out: str | Path, rows: str | None = None, ids: list[str] | None = None,
           batch_size: int = 1024, concurrency: int = 1, num_gpus: float = 0, overwrite: bool = False,
           address: str | None = None) -> int:
    """Reconstruct rows from a codes store into OUT (.zarr, .parquet or .npy). Returns rows written."""
    check_job_options(batch_size, concurrency, num_gpus)
    run = load_run(model)
    src, attrs = open_codes(codes)
    out = output_path(out, overwrite, (".zarr", ".parquet", ".npy"), inputs=(codes, model))
    if attrs["model_fingerprint"] != run.fingerprint:
        raise AepipeError(f"{codes} was encoded by model {attrs['model_fingerprint']} ({attrs.get('model')}), "
                          f"not by {model} ({run.fingerprint})")
    src = select(src, rows, ids)
    lo, hi = quant_range(attrs)
    ids_kind = id_dtype(src)
    init_ray(address)
    ds = to_dataset(src).map_batches(
        Decoder, fn_constructor_kwargs=dict(run_dir=str(run.path), dtype=attrs["dtype"], lo=lo, hi=hi,
                                            num_gpus=num_gpus),
        batch_size=batch_size, batch_format="numpy", **actor_pool(concurrency, num_gpus))
    from pipeline.sinks import ParquetSink, ZarrSink

    shape = run.schema.shape
    meta = provenance(run, str(codes), n_rows=src.n_rows, shape=list(shape))
    if out.suffix == ".npy":
        with user_errors():
            run_interruptibly(_write_npy, ds, out, src.n_rows, shape, partial=[out.with_name(out.name + ".partial")])
    elif out.suffix == ".zarr":
        arrays = {"data": ("x", shape, "float32"), "ids": ("id", (), ids_kind)}
        write(ds, ZarrSink(out, src.n_rows, arrays, meta, chunk_rows_for(4 * int(np.prod(shape)))))
    else:
        data_cols = run.schema.columns if run.schema.tabular else "list"
        name = "x" if run.schema.tabular else run.schema.columns[0]
        write(ds, ParquetSink(out, src.n_rows, {"id": ("id", "scalar"), name: ("x", data_cols)}, meta))
    return src.n_rows


def _write_npy(ds, out: Path, n: int, shape) -> None:
    """.npy is one file on the driver's disk: stream batches into a memory map, rename when full."""
    tmp = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)  # as the Zarr and Parquet writers do
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, *shape))
    seen = 0
    try:
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            arr[batch["row"]] = batch["x"]
            seen += len(batch["row"])
        arr.flush()
        if seen != n:
            raise AepipeError(f"{out}: wrote {seen} rows, expected {n}", exit_code=1)
        tmp.replace(out)
    finally:
        del arr
        tmp.unlink(missing_ok=True)


def sample(model: str, n: int, out: str | Path, seed: int = 0, overwrite: bool = False) -> np.ndarray:
    """VAE only: n rows drawn from the prior and decoded, in the data's units, saved as .npy."""
    positive("n", n)
    run = load_run(model)
    out = output_path(out, overwrite, (".npy",), inputs=(model,))
    if not hasattr(run.model, "sample"):
        raise AepipeError(f'{model}: family "{run.meta["family"]}" cannot sample; only vae can')
    if n * run.schema.size * 4 > SAMPLE_MAX_BYTES:
        raise AepipeError(f"--n {n}: {n} rows of {run.schema.size} floats is {n * run.schema.size * 4 / 2**30:.1f} GiB; "
                          f"sample at most {SAMPLE_MAX_BYTES // (run.schema.size * 4):,} rows per call")
    x = run.normalizer.invert(run.model.sample(n, torch.Generator().manual_seed(seed)).numpy())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "wb") as f:  # written whole, then renamed: no half file at OUT
        np.save(f, x)
    tmp.replace(out)
    return x
