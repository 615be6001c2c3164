"""Arrays: .npy files, Zarr arrays and the built-in sets (scikit-learn's digits, scikit-image's photographs)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from aepipe.errors import AepipeError
from aepipe.sources import ROWS_PER_TASK, Schema, Source, _short

BUILTINS = ("digits", "digits-train", "digits-test", "photos")
# scikit-image's photographs (skimage.data), by the names it gives them
PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "horse", "coins", "moon", "grass", "gravel", "brick")
PATCH = 32  # builtin:photos rows: PATCH x PATCH grayscale patches on a grid
WHAT = "a .npy or Zarr array or built-in set"
OPTIONS = ()


def open(where, id_column=None, fitted=None) -> Source:
    """A built-in set by name, a .npy file or a .zarr array at a Location (local or URI)."""
    if isinstance(where, str):
        return builtin(where)
    return NpySource(where) if where.suffix == ".npy" else ZarrSource(where)


def _check_array(spec: str, dtype, shape) -> None:
    real = np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)
    if len(shape) < 2 or not (real or dtype == bool):  # noqa: E721 - a numpy dtype equals bool; bool as 0/1, as in Parquet
        raise AepipeError(f"{spec}: expected a real-valued array shaped (rows, features...), got {dtype} {shape}")


class ArraySource(Source):
    """An in-memory array: the built-in sets."""

    def __init__(self, spec: str, x: np.ndarray, ids: np.ndarray, labels=None, column="pixels"):
        self.spec, self.x, self.ids, self.labels = spec, x, ids, labels
        self.n_rows = len(x)
        self.schema = Schema((column,), tuple(x.shape[1:]), tabular=False)

    def _read(self, start, stop):
        return self.ids[start:stop], self.x[start:stop]


class NpySource(Source):
    """A .npy file shaped (N, ...): the header is parsed once and each read task fetches only its
    rows' bytes, by offset, through the Location's filesystem (a local file or an object store)."""

    def __init__(self, where):
        self.where, self.spec = where, where.spec
        try:
            with where.open() as f:
                version = np.lib.format.read_magic(f)
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = header(f)
                self.offset = f.tell()
        except Exception as e:
            raise AepipeError(f"{self.spec}: not a readable .npy array ({e})") from None
        _check_array(self.spec, dtype, shape)
        if fortran:  # rows are not contiguous on disk: byte ranges would mix them
            raise AepipeError(f"{self.spec}: Fortran-ordered array; save it C-ordered (np.ascontiguousarray)")
        self.dtype, self.n_rows = dtype, shape[0]
        self.row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        size = where.fs.get_file_info(where.path).size
        if size is not None and self.offset + self.n_rows * self.row_bytes > size:  # a lying or truncated header
            raise AepipeError(f"{self.spec}: its header claims {self.n_rows} rows of shape {tuple(shape[1:])} "
                              f"({self.n_rows * self.row_bytes} bytes) but the file holds "
                              f"{max(size - self.offset, 0)} bytes of data (truncated, or a damaged header)")
        self.schema = Schema(("x",), tuple(shape[1:]), tabular=False)

    def _read(self, start, stop):
        with self.where.open() as f:
            f.seek(self.offset + start * self.row_bytes)
            data = f.read((stop - start) * self.row_bytes)
        if len(data) != (stop - start) * self.row_bytes:
            raise AepipeError(f"{self.spec}: file ends before row {stop} (truncated?)")
        x = np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.schema.shape))
        return np.arange(start, stop, dtype=np.int64), x


class ZarrSource(Source):
    """A Zarr array shaped (N, ...), any rank, read chunk by chunk: every read task covers whole
    chunks along axis 0, so no chunk is fetched by two tasks. Ids are the row indices.

    A group is accepted when it holds exactly one array (read as that array); an aepipe codes or
    output store (a group with ids beside its data) is refused: it is a result, not data, and
    encoding its codes would lose their ids. Name one array inside a group by its path instead."""

    def __init__(self, where):
        self.spec, self.where, self.name = where.spec, where, None
        arr = self._open()
        _check_array(self.spec, arr.dtype, arr.shape)
        self.n_rows, self.chunk = arr.shape[0], max(1, arr.chunks[0])
        self.schema = Schema(("x",), tuple(arr.shape[1:]), tabular=False)
        self._check_stored(arr)

    def _check_stored(self, arr) -> None:
        """Refuse an array whose metadata claims far more rows than its stored chunks reach (a
        damaged or hostile shape of 10^12 rows): Zarr reads a chunk never written as its fill
        value, so those rows would be made up, and there could be more than memory or time allow.
        The chunk files are listed (not the chunk grid, which the claimed shape makes huge)."""
        import pyarrow.fs as pafs

        base = f"{self.where.path.rstrip('/')}/{self.name}" if self.name else self.where.path.rstrip("/")
        try:
            found = self.where.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        except Exception:  # not listable (a store that cannot list): leave it to the reads
            return
        unit = (arr.shards or arr.chunks)[0]  # a sharded array stores one file per shard
        last = -1
        for f in found:
            parts = re.split(r"[./]", f.path[len(base) + 1:])
            parts = parts[1:] if parts[0] == "c" else parts  # Zarr 3's default keys: c/0/0/0
            if f.type == pafs.FileType.File and parts and parts[0].isdigit():
                last = max(last, int(parts[0]))
        reach = min(self.n_rows, (last + 1) * unit)
        if self.n_rows > max(2 * reach, unit):
            raise AepipeError(f"{self.spec}: its metadata claims {self.n_rows} rows but its stored chunks reach only "
                              f"row {reach}; the rest would be made-up fill values (a damaged shape, or an array "
                              "never written)")

    def _open(self):
        import zarr

        try:
            node = zarr.open(store=_zarr_store(self.where), mode="r")
        except Exception as e:
            raise AepipeError(f"{self.spec}: not a readable Zarr array ({str(e).splitlines()[0][:160]})") from None
        if isinstance(node, zarr.Array):
            return node
        arrays = sorted(name for name, _ in node.arrays())
        if self.name is None and len(arrays) == 1:
            self.name = arrays[0]
        if self.name is not None:
            return node[self.name]
        if "ids" in arrays or "aepipe_version" in node.attrs:
            raise AepipeError(f"{self.spec}: an aepipe store ({', '.join(arrays)}), not data: `aepipe decode` reads "
                              f"codes; to read one of its arrays as data, name it ({self.spec}/{arrays[0]})")
        raise AepipeError(f"{self.spec}: a Zarr group of {len(arrays)} arrays ({_short(arrays)}); "
                          f"name the one to read, e.g. {self.spec}/{arrays[0] if arrays else 'x'}")

    def ranges(self, rows_per_task: int = ROWS_PER_TASK) -> list[tuple[int, int]]:
        step = max(1, rows_per_task // self.chunk) * self.chunk  # whole chunks per task
        return [(a, min(a + step, self.n_rows)) for a in range(0, self.n_rows, step)]

    def _read(self, start, stop):
        return np.arange(start, stop, dtype=np.int64), self._open()[start:stop]


def _zarr_store(where):
    """What zarr.open takes for a Location: the plain path on a local disk; elsewhere (s3://) the
    Location's pyarrow filesystem seen through fsspec, so every kind reaches data the same way."""
    import pyarrow.fs as pafs

    if isinstance(where.fs, pafs.LocalFileSystem):
        return where.path
    from fsspec.implementations.arrow import ArrowFSWrapper
    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
    from zarr.storage import FsspecStore

    return FsspecStore(AsyncFileSystemWrapper(ArrowFSWrapper(where.fs), asynchronous=True), read_only=True,
                       path=where.path)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """load_digits(return_X_y=True), read from the file scikit-learn ships without importing
    sklearn.datasets (2-3 s of a 1-epoch fit's wall time here)."""
    import gzip
    import importlib.util

    try:
        path = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0]) / "datasets/data/digits.csv.gz"
        with gzip.open(path, "rt") as f:
            data = np.loadtxt(f, delimiter=",")
        return data[:, :-1], data[:, -1].astype(int)
    except (OSError, AttributeError, TypeError):  # another layout: ask scikit-learn
        from sklearn.datasets import load_digits

        return load_digits(return_X_y=True)


