"""CSV files and folders (.csv, .csv.gz): numeric columns and categorical (string) columns.

Random access. open() makes one streaming pass over the bytes (the index pass): each file is cut
at row ends into blocks of at most BLOCK_ROWS rows (a quote-aware newline scan, so quoted
newlines stay inside their row), each block is parsed with pyarrow.csv, and its byte offset, byte
length and row count are kept. read(start, stop) then reads and parses only the blocks holding
those rows. (pyarrow's open_csv streams batches but says nothing of where they start in the file,
so every task would have to parse the file up to its rows.) The same pass learns what training
fits (which columns are categorical, their categories, column means), refuses missing values, and
when reading for a trained model counts categories it never saw, all before any job starts.

gzip has no random access: a task reading a .csv.gz decompresses the file from its start up to its
rows and throws the prefix away. Memory stays flat, but a file of B blocks costs about B²/2 block
decompressions over a whole job: fine up to a few hundred MB; split bigger data into several
.csv.gz files (each decompresses only its own prefix) or decompress it first.

The delimiter is the comma, or else the first of ";", tab and "|" found in the first file's
header (a header with no comma in it: one column, or another delimiter); every file uses it. A
header naming a column twice, bare-CR line ends and decimal commas ("1,5" in a ";" file) are
refused by name rather than read as something else. Cells such as "NaN", "NA" and "null" are
missing values, like empty ones; "inf" is refused where rows are read, by row and column.

Categorical columns are one-hot encoded, one feature per training category, named "color=red".
A category unseen in training becomes an all-zero block and is counted (notes()); so does an empty
categorical cell under --fill-missing mean. Everything is read through Location, so s3:// works too.
"""

from __future__ import annotations

import bisect
import dataclasses
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from aepipe.errors import AepipeError
from aepipe.sources import Location, Schema, Source, _short, numpy_of
from aepipe.sources import csv_rows

WHAT = "CSV"
OPTIONS = ("columns", "fill_missing")
SUFFIXES = (".csv", ".csv.gz")
PARSE_BYTES = 2 * csv_rows.MAX_ROW_BYTES  # pyarrow's parse block: every row up to MAX_ROW_BYTES fits in one (its default, 1 MiB, fails longer rows)
MAX_CATEGORIES = 1000  # more distinct strings than this is an id or free text, not a category
F32_MAX = float(np.finfo(np.float32).max)
DELIMITERS = (",", ";", "\t", "|")  # the comma, else the first of the others a header holds
DECIMAL_COMMA = re.compile(r"[+-]?[0-9]+,[0-9]+")


def open(where: Location, id_column=None, fitted=None, columns=None, fill_missing=None) -> "CsvSource":
    if fill_missing not in (None, "mean"):
        raise AepipeError(f'--fill-missing "{fill_missing}": the one choice is mean')
    return CsvSource(where, id_column, fitted or {}, columns, fill_missing)


@dataclasses.dataclass(frozen=True)
class Block:
    file: int  # index into CsvSource.files
    offset: int  # byte offset in the (decompressed) file
    length: int  # bytes
    start: int  # global index of its first row
    first: int  # its first row's index within the file (0-based, header not counted)
    n: int  # rows


