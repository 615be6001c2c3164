"""Where codes and reconstructions land: Zarr and Parquet datasinks, quantisation, readers.

Both sinks write into `OUT.partial` and rename it to OUT only once every row is in and counted,
so a store at OUT is always complete; a failed job removes its `.partial`.

Zarr: Ray 2.60 has no Zarr writer, so ZarrSink is one. Each write task puts its rows at their
global positions (`row`). Whole chunks go straight from the workers; rows of a chunk that a task
only partly holds come back to the driver (at most two chunks per task, since read tasks follow
chunk boundaries) and are written there, so no two processes ever write the same chunk.
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

from pipeline import AepipeError
from pipeline.data import ROWS_PER_TASK, ParquetSource, Schema, Source, parquet_files

DTYPES = ("float32", "float16", "int8")
MANIFEST = "_aepipe_manifest.json"  # "_" keeps it out of pyarrow's and Ray's dataset readers


# ---------------------------------------------------------------- quantisation

def quantize(z: np.ndarray, dtype: str, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """int8: per-dimension affine map of the training codes' [lo, hi] onto [-127, 127]."""
    if dtype == "int8":
        scale = np.where(hi > lo, hi - lo, 1.0)
        return np.clip(np.round((z - lo) / scale * 254 - 127), -127, 127).astype(np.int8)
    return z.astype(dtype)


