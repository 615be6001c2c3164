"""Data sources, their schema, and the normalisation fitted once at training time.

Every source answers three things: how many rows it has, their Schema, and `read(start, stop)`
giving rows [start, stop) as (ids, x). `to_dataset` turns that into a Ray Dataset whose read
tasks each own a fixed row range, so every row carries its global index (`row`) whichever
worker reads it and whatever order blocks finish in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import AepipeError

BUILTINS = ("digits", "digits-train", "digits-test")
ROWS_PER_TASK = 4096  # big enough to amortise a Ray task, small enough to stream


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
        if expected.tabular:
            missing = [c for c in expected.columns if c not in self.columns]
            if missing:
                raise AepipeError(f'{where} has no column "{missing[0]}", which the model was trained on '
                                  f"(it expects {len(expected.columns)} columns: {_short(expected.columns)})")
            extra = [c for c in self.columns if c not in expected.columns]
            if extra:
                raise AepipeError(f'{where} has column "{extra[0]}", which the model was not trained on')
        if self.shape != expected.shape:
            if len(self.shape) != len(expected.shape):
                raise AepipeError(f"{where} rows have shape {self.shape}, the model expects {expected.shape}")
            dim = next(i for i, (a, b) in enumerate(zip(self.shape, expected.shape)) if a != b)
            raise AepipeError(f"{where} rows have shape {self.shape}, the model expects {expected.shape} "
                              f"(dimension {dim}: {self.shape[dim]} vs {expected.shape[dim]})")


def _short(names, n=5) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


class Source:
    """Rows addressed by global index. Subclasses set spec, schema, n_rows and implement _read."""

    spec: str
    schema: Schema
    n_rows: int
    labels: np.ndarray | None = None  # only built-in sets carry labels

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        ids, x = self._read(start, stop)
        x = np.asarray(x, dtype=np.float32).reshape((stop - start, *self.schema.shape))
        _check_finite(x, start, self)
        return ids, x

    def _read(self, start: int, stop: int):
        raise NotImplementedError

    def ranges(self, rows_per_task: int = ROWS_PER_TASK) -> list[tuple[int, int]]:
        return [(a, min(a + rows_per_task, self.n_rows)) for a in range(0, self.n_rows, rows_per_task)]


def _check_finite(x: np.ndarray, start: int, src: Source) -> None:
    flat = x.reshape(len(x), -1)
    bad = ~np.isfinite(flat)
    if bad.any():
        r, c = map(int, np.argwhere(bad)[0])
        col = src.schema.columns[c] if src.schema.tabular else f"{src.schema.columns[0]}[{c}]"
        raise AepipeError(f'{src.spec}: row {start + r} holds {flat[r, c]} in column "{col}"; '
                          "aepipe needs finite numbers (drop or impute those rows first)")


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


def parquet_files(path: Path) -> list[Path]:
    """A Parquet dataset's files in a fixed order: that order defines its rows' global indices."""
    return sorted(path.rglob("*.parquet")) if path.is_dir() else [path]


class ParquetSource(Source):
    """A Parquet file or folder. Features: every numeric column, or one list column.

    A column named by `id_column` (default: a column called "id", if any) is the row id, not a
    feature. Read tasks follow row-group boundaries, found from the footers without reading data.
    """

    def __init__(self, path: Path, id_column: str | None = None, columns: tuple[str, ...] | None = None):
        self.spec, self.only = str(path), columns
        files = parquet_files(path)
        if not files:
            raise AepipeError(f"{path}: folder holds no .parquet files")
        self.files = [str(f) for f in files]
        self.groups = []  # (global start, n rows, file index, row-group index)
        start, arrow_schema = 0, None
        for fi, f in enumerate(self.files):
            try:
                meta = pq.ParquetFile(f).metadata
                schema = meta.schema.to_arrow_schema()
            except Exception as e:
                raise AepipeError(f"{f}: not a readable Parquet file ({e})") from None
            arrow_schema = arrow_schema or schema
            _same_columns(arrow_schema, schema, self.files[0], f)
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                self.groups.append((start, n, fi, g))
                start += n
        self.n_rows = start
        self.id_column = id_column or ("id" if "id" in arrow_schema.names else None)
        if self.id_column and self.id_column not in arrow_schema.names:
            raise AepipeError(f'{path}: no id column "{self.id_column}" (columns: {_short(arrow_schema.names)})')
        self.schema = self._feature_schema(arrow_schema)

    def _feature_schema(self, arrow_schema: pa.Schema) -> Schema:
        fields = [f for f in arrow_schema if f.name != self.id_column and (not self.only or f.name in self.only)]
        lists = [f for f in fields if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
                 or pa.types.is_large_list(f.type)]
        if len(lists) == 1 and len(fields) == 1:
            f = lists[0]
            if pa.types.is_fixed_size_list(f.type):
                size = f.type.list_size
            else:  # a variable list: take the first row's length, every read checks the rest
                first = pq.ParquetFile(self.files[0]).read_row_group(0, columns=[f.name]).column(0)
                size = len(first[0]) if len(first) else 0
            return Schema((f.name,), (size,), tabular=False)
        for f in fields:
            if not (pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type)):
                raise AepipeError(f'{self.spec}: column "{f.name}" is {f.type}; aepipe reads numeric columns '
                                  "or a single list column (pass --id-column if it is the row id)")
        if not fields:
            raise AepipeError(f"{self.spec}: no feature columns")
        return Schema(tuple(f.name for f in fields), (len(fields),), tabular=True)

    def ranges(self, rows_per_task: int = ROWS_PER_TASK) -> list[tuple[int, int]]:
        cuts, acc = [0], 0
        for start, n, _, _ in self.groups:  # whole row groups per task, merged up to rows_per_task
            if acc and acc + n > rows_per_task:
                cuts.append(start)
                acc = 0
            acc += n
        return [(a, b) for a, b in zip(cuts, cuts[1:] + [self.n_rows]) if b > a]

    def _read(self, start, stop):
        parts, first = [], None
        for g0, n, fi, g in self.groups:
            if g0 + n > start and g0 < stop:
                first = g0 if first is None else first
                parts.append(_read_group(self.files[fi], g))
        table = pa.concat_tables(parts, promote_options="permissive").slice(start - first, stop - start)
        ids = table.column(self.id_column).to_numpy() if self.id_column else np.arange(start, stop)
        return ids, self._features(table, start)

    def _features(self, table: pa.Table, start: int) -> np.ndarray:
        s = self.schema
        missing = [c for c in s.columns if c not in table.column_names]
        if missing:
            raise AepipeError(f'{self.spec}: a file lacks column "{missing[0]}" that the first file has')
        if s.tabular:  # nulls become NaN, which the finite check then names
            return np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float32)
                                    for c in s.columns])
        col = table.column(s.columns[0]).combine_chunks()
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if (lengths != s.size).any():
            r = int(np.flatnonzero(lengths != s.size)[0])
            raise AepipeError(f'{self.spec}: row {start + r} of column "{s.columns[0]}" has '
                              f"{lengths[r]} values, the others {s.size}")
        return pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32)


def _same_columns(first: pa.Schema, other: pa.Schema, first_file, other_file) -> None:
    """Every file of a folder holds the same columns with the same types as the first one, checked
    from the footers before any row is read (else a row would show up as "holds nan" later)."""
    if other_file == first_file:
        return
    for f in first:
        if f.name not in other.names:
            raise AepipeError(f'{other_file}: no column "{f.name}", which {first_file} has; '
                              "every file of a Parquet folder needs the same columns")
        t = other.field(f.name).type
        if t != f.type and not (pa.types.is_floating(t) and pa.types.is_floating(f.type)):
            raise AepipeError(f'{other_file}: column "{f.name}" is {t}, but {f.type} in {first_file}')
    extra = [n for n in other.names if n not in first.names]
    if extra:
        raise AepipeError(f'{other_file}: has column "{extra[0]}", which {first_file} lacks')


def _read_group(path: str, group: int) -> pa.Table:
    try:  # page checksums are verified where the writer stored them (aepipe's own stores do)
        return pq.ParquetFile(path, page_checksum_verification=True).read_row_group(group)
    except Exception as e:
        raise AepipeError(f"{path}: row group {group} is damaged ({str(e).splitlines()[0][:160]})") from None


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


def open_source(spec: str, id_column: str | None = None) -> Source:
    """Open DATA as given on the command line; every failure is one AepipeError."""
    if spec.startswith("builtin:"):
        src = builtin(spec.split(":", 1)[1])
    else:
        path = Path(spec)
        if not path.exists():
            raise AepipeError(f"{spec}: no such file or folder")
        if path.suffix == ".npy":
            src = NpySource(path)
        elif path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet"))):
            src = ParquetSource(path, id_column)
        else:
            raise AepipeError(f'{spec}: unsupported format "{path.suffix or "folder"}"; aepipe reads '
                              "Parquet (file or folder), .npy and builtin:digits")
    if src.n_rows == 0:
        raise AepipeError(f"{spec}: the dataset is empty (0 rows)")
    return src


def read_block(src: Source, start: int, stop: int) -> dict:
    """Rows [start, stop) as one block: row (global index), id and x. Ray Datasets and the
    in-process fit both read through this, so both see the same rows and the same split."""
    ids, x = src.read(start, stop)
    return {"row": np.arange(start, stop, dtype=np.int64), "id": ids, "x": x}


def to_dataset(src: Source, rows_per_task: int = ROWS_PER_TASK):
    """A Ray Dataset with columns row (global index), id and x (float32, schema shape)."""
    import ray.data
    from ray.data.block import BlockAccessor, BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    def read(a, b):
        return [BlockAccessor.batch_to_block(read_block(src, a, b))]

    class RowRanges(Datasource):
        def estimate_inmemory_data_size(self):
            return src.n_rows * (src.schema.size * 4 + 16)

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [ReadTask(lambda a=a, b=b: read(a, b),
                             BlockMetadata(num_rows=b - a, size_bytes=(b - a) * src.schema.size * 4,
                                           input_files=None, exec_stats=None))
                    for a, b in ranges]

    ranges = src.ranges(rows_per_task)
    # exactly one block per range: left to itself Ray splits small reads into more blocks, and
    # blocks that straddle Zarr chunks would send their rows through the driver
    return ray.data.read_datasource(RowRanges(), override_num_blocks=len(ranges))


# ---------------------------------------------------------------- normalisation and statistics

def block_stats(batch: dict) -> dict:
    """Per-block partial sums, combined on the driver: one small row per block, never the data."""
    x = batch["x"].reshape(len(batch["x"]), -1).astype(np.float64)
    return {"count": np.array([len(x)]), "sum": x.sum(0)[None], "sumsq": (x * x).sum(0)[None],
            "min": x.min(0)[None], "max": x.max(0)[None]}


def combine_stats(rows: list[dict]) -> dict:
    """rows: block_stats outputs, as batches or as the rows Dataset.take_all gives back."""
    get = lambda key: np.stack([np.reshape(r[key], -1) for r in rows])  # noqa: E731
    return {"count": int(get("count").sum()), "sum": get("sum").sum(0), "sumsq": get("sumsq").sum(0),
            "min": get("min").min(0), "max": get("max").max(0)}


NORMALIZERS = ("global", "feature", "standard", "none")


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """x_model = (x - shift) / scale, per feature (flattened) or one scalar for the whole row."""

    kind: str
    shift: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, kind: str, stats: dict) -> "Normalizer":
        if kind == "global":  # images: one range for all pixels keeps their relative contrast
            lo, hi = float(stats["min"].min()), float(stats["max"].max())
            return cls(kind, (lo,), (hi - lo or 1.0,))
        if kind == "feature":  # tables: every column to [0, 1] whatever its unit
            lo, hi = stats["min"], stats["max"]
            return cls(kind, tuple(lo.tolist()), tuple(np.where(hi > lo, hi - lo, 1.0).tolist()))
        if kind == "standard":
            mean = stats["sum"] / stats["count"]
            std = np.sqrt(np.maximum(stats["sumsq"] / stats["count"] - mean ** 2, 0))
            return cls(kind, tuple(mean.tolist()), tuple(np.where(std > 0, std, 1.0).tolist()))
        if kind == "none":
            return cls(kind, (0.0,), (1.0,))
        raise AepipeError(f'unknown normalisation "{kind}"; choose one of {", ".join(NORMALIZERS)}')

    def _arrays(self, shape):
        shift, scale = np.asarray(self.shift, np.float32), np.asarray(self.scale, np.float32)
        if shift.size > 1:
            shift, scale = shift.reshape(shape), scale.reshape(shape)
        return shift, scale

    def apply(self, x: np.ndarray) -> np.ndarray:
        shift, scale = self._arrays(x.shape[1:])
        return ((x - shift) / scale).astype(np.float32)

    def invert(self, y: np.ndarray) -> np.ndarray:
        shift, scale = self._arrays(y.shape[1:])
        return (y * scale + shift).astype(np.float32)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Normalizer":
        return cls(d["kind"], tuple(d["shift"]), tuple(d["scale"]))


def default_normalizer(schema: Schema) -> str:
    return "feature" if schema.tabular else "global"


def in_validation(rows: np.ndarray, fraction: float) -> np.ndarray:
    """A fixed pseudo-random split by global row index: same rows every run, no shuffle needed."""
    h = (rows.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2 ** 32)
    return h.astype(np.float64) / 2 ** 32 < fraction


def fingerprint(src: Source, stats: dict) -> str:
    """Identifies the training data by its schema, size and moments, without rereading it."""
    blob = json.dumps({"schema": src.schema.to_json(), "n": src.n_rows,
                       "sum": np.round(stats["sum"], 6).tolist(), "sumsq": np.round(stats["sumsq"], 6).tolist()})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
