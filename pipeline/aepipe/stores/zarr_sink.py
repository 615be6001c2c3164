"""Zarr stores of codes and reconstructions: ZarrSink.

Ray 2.60 has no Zarr writer, so ZarrSink is one. Each write task puts its rows at their global
positions (`row`). Whole chunks (or shards: many chunks in one object, for stores at a URI) go
straight from the workers; rows of one that a task only partly holds come back to the driver and
are written there, so no two processes ever write the same chunk. encode plans its tasks on chunk
(shard) edges (sources.plan), so none come back from it. Every chunk is written and checksummed
(crc32c; a shard's index too). Staging, commit and --resume: aepipe.stores.staging.
"""

from __future__ import annotations

import shutil
import uuid

import numpy as np

from aepipe.errors import AepipeError
from aepipe.sources import bad_rows, skipped_rows
from aepipe.stores import open_zarr
from aepipe.stores.ids_index import index_zarr
from aepipe.stores.staging import RESUME, _Staged, _to_numpy

DONE = "_aepipe_done"  # in a Zarr OUT.partial: one empty file per chunk, made after the chunk is written


def _runs(rows: np.ndarray):
    """Split sorted rows into contiguous runs: (first index, end index) into the sorted array."""
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(rows)]])
    return zip(starts, ends)


def zarr_dtype(name: str):
    """zarr dtypes numpy has no fixed-width form of: "bytes" holds bitstreams (aepipe.stores.bitstreams)."""
    import zarr

    return {"str": str, "bytes": zarr.core.dtype.VariableLengthBytes()}.get(name, name)


def dimension_names(name: str, shape: tuple) -> tuple[str, ...]:
    """Zarr v3 dimension names, which xarray needs: rows first, then the array's own per-row axes."""
    return ("row", *((f"{name}_dim",) if len(shape) == 1 else (f"{name}_dim{i}" for i in range(len(shape)))))