class CsvSource(Source):
    """A CSV file or folder: files sorted by path, rows in line order within each."""

    def __init__(self, where: Location, id_column, fitted: dict, columns, fill_missing):
        self.spec, self.where = where.spec, where
        self.files = where.files(*SUFFIXES)
        if not self.files:
            raise AepipeError(f"{where.spec}: folder holds no .csv or .csv.gz files")
        self.fill = fill_missing or fitted.get("fill_missing")
        self.blocks: list[Block] = []
        self.names: list[str] | None = None  # header of the first file; every file must repeat it
        self.delimiter = ","  # or what the first file's header shows (_header)
        self.id_column = id_column
        learn = _Learner(fitted)
        for fi in range(len(self.files)):
            self._index_file(fi, learn, columns, fitted)
        self.n_rows = sum(b.n for b in self.blocks)
        if not self.n_rows:  # before any column is judged by its (absent) values
            raise AepipeError(f"{self.spec}: the dataset is empty (0 rows)")
        self.features = learn.finish(self)  # (name, categories or None) per feature column
        self.starts = [b.start for b in self.blocks]
        self.means, self.unseen, self.id_int = learn.means, learn.unseen, learn.id_int
        cols = [c if cats is None else f"{c}={v}" for c, cats in self.features for v in (cats or [None])]
        self.schema = Schema(tuple(cols), (len(cols),), tabular=True)

    # ---------------------------------------------------------------- the index pass

    def _index_file(self, fi: int, learn: "_Learner", columns, fitted: dict) -> None:
        row, header = 0, False
        with self._stream(fi) as f:
            for offset, buf in csv_rows.pieces(f, self._name(fi)):
                if offset == 0:  # every file's first piece starts with its header
                    header, end = True, csv_rows.header_end(buf)
                    self._header(fi, buf[:end], columns, fitted)
                    offset, buf = offset + end, buf[end:]
                for a, b in csv_rows.cuts(buf):
                    table = self._parse(fi, buf[a:b])
                    block = Block(fi, offset + a, b - a, self._rows_so_far(), row, table.num_rows)
                    learn.see(self, block, table)
                    if block.n:  # a span of blank lines holds no rows
                        self.blocks.append(block)
                    row += table.num_rows
        if not header:
            raise AepipeError(f"{self._name(fi)}: empty file (not even a header line)")

    def _rows_so_far(self) -> int:
        return self.blocks[-1].start + self.blocks[-1].n if self.blocks else 0

    def _header(self, fi: int, line: bytes, columns, fitted: dict) -> None:
        if b"\r" in line.rstrip(b"\r\n"):  # the index pass cuts rows at "\n" only
            raise AepipeError(f"{self._name(fi)}: its lines end in a bare CR (classic Mac); aepipe reads LF or CRLF "
                              "line ends (convert it, e.g. tr '\\r' '\\n')")
        if self.names is None:
            self.delimiter = next((d for d in DELIMITERS if d.encode() in line), ",")
        try:
            names = pacsv.read_csv(pa.BufferReader(line), read_options=pacsv.ReadOptions(block_size=PARSE_BYTES),
                                   parse_options=pacsv.ParseOptions(delimiter=self.delimiter)).column_names
        except (pa.ArrowInvalid, ValueError) as e:
            raise AepipeError(f"{self._name(fi)}: cannot read its header ({_first_line(e)})") from None
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            raise AepipeError(f'{self._name(fi)}: its header names column "{twice}" twice; '
                              "every column needs its own name")
        if self.names is not None:
            if names != self.names:
                raise AepipeError(f"{self._name(fi)}: its columns ({_short(names)}) differ from "
                                  f"{self._name(0)}'s ({_short(self.names)}); every file needs the same header")
            return
        self.names = names
        if self.id_column and self.id_column not in names:
            raise AepipeError(f'{self.spec}: no id column "{self.id_column}" (columns: {_short(names)})')
        self.id_column = self.id_column or ("id" if "id" in names else None)
        trained = tuple(fitted.get("columns") or ())
        if columns and trained and set(columns) != set(trained):
            raise AepipeError(f"--columns {','.join(columns)}: the model was trained on {','.join(trained)}")
        self.use = list(trained or columns or [n for n in names if n != self.id_column])
        lost = [c for c in self.use if c not in names]
        if lost:
            raise AepipeError(f'{self.spec}: no column "{lost[0]}" (columns: {_short(names)})')
        if self.id_column in self.use:
            raise AepipeError(f'--columns: "{self.id_column}" is the id column, not a feature')

    def _stream(self, fi: int):
        """The file's bytes from the start, decompressed if it is a .csv.gz."""
        f = self.where.open(self.files[fi])
        return pa.CompressedInputStream(f, "gzip") if self.files[fi].lower().endswith(".gz") else f

    def _parse(self, fi: int, data: bytes) -> pa.Table:
        """Rows of one file as strings (nulls for empty cells): kinds are decided by _Learner, once."""
        keep = self.use + ([self.id_column] if self.id_column else [])
        try:
            return pacsv.read_csv(
                pa.BufferReader(data),
                read_options=pacsv.ReadOptions(column_names=self.names, block_size=PARSE_BYTES),
                parse_options=pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in keep},
                                                     include_columns=keep, strings_can_be_null=True))
        except (pa.ArrowInvalid, ValueError) as e:
            raise AepipeError(f"{self._name(fi)}: not readable as CSV ({_first_line(e)})") from None

    def _name(self, fi: int) -> str:
        return self.spec if not self.where.is_dir else f"{self.spec.rstrip('/')}/{self.where.relative(self.files[fi])}"

    def where_is(self, block: Block, r: int, column: str) -> str:
        """A cell named for the user: file, 1-based row (the header not counted) and column."""
        return f'{self._name(block.file)}: row {block.first + r + 1} (1-based, header not counted), column "{column}"'

    # ---------------------------------------------------------------- what training keeps, what reads return

    def fitted(self) -> dict:
        return {"columns": [c for c, _ in self.features],
                "categories": {c: cats for c, cats in self.features if cats is not None},
                "means": self.means, "fill_missing": self.fill}

    def notes(self) -> list[str]:
        return [f'{n} value{"s" * (n > 1)} of "{c}" not seen in training, read as all-zero blocks'
                for c, n in self.unseen.items() if n]

    def _read(self, start, stop):
        parts, hit = [], self.blocks[bisect.bisect_right(self.starts, start) - 1:bisect.bisect_left(self.starts, stop)]
        for fi in sorted({b.file for b in hit}):  # one contiguous byte range per file
            mine = [b for b in hit if b.file == fi]
            data = self._bytes(fi, mine[0].offset, mine[-1].offset + mine[-1].length)
            parts.append((mine[0], self._parse(fi, data)))
        first = parts[0][0].start
        table = pa.concat_tables([t for _, t in parts]).slice(start - first, stop - start)
        ids = np.arange(start, stop)
        if self.id_column:
            ids = table.column(self.id_column)
            ids = numpy_of(pc.cast(ids, pa.int64())) if self.id_int else ids.to_numpy(zero_copy_only=False)
        got = {}
        for c, cats in self.features:
            got.update(self._numbers(table.column(c), c, start) if cats is None else _one_hot(table.column(c), c, cats))
        return ids, np.column_stack([got[c] for c in self.schema.columns])

    def _bytes(self, fi: int, a: int, b: int) -> bytes:
        """Bytes [a, b) of a file (decompressed, for a .csv.gz)."""
        with self._stream(fi) as f:
            if not self.files[fi].lower().endswith(".gz"):
                f.seek(a)
                return f.read(b - a)
            skip = a
            while skip > 0:  # no seeking in gzip: decompress and drop the prefix (see the module's doc)
                got = len(f.read(min(skip, csv_rows.READ_BYTES)))
                if not got:
                    raise AepipeError(f"{self._name(fi)}: shorter than when it was indexed (did it change?)")
                skip -= got
            return f.read(b - a)

    def _numbers(self, col, c: str, start: int) -> dict:
        x = _floats(col)
        if x is None:  # the index pass converted these rows: only a file changed under us lands here
            raise AepipeError(f'{self.spec}: column "{c}" holds text near row {start}, the model expects numbers')
        if self.fill == "mean":
            x = np.where(np.isnan(x), self.means[c], x)
        return {c: x}


