"""Parquet files and folders: numeric columns, or one list column."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aepipe.errors import AepipeError
from aepipe.sources import ROWS_PER_TASK, Location, Schema, Source, _short, numpy_of

WHAT = "Parquet"
OPTIONS = ("columns",)


def open(where: Location, id_column=None, fitted=None, columns=None) -> "ParquetSource":
    return ParquetSource(where, id_column, columns or (fitted or {}).get("columns"))


def parquet_files(where: Location) -> list[str]:
    """A Parquet dataset's files (paths inside where.fs) in a fixed order: that order defines its
    rows' global indices. In a folder, names that start with "_" or "." are not data (Spark's
    _SUCCESS, a store's manifest), as pyarrow's datasets skip them."""
    files = where.files(".parquet")
    if not where.is_dir:
        return files
    return [f for f in files if not any(p.startswith(("_", ".")) for p in where.relative(f).split("/"))]


class ParquetSource(Source):
    """A Parquet file or folder. Features: every numeric column, or one list column.

    A column named by `id_column` (default: a column called "id", if any) is the row id, not a
    feature. Read tasks follow row-group boundaries, found from the footers without reading data.
    """

    def __init__(self, where: Location, id_column: str | None = None, columns: tuple[str, ...] | None = None):
        # where (its filesystem included) is pickled to the read tasks: pyarrow's filesystems pickle
        path = self.spec = where.spec
        self.where, self.only = where, columns
        self.files = parquet_files(where)
        if not self.files:
            raise AepipeError(f"{path}: folder holds no .parquet files")
        self.groups = []  # (global start, n rows, file index, row-group index)
        start, arrow_schema = 0, None
        for fi, f in enumerate(self.files):
            try:
                meta = pq.ParquetFile(where.open(f)).metadata
                schema = meta.schema.to_arrow_schema()
            except Exception as e:
                raise AepipeError(f"{where.show(f)}: not a readable Parquet file ({e})") from None
            arrow_schema = arrow_schema or schema
            _same_columns(arrow_schema, schema, where.show(self.files[0]), where.show(f))
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                self.groups.append((start, n, fi, g))
                start += n
        self.n_rows = start
        self.id_column = id_column or ("id" if "id" in arrow_schema.names else None)
        if self.id_column and self.id_column not in arrow_schema.names:
            raise AepipeError(f'{path}: no id column "{self.id_column}" (columns: {_short(arrow_schema.names)})')
        self.schema = self._feature_schema(arrow_schema)

    def fitted(self) -> dict:
        return {"columns": list(self.only)} if self.only else {}

    def _feature_schema(self, arrow_schema: pa.Schema) -> Schema:
        only = set(self.only or ())  # sets throughout: a table may have tens of thousands of columns
        fields = [f for f in arrow_schema if f.name != self.id_column and (not only or f.name in only)]
        lists = [f for f in fields if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
                 or pa.types.is_large_list(f.type)]
        if len(lists) == 1 and len(fields) == 1:
            f = lists[0]
            if pa.types.is_fixed_size_list(f.type):
                size = f.type.list_size
            else:  # a variable list: take the first row's length, every read checks the rest
                first = pq.ParquetFile(self.where.open(self.files[0])).read_row_group(0, columns=[f.name]).column(0)
                size = len(first[0]) if len(first) else 0
            return Schema((f.name,), (size,), tabular=False)
        for f in fields:
            if not (pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type)
                    or pa.types.is_decimal(f.type)):
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
                parts.append(_read_group(self.where, self.files[fi], g))
        table = pa.concat_tables(parts, promote_options="permissive").slice(start - first, stop - start)
        ids = numpy_of(table.column(self.id_column)) if self.id_column else np.arange(start, stop)
        return ids, self._features(table, start)

    def _features(self, table: pa.Table, start: int) -> np.ndarray:
        s = self.schema
        have = set(table.column_names)
        missing = [c for c in s.columns if c not in have]
        if missing:
            raise AepipeError(f'{self.spec}: a file lacks column "{missing[0]}" that the first file has')
        if s.tabular:  # nulls become NaN, which the finite check then names; float64 stays (its range is checked)
            return np.column_stack([numpy_of(_number_column(table.column(c))) for c in s.columns])
        col = table.column(s.columns[0]).combine_chunks()
        lengths = numpy_of(pc.list_value_length(col))
        if (lengths != s.size).any():
            r = int(np.flatnonzero(lengths != s.size)[0])
            raise AepipeError(f'{self.spec}: row {start + r} of column "{s.columns[0]}" has '
                              f"{lengths[r]} values, the others {s.size}")
        return numpy_of(pc.list_flatten(col))


def _number_column(col):
    """A feature column as numbers numpy reads: decimals as float64 (they would come as objects)."""
    return pc.cast(col, pa.float64()) if pa.types.is_decimal(col.type) else col


def _same_columns(first: pa.Schema, other: pa.Schema, first_file, other_file) -> None:
    """Every file of a folder holds the same columns with the same types as the first one, checked
    from the footers before any row is read (else a row would show up as "holds nan" later)."""
    if other_file == first_file:
        return
    have, had = set(other.names), set(first.names)
    for f in first:
        if f.name not in have:
            raise AepipeError(f'{other_file}: no column "{f.name}", which {first_file} has; '
                              "every file of a Parquet folder needs the same columns")
        t = other.field(f.name).type
        if t != f.type and not (pa.types.is_floating(t) and pa.types.is_floating(f.type)):
            raise AepipeError(f'{other_file}: column "{f.name}" is {t}, but {f.type} in {first_file}')
    extra = [n for n in other.names if n not in had]
    if extra:
        raise AepipeError(f'{other_file}: has column "{extra[0]}", which {first_file} lacks')


def _read_group(where: Location, path: str, group: int) -> pa.Table:
    try:  # page checksums are verified where the writer stored them (aepipe's own stores do)
        return pq.ParquetFile(where.open(path), page_checksum_verification=True).read_row_group(group)
    except Exception as e:
        raise AepipeError(f"{where.show(path)}: row group {group} is damaged ({str(e).splitlines()[0][:160]})") from None
