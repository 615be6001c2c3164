"""Parquet stores of codes and reconstructions: ParquetSink, one part per read range, each with
page checksums, and the manifest that names every part (write_manifest, also --append's commit).
Staging, commit and --resume: aepipe.stores.staging.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aepipe import remote
from aepipe.sources import bad_rows, skipped_rows
from aepipe.stores import JSON_MANIFEST, MANIFEST, manifest_table
from aepipe.stores.staging import _Staged, _to_numpy


def arrow_array(v: np.ndarray) -> pa.Array:
    """A numpy column as Arrow, numbers and booleans by their buffers: pa.array() imports pandas
    to ask whether v is a pandas object, 0.3 s of a small ask here. Text goes through pa.array()."""
    if v.ndim != 1 or v.dtype.kind not in "iufb":
        return pa.array(v)
    if v.dtype.kind == "b":  # Arrow packs booleans 8 to a byte, first row in the lowest bit
        return pa.Array.from_buffers(pa.bool_(), len(v), [None, pa.py_buffer(np.packbits(v, bitorder="little"))])
    v = np.ascontiguousarray(v)
    return pa.Array.from_buffers(pa.from_numpy_dtype(v.dtype), len(v), [None, pa.py_buffer(v)])


class ParquetSink(_Staged):
    """One file per read range, named by its first row, so a retried task overwrites its own file
    and a resumed run sees which ranges are done (a part appears only by an atomic rename, or on a
    URI once its upload completes). Without ranges (decode, ...), one file per write task, named by
    its first row. Rows marked bad (--on-bad-row skip) are left out of the parts and listed.

    columns: output column -> (batch column, kind); kind "scalar", "list" (fixed-size list), or a
    tuple of names to split an (N, k) array into k scalar columns (a table's own columns).
    fields: output column -> that field's own metadata (int8 codes: CF's scale_factor, add_offset)."""

    def __init__(self, path, n_rows: int, columns: dict, metadata: dict, ranges=None, settings=None,
                 fields: dict | None = None):
        super().__init__(path, n_rows, ranges, settings)
        self.columns, self.metadata, self.fields = columns, metadata, fields or {}
        self.starts = np.array([a for a, _ in ranges or []], np.int64)

    def _create(self) -> None:
        if not self.remote:  # object stores have no folders
            self.tmp.mkdir(parents=True)

    def _units(self, a: int, b: int) -> list[int]:
        return [a]

    def _finished(self) -> set[int]:
        return {int(f.name[5:-8]) for f in self.tmp.glob("part-*.parquet") if f.name[5:-8].isdigit()}
    def _table(self, batch: dict) -> pa.Table:
        order = np.argsort(batch["row"], kind="stable")
        cols = {}
        for name, (col, kind) in self.columns.items():
            v = batch[col][order]
            if kind == "scalar":
                cols[name] = arrow_array(v)
            elif kind == "list":
                flat = v.reshape(len(v), -1)
                cols[name] = pa.FixedSizeListArray.from_arrays(arrow_array(flat.ravel()), flat.shape[1])
            else:
                flat = v.reshape(len(v), -1)
                cols.update({c: arrow_array(flat[:, i]) for i, c in enumerate(kind)})
        table = pa.table(cols)
        schema = pa.schema([f.with_metadata({k: repr(v) for k, v in self.fields[f.name].items()})
                            if self.fields.get(f.name) else f for f in table.schema],
                           metadata={"aepipe": json.dumps(self.metadata)})
        return table.cast(schema)

    def _part(self, batch: dict, first: int, skipped: list) -> dict:
        """Write one part of batch's good rows; its bad rows go to `skipped`."""
        bad = skipped_rows(batch["id"])
        if bad:
            skipped += bad
            good = ~bad_rows(batch["id"])
            batch = {k: v[good] for k, v in batch.items()}
            if not len(batch["row"]):
                return {}
        name, table = f"part-{first:012d}.parquet", self._table(batch)
        self._put_file(name, lambda p, fs: pq.write_table(table, p, filesystem=fs, write_page_checksum=True))
        return {name: len(batch["row"])}
    def _by_range(self, batch: dict):
        """(range start, that range's rows of batch, whether batch holds all of them)."""
        which = np.searchsorted(self.starts, batch["row"], side="right") - 1
        ends = np.array([b for _, b in self.ranges], np.int64)
        for r in np.unique(which):
            sel = which == r
            yield int(self.starts[r]), {k: v[sel] for k, v in batch.items()}, sel.sum() == ends[r] - self.starts[r]

    def write(self, blocks) -> dict:
        batch, skipped = _to_numpy(blocks), []
        if not batch:
            return {"files": {}, "partial": [], "skipped": []}
        if not self.ranges:
            return {"files": self._part(batch, int(batch["row"].min()), skipped), "partial": [], "skipped": skipped}
        files, partial = {}, []
        for start, rows, whole in self._by_range(batch):
            if start in self.done:
                continue
            if whole:
                files.update(self._part(rows, start, skipped))
            else:  # the rest of this range went to another task: the driver joins them
                partial.append(rows)
        return {"files": files, "partial": partial, "skipped": skipped}

    def on_write_complete(self, results: list) -> None:
        results = [r for r in results if r]
        files = {k: v for r in results for k, v in r["files"].items()}
        skipped = [s for r in results for s in r["skipped"]]
        partials = [p for r in results for p in r["partial"]]
        if partials:
            merged = {k: np.concatenate([p[k] for p in partials]) for k in partials[0]}
            for start, rows, _ in self._by_range(merged):
                files.update(self._part(rows, start, skipped))
        kept = 0  # rows of ranges a resumed run found finished (their parts hold the good ones)
        for a, b in self.ranges or []:
            if a in self.done:
                name = f"part-{a:012d}.parquet"
                files[name], kept = pq.ParquetFile(self.tmp / name).metadata.num_rows, kept + b - a
        self._check_count(sum(v for k, v in files.items() if int(k[5:-8]) not in self.done) + len(skipped) + kept)
        self._note_skipped(skipped)
        if not self.remote:
            for f in self.tmp.glob("*.tmp"):  # a part a killed run left half-written
                f.unlink()
        # the manifest names every part and its rows: a deleted or truncated part is found on read;
        # skipped rows are listed there too, since the parts' metadata was written before they were known
        manifest = {"n_rows": sum(files.values()), "files": dict(sorted(files.items())),
                    **({"skipped": self.skipped} if skipped else {})}
        write_manifest(self.tmp, manifest)
        self._commit()


