"""Data sources: where rows come from, one module per kind behind one contract.

Every source answers three things: how many rows it has, their Schema, and `read(start, stop)`
giving rows [start, stop) as (ids, x). `to_dataset` (dataset.py) turns that into a Ray Dataset
whose read tasks each own a fixed row range, so every row carries its global index (`row`)
whichever worker reads it and whatever order blocks finish in.

A source may learn something from the training data that encoding must reuse (a table's
categories, an image folder's size and mode): `fitted()` returns it as plain JSON, the run dir
keeps it, and `open_source(..., fitted=...)` reads new data the same way.

    arrays.py   in-memory arrays, .npy files, Zarr arrays and the built-in sets
    parquet.py  Parquet files and folders
    csv.py      CSV files and folders (.csv, .csv.gz): numbers and one-hot categories (csv_rows.py:
                cutting their bytes at row ends)
    images.py   image folders (PNG, JPEG, GIF, TIFF, WebP)

A row that cannot be read (a corrupt image) stops the job, naming it, or with --on-bad-row skip
keeps its place, zeros for x and its id marked (mark_bad): rows are addressed by a global index
fixed at open, and the sinks count every one. The mark rides in the id because every model job
passes ids through untouched, so it reaches the sinks, which drop marked rows and list them in
the store's metadata (pipeline/aepipe/stores/staging.py); training leaves them out of statistics and fit.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from pathlib import Path

from aepipe.errors import AepipeError
from aepipe.sources.dataset import ROWS_PER_TASK, plan as plan, read_block as read_block, task_range as task_range
from aepipe.sources.dataset import to_dataset as to_dataset



@dataclasses.dataclass(frozen=True)
class Schema:
    columns: tuple[str, ...]  # feature columns in order; a single name for a tensor/list column
    shape: tuple[int, ...]  # one row's features: (64,) for a table, (8, 8) for digits
    tabular: bool  # True: one numeric column per feature; False: one array-valued column

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def to_json(self) -> dict:
        return {"columns": list(self.columns), "shape": list(self.shape), "tabular": self.tabular}

    @classmethod
    def from_json(cls, d: dict) -> "Schema":
        return cls(tuple(d["columns"]), tuple(d["shape"]), bool(d["tabular"]))

    def check_matches(self, expected: "Schema", where: str) -> None:
        """Refuse data the model was not trained on, naming the first column or dimension off."""
        if expected.tabular:  # by set: tables may have tens of thousands of columns
            mine, theirs = set(self.columns), set(expected.columns)
            missing = [c for c in expected.columns if c not in mine]
            if missing:
                raise AepipeError(f'{where} has no column "{missing[0]}", which the model was trained on '
                                  f"(it expects {len(expected.columns)} columns: {_short(expected.columns)})")
            extra = [c for c in self.columns if c not in theirs]
            if extra:
                raise AepipeError(f'{where} has column "{extra[0]}", which the model was not trained on')
        if self.shape != expected.shape:
            if len(self.shape) != len(expected.shape):
                raise AepipeError(f"{where} rows have shape {self.shape}, the model expects {expected.shape}")
            dim = next(i for i, (a, b) in enumerate(zip(self.shape, expected.shape)) if a != b)
            raise AepipeError(f"{where} rows have shape {self.shape}, the model expects {expected.shape} "
                              f"(dimension {dim}: {self.shape[dim]} vs {expected.shape[dim]})")


def numpy_of(col) -> np.ndarray:
    """An Arrow array or column as numpy. Numbers without nulls come straight from their buffer:
    to_numpy() imports pandas (0.2-0.3 s of a small ask here) to ask about pandas types. Anything
    else, nulls included (NaN for floats), goes through to_numpy()."""
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if col.null_count or not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        return col.to_numpy(zero_copy_only=False)
    dtype = np.dtype(t.to_pandas_dtype())
    return np.frombuffer(col.buffers()[1], dtype, len(col), col.offset * dtype.itemsize)


def _short(names, n=5) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


class Source:
    """Rows addressed by global index. Subclasses set spec, schema, n_rows and implement _read."""

    spec: str
    schema: Schema
    n_rows: int
    labels: np.ndarray | None = None  # only built-in sets carry labels

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        ids, raw = self._read(start, stop)
        raw = np.asarray(raw)
        with np.errstate(over="ignore"):  # a float64 beyond float32's range: _check_finite names it
            x = raw.astype(np.float32, copy=False).reshape((stop - start, *self.schema.shape))
        _check_finite(x, start, self, raw)
        return ids, x

    def _read(self, start: int, stop: int):
        raise NotImplementedError

    def fitted(self) -> dict:
        """What reading new data like this needs from the training pass (JSON-able)."""
        return {}

    def notes(self) -> list[str]:
        """What the user should hear about how the rows were read (the command's summary line
        carries them), e.g. categories unseen in training."""
        return []

    def ranges(self, rows_per_task: int = ROWS_PER_TASK) -> list[tuple[int, int]]:
        return [(a, min(a + rows_per_task, self.n_rows)) for a in range(0, self.n_rows, rows_per_task)]


BAD = "\x1f"  # ASCII unit separator: never in a file name in practice


def mark_bad(row_id: str, reason: str) -> str:
    """The id a skipped row carries: BAD id BAD reason."""
    return f"{BAD}{row_id}{BAD}{reason}"


def bad_rows(ids: np.ndarray) -> np.ndarray:
    """Which ids are marked bad (only string ids can be)."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "OUST" or not len(ids):  # T: numpy 2 StringDType (Zarr 3)
        return np.zeros(len(ids), bool)
    return np.array([isinstance(i, str) and i.startswith(BAD) for i in ids.tolist()], bool)


