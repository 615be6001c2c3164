"""Codes stores and outputs: reading them (read: readers, quantisation, integrity, info), writing
them all-or-nothing (write: Zarr, Parquet and PNG-folder writers), the bitstream store of compress
models (bitstreams), and the adapter that lets Ray Data drive a writer (raydata)."""
