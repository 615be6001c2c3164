"""Which rows a model job reads from a codes store (--rows, --ids) and where its output rows go
(.npy, Zarr, Parquet, a folder of PNG images): shared by decode, denoise and the bitstream jobs."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from aepipe.batch.engine import write
from aepipe.errors import AepipeError
from aepipe.cluster.runtime import run_interruptibly, user_errors
from aepipe.sources import Source, numpy_of
from aepipe.sources.parquet import ParquetSource
from aepipe.stores.ids_index import bisect, lookup_zarr
from aepipe.stores import PART_BYTES, chunk_rows_for, part_rows
from aepipe.stores.read import ZarrCodesSource, id_dtype, open_zarr
from aepipe.stores.parquet_sink import ParquetSink
from aepipe.stores.png_sink import PngSink
from aepipe.stores.zarr_sink import ZarrSink


class Selection(Source):
    """Rows `positions` of another source, renumbered 0..k-1 (the output's own positions)."""

    def __init__(self, src: Source, positions: np.ndarray):
        self.src, self.positions = src, positions
        self.spec, self.schema, self.n_rows = src.spec, src.schema, len(positions)

    def read(self, start, stop):  # the source's own read checked the rows already
        p = self.positions[start:stop]
        ids, x = [None] * len(p), None
        order = np.argsort(p, kind="stable")
        sp = p[order]
        cuts = np.flatnonzero(np.diff(sp) > 1024) + 1  # read nearby rows together, far ones apart
        for run in np.split(np.arange(len(sp)), cuts):
            lo, hi = int(sp[run[0]]), int(sp[run[-1]]) + 1
            run_ids, run_x = self.src.read(lo, hi)
            if x is None:  # codes are float32; a bitstream store's rows are bytes objects
                x = np.empty((len(p), *run_x.shape[1:]), run_x.dtype)
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
        return Selection(src, find_ids(src, ids))
    return src


def find_ids(src: Source, ids: list[str]) -> np.ndarray:
    """Store positions of `ids` (given as text), without reading the codes: through the store's
    ids index where it has one (ids out of order, see aepipe.stores.ids_index), else a few ids in
    a Zarr store by bisection (ids written in order, as row indices are, need ~log2(N) reads each)
    and Parquet row groups whose id statistics cannot hold them skipped; else the ids alone are
    scanned."""
    found, indexed = {}, None
    if len(ids) <= 64:
        indexed = _indexed(src, ids)
    if indexed is not None:  # the index holds every id of the store: what it lacks is not there
        found = indexed
    elif _zarr_ids(src) and len(ids) <= 64:
        found = bisect(open_zarr(src.path)["ids"], ids)  # trusting only exact hits: unsorted finds fewer
    rest = [i for i in ids if i not in found]
    if rest and indexed is None:
        for start, values in _id_blocks(src, rest):
            where = {v: start + k for k, v in enumerate(values.astype(str))}
            found.update({i: where[i] for i in rest if i in where and i not in found})
    missing = [i for i in ids if i not in found]
    if missing:
        raise AepipeError(f'--ids: no row with id "{missing[0]}" in the store')
    return np.array([found[i] for i in ids], dtype=np.int64)


def _zarr_ids(src: Source) -> bool:
    """Whether src is a Zarr store with an "ids" array: a codes store, or a bitstream store of kind zarr."""
    return isinstance(src, ZarrCodesSource) or getattr(src, "kind", None) == "zarr"


def _indexed(src: Source, ids: list[str]) -> dict | None:
    """Positions of ids through a Zarr store's ids index; None where it has none."""
    return lookup_zarr(open_zarr(src.path), ids) if _zarr_ids(src) else None


def _id_blocks(src: Source, wanted: list[str]):
    """(first position, ids) per block of the store, reading the id column only where possible."""
    if _zarr_ids(src):
        arr = open_zarr(src.path)["ids"]
        step = arr.chunks[0] * max(1, 2 ** 20 // arr.chunks[0])
        for a in range(0, arr.shape[0], step):
            yield a, arr[a:a + step]
    elif isinstance(src, ParquetSource) and src.id_column:
        import pyarrow.parquet as pq

        for start, n, fi, g in src.groups:
            f = pq.ParquetFile(src.where.open(src.files[fi]))
            if _group_may_hold(f.metadata.row_group(g), src.id_column, wanted):
                yield start, numpy_of(f.read_row_group(g, columns=[src.id_column]).column(0))
    elif getattr(src, "cols", None) is not None:  # a Parquet bitstream store, read whole on open
        yield 0, src.cols["id"]
    else:
        for a, b in src.ranges():
            yield a, src.read(a, b)[0]


def _group_may_hold(meta, column: str, wanted: list[str]) -> bool:
    """A row group's min/max statistics of the id column rule it out when no wanted id fits."""
    for i in range(meta.num_columns):
        c = meta.column(i)
        if c.path_in_schema == column and c.is_stats_set and c.statistics.has_min_max:
            lo, hi = c.statistics.min, c.statistics.max
            try:
                keys = [type(lo)(w) for w in wanted]
            except (TypeError, ValueError):
                return True
            return any(lo <= k <= hi for k in keys)
    return True


def png_range(run, out) -> tuple[float, float]:
    """(lo, span) of the training images' pixel values, which PNG writes as 0..255; refuses a model
    whose rows are not images (H, W) or (1|3, H, W), or that was not trained on one pixel range."""
    shape, norm = run.schema.shape, run.normalizer
    if not (len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3))):
        raise AepipeError(f"--out {out}: a folder of PNG images needs an image model (rows shaped (H, W) or "
                          f"(C, H, W) with 1 or 3 channels); {run.path} rows are shaped {tuple(shape)}")
    if norm.kind != "global":
        raise AepipeError(f'--out {out}: PNG output needs the pixel range of a model trained with the "global" '
                          f'normaliser (the default for images); {run.path} used "{norm.kind}"')
    return norm.shift[0], norm.scale[0]


