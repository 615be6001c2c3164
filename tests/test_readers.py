"""Codes stores as other tools read them: every kind of store (float32 with scores, float16, int8 with
scores; integer and text ids) opened with one plain call of xarray and zarr (Zarr stores), polars,
duckdb, pandas, pyarrow and Ray Data (Parquet stores), and compared with aepipe's own load_codes.
int8 codes come back as floats by themselves through CF's scale_factor/add_offset in xarray; in a
Parquet store the code field's metadata carries the same two numbers."""

import warnings

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest
import xarray as xr
import zarr

from aepipe.batch.encode import encode
from aepipe.models import ModelConfig
from aepipe.stores.read import load_codes
from aepipe.training import TrainConfig, train

KINDS = [("float32", True), ("float16", False), ("int8", True)]


@pytest.fixture(scope="module")
def stores(digits_run, table_dir, tmp_path_factory):
    """{(data, dtype, format): store path}: digits (integer ids) and a table (text ids)."""
    tmp = tmp_path_factory.mktemp("readers")
    table_run = tmp / "table_run"
    train(str(table_dir), table_run, ModelConfig(family="dense", code_dim=3, hidden=(16,)), TrainConfig(epochs=2))
    out = {}
    for data, run, src in (("digits", digits_run, "builtin:digits"), ("table", table_run, str(table_dir))):
        for dtype, scores in KINDS:
            for fmt in ("zarr", "parquet"):
                out[data, dtype, fmt] = tmp / f"{data}_{dtype}.{fmt}"
                encode(src, run, out[data, dtype, fmt], dtype=dtype, scores=scores, engine="local")
    return out


def as_stored(store):
    """load_codes' rows, in id order: (ids, float32 codes, scores or None)."""
    ids, codes = load_codes(store)
    order = np.argsort(ids)
    scores = None
    if store.suffix == ".parquet" and "score" in pq.read_schema(next(store.glob("part-*.parquet"))).names:
        scores = pq.read_table(store, columns=["id", "score"]).sort_by("id").column("score").to_numpy()
    elif store.suffix == ".zarr" and "scores" in zarr.open_group(str(store)):
        scores = zarr.open_group(str(store))["scores"][:][order]
    return ids[order], codes[order], scores


def codes_from_parquet(codes, field) -> np.ndarray:
    """A Parquet store's code column as floats: int8 through the field's scale_factor/add_offset."""
    q = np.stack(list(codes)) if not isinstance(codes, np.ndarray) or codes.dtype == object else codes
    meta = field.metadata or {}
    if b"scale_factor" not in meta:
        return q.astype(np.float32)
    return (q.astype(np.float64) * float(meta[b"scale_factor"]) + float(meta[b"add_offset"])).astype(np.float32)


def check(got_ids, got_codes, got_scores, want):
    ids, codes, scores = want
    order = np.argsort(got_ids)
    assert np.array_equal(np.asarray(got_ids)[order], ids)
    assert got_codes.dtype == np.float32 and np.array_equal(got_codes[order], codes)  # bit for bit
    if scores is not None:
        assert np.array_equal(np.asarray(got_scores)[order], scores)


@pytest.mark.parametrize("data", ["digits", "table"])
@pytest.mark.parametrize("dtype", [k for k, _ in KINDS])
def test_xarray_opens_a_zarr_store_as_a_dataset_of_named_dimensions(stores, data, dtype):
    store = stores[data, dtype, "zarr"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consolidated metadata, every dimension named: not a warning
        ds = xr.open_zarr(store)
    assert ds.codes.dims == ("row", "codes_dim") and "ids" in ds.coords  # ids beside every row
    check(ds.ids.values, ds.codes.values.astype(np.float32), ds.get("scores"), as_stored(store))
    g = zarr.open_group(str(store), mode="r")  # zarr itself: the codes as stored
    if dtype == "int8":
        assert g["codes"].dtype == np.int8 and ds.codes.dtype == np.float64  # xarray applied the scale itself


@pytest.mark.parametrize("data", ["digits", "table"])
@pytest.mark.parametrize("dtype", [k for k, _ in KINDS])
def test_parquet_readers_take_the_store_folder_whole(stores, data, dtype):
    store = stores[data, dtype, "parquet"]
    want = as_stored(store)
    field = pq.read_schema(next(store.glob("part-*.parquet"))).field("code")
    assert (b"scale_factor" in (field.metadata or {})) == (dtype != "float32")

    df = pl.read_parquet(store)  # polars: the folder, as it is
    check(df["id"].to_numpy(), codes_from_parquet(df["code"].to_numpy(), field),
          df["score"].to_numpy() if "score" in df.columns else None, want)
    ddf = duckdb.sql(f"SELECT * FROM read_parquet('{store}/*.parquet')").df()
    check(ddf["id"].to_numpy(), codes_from_parquet(ddf["code"].to_numpy(), field),
          ddf["score"].to_numpy() if "score" in ddf else None, want)
    pdf = pd.read_parquet(store)
    check(pdf["id"].to_numpy(), codes_from_parquet(pdf["code"].to_numpy(), field),
          pdf["score"].to_numpy() if "score" in pdf else None, want)
    t = pq.read_table(store)
    assert t.schema.field("code").metadata == field.metadata  # the scale travels with the column
    check(np.asarray(t.column("id").to_pylist()), codes_from_parquet(t.column("code").to_pylist(), field),
          t.column("score").to_numpy() if "score" in t.column_names else None, want)


def test_ray_data_reads_every_parquet_store(stores, ray_local):
    import ray

    for (data, dtype, fmt), store in stores.items():
        if fmt != "parquet":
            continue
        rows = ray.data.read_parquet(str(store)).to_pandas()
        field = pq.read_schema(next(store.glob("part-*.parquet"))).field("code")
        check(rows["id"].to_numpy(), codes_from_parquet(rows["code"].to_numpy(), field),
              rows["score"].to_numpy() if "score" in rows else None, as_stored(store))
