"""Codes stores: reading them back, and checking them whole (quantisation: stores.quantize; chunk
sizes: aepipe.stores).

Stores are written by the sinks (pipeline/aepipe/stores/staging.py and its *_sink.py); everything here reads without Ray, so
`aepipe info` and the checks before a job start in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from aepipe import remote
from aepipe.errors import AepipeError
from aepipe.sources import Location, Schema, Source, locate
from aepipe.sources.parquet import ParquetSource, parquet_files
from aepipe.stores import JSON_MANIFEST, MANIFEST, open_zarr, read_manifest, task_rows
from aepipe.stores.quantize import dequantize, quant_scale

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
        if not a.shards and a.nchunks_initialized == a.nchunks:
            continue
        # one object per chunk, or per shard (its chunks inside, under the same key scheme)
        have, n = sync(keys(a.store, f"{a.path}/")), -(-a.shape[0] // (a.shards or a.chunks)[0])
        lost = [i for i in range(n) if f"{a.path}/{_chunk_key(a, i)}" not in have]
        if lost:
            what = "shard" if a.shards else "chunk"
            raise AepipeError(f"{where}: {what} {name}/{_chunk_key(a, lost[0])} is missing "
                              f"({len(lost)} of {n} {what}s lost); the store is damaged")


def check_manifest(where: Location, manifest: dict) -> None:
    """A Parquet store's parts against its manifest: every file there, with its row count."""
    import pyarrow.parquet as pq

    files = manifest["files"]
    found = {where.relative(f): f for f in parquet_files(where)}
    extra = sorted(set(found) - set(files))
    if extra:
        raise AepipeError(f"{where.spec}: holds {extra[0]}, which the store's manifest does not list")
    for name, n in files.items():
        if name not in found:
            raise AepipeError(f"{where.spec}: part {name} is missing ({n} rows); the store is damaged")
        try:
            rows = pq.ParquetFile(where.open(found[name])).metadata.num_rows
        except Exception as e:
            raise AepipeError(f"{where.show(found[name])}: damaged, not a readable Parquet file ({e})") from None
        if rows != n:
            raise AepipeError(f"{where.show(found[name])}: holds {rows} rows, the manifest says {n}; the store is damaged")


def verify_store(path: str | Path) -> None:
    """`aepipe info --verify`: read every chunk (Zarr) or every page (Parquet) and check it."""
    kind, attrs = read_metadata(path)
    if kind == "zarr":
        g = open_zarr(path)
        for name in sorted(g.array_keys()):
            a = g[name]
            for i in range(a.nchunks):
                read_rows(g, name, i * a.chunks[0], min((i + 1) * a.chunks[0], a.shape[0]), str(path))
        return
    import pyarrow.parquet as pq

    where = locate(str(path))
    for f in parquet_files(where):
        try:
            pq.ParquetFile(where.open(f), page_checksum_verification=True).read()
        except Exception as e:
            raise AepipeError(f"{where.show(f)}: damaged ({str(e).splitlines()[0][:160]})") from None

class StoreGuard:
    """Which write of a store a reader started on, so that a store replaced under it (another
    process's encode --overwrite) is an error, never rows of two stores read as one. A store is
    read in many steps (one per row range, by path); its writer swaps a whole store for a whole
    store (stores.staging), so if the store's root metadata (Zarr's zarr.json, a Parquet store's
    manifest, written anew by every commit) is unchanged after a step, the step read the store
    the reader started on."""

    def __init__(self, where: Location):
        self.where = where
        self.token = self._generation()

    def _generation(self) -> str | None:
        if not self.where.is_dir:  # a single Parquet file: replaced as a whole, by a rename
            info = self.where.fs.get_file_info(self.where.path)
            return f"{info.size}:{info.mtime_ns}"
        for name in ("zarr.json",) if self.where.suffix == ".zarr" else (MANIFEST, JSON_MANIFEST):
            try:
                with self.where.open(f"{self.where.path}/{name}") as f:
                    return hashlib.sha256(f.read()).hexdigest()
            except OSError:  # FileNotFoundError among them: the store is gone, or was never whole
                continue
        return None

    def check(self) -> None:
        if self._generation() != self.token:
            raise AepipeError(f"{self.where.spec}: replaced by another aepipe run (--overwrite) while this one "
                              "read it; run again to read the new store", exit_code=1)

    def read(self, fn, start: int, stop: int):
        """fn(start, stop), checked after: a read that failed because the store was swapped away
        mid-read says so instead of naming a missing chunk."""
        try:
            rows = fn(start, stop)
        except Exception:
            self.check()
            raise
        self.check()
        return rows


