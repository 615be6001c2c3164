"""Where codes and reconstructions land: Zarr and Parquet sinks, written by Ray Data (through
`aepipe.stores.raydata.as_datasink`) or by a small job in this process (aepipe.batch.engine.LocalRows), which then never
imports Ray Data (over a second of a small ask's start-up).

Both sinks write into `OUT.partial` and rename it to OUT only once every row is in and counted,
so a store at OUT is always complete; a failed job removes its `.partial`. A store at a URI
(s3://, gs://) is written in place instead, its completion marker last (see "URI outputs").

--resume (local stores): a run killed on the way leaves OUT.partial with the settings it started
with and its finished units (Zarr: chunks with a marker file; Parquet: parts, each renamed into
place whole); a rerun with the same settings runs only the read ranges that hold unfinished units.

Zarr: Ray 2.60 has no Zarr writer, so ZarrSink is one. Each write task puts its rows at their
global positions (`row`). Whole chunks go straight from the workers; rows of a chunk that a task
only partly holds come back to the driver (at most two chunks per task, since read tasks follow
chunk boundaries) and are written there, so no two processes ever write the same chunk. Every
chunk is written and checksummed (crc32c); Parquet parts carry page checksums and a manifest.

Rows skipped under --on-bad-row skip arrive marked (see pipeline/aepipe/sources: mark_bad) and count as
written; the sinks leave them out of the store and list them (id, reason) as "skipped" in its
metadata: Parquet drops them before writing a part, Zarr closes their gaps at commit.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aepipe import remote
from aepipe.errors import FULL, AepipeError, disk_error
from aepipe.sources import bad_rows, skipped_rows
from aepipe.stores import JSON_MANIFEST, MANIFEST, manifest_table, open_zarr
from aepipe.stores.ids_index import index_zarr


def _to_numpy(blocks) -> dict:
    """Blocks (dicts of numpy arrays, one per row range) as one dict of arrays."""
    parts = [b for b in blocks if len(b["row"])]
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


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


RESUME = "_aepipe_resume.json"  # in OUT.partial: the settings it was started with
DONE = "_aepipe_done"  # in a Zarr OUT.partial: one empty file per chunk, made after the chunk is written


_LOCKS: dict[str, int] = {}  # a local output's path -> the lock file this process holds for it


def _lock(final: Path) -> None:
    """One writer per local output: an exclusive lock on OUT.lock from prepare to the commit (or a
    failure), so a second aepipe writing the same OUT at the same time refuses in one line instead
    of interleaving chunks with the first. The OS drops a lock when its holder dies, SIGKILL
    included: a lock file a killed run left never blocks the next. (Object stores have no locks:
    two writers of one URI are the caller's to avoid.)"""
    import fcntl

    key = str(final.absolute())
    if key in _LOCKS:  # this process holds it already (a retry after Ctrl-C in a notebook)
        return
    path = final.with_name(final.name + ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise AepipeError(f"{final}: cannot write beside it ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AepipeError(f"{final} is being written by another aepipe right now; let it finish, or choose "
                          "another --out") from None
    _LOCKS[key] = fd


def _unlock(final: Path) -> None:
    fd = _LOCKS.pop(str(final.absolute()), None)
    if fd is not None:
        Path(str(final) + ".lock").unlink(missing_ok=True)
        os.close(fd)


class _Staged:
    """Shared by both sinks: write into OUT.partial, count rows, rename into place (a URI: in
    place, the completion marker last; see "URI outputs" below).

    Resumable: `ranges` are the job's read ranges, `settings` what must not change between a run
    and its --resume. prepare() starts a fresh partial or, resuming, keeps its finished units
    (Zarr chunks, Parquet parts) and returns the read ranges still to run."""

    def __init__(self, path: str | Path, n_rows: int, ranges=None, settings: dict | None = None):
        self.remote = remote.is_uri(path)
        if self.remote:  # see "URI outputs" below: written in place, the marker last
            self.final = self.tmp = remote.URI(path)
        else:
            self.final = Path(path)
            self.tmp = self.final.with_name(self.final.name + ".partial")
        self.n_rows, self.ranges = n_rows, ranges
        self.settings = json.loads(json.dumps(settings or {}))  # as a resumed run reads them back
        self.done: set[int] = set()  # finished units, skipped by every write
        self.prepared = False
        self.skipped: list[dict] = []  # bad rows left out, known once the write completes
        self.kept: Path | None = None  # OUT.partial, kept for --resume after a full disk

    def prepare(self, resume: bool = False) -> list[tuple[int, int]]:
        self.prepared = True
        self.lock()  # before anything is cleared: another writer's partial is not ours
        try:
            return self._prepare(resume)
        except BaseException:
            self.unlock()
            raise

    def _prepare(self, resume: bool) -> list[tuple[int, int]]:
        if not resume:
            self._clear()
            self._create()
            if not self.remote:
                (self.tmp / RESUME).write_text(json.dumps(self.settings))
            return list(self.ranges or [])
        self._check_resumable()
        self.done = self._finished()
        return [(a, b) for a, b in self.ranges if not all(u in self.done for u in self._units(a, b))]

    def _check_resumable(self) -> None:
        if self.remote:
            raise AepipeError(f"--resume: {self.final} is at a URI, written in place; --resume finishes "
                              "local stores only: run without --resume")
        if not self.tmp.is_dir():
            raise AepipeError(f"--resume: {self.tmp} does not exist, so there is nothing to resume; "
                              "run without --resume")
        try:
            was = json.loads((self.tmp / RESUME).read_text())
        except (OSError, ValueError):
            raise AepipeError(f"--resume: {self.tmp} has no readable {RESUME} (not started by this aepipe); "
                              "run without --resume") from None
        for key in sorted(set(was) | set(self.settings)):
            if was.get(key) != self.settings.get(key):
                raise AepipeError(f"--resume: {self.tmp} was started with {key} = {json.dumps(was.get(key))}, "
                                  f"this run has {json.dumps(self.settings.get(key))}; rerun with the same "
                                  "model, data and options, or without --resume")

    def on_write_start(self, schema=None) -> None:
        if not self.prepared:  # jobs that never resume (decode, denoise, ...)
            self.prepare()

    def _check_count(self, written: int) -> None:
        if written != self.n_rows:  # a dropped or doubled block: refuse to present it as done
            raise AepipeError(f"{self.final}: wrote {written} rows, expected {self.n_rows}", exit_code=1)

    def _commit(self) -> None:
        if self.remote:
            return  # the completion marker, just written, is the commit
        (self.tmp / RESUME).unlink(missing_ok=True)
        # --overwrite: the old store is renamed aside before the new one takes its name and removed
        # after, so OUT is at every moment the whole old store, nothing, or the whole new one, never
        # an old store half removed (a reader's check, stores.read.StoreGuard, relies on this)
        old = self.final.with_name(self.final.name + ".replaced")
        _remove(old)  # left by a run killed between the two renames
        if self.final.is_dir() or self.final.exists() or self.final.is_symlink():
            self.final.rename(old)
        self.tmp.rename(self.final)
        _remove(old)
        self.unlock()

    def lock(self) -> None:
        """Hold OUT against other writers (see _lock); refuses in one line while another holds it."""
        if not self.remote:
            _lock(self.final)

    def unlock(self) -> None:
        """Let another writer have OUT (after the commit, a failure or Ctrl-C; a no-op otherwise)."""
        if not self.remote:
            _unlock(self.final)

    def _note_skipped(self, skipped: list[dict]) -> None:
        self.skipped = sorted(skipped, key=lambda r: r["id"])
        if self.skipped and len(self.skipped) == self.n_rows:
            first = self.skipped[0]
            raise AepipeError(f"every row was bad and skipped (the first, {first['id']}: {first['reason']})")

    def on_write_failed(self, error: Exception) -> None:
        if self.keeps(error):
            self.kept = self.tmp
            for half in self.tmp.rglob("*.tmp"):  # a part cut short by the full disk (see _put_file)
                half.unlink()
        else:
            self._clear()
        self.unlock()

    def keeps(self, error: Exception) -> bool:
        """A full disk: a resumable job (encode) keeps its finished units for --resume, since what
        it lacks is space, not a fix; any other failure removes the partial."""
        return (not self.remote and bool(self.settings) and disk_error(error, FULL) is not None
                and (self.tmp / RESUME).is_file())

    # ---- URI outputs (s3://, gs://): an object store has no rename, so the store is written in
    # place under OUT. What was there goes first (its marker with it); the completion marker (Zarr's
    # "complete" attribute, Parquet's manifest) is written last, after the row count is checked, and
    # readers refuse a store without it: a partial store never looks complete.

    def _clear(self) -> None:
        if self.remote:
            remote.remove(self.tmp)
        elif self.tmp.is_symlink() or self.tmp.is_file():  # left by something else: never removed through
            self.tmp.unlink()
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


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def dimension_names(name: str, shape: tuple) -> tuple[str, ...]:
    """Zarr v3 dimension names, which xarray needs: rows first, then the array's own per-row axes."""
    return ("row", *((f"{name}_dim",) if len(shape) == 1 else (f"{name}_dim{i}" for i in range(len(shape)))))


class ZarrSink(_Staged):
    """arrays: zarr array name -> (batch column, per-row shape, dtype[, array attributes]). Resume
    unit: one chunk, finished once its marker file exists (zarr writes are not atomic: a chunk
    without a marker may be half-written, and is written again).

    Every array has named dimensions and the other arrays name "ids" as their coordinate, so that
    xarray opens the store as a Dataset with ids beside every row; metadata is consolidated at commit."""

    def __init__(self, path, n_rows: int, arrays: dict, attrs: dict, chunk_rows: int, ranges=None, settings=None):
        super().__init__(path, n_rows, ranges, settings)
        self.arrays, self.attrs, self.chunk_rows = arrays, attrs, chunk_rows

    def _create(self) -> None:
        import zarr

        g = zarr.open_group(str(self.tmp), mode="w")
        for name, (_, shape, dtype, *attrs) in self.arrays.items():
            # every chunk is written, even one equal to the fill value, so a missing chunk file always
            # means damage; crc32c makes a damaged chunk fail its read instead of decoding as garbage
            a = g.create_array(name, shape=(self.n_rows, *shape), chunks=(self.chunk_rows, *shape),
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
        chunk = batch["row"] // self.chunk_rows
        held = np.bincount(chunk, minlength=chunk.max() + 1)
        whole = (held == self._chunk_size(np.arange(len(held))))[chunk]  # rows whose chunk this task holds entirely
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
            shutil.rmtree(self.tmp / DONE)
        g = open_zarr(self.tmp, mode="r+")
        # (a resumed run lists, and drops, the skipped rows of the chunks it wrote itself)
        self._note_skipped([s for r in results for s in r.get("skipped", [])])
        if self.skipped:
            g.attrs.update({"n_rows": self._drop_marked(g), "skipped": self.skipped})
        if "ids" in self.arrays:
            index_zarr(g)  # where the ids are out of order: decode --ids reads a few chunks
        g.attrs["complete"] = True
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
    table = manifest_table(pq.read_schema(f"{path}/{min(manifest['files'])}", filesystem=fs), manifest)
    if remote.is_uri(spec):
        pq.write_table(table, f"{path}/{MANIFEST}", filesystem=fs)
    else:
        pq.write_table(table, f"{path}/{MANIFEST}.tmp", filesystem=fs)
        fs.move(f"{path}/{MANIFEST}.tmp", f"{path}/{MANIFEST}")
    if fs.get_file_info(f"{path}/{JSON_MANIFEST}").type == pafs.FileType.File:
        fs.delete_file(f"{path}/{JSON_MANIFEST}")


class PngSink(_Staged):
    """A folder of 8-bit PNG images, one per row, for image models (decode, denoise). A row's file is
    its id as a relative path (an image folder's ids are; others become `ID.png`), its image suffix
    changed to .png. Pixels: the data's units mapped from [lo, lo + span] (the training images'
    range, as the global normaliser keeps it) onto 0..255. The manifest lists every file."""

    def __init__(self, path, n_rows: int, metadata: dict, lo: float, span: float):
        super().__init__(path, n_rows)
        self.metadata, self.lo, self.span = metadata, lo, span

    def _create(self) -> None:
        if not self.remote:
            self.tmp.mkdir(parents=True)

    @staticmethod
    def name_for(row_id) -> str:
        name = str(row_id)
        stem, dot, suffix = name.rpartition(".")
        name = (stem if dot and suffix.lower() in ("png", "jpg", "jpeg") else name) + ".png"
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts:
            raise AepipeError(f'row id "{row_id}" cannot name a file inside the output folder')
        return name

    def _image(self, x: np.ndarray):
        from PIL import Image

        pixels = np.clip(np.rint((x - self.lo) / self.span * 255), 0, 255).astype(np.uint8)
        if pixels.ndim == 3:  # (C, H, W), channels first as the models take them
            pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
        return Image.fromarray(pixels)

    def write(self, blocks) -> dict:
        batch = _to_numpy(blocks)
        if not batch:
            return {"files": [], "skipped": []}
        good = ~bad_rows(batch["id"])
        names = []
        for row_id, x in zip(batch["id"][good], batch["x"][good]):
            name, image = self.name_for(row_id), self._image(x)
            if not self.remote:
                (self.tmp / name).parent.mkdir(parents=True, exist_ok=True)
            self._put_file(name, lambda p, fs, image=image: _save_png(image, p, fs))
            names.append(name)
        return {"files": names, "skipped": skipped_rows(batch["id"])}

    def on_write_complete(self, results: list) -> None:
        results = [r for r in results if r]
        files = [f for r in results for f in r["files"]]
        skipped = [s for r in results for s in r["skipped"]]
        twice = [f for f, n in collections.Counter(files).items() if n > 1]
        if twice:  # two ids named one file (a.jpg and a.png): one image would be lost
            raise AepipeError(f"two rows would both be written as {twice[0]} (ids that differ only in their "
                              "image suffix); write to .zarr or .parquet instead")
        self._check_count(len(files) + len(skipped))
        self._note_skipped(skipped)
        manifest = json.dumps({**self.metadata, "n_rows": len(files), "files": sorted(files),
                               **({"skipped": self.skipped} if skipped else {})}).encode()
        self._put_file(JSON_MANIFEST, lambda p, fs: _write_bytes(manifest, p, fs))
        self._commit()


def _save_png(image, path: str, fs) -> None:
    if fs is None:
        image.save(path, format="PNG")
    else:
        with fs.open_output_stream(path) as f:
            image.save(f, format="PNG")


def _write_bytes(data: bytes, path: str, fs) -> None:
    if fs is None:
        Path(path).write_bytes(data)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)
