"""CSV, Zarr array and partitioned Parquet sources: read in-process, then trained on for an epoch
and encoded through the installed `aepipe` command, every id in the store exactly once."""

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from aepipe import AepipeError
from aepipe.sources import csv_rows
from aepipe.sources import open_source
from tests.conftest import run_aepipe
from tests.test_cli import fails_cleanly

TINY = ("--code-dim", 2, "--hidden", "8", "--epochs", 1, "--batch-size", 32)


def write_csv(path, n=60, start=0, colors=("red", "green", "blue"), holes=()):
    """id, two numbers and a colour; `holes`: rows (0-based) whose x is left empty."""
    rng = np.random.default_rng(start)
    lines = ["id,x,y,color"]
    for i in range(start, start + n):
        x = "" if i - start in holes else f"{rng.normal():.4f}"
        lines.append(f"r{i:04d},{x},{rng.normal() * 10:.4f},{colors[i % len(colors)]}")
    text = "\n".join(lines) + "\n"
    if str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return [f"r{i:04d}" for i in range(start, start + n)]


def store_ids(path):
    g = zarr.open_group(str(path), mode="r")
    assert g.attrs["complete"]
    return list(g["ids"][:])


def test_csv_reads_the_same_rows_whatever_the_blocks(tmp_path, monkeypatch):
    """Quoted newlines stay in their row; reads by range equal one whole read, blocks of any size."""
    (tmp_path / "q.csv").write_text('id,note,v\na,"two\nlines",1\nb,"say ""hi""",2\n\nc,plain,3')
    src = open_source(str(tmp_path / "q.csv"))
    assert src.n_rows == 3 and src.schema.columns == ("note=plain", "note=say \"hi\"", "note=two\nlines", "v")
    ids, x = src.read(0, 3)
    assert list(ids) == ["a", "b", "c"] and x[:, 3].tolist() == [1, 2, 3]

    write_csv(tmp_path / "a.csv", n=50)
    whole = open_source(str(tmp_path / "a.csv"), fill_missing="mean").read(0, 50)
    monkeypatch.setattr(csv_rows, "BLOCK_ROWS", 7)
    monkeypatch.setattr(csv_rows, "READ_BYTES", 64)
    write_csv(tmp_path / "a.csv.gz", n=50)
    for name in ("a.csv", "a.csv.gz"):
        src = open_source(str(tmp_path / name))
        assert len(src.blocks) > 5  # many small blocks, some cut by READ_BYTES
        parts = [src.read(a, b) for a, b in [(0, 3), (3, 20), (20, 50)]]
        assert list(np.concatenate([p[0] for p in parts])) == list(whole[0])
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole[1])
    uri = open_source((tmp_path / "a.csv.gz").absolute().as_uri())  # the same bytes through a URI
    np.testing.assert_array_equal(uri.read(10, 30)[1], whole[1][10:30])


def test_csv_with_a_category_and_a_missing_value(ray_local, tmp_path):
    """Refused naming row and column; filled with --fill-missing mean; a .csv.gz with an unseen
    category and an empty cell encodes with the training categories and means, and says so."""
    data = tmp_path / "t.csv"
    ids = write_csv(data, holes=(4,))
    run = tmp_path / "run"
    fails_cleanly(["train", data, "--out", run, *TINY], 'row 5 (1-based, header not counted), column "x" is empty', run)
    fails_cleanly(["train", data, "--out", run, "--fill-missing", "median"], "the one choice is mean", run)
    fails_cleanly(["train", data, "--out", run, "--mode", "RGB"], "--mode does not apply", run)
    run_aepipe("train", data, "--out", run, "--fill-missing", "mean", *TINY)
    meta = json.loads((run / "aepipe.json").read_text())
    assert meta["schema"]["columns"] == ["x", "y", "color=blue", "color=green", "color=red"]
    assert meta["reader"]["categories"] == {"color": ["blue", "green", "red"]} and meta["id_column"] == "id"
    assert meta["reader"]["fill_missing"] == "mean" and set(meta["reader"]["means"]) == {"x", "y"}

    new = tmp_path / "new.csv.gz"
    new_ids = write_csv(new, n=40, start=100, colors=("red", "purple", "blue", "teal"), holes=(3,))
    done = run_aepipe("encode", new, "--model", run, "--out", tmp_path / "c.zarr", address=ray_local)
    assert '(20 values of "color" not seen in training, read as all-zero blocks)' in done.stdout
    got = store_ids(tmp_path / "c.zarr")
    assert sorted(got) == new_ids and len(set(got)) == 40
    src = open_source(str(new), fitted=meta["reader"])
    x = src.read(0, 40)[1]
    assert (x[1, 2:] == 0).all() and x[0, 2:].tolist() == [0, 0, 1]  # purple: all zeros; red: one-hot
    assert x[3, 0] == pytest.approx(meta["reader"]["means"]["x"])  # the training mean fills the hole

    run_aepipe("encode", data, "--model", run, "--out", tmp_path / "t.zarr", address=ray_local)
    assert sorted(store_ids(tmp_path / "t.zarr")) == ids


