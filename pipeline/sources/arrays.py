"""Arrays: .npy files and the built-in sets (scikit-learn's digits, scikit-image's photographs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import AepipeError
from pipeline.sources import Schema, Source

BUILTINS = ("digits", "digits-train", "digits-test", "photos")
# scikit-image's photographs, as ../shared/anchors.py names them
PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "horse", "coins", "moon", "grass", "gravel", "brick")
PATCH = 32  # builtin:photos rows: PATCH x PATCH grayscale patches on a grid
WHAT = "a .npy array or built-in set"
OPTIONS = ()


def open(where, id_column=None, fitted=None) -> Source:
    """A built-in set by name, or a .npy file by path."""
    return builtin(where) if isinstance(where, str) else NpySource(Path(where.path))


class ArraySource(Source):
    """An in-memory array: the built-in sets."""

    def __init__(self, spec: str, x: np.ndarray, ids: np.ndarray, labels=None, column="pixels"):
        self.spec, self.x, self.ids, self.labels = spec, x, ids, labels
        self.n_rows = len(x)
        self.schema = Schema((column,), tuple(x.shape[1:]), tabular=False)

    def _read(self, start, stop):
        return self.ids[start:stop], self.x[start:stop]


class NpySource(Source):
    """A .npy file shaped (N, ...), memory-mapped so each read task touches only its rows."""

    def __init__(self, path: Path):
        self.spec, self.path = str(path), str(path)
        arr = self._open()
        real = np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)
        if arr.ndim < 2 or not (real or arr.dtype == bool):  # bool as 0/1, as in Parquet
            raise AepipeError(f"{path}: expected a real-valued array shaped (rows, features...), "
                              f"got {arr.dtype} {arr.shape}")
        self.n_rows = arr.shape[0]
        self.schema = Schema(("x",), tuple(arr.shape[1:]), tabular=False)

    def _open(self):
        try:
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            raise AepipeError(f"{self.path}: not a readable .npy array ({e})") from None

    def _read(self, start, stop):
        return np.arange(start, stop, dtype=np.int64), self._open()[start:stop]


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
    """A photograph as 0..255 grayscale, converted as ../shared/anchors.py converts it."""
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
    """scikit-learn's digits, whole or split exactly as ../shared/anchors.py splits it, or photos."""
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
