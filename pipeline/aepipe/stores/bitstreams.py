"""The bitstream store: a codes store whose attributes say code_kind "bitstream", holding one
entropy-coded bitstream per image (what compress models write). Per image it holds:

    codes / bitstream   the ANS words as variable-length bytes (Zarr vlen-bytes; Parquet binary)
    latent_shape        (M, h, w): what the decoder needs besides the bytes
    nbytes, crc32       the length and zlib CRC32 written: a truncated or damaged bitstream is refused
                        with its image's id before decoding (ANS would decode any bytes into garbage)

The bits counted (attrs "bits_per_pixel", the summary line) are the sum of the stored bitstreams'
lengths; the shape, length and CRC columns are bookkeeping beside them, not counted as rate.
"""

from __future__ import annotations

import numpy as np

from aepipe.bitstream import crc32
from aepipe.errors import AepipeError
from aepipe.sources import Schema, Source, locate
from aepipe.sources.parquet import parquet_files
from aepipe.stores.read import open_zarr, read_metadata, read_rows
from aepipe.stores.parquet_sink import ParquetSink
from aepipe.stores.zarr_sink import ZarrSink

KIND = "bitstream"


def encode_sink(out, src, attrs: dict, ids_kind: str, chunk_rows: int, ranges, settings):
    """The Zarr or Parquet sink of a bitstream store (the same staged, all-or-nothing sinks as codes)."""
    attrs.update(code_kind=KIND, dtype=KIND)
    if out.suffix == ".zarr":
        arrays = {"codes": ("bitstream", (), "bytes"), "latent_shape": ("latent_shape", (3,), "int32"),
                  "nbytes": ("nbytes", (), "int64"), "crc32": ("crc32", (), "int64"), "ids": ("id", (), ids_kind)}
        return ZarrSink(out, src.n_rows, arrays, attrs, chunk_rows, ranges, settings)
    cols = {"id": ("id", "scalar"), "bitstream": ("bitstream", "scalar"), "latent_shape": ("latent_shape", "list"),
            "nbytes": ("nbytes", "scalar"), "crc32": ("crc32", "scalar")}
    return ParquetSink(out, src.n_rows, cols, attrs, ranges, settings)


def stored_bits(out) -> int:
    """Bits of every bitstream in a finished store: the rate that the store really holds."""
    return 8 * int(_columns(str(out), read_metadata_kind(str(out)), ("nbytes",))["nbytes"].sum())


def read_metadata_kind(path: str) -> str:
    return read_metadata(path)[0]


def _columns(path: str, kind: str, names) -> dict:
    """Whole columns of a bitstream store by name (Parquet parts in row order: named by first row)."""
    if kind == "zarr":
        g = open_zarr(path)
        n = g["ids"].shape[0]
        return {k: read_rows(g, "codes" if k == "bitstream" else k, 0, n, path) for k in names}
    import pyarrow.parquet as pq

    where = locate(path)
    tables = [pq.read_table(where.open(f), columns=list(names)) for f in sorted(parquet_files(where))]
    cols = {k: [t.column(k).to_numpy(zero_copy_only=False) for t in tables] for k in names}
    return {k: np.concatenate(v) if v else np.array([]) for k, v in cols.items()}


class BitstreamSource(Source):
    """A bitstream store read back as (ids, bitstreams), each checked against its stored length,
    CRC32 and latent shape as it is read: a damaged one stops the job with its image's id.
    (Parquet stores are read whole on open; Zarr stores chunk by chunk.)"""

    def __init__(self, path: str, kind: str, attrs: dict, latent_shape, rows: tuple[int, int] | None = None):
        self.spec, self.path, self.kind, self.latent_shape = str(path), str(path), kind, tuple(latent_shape)
        self.cols = None if kind == "zarr" else _columns(self.path, kind, ("id", "bitstream", "latent_shape", "nbytes", "crc32"))
        n = len(self.cols["id"]) if self.cols else _zarr_rows(self.path)
        self.first, stop = rows or (0, n)
        self.n_rows = stop - self.first
        self.schema = Schema(("bitstream",), (1,), tabular=False)

    def _raw(self, a: int, b: int) -> dict:
        if self.cols is not None:
            return {k: v[a:b] for k, v in self.cols.items()}
        g = open_zarr(self.path)
        return {"id": read_rows(g, "ids", a, b, self.path), "bitstream": read_rows(g, "codes", a, b, self.path),
                **{k: read_rows(g, k, a, b, self.path) for k in ("latent_shape", "nbytes", "crc32")}}

    def read(self, start: int, stop: int):
        c = self._raw(self.first + start, self.first + stop)
        for i, s in enumerate(c["bitstream"]):
            s = bytes(s)
            problem = (f"holds {len(s)} bytes, {c['nbytes'][i]} were written (truncated or padded)"
                       if len(s) != c["nbytes"][i] else
                       "fails its CRC32 check (damaged)" if crc32(s) != c["crc32"][i] else
                       f"has latent shape {_ints(c['latent_shape'][i])}, the model makes {self.latent_shape}"
                       if _ints(c["latent_shape"][i]) != self.latent_shape else None)
            if problem:
                raise AepipeError(f'{self.spec}: the bitstream of image "{c["id"][i]}" {problem}; not decoding it')
        streams = np.empty(len(c["bitstream"]), dtype=object)  # bytes objects as they are, not a fixed-width S array
        streams[:] = [bytes(s) for s in c["bitstream"]]
        return np.asarray(c["id"]), streams


def _ints(shape) -> tuple[int, ...]:
    """A stored latent shape as plain ints, as the model's is (and as a message shows it)."""
    return tuple(int(v) for v in shape)


def _zarr_rows(path: str) -> int:
    return open_zarr(path)["ids"].shape[0]