def write_rows(ds, out: Path, src: Source, run, meta: dict) -> list[dict]:
    """Rows in the data's units (batch column x) to OUT, as decode writes them: .npy, Zarr, Parquet
    or, for image models, a folder of PNG images (OUT without a suffix).
    Returns the rows --on-bad-row skip left out (only Zarr and Parquet sinks leave rows out)."""
    shape = run.schema.shape
    if out.suffix == "":  # a folder of PNG images
        sink = PngSink(out, src.n_rows, meta, *png_range(run, out))
        write(ds, sink)
        return sink.skipped
    if out.suffix == ".npy":
        with user_errors(out):
            run_interruptibly(_write_npy, ds, out, src.n_rows, shape, partial=[out.with_name(out.name + ".partial")])
    elif out.suffix == ".zarr":
        arrays = {"data": ("x", shape, "float32"), "ids": ("id", (), id_dtype(src))}
        sink = ZarrSink(out, src.n_rows, arrays, meta, chunk_rows_for(4 * int(np.prod(shape))))
        write(ds, sink)
        return sink.skipped
    else:
        data_cols = run.schema.columns if run.schema.tabular else "list"
        name = "x" if run.schema.tabular else run.schema.columns[0]
        sink = ParquetSink(out, src.n_rows, {"id": ("id", "scalar"), name: ("x", data_cols)}, meta)
        write(ds, sink)
        return sink.skipped
    return []


def rows_per_part(out: Path, row_bytes: int, n_rows: int, chunk_rows: int | None = None,
                  part_bytes: int = PART_BYTES) -> int | None:
    """Rows a task of a job writing rows of row_bytes (and an id) to `out` holds: one Parquet part
    (which may end on any row), or whole Zarr chunks (chunk_rows, default chunk_rows_for), of about
    part_bytes (stores.part_rows). None for .npy and PNG folders, which are written a file per row
    or through the driver."""
    if out.suffix not in (".zarr", ".parquet"):
        return None
    unit = (chunk_rows or chunk_rows_for(row_bytes)) if out.suffix == ".zarr" else 1
    return part_rows(unit, row_bytes + 8, n_rows, part_bytes)


def _write_npy(ds, out: Path, n: int, shape) -> None:
    """.npy is one file on the driver's disk: stream batches into a memory map, rename when full."""
    tmp = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)  # as the Zarr and Parquet writers do
    arr, seen = None, 0
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, *shape))
        with open(tmp, "r+b") as f:  # the blocks now: a full disk is an OSError here, not a SIGBUS mid-write
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
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