def skipped_rows(ids: np.ndarray) -> list[dict]:
    """The marked ids as {"id", "reason"}: what stores and summaries list."""
    ids = np.asarray(ids)
    return [dict(zip(("id", "reason"), str(i)[1:].split(BAD, 1))) for i in ids[bad_rows(ids)]]


def _check_finite(x: np.ndarray, start: int, src: Source, raw: np.ndarray) -> None:
    """Every value finite in float32; raw (the values as read) names one too big for float32."""
    flat = x.reshape(len(x), -1)
    bad = ~np.isfinite(flat)
    if bad.any():
        r, c = map(int, np.argwhere(bad)[0])
        col = src.schema.columns[c] if src.schema.tabular else f"{src.schema.columns[0]}[{c}]"
        was = raw.reshape(len(x), -1)[r, c]
        if np.isfinite(was):
            raise AepipeError(f'{src.spec}: row {start + r} holds {was:g} in column "{col}", beyond float32\'s '
                              f"range (±{np.finfo(np.float32).max:.1e}); aepipe computes in float32 (rescale it)")
        raise AepipeError(f'{src.spec}: row {start + r} holds {flat[r, c]} in column "{col}"; '
                          "aepipe needs finite numbers (drop or impute those rows first)")


@dataclasses.dataclass(frozen=True)
class Location:
    """Where DATA lives: a local path or a URI (s3://, gs://, file://), through pyarrow's filesystems
    (S3 honours AWS_ENDPOINT_URL and the usual AWS_* variables)."""

    spec: str  # as the user wrote it: error messages name this
    fs: object  # pyarrow.fs.FileSystem
    path: str  # the path inside fs (bucket/key for object stores)
    is_dir: bool

    @property
    def suffix(self) -> str:
        return Path(self.path).suffix.lower()

    def files(self, *suffixes: str) -> list[str]:
        """Files under a folder (recursive, sorted: that order defines rows' global indices), or
        the file itself; with suffixes, only names ending in one of them (case-insensitive)."""
        import pyarrow.fs as pafs

        if not self.is_dir:
            return [self.path]
        if isinstance(self.fs, pafs.LocalFileSystem):  # pyarrow follows symlink loops: 2^40 paths
            return sorted(p for p in _local_files(self.path) if p.lower().endswith(suffixes or ("",)))
        found = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        return sorted(f.path for f in found if f.type == pafs.FileType.File
                      and (not suffixes or f.path.lower().endswith(suffixes)))

    def relative(self, path: str) -> str:
        """A file's path relative to the folder DATA names (an image's row id)."""
        return path[len(self.path.rstrip("/")) + 1:] if self.is_dir else Path(path).name

    def show(self, path: str) -> str:
        """A file inside this location as a user would write it (s3://bucket/key for a URI)."""
        scheme = self.spec.split("://", 1)[0] if "://" in self.spec and not self.spec.startswith("file://") else ""
        return f"{scheme}://{path}" if scheme else path

    def open(self, path: str | None = None):
        """A seekable binary file (pyarrow NativeFile; numpy, PIL, pyarrow all read it)."""
        return self.fs.open_input_file(path or self.path)