def write_manifest(store, manifest: dict) -> None:
    """A Parquet store's manifest (the commit of a store at a URI, and of an --append), with the
    parts' schema read from one of them: they were written in other processes. Locally through a
    .tmp and a rename, at a URI in one PUT: atomic either way. A JSON manifest of a store from
    before the Parquet one is removed once this one is in place."""
    import pyarrow.fs as pafs

    spec = str(store)
    fs, path = remote.resolve(spec) if "://" in spec else (pafs.LocalFileSystem(), str(Path(spec).absolute()))
    # write_id: each commit's manifest differs from every other's, even of the same rows in the same
    # second, so that a reader's StoreGuard tells one write of a store from the next
    manifest = {**manifest, "write_id": uuid.uuid4().hex}
    table = manifest_table(pq.read_schema(f"{path}/{min(manifest['files'])}", filesystem=fs), manifest)
    if remote.is_uri(spec):
        pq.write_table(table, f"{path}/{MANIFEST}", filesystem=fs)
    else:
        pq.write_table(table, f"{path}/{MANIFEST}.tmp", filesystem=fs)
        fs.move(f"{path}/{MANIFEST}.tmp", f"{path}/{MANIFEST}")
    if fs.get_file_info(f"{path}/{JSON_MANIFEST}").type == pafs.FileType.File:
        fs.delete_file(f"{path}/{JSON_MANIFEST}")