class ZarrCodesSource(Source):
    """A Zarr codes store read back as a source of (ids, codes)."""

    def __init__(self, path: str, attrs: dict, guard: StoreGuard | None = None):  # a local path or a URI
        self.spec, self.path, self.attrs = str(path), str(path), attrs
        self.guard = guard or StoreGuard(locate(self.path))
        g = open_zarr(self.path)
        self.n_rows, d = g["codes"].shape
        self.schema = Schema(("codes",), (d,), tabular=False)
        self.chunk_rows = g["codes"].chunks[0]

    def _read(self, start, stop):
        return self.guard.read(self._rows, start, stop)

    def _rows(self, start, stop):
        g = open_zarr(self.path)
        return read_rows(g, "ids", start, stop, self.spec), read_rows(g, "codes", start, stop, self.spec)

    def ranges(self, rows_per_task=None):
        return super().ranges(task_rows(self.chunk_rows, 4 * self.schema.size, self.n_rows))


class ParquetCodesSource(ParquetSource):
    """A Parquet codes store read back as a source of (ids, codes)."""

    def __init__(self, where: Location, guard: StoreGuard | None = None):
        super().__init__(where, id_column="id", columns=("code",))
        self.guard = guard or StoreGuard(where)

    def _read(self, start, stop):
        return self.guard.read(super()._read, start, stop)


