"""Codes stores and outputs: reading them (read: readers, quantisation, integrity, info), writing
them all-or-nothing (write: Zarr, Parquet and PNG-folder writers), the bitstream store of compress
models (bitstreams), and the adapter that lets Ray Data drive a writer (raydata).

What both readers and writers know of a store's layout lives here, so writing needs no reader."""

MANIFEST = "_aepipe_manifest.json"  # "_" keeps it out of pyarrow's and Ray's dataset readers


def open_zarr(path, mode: str = "r"):
    """A Zarr group. zarr is imported here, not at the top: its import is 0.15-0.2 s, and asks that
    touch no Zarr store should not pay it."""
    import zarr

    return zarr.open_group(str(path), mode=mode)