def _local_files(top: str) -> list[str]:
    """Regular files under a local folder. A link to a folder inside it is passed over (its files
    are listed by their own path); one outside is followed, each real folder entered once: a link
    loop is never walked forever, nor a file listed twice."""
    def refuse(e: OSError):
        raise AepipeError(f"{e.filename}: cannot list it ({e.strerror})")

    real_top, seen, found = os.path.realpath(top), set(), []
    for root, dirs, files in os.walk(top, onerror=refuse, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        inside = {d for d in links
                  if os.path.commonpath([os.path.realpath(os.path.join(root, d)), real_top]) == real_top}
        dirs[:] = sorted(d for d in dirs if d not in inside)
        found += [p for p in (os.path.join(root, f) for f in files) if os.path.isfile(p)]
    return found


def locate(spec: str) -> Location:
    import pyarrow.fs as pafs

    try:
        if "://" in spec:
            fs, path = pafs.FileSystem.from_uri(spec)
        else:
            fs, path = pafs.LocalFileSystem(), str(Path(spec).absolute())
        info = fs.get_file_info(path)
    except Exception as e:  # a malformed URI, an unknown scheme, no credentials, no endpoint
        raise AepipeError(f"{spec}: cannot reach it ({str(e).splitlines()[0][:200]})") from None
    if info.type == pafs.FileType.NotFound:
        if "://" in spec and not spec.startswith("file://") and _no_bucket(fs, path):
            bucket = path.split("/", 1)[0]
            raise AepipeError(f'{spec}: no such file or folder (bucket "{bucket}" does not exist)')
        raise AepipeError(f"{spec}: no such file or folder")
    return Location(spec, fs, path, info.type == pafs.FileType.Directory)


def _no_bucket(fs, path: str) -> bool:
    """Whether an object store says the path's bucket is missing (a hint for the error only)."""
    import pyarrow.fs as pafs

    try:
        return fs.get_file_info(path.split("/", 1)[0]).type == pafs.FileType.NotFound
    except Exception:  # no right to look at the bucket itself: say nothing more
        return False


def open_source(spec: str, id_column: str | None = None, fitted: dict | None = None, **options) -> Source:
    """Open DATA as given on the command line; every failure is one AepipeError.

    options: the read options of the command line (columns, mode, image_size, on_bad_row,
    fill_missing; None where not given). A kind refuses the ones that mean nothing to it."""
    import importlib

    options = {k: v for k, v in options.items() if v is not None}
    if spec.startswith("builtin:"):
        kind, where = "arrays", spec.split(":", 1)[1]
    else:
        where = locate(spec)
        kind = next((name for name, test in KINDS.items() if test(where)), None)
        if kind is None:
            raise AepipeError(f'{spec}: unsupported format "{where.suffix or "folder"}"; aepipe reads '
                              f"{FORMATS}")
    module = importlib.import_module(f"aepipe.sources.{kind}")
    unknown = [k for k in options if k not in module.OPTIONS]
    if unknown:
        takes = ", ".join(f"--{o.replace('_', '-')}" for o in module.OPTIONS) or "no read options"
        raise AepipeError(f"--{unknown[0].replace('_', '-')} does not apply to {spec} ({module.WHAT} takes {takes})")
    src = module.open(where, id_column=id_column, fitted=fitted or {}, **options)
    if src.n_rows == 0:
        raise AepipeError(f"{spec}: the dataset is empty (0 rows)")
    return src


def _holds(where: Location, *suffixes: str) -> bool:
    return where.is_dir and bool(where.files(*suffixes))


def _is_zarr(where: Location) -> bool:
    """A .zarr folder, or a Zarr array inside one named by its own path (data.zarr/x)."""
    import pyarrow.fs as pafs

    if where.suffix == ".zarr":
        return True
    meta = [f"{where.path}/{name}" for name in ("zarr.json", ".zarray")]
    return where.is_dir and any(i.type == pafs.FileType.File for i in where.fs.get_file_info(meta))


# Which module reads a path: the first whose test passes (a folder goes by the files it holds).
# Each module has WHAT (its kind in words), OPTIONS (the read options it takes) and
# open(where: Location | builtin name, id_column, fitted, **options).
KINDS = {
    "arrays": lambda w: w.suffix == ".npy" or _is_zarr(w),
    "parquet": lambda w: w.suffix == ".parquet" or _holds(w, ".parquet"),
    "csv": lambda w: w.path.lower().endswith((".csv", ".csv.gz")) or _holds(w, ".csv", ".csv.gz"),
    "images": lambda w: w.suffix in IMAGES or _holds(w, *IMAGES),
}
IMAGES = (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".webp")  # what images.py reads
FORMATS = ("Parquet or CSV (file or folder; also .csv.gz), .npy, a Zarr array (.zarr), image folders (PNG, JPEG, "
           "GIF, TIFF, WebP), "
           "builtin:digits and builtin:photos")


def open_for_run(spec: str, meta: dict, id_column: str | None = None, **options) -> Source:
    """Open new data the way a run's training data was read (its id column, what it fitted)."""
    return open_source(spec, id_column or meta.get("id_column"), fitted=meta.get("reader"), **options)


def input_files(src: Source) -> list[tuple[str, int, int]]:
    """(path, bytes, modification time in ns) of each file a source reads, through its Location
    (a local folder or an object store); none for built-in sets."""
    where = getattr(src, "where", None)
    if where is None:
        return []
    paths = getattr(src, "files", None) or getattr(src, "paths", None) or where.files()
    return [(i.path, i.size, i.mtime_ns or 0) for i in where.fs.get_file_info(list(paths))]


def open_matching(data: str, run, id_column: str | None = None, read: dict | None = None):
    """DATA opened with the model's id column and checked against its schema; read in its column order."""
    src = open_for_run(data, run.meta, id_column, **(read or {}))
    src.schema.check_matches(run.schema, data)
    src.schema = run.schema
    return src
