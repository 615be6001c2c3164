"""Codes stores and outputs: reading them (read: readers, integrity, info; quantize: dtypes and the
int8 scale), writing
them all-or-nothing (staging, shared by the Zarr, Parquet and PNG-folder writers zarr_sink,
parquet_sink and png_sink), the bitstream store of compress models (bitstreams), and the adapter
that lets Ray Data drive a writer (raydata).

What both readers and writers know of a store's layout (manifest, chunk and task sizes) lives here,
so writing needs no reader."""

import json
import os

from aepipe.errors import AepipeError

# A Parquet store's manifest: a part of no rows with the parts' own schema, the manifest (every part
# and its rows, rows skipped, files appended) in its key-value metadata. "_" keeps it out of
# pyarrow's, Ray's and aepipe's readers; readers that take every file of the folder (polars,
# duckdb) read it as the empty part it is.
MANIFEST = "_aepipe_manifest.parquet"
MANIFEST_KEY = b"aepipe_manifest"
# PNG folders' manifest, and Parquet stores' before the one above (still read)
JSON_MANIFEST = "_aepipe_manifest.json"


# Local outputs this process found free and was not asked to replace (no --overwrite): the output
# check (aepipe.checks.output_path) notes them, and a writer, once it holds the output's lock
# (stores.staging), refuses a store that another aepipe committed there in between, where it would
# replace it (two runs started together: the second's check can come before the first's commit,
# its lock after it). Absolute paths; the writer drops its own at its commit or failure.
NEW_ONLY: set[str] = set()


def manifest_table(schema, manifest: dict):
    """The manifest part: no rows, `schema` (the parts'), the manifest in its metadata."""
    meta = {**(schema.metadata or {}), MANIFEST_KEY: json.dumps(manifest).encode()}
    return schema.empty_table().replace_schema_metadata(meta)


def read_manifest(where) -> dict | None:
    """A Parquet store's manifest (`where`: the store's sources.Location), None where it has none."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    for name in (MANIFEST, JSON_MANIFEST):
        path = f"{where.path}/{name}"
        if not where.is_dir or where.fs.get_file_info(path).type != pafs.FileType.File:
            continue
        try:
            with where.open(path) as f:
                m = json.loads(f.read() if name == JSON_MANIFEST else pq.read_schema(f).metadata[MANIFEST_KEY])
            if not isinstance(m.get("files"), dict):
                raise ValueError("it lists no parts")
            return m
        except Exception as e:
            raise AepipeError(f"{where.show(path)}: damaged ({type(e).__name__}: {str(e)[:160]})") from None
    return None


def open_zarr(path, mode: str = "r"):
    """A Zarr group, its metadata read from each array (a finished store also holds consolidated
    metadata for other readers; aepipe checks what the arrays themselves say). zarr is imported
    here, not at the top: its import is 0.15-0.2 s, and asks that touch no Zarr store should not pay it."""
    import zarr

    return zarr.open_group(str(path), mode=mode, use_consolidated=False)


def chunk_rows_for(row_bytes: int) -> int:
    """About 1 MiB per chunk: large enough for fast I/O, small enough to spread over workers."""
    return int(max(256, min(65536, 2 ** 20 // max(row_bytes, 1))))


TASK_BYTES = 96 * 2 ** 20  # input per model-job task (large images: fewer rows a task)


def task_rows(chunk_rows: int, input_row_bytes: int, n_rows: int | None = None) -> int:
    """Rows per model-job task: whole output chunks, up to TASK_BYTES of input and
    AEPIPE_TASK_ROWS rows (default 32768), and at least 4 tasks where n_rows allows (images decode
    slowly: one big task would run alone). Ray Data launches tasks one at a time from its scheduling
    loop: tasks of 8192 784-wide rows (140 ms each) kept ~1.1 of 2 CPUs busy here, tasks of 32768
    rows ~1.6 (measured 2026-11-24). Smaller tasks lose less to a killed node or an interrupt."""
    cap = int(os.environ.get("AEPIPE_TASK_ROWS", 32768))
    quarter = -(-(n_rows or 4 * cap) // 4)
    most = max(1, min(cap, TASK_BYTES // max(input_row_bytes, 1), quarter))
    return chunk_rows * max(1, most // chunk_rows)


PART_BYTES = 128 * 2 ** 20  # output per task: a Parquet part, a Zarr shard at a URI (--part-mb)


def part_rows(unit_rows: int, row_bytes: int, n_rows: int, part_bytes: int = PART_BYTES) -> int:
    """Rows per task, written as one Parquet part or whole Zarr shards: about part_bytes of output
    (object stores and query engines want objects of 100 MiB or more, not a few MiB each), whole
    units (chunks or shards), and at least 4 tasks where n_rows allows, so every CPU has work.
    AEPIPE_TASK_ROWS, where set, caps it too (tests that want many small tasks)."""
    target = max(1, part_bytes // max(row_bytes, 1)) // unit_rows  # units, rounded down: at most the size
    quarter = -(-n_rows // (4 * unit_rows))  # units, rounded up: at most 4 tasks of data too small to fill them
    cap = int(os.environ.get("AEPIPE_TASK_ROWS", 0)) // unit_rows or target
    return unit_rows * max(1, min(target, quarter, cap))
