"""The bitstream store: a codes store whose attributes say code_kind "bitstream", holding one
entropy-coded bitstream per image (what compress models write). Per image it holds:

    codes / bitstream   the ANS words as variable-length bytes (Zarr vlen-bytes; Parquet binary)
    latent_shape        (M, h, w): what the decoder needs besides the bytes
    image_size          (H, W): the image's own size, which decode gives back (stores written
                        before it hold images of the model's size)
    nbytes, crc32       the length and zlib CRC32 written: a truncated or damaged bitstream is refused
                        with its image's id before decoding (ANS would decode any bytes into garbage)

The bits counted (attrs "bits_per_pixel", the summary line) are the sum of the stored bitstreams'
lengths over the images' pixels; the shape, size, length and CRC columns are bookkeeping beside
them, not counted as rate.

Read back (BitstreamSource), a row is one record (aepipe.bitstream.record): the bitstream behind its
latent shape and image size, all that a decode task needs.
"""

from __future__ import annotations

import numpy as np

from aepipe.bitstream import crc32, record
from aepipe.errors import AepipeError
from aepipe.sources import Schema, Source, locate
from aepipe.sources.images import MAX_PIXELS
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
                  "image_size": ("image_size", (2,), "int32"), "nbytes": ("nbytes", (), "int64"), "crc32": ("crc32", (), "int64"), "ids": ("id", (), ids_kind)}
        return ZarrSink(out, src.n_rows, arrays, attrs, chunk_rows, ranges, settings)
    cols = {"id": ("id", "scalar"), "bitstream": ("bitstream", "scalar"), "latent_shape": ("latent_shape", "list"),
            "image_size": ("image_size", "list"), "nbytes": ("nbytes", "scalar"), "crc32": ("crc32", "scalar")}
    return ParquetSink(out, src.n_rows, cols, attrs, ranges, settings)


def stored_rate(out) -> tuple[int, int]:
    """(bits, pixels) of a finished store: its bitstreams' bits, the rate it really holds, and its
    images' pixels (H x W, each at the size it was coded at; 0 for a store written before sizes were
    kept). One read of both columns."""
    cols = _columns(str(out), read_metadata_kind(str(out)), ("nbytes", "image_size"))
    return 8 * int(cols["nbytes"].sum()), int(np.prod(_sizes(cols.get("image_size", [])), axis=1).sum())


def stored_bytes(path) -> dict[str, int]:
    """Each image's bitstream length in bytes, by id (what `aepipe compare --codes` counts); a store
    of any other kind is refused."""
    kind, attrs = read_metadata(str(path))
    if attrs.get("code_kind") != KIND:
        raise AepipeError(f"{path}: not a bitstream store (it holds {attrs.get('dtype', 'float')} codes, not one "
                          "bitstream per image as a --family compress model encodes)")
    cols = _columns(str(path), kind, ("id", "nbytes"))
    return {str(i): int(n) for i, n in zip(cols["id"], cols["nbytes"])}


def image_sizes(path, kind: str | None = None) -> np.ndarray:
    """(H, W) of every image in a store, (n, 2); none (0, 2) for a store written before they were kept."""
    return _sizes(_columns(str(path), kind or read_metadata_kind(str(path)), ("image_size",)).get("image_size", []))


def _sizes(column) -> np.ndarray:
    """A stored image_size column (rows of (H, W)) as an (n, 2) array."""
    return np.stack(list(column)).astype(np.int64).reshape(-1, 2) if len(column) else np.zeros((0, 2), np.int64)


def describe_rate(path) -> list[tuple[str, str]]:
    """What `aepipe info` adds for a bitstream store: its rate from the stored bytes."""
    kind, attrs = read_metadata(str(path))
    if attrs.get("code_kind") != KIND:
        return []
    bits, pixels = stored_rate(path)
    if not pixels:  # written before image sizes were stored
        return [("bits per pixel", f"{bits:,} bits stored; image sizes not recorded (an older store)")]
    return [("bits per pixel", f"{bits / pixels:.4f}: {bits:,} bits of bitstreams over {pixels:,} pixels"
             + (", every image at its own size" if attrs.get("image_sizes") == "own" else ""))]


def read_metadata_kind(path: str) -> str:
    return read_metadata(path)[0]