def _gray(a: np.ndarray) -> np.ndarray:
    """A photograph as 0..255 grayscale: 0.299 R + 0.587 G + 0.114 B, [0, 1] images scaled to 0..255."""
    if a.ndim == 3:
        a = 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
    a = a.astype(np.float64)
    return np.clip(a * 255 if a.max() <= 1.0 else a, 0, 255)  # horse is boolean


def photos() -> ArraySource:
    """builtin:photos: every photograph cut into non-overlapping PATCH x PATCH patches, row-major
    (edges that do not fill a patch are left out); ids "camera/0003", labels the photograph's index."""
    try:
        import skimage.data as skd
    except ImportError:
        raise AepipeError("builtin:photos needs scikit-image (pip install scikit-image)") from None
    xs, ids, labels = [], [], []
    for k, name in enumerate(PHOTOS):
        a = _gray(getattr(skd, name)())
        gh, gw = a.shape[0] // PATCH, a.shape[1] // PATCH
        p = a[:gh * PATCH, :gw * PATCH].reshape(gh, PATCH, gw, PATCH).transpose(0, 2, 1, 3).reshape(-1, PATCH, PATCH)
        xs.append(p)
        ids += [f"{name}/{i:04d}" for i in range(len(p))]
        labels += [k] * len(p)
    return ArraySource("builtin:photos", np.concatenate(xs).astype(np.float32), np.array(ids, dtype=object),
                       labels=np.array(labels))


def builtin(name: str) -> ArraySource:
    """scikit-learn's digits, whole or split (train_test_split: 30 % test, random_state 0, stratified), or photos."""
    if name not in BUILTINS:
        raise AepipeError(f'unknown built-in set "{name}"; choose one of {", ".join(BUILTINS)}')
    if name == "photos":
        return photos()
    x, y = _digits()
    ids = np.arange(len(x))
    if name != "digits":
        from sklearn.model_selection import train_test_split

        tr, te = train_test_split(ids, test_size=0.3, random_state=0, stratify=y)
        ids = tr if name == "digits-train" else te
    return ArraySource(f"builtin:{name}", x[ids].reshape(-1, 8, 8).astype(np.float32), ids, labels=y[ids])