def test_csv_folder_with_columns(ray_local, tmp_path):
    data = tmp_path / "folder"
    (data / "b").mkdir(parents=True)
    ids = write_csv(data / "a.csv", n=30) + write_csv(data / "b" / "c.csv.gz", n=25, start=30)
    src = open_source(str(data))
    assert src.n_rows == 55 and list(src.read(28, 32)[0]) == ids[28:32]  # files sorted, then lines
    run = tmp_path / "run"
    fails_cleanly(["train", data, "--out", run, "--columns", "x,nope"], 'no column "nope"', run)
    run_aepipe("train", data, "--out", run, "--columns", "y,color", *TINY)
    assert json.loads((run / "aepipe.json").read_text())["schema"]["columns"] == [
        "y", "color=blue", "color=green", "color=red"]
    run_aepipe("encode", data, "--model", run, "--out", tmp_path / "c.zarr", address=ray_local)
    got = store_ids(tmp_path / "c.zarr")
    assert sorted(got) == ids and len(set(got)) == 55
    (data / "d.csv").write_text("id,x,colour\nq,1,red\n")
    fails_cleanly(["encode", data, "--model", run, "--out", tmp_path / "d.zarr"], "every file needs the same header")


def test_zarr_array_of_rank_3(ray_local, tmp_path):
    data = tmp_path / "x.zarr"
    x = np.random.default_rng(0).random((90, 4, 5), dtype=np.float32)
    zarr.create_array(str(data), shape=x.shape, chunks=(16, 4, 5), dtype="float32")[:] = x
    src = open_source(str(data))
    assert src.schema.shape == (4, 5) and src.ranges(40) == [(0, 32), (32, 64), (64, 90)]
    np.testing.assert_array_equal(src.read(10, 50)[1], x[10:50])
    uri = open_source(data.absolute().as_uri())  # the same array through a URI (pyarrow fs via fsspec)
    np.testing.assert_array_equal(uri.read(0, 90)[1], x)
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("a", shape=(10, 3), dtype="float32")[:] = 1
    g.create_array("b", shape=(10, 2), dtype="float32")
    with pytest.raises(AepipeError, match=r"a Zarr group of 2 arrays \(a, b\); name the one to read"):
        open_source(str(tmp_path / "g.zarr"))
    assert open_source(str(tmp_path / "g.zarr" / "a")).read(0, 10)[1].sum() == 30  # an array named by its path
    del g["b"]
    assert open_source(str(tmp_path / "g.zarr")).schema.shape == (3,)  # a group of one array reads as it
    run = tmp_path / "run"
    run_aepipe("train", data, "--out", run, *TINY)
    run_aepipe("encode", data, "--model", run, "--out", tmp_path / "c.zarr", address=ray_local)
    got = store_ids(tmp_path / "c.zarr")
    assert sorted(got) == list(range(90))
    fails_cleanly(["encode", tmp_path / "c.zarr", "--model", run, "--out", tmp_path / "e.zarr"],
                  "an aepipe store (codes, ids), not data")


def test_partitioned_parquet_folder(ray_local, tmp_path):
    """Hive-style subfolders (year=2024/part-0.parquet): the partition key is a folder name, not a column."""
    data = tmp_path / "events"
    ids = []
    for year in (2023, 2024):
        for part in range(2):
            d = data / f"year={year}"
            d.mkdir(parents=True, exist_ok=True)
            k = [f"{year}-{part}-{i}" for i in range(20)]
            rng = np.random.default_rng(year + part)
            pq.write_table(pa.table({"id": k, "a": rng.normal(size=20), "b": rng.normal(size=20)}),
                           d / f"part-{part}.parquet")
            ids += k
    run = tmp_path / "run"
    run_aepipe("train", data, "--out", run, *TINY)
    run_aepipe("encode", data, "--model", run, "--out", tmp_path / "c.zarr", address=ray_local)
    got = store_ids(tmp_path / "c.zarr")
    assert got == ids  # global order: files sorted by path, then rows