def _one_hot(col, c: str, cats: list[str]) -> dict:
    """One feature per training category; unseen values and empty cells give all zeros."""
    idx = pc.index_in(col, value_set=pa.array(cats, pa.string())).to_numpy(zero_copy_only=False)
    return {f"{c}={v}": (idx == k).astype(np.float32) for k, v in enumerate(cats)}


def _floats(col) -> np.ndarray | None:
    """Strings as float64 (NaN where empty), or None if some value is not a number."""
    try:
        return numpy_of(pc.cast(col, pa.float64())).astype(np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


class _Learner:
    """What the index pass learns: columns' kinds, categories, means (training), unseen
    categories (reading for a model), and whether the ids are integers."""

    def __init__(self, fitted: dict):
        self.fitted = fitted
        self.kinds = {}  # column -> "numeric" | "categorical" (training: the last block's view so far)
        self.distinct = {}  # column -> set of values seen (None once past MAX_CATEGORIES)
        self.sums, self.counts = {}, {}
        self.unseen = {c: 0 for c in fitted.get("categories", {})}
        self.id_int = True
        self.means = dict(fitted.get("means") or {})

    def see(self, src: CsvSource, block: Block, table: pa.Table) -> None:
        if src.id_column:
            ids = table.column(src.id_column)
            if ids.null_count:
                r = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
                raise AepipeError(f"{src.where_is(block, r, src.id_column)} has no id")
            self.id_int = self.id_int and _ints_ok(ids)
        for c in src.use:
            col = table.column(c)
            if col.null_count and src.fill != "mean":
                r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise AepipeError(f"{src.where_is(block, r, c)} is empty (or NaN, NA, null); fill it in, "
                                  "or pass --fill-missing mean "
                                  "(numbers: the training mean; categories: an all-zero block)")
            x = _floats(col)  # None: some cell is text
            if x is not None:
                _check_range(src, block, c, col, x)
            if self.fitted:
                self._check(src, block, c, col, x)
            else:
                self._learn(c, col, x)

    def _learn(self, c: str, col, x) -> None:
        values = col.drop_null()
        if not len(values):
            return
        if x is not None and col.null_count:  # (to_numpy imports pandas: only where there are nulls)
            x = x[~col.is_null().to_numpy(zero_copy_only=False)]
        if x is not None and self.kinds.get(c) != "categorical":
            self.kinds[c] = "numeric"
            self.sums[c] = self.sums.get(c, 0.0) + float(x.sum())
            self.counts[c] = self.counts.get(c, 0) + len(x)
        elif x is None:
            self.kinds[c] = "categorical"
        seen = self.distinct.get(c, set())
        if seen is not None:  # categories are kept for every column until one proves it numeric or too wide
            seen |= set(pc.unique(values).to_pylist())
            self.distinct[c] = seen if len(seen) <= MAX_CATEGORIES else None

    def _check(self, src: CsvSource, block: Block, c: str, col, x) -> None:
        cats = self.fitted["categories"].get(c)
        if cats is not None:
            known = pc.is_in(col, value_set=pa.array(cats, pa.string())).to_numpy(zero_copy_only=False)
            self.unseen[c] += int((~known).sum()) - col.null_count
        elif x is None:
            x = [v for v in col.to_pylist() if v is not None and _floats(pa.array([v])) is None]
            r = col.to_pylist().index(x[0])
            raise AepipeError(f'{src.where_is(block, r, c)} holds "{x[0][:40]}"; the model was trained on '
                              "numbers there")

    def finish(self, src: CsvSource) -> list[tuple[str, list | None]]:
        if self.fitted:
            cats = self.fitted["categories"]
            return [(c, cats.get(c)) for c in self.fitted["columns"]]
        out = []
        for c in src.use:
            kind = self.kinds.get(c)
            if kind is None:
                raise AepipeError(f'{src.spec}: column "{c}" is empty in every row')
            if kind == "numeric":
                self.means[c] = self.sums[c] / self.counts[c]
                out.append((c, None))
            elif self.distinct[c] is None:
                raise AepipeError(f'{src.spec}: column "{c}" holds text with more than {MAX_CATEGORIES} distinct '
                                  "values: an id or free text, not a category (leave it out with --columns, "
                                  "or name it with --id-column)")
            elif all(DECIMAL_COMMA.fullmatch(v) for v in self.distinct[c]):
                raise AepipeError(f'{src.spec}: column "{c}" holds numbers with a decimal comma '
                                  f'("{min(self.distinct[c])}"); aepipe reads a decimal point (1.5, not 1,5)')
            else:
                out.append((c, sorted(self.distinct[c])))
        return out


def _check_range(src: CsvSource, block: Block, c: str, col, x: np.ndarray) -> None:
    """Numbers must be finite and fit float32 (what models compute in): "inf" or 1e300 is refused
    by its cell at open time, never trained on as inf."""
    bad = np.isinf(x) | (np.abs(x) > F32_MAX)  # NaN (an empty cell under --fill-missing) is neither
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise AepipeError(f'{src.where_is(block, r, c)} holds "{col[r].as_py()[:40]}"; aepipe needs finite numbers '
                          f"within float32's range (±{F32_MAX:.1e})")


def _ints_ok(ids) -> bool:
    try:
        pc.cast(ids, pa.int64())
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