def _columns(path: str, kind: str, names) -> dict:
    """Whole columns of a bitstream store by name (Parquet parts in row order: named by first row);
    a store written before a column was (image_size) lacks it."""
    if kind == "zarr":
        g = open_zarr(path)
        n = g["ids"].shape[0]
        return {k: read_rows(g, {"bitstream": "codes", "id": "ids"}.get(k, k), 0, n, path) for k in names
                if k in ("bitstream", "id") or k in g}
    import pyarrow.parquet as pq

    where = locate(path)
    files = sorted(parquet_files(where))
    if files:
        have = pq.read_schema(where.open(files[0])).names
        names = [k for k in names if k in have]
    tables = [pq.read_table(where.open(f), columns=list(names)) for f in files]
    cols = {k: [t.column(k).to_numpy(zero_copy_only=False) for t in tables] for k in names}
    return {k: np.concatenate(v) if v else np.array([]) for k, v in cols.items()}


class BitstreamSource(Source):
    """A bitstream store read back as (ids, records: see record()), each bitstream checked against
    its stored length, CRC32 and latent shape as it is read: a damaged one stops the job with its
    image's id. (Parquet stores are read whole on open; Zarr stores chunk by chunk.)

    model: (latent channels, the analysis transform's downsampling factor, the model's (H, W)),
    what the latent shape of an image of each size must be."""

    def __init__(self, path: str, kind: str, attrs: dict, model: tuple, rows: tuple[int, int] | None = None):
        self.spec, self.path, self.kind, self.model = str(path), str(path), kind, model
        self.cols = None if kind == "zarr" else _columns(self.path, kind, ("id", "bitstream", *COLUMNS))
        n = len(self.cols["id"]) if self.cols else _zarr_rows(self.path)
        self.first, stop = rows or (0, n)
        self.n_rows = stop - self.first
        self.schema = Schema(("bitstream",), (1,), tabular=False)

    def _raw(self, a: int, b: int) -> dict:
        if self.cols is not None:
            return {k: v[a:b] for k, v in self.cols.items()}
        g = open_zarr(self.path)
        return {"id": read_rows(g, "ids", a, b, self.path), "bitstream": read_rows(g, "codes", a, b, self.path),
                **{k: read_rows(g, k, a, b, self.path) for k in COLUMNS if k in g}}

    def latent_shape(self, image_size) -> tuple[int, int, int]:
        """The latent shape the model makes of an image of image_size (H, W)."""
        m, factor, _ = self.model
        return (m, *(-(-int(s) // factor) for s in image_size))

    def read(self, start: int, stop: int):
        c = self._raw(self.first + start, self.first + stop)
        records = np.empty(len(c["bitstream"]), dtype=object)  # bytes objects as they are, not a fixed-width S array
        for i, s in enumerate(c["bitstream"]):
            s = bytes(s)
            size = _ints(c["image_size"][i]) if "image_size" in c else self.model[2]
            shape = self.latent_shape(size)
            problem = (f"holds {len(s)} bytes, {c['nbytes'][i]} were written (truncated or padded)"
                       if len(s) != c["nbytes"][i] else
                       "fails its CRC32 check (damaged)" if crc32(s) != c["crc32"][i] else
                       # never allocated: a store's size column is not trusted further than encode wrote it
                       f"claims an image of {size[0]}x{size[1]} pixels (encode writes 1 to {MAX_PIXELS:,})"
                       if not (min(size) >= 1 and size[0] * size[1] <= MAX_PIXELS) else
                       f"has latent shape {_ints(c['latent_shape'][i])}, the model makes {shape} of a "
                       f"{size[0]}x{size[1]} image" if _ints(c["latent_shape"][i]) != shape else None)
            if problem:
                raise AepipeError(f'{self.spec}: the bitstream of image "{c["id"][i]}" {problem}; not decoding it')
            records[i] = record(s, shape, size)
        return np.asarray(c["id"]), records


COLUMNS = ("latent_shape", "image_size", "nbytes", "crc32")  # beside the bitstream (image_size: newer stores)


def _ints(shape) -> tuple[int, ...]:
    """A stored latent shape as plain ints, as the model's is (and as a message shows it)."""
    return tuple(int(v) for v in shape)


def _zarr_rows(path: str) -> int:
    return open_zarr(path)["ids"].shape[0]
