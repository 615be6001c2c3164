"""Where codes and reconstructions land: Zarr and Parquet datasinks for Ray Data.

Both sinks write into `OUT.partial` and rename it to OUT only once every row is in and counted,
so a store at OUT is always complete; a failed job removes its `.partial`.

Zarr: Ray 2.60 has no Zarr writer, so ZarrSink is one. Each write task puts its rows at their
global positions (`row`). Whole chunks go straight from the workers; rows of a chunk that a task
only partly holds come back to the driver (at most two chunks per task, since read tasks follow
chunk boundaries) and are written there, so no two processes ever write the same chunk. Every
chunk is written and checksummed (crc32c); Parquet parts carry page checksums and a manifest.

Rows skipped under --on-bad-row skip arrive marked (see pipeline/sources: mark_bad) and count as
written; the sinks leave them out of the store and list them (id, reason) as "skipped" in its
metadata: Parquet drops them before writing a part, Zarr closes their gaps at commit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from ray.data import Datasink
from ray.data.block import BlockAccessor

from pipeline import AepipeError, remote
from pipeline.sources import bad_rows, skipped_rows
from pipeline.store import MANIFEST

def _to_numpy(blocks) -> dict:
    parts = [BlockAccessor.for_block(b).to_numpy() for b in blocks]
    parts = [p for p in parts if len(p["row"])]
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _runs(rows: np.ndarray):
    """Split sorted rows into contiguous runs: (first index, end index) into the sorted array."""
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(rows)]])
    return zip(starts, ends)


class _Staged(Datasink):
    """Shared by both sinks: write into OUT.partial, count rows, rename into place (a URI: in
    place, the completion marker last; see "URI outputs" below)."""

    def __init__(self, path: str | Path, n_rows: int):
        self.remote = remote.is_uri(path)
        if self.remote:  # see "URI outputs" below: written in place, the marker last
            self.final = self.tmp = remote.URI(path)
        else:
            self.final = Path(path)
            self.tmp = self.final.with_name(self.final.name + ".partial")
        self.n_rows = n_rows
        self.skipped: list[dict] = []  # bad rows left out, known once the write completes

    def _check_count(self, written: int) -> None:
        if written != self.n_rows:  # a dropped or doubled block: refuse to present it as done
            raise AepipeError(f"{self.final}: wrote {written} rows, expected {self.n_rows}", exit_code=1)

    def _commit(self) -> None:
        if self.remote:
            return  # the completion marker, just written, is the commit
        if self.final.is_dir():
            shutil.rmtree(self.final)
        elif self.final.exists():
            self.final.unlink()
        self.tmp.rename(self.final)

    def _note_skipped(self, skipped: list[dict]) -> None:
        self.skipped = sorted(skipped, key=lambda r: r["id"])
        if self.skipped and len(self.skipped) == self.n_rows:
            first = self.skipped[0]
            raise AepipeError(f"every row was bad and skipped (the first, {first['id']}: {first['reason']})")

    def on_write_failed(self, error: Exception) -> None:
        self._clear()

    # ---- URI outputs (s3://, gs://): an object store has no rename, so the store is written in
    # place under OUT. What was there goes first (its marker with it); the completion marker (Zarr's
    # "complete" attribute, Parquet's manifest) is written last, after the row count is checked, and
    # readers refuse a store without it: a partial store never looks complete.

    def _clear(self) -> None:
        if self.remote:
            remote.remove(self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _put_file(self, name: str, write) -> None:
        """write(path, filesystem) makes the file `name` in the store: on a URI directly (an object
        appears whole once uploaded), locally through name.tmp and a rename."""
        if self.remote:
            fs, path = remote.resolve(self.tmp / name)
            write(path, fs)
        else:
            dest = self.tmp / name
            write(str(dest) + ".tmp", None)
            Path(str(dest) + ".tmp").replace(dest)


class ZarrSink(_Staged):
    """arrays: zarr array name -> (batch column, per-row shape, dtype)."""

    def __init__(self, path, n_rows: int, arrays: dict, attrs: dict, chunk_rows: int):
        super().__init__(path, n_rows)
        self.arrays, self.attrs, self.chunk_rows = arrays, attrs, chunk_rows

    def on_write_start(self, schema=None) -> None:
        self._clear()
        g = zarr.open_group(str(self.tmp), mode="w")
        for name, (_, shape, dtype) in self.arrays.items():
            # every chunk is written, even one equal to the fill value, so a missing chunk file always
            # means damage; crc32c makes a damaged chunk fail its read instead of decoding as garbage
            g.create_array(name, shape=(self.n_rows, *shape), chunks=(self.chunk_rows, *shape),
                           dtype=str if dtype == "str" else dtype, config={"write_empty_chunks": True},
                           compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()])
        g.attrs.update({**self.attrs, "complete": False})

    def _put(self, batch: dict, select: np.ndarray) -> None:
        rows = batch["row"][select]
        if not len(rows):
            return
        g = zarr.open_group(str(self.tmp), mode="r+")
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        for name, (col, _, dtype) in self.arrays.items():
            values = batch[col][select][order]
            if dtype == "str":
                values = values.astype(str)
            for a, b in _runs(rows):
                g[name][rows[a]:rows[a] + (b - a)] = values[a:b]

    def write(self, blocks, ctx) -> dict:
        batch = _to_numpy(blocks)
        if not batch:
            return {"n": 0, "partial": None, "skipped": []}
        chunk = batch["row"] // self.chunk_rows
        held = np.bincount(chunk, minlength=chunk.max() + 1)
        size = np.minimum(self.chunk_rows, self.n_rows - np.arange(len(held)) * self.chunk_rows)
        whole = (held == size)[chunk]  # rows whose chunk this task holds entirely
        self._put(batch, whole)
        partial = {k: v[~whole] for k, v in batch.items()} if (~whole).any() else None
        return {"n": len(batch["row"]), "partial": partial, "skipped": skipped_rows(batch["id"])}

    def on_write_complete(self, write_result) -> None:
        results = write_result.write_returns
        partials = [r["partial"] for r in results if r["partial"] is not None]
        if partials:
            merged = {k: np.concatenate([p[k] for p in partials]) for k in partials[0]}
            self._put(merged, np.ones(len(merged["row"]), bool))
        self._check_count(sum(r["n"] for r in results))  # marked rows included: each row once
        g = zarr.open_group(str(self.tmp), mode="r+")
        self._note_skipped([s for r in results for s in r.get("skipped", [])])
        if self.skipped:
            g.attrs.update({"n_rows": self._drop_marked(g), "skipped": self.skipped})
        g.attrs["complete"] = True
        self._commit()

    def _drop_marked(self, g) -> int:
        """Close the gaps of skipped rows: later rows move up, chunk by chunk, then the arrays shrink.
        In place is safe: rows only move to lower positions, each chunk read before any lands on it."""
        ids = next(name for name, (col, _, _) in self.arrays.items() if col == "id")
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


class ParquetSink(_Staged):
    """One file per write task, named by the task's index so a retried task overwrites its own file.

    columns: output column -> (batch column, kind); kind "scalar", "list" (fixed-size list), or a
    tuple of names to split an (N, k) array into k scalar columns (a table's own columns)."""

    def __init__(self, path, n_rows: int, columns: dict, metadata: dict):
        super().__init__(path, n_rows)
        self.columns, self.metadata = columns, metadata

    def on_write_start(self, schema=None) -> None:
        self._clear()
        if not self.remote:  # object stores have no folders
            self.tmp.mkdir(parents=True)

    def _table(self, batch: dict) -> pa.Table:
        order = np.argsort(batch["row"], kind="stable")
        cols = {}
        for name, (col, kind) in self.columns.items():
            v = batch[col][order]
            if kind == "scalar":
                cols[name] = pa.array(v)
            elif kind == "list":
                flat = v.reshape(len(v), -1)
                cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])
            else:
                flat = v.reshape(len(v), -1)
                cols.update({c: pa.array(flat[:, i]) for i, c in enumerate(kind)})
        table = pa.table(cols)
        return table.replace_schema_metadata({"aepipe": json.dumps(self.metadata)})

    def write(self, blocks, ctx) -> dict:
        batch = _to_numpy(blocks)
        if not batch:
            return {}
        skipped, good = skipped_rows(batch["id"]), ~bad_rows(batch["id"])
        if skipped:  # listed at commit (under "_skipped", no part's name), counted as written
            batch = {k: v[good] for k, v in batch.items()}
            if not good.any():
                return {"_skipped": skipped}
        name, table = f"part-{ctx.task_idx:05d}.parquet", self._table(batch)
        self._put_file(name, lambda p, fs: pq.write_table(table, p, filesystem=fs, write_page_checksum=True))
        return {name: len(batch["row"]), **({"_skipped": skipped} if skipped else {})}

    def on_write_complete(self, write_result) -> None:
        files = {k: v for r in write_result.write_returns if r for k, v in r.items() if k != "_skipped"}
        skipped = [s for r in write_result.write_returns if r for s in r.get("_skipped", [])]
        self._check_count(sum(files.values()) + len(skipped))
        self._note_skipped(skipped)
        # the manifest names every part and its rows: a deleted or truncated part is found on read;
        # skipped rows are listed there too, since the parts' metadata was written before they were known
        manifest = {"n_rows": self.n_rows - len(skipped), "files": dict(sorted(files.items()))}
        manifest = json.dumps({**manifest, **({"skipped": self.skipped} if skipped else {})}).encode()
        if self.remote:
            remote.write_bytes(self.tmp / MANIFEST, manifest)
        else:
            (self.tmp / MANIFEST).write_bytes(manifest)
        self._commit()
