"""Arrays: .npy files and the built-in sets (scikit-learn's digits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import AepipeError
from pipeline.sources import Schema, Source

BUILTINS = ("digits", "digits-train", "digits-test")
WHAT = "a .npy array or built-in set"
OPTIONS = ()


def open(where, id_column=None, fitted=None) -> Source:
    """A built-in set by name, or a .npy file at a Location (local or URI)."""
    return builtin(where) if isinstance(where, str) else NpySource(where)


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
        real = np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)
        if len(shape) < 2 or not (real or dtype == bool):  # bool as 0/1, as in Parquet
            raise AepipeError(f"{self.spec}: expected a real-valued array shaped (rows, features...), "
                              f"got {dtype} {shape}")
        if fortran:  # rows are not contiguous on disk: byte ranges would mix them
            raise AepipeError(f"{self.spec}: Fortran-ordered array; save it C-ordered (np.ascontiguousarray)")
        self.dtype, self.n_rows = dtype, shape[0]
        self.row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        self.schema = Schema(("x",), tuple(shape[1:]), tabular=False)

    def _read(self, start, stop):
        with self.where.open() as f:
            f.seek(self.offset + start * self.row_bytes)
            data = f.read((stop - start) * self.row_bytes)
        if len(data) != (stop - start) * self.row_bytes:
            raise AepipeError(f"{self.spec}: file ends before row {stop} (truncated?)")
        x = np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.schema.shape))
        return np.arange(start, stop, dtype=np.int64), x


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


def builtin(name: str) -> ArraySource:
    """scikit-learn's digits, whole or split exactly as ../shared/anchors.py splits it."""
    if name not in BUILTINS:
        raise AepipeError(f'unknown built-in set "{name}"; choose one of {", ".join(BUILTINS)}')
    x, y = _digits()
    ids = np.arange(len(x))
    if name != "digits":
        from sklearn.model_selection import train_test_split

        tr, te = train_test_split(ids, test_size=0.3, random_state=0, stratify=y)
        ids = tr if name == "digits-train" else te
    return ArraySource(f"builtin:{name}", x[ids].reshape(-1, 8, 8).astype(np.float32), ids, labels=y[ids])
