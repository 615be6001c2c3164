"""Codes stores and outputs: reading them (read: readers, quantisation, integrity, info), writing
them all-or-nothing (staging, shared by the Zarr, Parquet and PNG-folder writers zarr_sink,
parquet_sink and png_sink), the bitstream store of compress models (bitstreams), and the adapter
that lets Ray Data drive a writer (raydata).

What both readers and writers know of a store's layout lives here, so writing needs no reader."""

import json

from aepipe.errors import AepipeError

# A Parquet store's manifest: a part of no rows with the parts' own schema, the manifest (every part
# and its rows, rows skipped, files appended) in its key-value metadata. "_" keeps it out of
# pyarrow's, Ray's and aepipe's readers; readers that take every file of the folder (polars,
# duckdb) read it as the empty part it is.
MANIFEST = "_aepipe_manifest.parquet"
MANIFEST_KEY = b"aepipe_manifest"
# PNG folders' manifest, and Parquet stores' before the one above (still read)
JSON_MANIFEST = "_aepipe_manifest.json"


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