def dequantize(q: np.ndarray, dtype: str, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    if dtype == "int8":
        scale = np.where(hi > lo, hi - lo, 1.0)
        return ((q.astype(np.float32) + 127) / 254 * scale + lo).astype(np.float32)
    return q.astype(np.float32)


# ---------------------------------------------------------------- sinks

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
    """Shared by both sinks: write into OUT.partial, count rows, rename into place."""

    def __init__(self, path: str | Path, n_rows: int):
        self.final = Path(path)
        self.tmp = self.final.with_name(self.final.name + ".partial")
        self.n_rows = n_rows

    def _check_count(self, written: int) -> None:
        if written != self.n_rows:  # a dropped or doubled block: refuse to present it as done
            raise AepipeError(f"{self.final}: wrote {written} rows, expected {self.n_rows}", exit_code=1)

    def _commit(self) -> None:
        if self.final.is_dir():
            shutil.rmtree(self.final)
        elif self.final.exists():
            self.final.unlink()
        self.tmp.rename(self.final)

    def on_write_failed(self, error: Exception) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class ZarrSink(_Staged):
    """arrays: zarr array name -> (batch column, per-row shape, dtype)."""

    def __init__(self, path, n_rows: int, arrays: dict, attrs: dict, chunk_rows: int):
        super().__init__(path, n_rows)
        self.arrays, self.attrs, self.chunk_rows = arrays, attrs, chunk_rows

    def on_write_start(self, schema=None) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
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
            return {"n": 0, "partial": None}
        chunk = batch["row"] // self.chunk_rows
        held = np.bincount(chunk, minlength=chunk.max() + 1)
        size = np.minimum(self.chunk_rows, self.n_rows - np.arange(len(held)) * self.chunk_rows)
        whole = (held == size)[chunk]  # rows whose chunk this task holds entirely
        self._put(batch, whole)
        partial = {k: v[~whole] for k, v in batch.items()} if (~whole).any() else None
        return {"n": len(batch["row"]), "partial": partial}

    def on_write_complete(self, write_result) -> None:
        results = write_result.write_returns
        partials = [r["partial"] for r in results if r["partial"] is not None]
        if partials:
            merged = {k: np.concatenate([p[k] for p in partials]) for k in partials[0]}
            self._put(merged, np.ones(len(merged["row"]), bool))
        self._check_count(sum(r["n"] for r in results))
        zarr.open_group(str(self.tmp), mode="r+").attrs["complete"] = True
        self._commit()


class ParquetSink(_Staged):
    """One file per write task, named by the task's index so a retried task overwrites its own file.

    columns: output column -> (batch column, kind); kind "scalar", "list" (fixed-size list), or a
    tuple of names to split an (N, k) array into k scalar columns (a table's own columns)."""

    def __init__(self, path, n_rows: int, columns: dict, metadata: dict):
        super().__init__(path, n_rows)
        self.columns, self.metadata = columns, metadata

    def on_write_start(self, schema=None) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
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
        dest = self.tmp / f"part-{ctx.task_idx:05d}.parquet"
        pq.write_table(self._table(batch), str(dest) + ".tmp", write_page_checksum=True)
        Path(str(dest) + ".tmp").replace(dest)
        return {dest.name: len(batch["row"])}

    def on_write_complete(self, write_result) -> None:
        files = {k: v for r in write_result.write_returns if r for k, v in r.items()}
        self._check_count(sum(files.values()))
        # the manifest names every part and its rows: a deleted or truncated part is found on read
        (self.tmp / MANIFEST).write_text(json.dumps({"n_rows": self.n_rows, "files": dict(sorted(files.items()))}))
        self._commit()


def chunk_rows_for(row_bytes: int) -> int:
    """About 1 MiB per chunk: large enough for fast I/O, small enough to spread over workers."""
    return int(max(256, min(65536, 2 ** 20 // max(row_bytes, 1))))


def task_rows(chunk_rows: int, input_row_bytes: int) -> int:
    """Rows per read task: whole output chunks, and at most ~64 MiB of input (large images)."""
    most = max(1, min(ROWS_PER_TASK, 2 ** 26 // max(input_row_bytes, 1)))
    return chunk_rows * max(1, most // chunk_rows)


def quant_range(attrs: dict) -> tuple[np.ndarray, np.ndarray]:
    """A store's int8 scale (lo, hi per dimension); unused placeholders for float stores."""
    q = attrs.get("quantization") or {"lo": [0.0], "hi": [1.0]}
    return np.asarray(q["lo"], np.float32), np.asarray(q["hi"], np.float32)


def id_dtype(src: Source) -> str:
    """Zarr dtype for a source's ids: strings stay strings, anything else int64."""
    return "str" if src.read(0, 1)[0].dtype.kind in "OUS" else "int64"


# ---------------------------------------------------------------- readers and integrity

def _chunk_key(a, i: int) -> str:
    return a.metadata.encode_chunk_key((i,) + (0,) * (a.ndim - 1))


def read_rows(g, name: str, start: int, stop: int, where: str):
    """Rows [start, stop) of array `name`; a chunk whose checksum or codec fails is named."""
    a = g[name]
    try:
        return a[start:stop]
    except Exception as e:
        c = a.chunks[0]
        for i in range(start // c, (stop - 1) // c + 1):  # find the culprit chunk
            try:
                a[i * c:min((i + 1) * c, a.shape[0])]
            except Exception:
                raise AepipeError(f"{where}: chunk {name}/{_chunk_key(a, i)} is damaged "
                                  f"({str(e).splitlines()[0][:120]})") from None
        raise


def missing_chunks(g, where: str) -> None:
    """Every chunk of every array must be on disk: zarr would read a missing one as fill values."""
    from zarr.core.sync import sync

    async def keys(store, prefix):
        return {k async for k in store.list_prefix(prefix)}

    for name in sorted(g.array_keys()):
        a = g[name]
        if a.nchunks_initialized == a.nchunks:
            continue
        have = sync(keys(a.store, f"{a.path}/"))
        for i in range(a.nchunks):
            if f"{a.path}/{_chunk_key(a, i)}" not in have:
                raise AepipeError(f"{where}: chunk {name}/{_chunk_key(a, i)} is missing "
                                  f"({a.nchunks - a.nchunks_initialized} of {a.nchunks} chunks lost); the store is damaged")


def check_manifest(path: Path) -> None:
    """A Parquet store's parts against its manifest: every file there, with its row count."""
    m = path / MANIFEST
    if not m.is_file():
        raise AepipeError(f"{path}: no {MANIFEST}; the store is damaged or was not finished")
    try:
        files = json.loads(m.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise AepipeError(f"{m}: damaged ({e})") from None
    found = {f.name for f in parquet_files(path)}
    extra = sorted(found - set(files))
    if extra:
        raise AepipeError(f"{path}: holds {extra[0]}, which the store's manifest does not list")
    for name, n in files.items():
        f = path / name
        if not f.is_file():
            raise AepipeError(f"{path}: part {name} is missing ({n} rows); the store is damaged")
        try:
            rows = pq.ParquetFile(f).metadata.num_rows
        except Exception as e:
            raise AepipeError(f"{f}: damaged, not a readable Parquet file ({e})") from None
        if rows != n:
            raise AepipeError(f"{f}: holds {rows} rows, the manifest says {n}; the store is damaged")


def verify_store(path: str | Path) -> None:
    """`aepipe info --verify`: read every chunk (Zarr) or every page (Parquet) and check it."""
    kind, attrs = read_metadata(path)
    path = Path(path)
    if kind == "zarr":
        g = zarr.open_group(str(path), mode="r")
        for name in sorted(g.array_keys()):
            a = g[name]
            for i in range(a.nchunks):
                read_rows(g, name, i * a.chunks[0], min((i + 1) * a.chunks[0], a.shape[0]), str(path))
        return
    for f in parquet_files(path):
        try:
            pq.ParquetFile(f, page_checksum_verification=True).read()
        except Exception as e:
            raise AepipeError(f"{f}: damaged ({str(e).splitlines()[0][:160]})") from None

class ZarrCodesSource(Source):
    """A Zarr codes store read back as a source of (ids, codes)."""

    def __init__(self, path: Path, attrs: dict):
        self.spec, self.path, self.attrs = str(path), str(path), attrs
        g = zarr.open_group(self.path, mode="r")
        self.n_rows, d = g["codes"].shape
        self.schema = Schema(("codes",), (d,), tabular=False)
        self.chunk_rows = g["codes"].chunks[0]

    def _read(self, start, stop):
        g = zarr.open_group(self.path, mode="r")
        return read_rows(g, "ids", start, stop, self.spec), read_rows(g, "codes", start, stop, self.spec)

    def ranges(self, rows_per_task=None):
        return super().ranges(task_rows(self.chunk_rows, 4 * self.schema.size))


def read_metadata(path: str | Path) -> tuple[str, dict]:
    """('zarr' | 'parquet', provenance) of a store aepipe wrote; refuses anything else."""
    path = Path(path)
    if not path.exists():
        raise AepipeError(f"{path}: no such file or folder")
    if path.suffix == ".zarr":
        try:
            g = zarr.open_group(str(path), mode="r")
            attrs = dict(g.attrs)
            arrays = {name: g[name] for name in g.array_keys()}  # array metadata read and parsed here
        except Exception as e:
            raise AepipeError(f"{path}: not a readable Zarr group ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        kind = "zarr"
    elif path.suffix == ".parquet":
        files = parquet_files(path)
        try:
            meta = (pq.read_schema(files[0]).metadata or {}) if files else {}
        except Exception as e:
            raise AepipeError(f"{files[0]}: not a readable Parquet file ({e})") from None
        attrs = json.loads(meta[b"aepipe"]) if b"aepipe" in meta else {}
        kind = "parquet"
    else:
        raise AepipeError(f"{path}: not a codes store (expected a .zarr or .parquet path)")
    if "model_fingerprint" not in attrs:
        raise AepipeError(f"{path}: not written by aepipe (no provenance metadata)")
    if kind == "zarr" and not attrs.get("complete"):
        raise AepipeError(f"{path}: store is incomplete (its write never finished)")
    if kind == "zarr":
        n = attrs.get("n_rows")
        for name, a in arrays.items():
            if n is not None and a.shape[0] != n:
                raise AepipeError(f"{path}: array {name} has {a.shape[0]} rows, the store says {n}; it is damaged")
        missing_chunks(g, str(path))
    elif path.is_dir():
        check_manifest(path)
    return kind, attrs


def open_codes(path: str | Path) -> tuple[Source, dict]:
    """A codes store as a Source of (ids, codes as stored), plus its provenance."""
    kind, attrs = read_metadata(path)
    if "code_dim" not in attrs:
        raise AepipeError(f"{path}: holds decoded data, not codes")
    if kind == "zarr":
        return ZarrCodesSource(Path(path), attrs), attrs
    return ParquetSource(Path(path), id_column="id", columns=("code",)), attrs


def describe_store(path: str | Path) -> list[tuple[str, str]]:
    """What `aepipe info STORE` prints."""
    kind, attrs = read_metadata(path)
    path = Path(path)
    rows = [("store", f"{path} ({kind})")]
    if kind == "zarr":
        g = zarr.open_group(str(path), mode="r")
        for name in sorted(g.array_keys()):
            a = g[name]
            rows.append((f"array {name}", f"{a.shape} {a.dtype}, chunks {a.chunks}"))
    else:
        files = parquet_files(path)
        n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        rows.append(("rows", f"{n} in {len(files)} files, columns {pq.read_schema(files[0]).names[:6]}"))
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    rows.append(("bytes on disk", f"{size:,}"))
    rows += [(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in attrs.items()
             if k != "quantization"]
    return rows