class ZarrSink(_Staged):
    """arrays: zarr array name -> (batch column, per-row shape, dtype[, array attributes]). Resume
    unit: one chunk, finished once its marker file exists (zarr writes are not atomic: a chunk
    without a marker may be half-written, and is written again).

    Every array has named dimensions and the other arrays name "ids" as their coordinate, so that
    xarray opens the store as a Dataset with ids beside every row; metadata is consolidated at commit."""

    def __init__(self, path, n_rows: int, arrays: dict, attrs: dict, chunk_rows: int, ranges=None, settings=None,
                 shard_rows: int | None = None):
        super().__init__(path, n_rows, ranges, settings)
        self.arrays, self.attrs, self.chunk_rows, self.shard_rows = arrays, attrs, chunk_rows, shard_rows
        # what one process writes whole: a chunk, or a shard (many chunks in one object, which zarr
        # rewrites whole on any write to it)
        self.unit_rows = shard_rows or chunk_rows

    def _create(self) -> None:
        import zarr

        g = zarr.open_group(str(self.tmp), mode="w")
        for name, (_, shape, dtype, *attrs) in self.arrays.items():
            # every chunk is written, even one equal to the fill value, so a missing chunk file always
            # means damage; crc32c makes a damaged chunk fail its read instead of decoding as garbage
            shards = {"shards": (self.shard_rows, *shape)} if self.shard_rows else {}
            a = g.create_array(name, shape=(self.n_rows, *shape), chunks=(self.chunk_rows, *shape), **shards,
                               dtype=zarr_dtype(dtype), config={"write_empty_chunks": True},
                               compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()],
                               dimension_names=dimension_names(name, shape))
            coords = {"coordinates": "ids"} if name != "ids" and "ids" in self.arrays else {}
            a.attrs.update({**coords, **(attrs[0] if attrs else {})})
        g.attrs.update({**self.attrs, "complete": False})
        if not self.remote:
            (self.tmp / DONE).mkdir()

    def _units(self, a: int, b: int) -> range:
        return range(a // self.chunk_rows, (b - 1) // self.chunk_rows + 1)

    def _finished(self) -> set[int]:
        if not (self.tmp / DONE).is_dir():  # (its resume file goes first at the commit: see on_write_complete)
            raise AepipeError(f"--resume: {self.tmp} holds no finished chunks to resume from; run without --resume")
        return {int(f.name) for f in (self.tmp / DONE).iterdir() if f.name.isdigit()}

    def _chunk_size(self, i):
        return np.minimum(self.chunk_rows, self.n_rows - i * self.chunk_rows)

    def _put(self, batch: dict, select: np.ndarray) -> None:
        rows = batch["row"][select]
        if not len(rows):
            return
        g = open_zarr(self.tmp, mode="r+")
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        for name, (col, _, dtype, *_) in self.arrays.items():
            values = batch[col][select][order]
            if dtype == "str":
                values = values.astype(str)
            for a, b in _runs(rows):
                g[name][rows[a]:rows[a] + (b - a)] = values[a:b]
        if not self.remote:
            for i in np.unique(rows // self.chunk_rows):  # after every array's chunk is on disk
                (self.tmp / DONE / str(i)).touch()

    def write(self, blocks) -> dict:
        batch = _to_numpy(blocks)
        if batch and self.done:  # resumed: chunks finished before are never rewritten
            keep = ~np.isin(batch["row"] // self.chunk_rows, list(self.done))
            batch = {k: v[keep] for k, v in batch.items()}
        if not batch or not len(batch["row"]):
            return {"n": 0, "partial": None, "skipped": []}
        unit = batch["row"] // self.unit_rows
        held = np.bincount(unit, minlength=unit.max() + 1)
        size = np.minimum(self.unit_rows, self.n_rows - np.arange(len(held)) * self.unit_rows)
        whole = (held == size)[unit]  # rows whose chunk (or shard) this task holds entirely
        self._put(batch, whole)
        partial = {k: v[~whole] for k, v in batch.items()} if (~whole).any() else None
        return {"n": len(batch["row"]), "partial": partial, "skipped": skipped_rows(batch["id"])}

    def on_write_complete(self, results: list) -> None:
        partials = [r["partial"] for r in results if r["partial"] is not None]
        if partials:
            merged = {k: np.concatenate([p[k] for p in partials]) for k in partials[0]}
            self._put(merged, np.ones(len(merged["row"]), bool))
        before = int(sum(self._chunk_size(i) for i in self.done))  # rows a resumed run kept
        self._check_count(before + sum(r["n"] for r in results))  # marked rows included: each row once
        if not self.remote:
            # from here the partial is being turned into the store (rows closed up, the ids index,
            # metadata): no longer a state --resume can continue from, so not offered to it
            (self.tmp / RESUME).unlink(missing_ok=True)
            shutil.rmtree(self.tmp / DONE)
        g = open_zarr(self.tmp, mode="r+")
        # (a resumed run lists, and drops, the skipped rows of the chunks it wrote itself)
        self._note_skipped([s for r in results for s in r.get("skipped", [])])
        if self.skipped:
            g.attrs.update({"n_rows": self._drop_marked(g), "skipped": self.skipped})
        if "ids" in self.arrays:
            index_zarr(g)  # where the ids are out of order: decode --ids reads a few chunks
        # write_id: two commits of the same settings within one second would otherwise write identical
        # metadata, and a reader's StoreGuard could not tell the store it started on from its double
        g.attrs.update({"complete": True, "write_id": uuid.uuid4().hex})
        self._consolidate()
        self._commit()

    def _consolidate(self) -> None:
        """All metadata in the root's zarr.json, so readers such as xarray open the store in one read
        (without it, xarray warns and lists every array)."""
        import warnings

        import zarr

        with warnings.catch_warnings():
            # "not part of the Zarr v3 specification" (yet; xarray reads it), and the resume file is no array
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(self.tmp))
    def _drop_marked(self, g) -> int:
        """Close the gaps of skipped rows: later rows move up, chunk by chunk, then the arrays shrink.
        In place is safe: rows only move to lower positions, each chunk read before any lands on it."""
        ids = next(name for name, (col, *_) in self.arrays.items() if col == "id")
        kept = 0
        for a in range(0, self.n_rows, self.chunk_rows):
            b = min(a + self.chunk_rows, self.n_rows)
            keep = ~bad_rows(g[ids][a:b])
            n = int(keep.sum())
            for name in self.arrays:
                if n:
                    g[name][kept:kept + n] = g[name][a:b][keep]
            kept += n
        for name in self.arrays:
            g[name].resize((kept, *g[name].shape[1:]))
        return kept