def read_metadata(path: str | Path) -> tuple[str, dict]:
    """('zarr' | 'parquet', provenance) of a store aepipe wrote (a local path or a URI); refuses
    anything else."""
    where = locate(str(path))  # "no such file or folder", or cannot reach it
    path = str(path)
    if where.suffix == ".zarr":
        try:
            g = open_zarr(path)
            attrs = dict(g.attrs)
            arrays = {name: g[name] for name in g.array_keys()}  # array metadata read and parsed here
            wanted = ["ids", "codes" if "code_dim" in attrs else "data"] if "model_fingerprint" in attrs else []
            lost = [name for name in wanted if name not in arrays]
            if lost:
                raise AepipeError(f'{path}: array "{lost[0]}" is missing or its metadata is damaged')
        except AepipeError:
            raise
        except Exception as e:
            raise AepipeError(f"{path}: not a readable Zarr group ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        kind = "zarr"
    elif where.suffix == ".parquet":
        import pyarrow.parquet as pq

        m = read_manifest(where)
        if m is not None:
            check_manifest(where, m)  # first: a lost part must be named, whatever else is left
        files = parquet_files(where)
        try:
            meta = (pq.read_schema(where.open(files[0])).metadata or {}) if files else {}
        except Exception as e:
            raise AepipeError(f"{where.show(files[0])}: not a readable Parquet file ({e})") from None
        attrs = json.loads(meta[b"aepipe"]) if b"aepipe" in meta else {}
        if m is not None:  # rows left out are known only at commit
            if m.get("skipped"):
                attrs.update(n_rows=m["n_rows"], skipped=m["skipped"])
            if "encoded_files" in m:  # grown by encode --append: the parts' own metadata predates the rest
                attrs.update(n_rows=m["n_rows"], input_files=len(m["encoded_files"]), drift=m.get("drift"))
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
        missing_chunks(g, path)
    elif where.is_dir and m is None:
        raise AepipeError(f"{path}: no {MANIFEST}; the store is damaged or its write never finished")
    return kind, attrs


def open_codes(path: str | Path, known: tuple[str, dict] | None = None,
               guard: StoreGuard | None = None) -> tuple[Source, dict]:
    """A codes store as a Source of (ids, codes as stored), plus its provenance (`known`: what
    read_metadata(path) already returned, not read twice; `guard`: taken before that read)."""
    guard = guard or StoreGuard(locate(str(path)))  # first: what is read next belongs to this write
    try:
        kind, attrs = known or read_metadata(path)
        if "code_dim" not in attrs:
            raise AepipeError(f"{path}: holds decoded data, not codes")
        src = ZarrCodesSource(str(path), attrs, guard) if kind == "zarr" else ParquetCodesSource(guard.where, guard)
    except Exception:
        guard.check()  # a store swapped away mid-open says so, rather than looking damaged
        raise
    guard.check()  # the metadata and the source's shape came from one write
    return src, attrs


def compression(size: int, attrs: dict) -> list[tuple[str, str]]:
    """Bytes per row on disk, against the input: its raw size (rows x features x 4 bytes, as
    float32) and, where encode recorded them, its files' size on disk."""
    n = attrs.get("n_rows")
    if not n:
        return []
    rows = [("bytes per row", f"{size / n:.1f} on disk ({n} rows)")]
    raw, files = attrs.get("input_bytes"), attrs.get("input_file_bytes")
    if not raw and files and attrs.get("image_sizes") == "own":  # images of many sizes: see bits per pixel
        return rows + [("vs input", f"input files: {files / n:.1f} B/image on disk, {files / size:.1f}x the store")]
    if not raw:
        return rows + [("vs input", "input size not recorded (store written by an older aepipe)")]
    parts = [f"raw input: {raw / n:.0f} B/row ({n} rows x {raw // n // 4} float32), {raw / size:.1f}x the store"]
    if files:
        parts.append(f"input files: {files / n:.1f} B/row on disk, {files / size:.1f}x the store")
    return rows + [("vs input", "; ".join(parts))]


def describe_store(path: str | Path) -> list[tuple[str, str]]:
    """What `aepipe info STORE` prints."""
    import pyarrow.fs as pafs

    kind, attrs = read_metadata(path)
    where = locate(str(path))
    rows = [("store", f"{path} ({kind})")]
    if kind == "zarr":
        g = open_zarr(path)
        for name in sorted(g.array_keys()):
            a = g[name]
            rows.append((f"array {name}", f"{a.shape} {a.dtype}, chunks {a.chunks}"))
    else:
        import pyarrow.parquet as pq

        files = parquet_files(where)
        n = sum(pq.ParquetFile(where.open(f)).metadata.num_rows for f in files)
        rows.append(("rows", f"{n} in {len(files)} files, columns {pq.read_schema(where.open(files[0])).names[:6]}"))
    infos = (where.fs.get_file_info(pafs.FileSelector(where.path, recursive=True)) if where.is_dir
             else [where.fs.get_file_info(where.path)])
    size = sum(i.size for i in infos if i.type == pafs.FileType.File)
    rows.append(("bytes on disk" if not remote.is_uri(path) else "bytes stored", f"{size:,}"))
    rows += compression(size, attrs)
    rows += [(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in attrs.items()
             if k != "quantization"]
    return rows


# ---------------------------------------------------------------- for Python callers

FORMATS = ("numpy", "pandas", "arrow")


def local_path(uri: str | Path) -> Path | str:
    """A local path from a path or a file:// URI; other URIs (s3://, gs://) as they are, which
    the store readers open through pyarrow and fsspec."""
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # a Windows drive letter is no scheme
        return Path(parsed.path if parsed.scheme == "file" else text)
    return text


def load_codes(store: str | Path, as_: str = "numpy"):
    """Every row of a codes store (Zarr or Parquet), codes as float32 (int8 de-quantised).

    numpy: (ids, codes (N, d)); pandas: a DataFrame indexed by id with columns code_0..code_{d-1};
    arrow: a Table with columns id and code (fixed-size list), like a Parquet codes store."""
    if as_ not in FORMATS:
        raise AepipeError(f'as_="{as_}": choose one of {", ".join(FORMATS)}')
    src, attrs = open_codes(local_path(store))
    parts = [src.read(a, b) for a, b in src.ranges()]
    ids = np.concatenate([p[0] for p in parts])
    codes = dequantize(np.concatenate([p[1] for p in parts]), attrs["dtype"], quant_scale(attrs))
    if as_ == "numpy":
        return ids, codes
    if as_ == "pandas":
        import pandas as pd

        return pd.DataFrame(codes, index=pd.Index(ids, name="id"),
                            columns=[f"code_{i}" for i in range(codes.shape[1])])
    import pyarrow as pa

    flat = pa.array(codes.ravel())
    return pa.table({"id": ids, "code": pa.FixedSizeListArray.from_arrays(flat, codes.shape[1])})
