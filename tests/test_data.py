"""Sources, schemas and normalisation on real files."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from aepipe import AepipeError
from aepipe.normalize import Normalizer, block_stats, combine_stats, in_validation
from aepipe.sources import Schema, open_source, to_dataset
from tests.conftest import write_table


def test_builtin_split_is_a_stratified_70_30_split_with_random_state_0():
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    tr, te = open_source("builtin:digits-train"), open_source("builtin:digits-test")
    assert np.array_equal(tr.x.reshape(len(tr.x), -1), xtr) and np.array_equal(te.labels, yte)
    assert len(set(tr.ids) | set(te.ids)) == len(x) == tr.n_rows + te.n_rows
    assert tr.schema.shape == (8, 8)


def test_parquet_table_reads_rows_across_files_and_row_groups(tmp_path):
    x = write_table(tmp_path / "t.parquet", n=230, cols=4, files=3)
    src = open_source(str(tmp_path / "t.parquet"))
    assert src.schema == Schema(("f0", "f1", "f2", "f3"), (4,), tabular=True)
    assert src.id_column == "id" and src.n_rows == 230
    ids, got = src.read(70, 160)  # crosses a file boundary (77) and several row groups
    assert list(ids[:2]) == ["r00070", "r00071"]
    np.testing.assert_allclose(got, x[70:160], rtol=1e-6)
    assert src.ranges(100)[0][0] == 0 and src.ranges(100)[-1][1] == 230


def test_parquet_list_column_and_npy(tmp_path):
    arr = np.random.default_rng(0).random((50, 12)).astype(np.float32)
    pq.write_table(pa.table({"v": pa.FixedSizeListArray.from_arrays(pa.array(arr.ravel()), 12)}), tmp_path / "l.parquet")
    src = open_source(str(tmp_path / "l.parquet"))
    assert src.schema == Schema(("v",), (12,), tabular=False)
    np.testing.assert_array_equal(src.read(5, 9)[1], arr[5:9])
    np.save(tmp_path / "a.npy", arr.reshape(50, 3, 4))
    npy = open_source(str(tmp_path / "a.npy"))
    assert npy.schema.shape == (3, 4) and list(npy.read(3, 5)[0]) == [3, 4]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.parquet", "no such file"),
    (lambda p: (p / "x.txt").write_text("a,b\n1,2\n") and p / "x.txt", "unsupported format"),
    (lambda p: ((p / "x.csv").write_text(""), p / "x.csv")[1], "empty file"),
    (lambda p: ((p / "x.csv").write_text("a,b\n1,2,3\n"), p / "x.csv")[1], "not readable as CSV"),
    (lambda p: ((p / "x.csv").write_text("a,b\n1,\n"), p / "x.csv")[1], 'row 1 .*column "b" is empty'),
    (lambda p: (pq.write_table(pa.table({"a": pa.array([], pa.float64())}), p / "e.parquet"), p / "e.parquet")[1], "empty"),
    (lambda p: (pq.write_table(pa.table({"a": [1.0], "s": ["x"]}), p / "s.parquet"), p / "s.parquet")[1], 'column "s"'),
    (lambda p: ((p / "bad.npy").write_bytes(b"not numpy"), p / "bad.npy")[1], "not a readable .npy"),
])
def test_bad_sources_are_refused_with_one_message(tmp_path, make, message):
    with pytest.raises(AepipeError, match=message):
        open_source(str(make(tmp_path)))


def test_nan_is_named_by_row_and_column(tmp_path):
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "b": [0.0, float("nan"), 1.0]}), tmp_path / "n.parquet")
    src = open_source(str(tmp_path / "n.parquet"))
    with pytest.raises(AepipeError, match='row 1 holds nan in column "b"'):
        src.read(0, 3)


def test_schema_mismatch_names_the_column_or_dimension():
    model = Schema(("a", "b"), (2,), True)
    with pytest.raises(AepipeError, match='no column "b"'):
        Schema(("a", "c"), (2,), True).check_matches(model, "data")
    with pytest.raises(AepipeError, match="dimension 1: 9 vs 8"):
        Schema(("x",), (8, 9), False).check_matches(Schema(("x",), (8, 8), False), "data")


def test_normalizers_round_trip_and_stats_combine_across_blocks():
    x = np.random.default_rng(1).normal(5, 3, size=(100, 4)).astype(np.float32)
    stats = combine_stats([block_stats({"x": x[:30]}), block_stats({"x": x[30:]})])
    np.testing.assert_allclose(stats["min"], x.min(0), rtol=1e-6)
    for kind in ("global", "feature", "standard", "none"):
        n = Normalizer.fit(kind, stats)
        np.testing.assert_allclose(n.invert(n.apply(x)), x, rtol=1e-5, atol=1e-5)
    y = Normalizer.fit("feature", stats).apply(x)
    assert y.min() == pytest.approx(0) and y.max() == pytest.approx(1)


def test_validation_split_is_fixed_and_near_its_fraction():
    rows = np.arange(10000)
    v = in_validation(rows, 0.1)
    assert 0.08 < v.mean() < 0.12 and np.array_equal(v, in_validation(rows, 0.1))


def test_dataset_rows_carry_their_global_index(ray_local, table_dir):
    src = open_source(str(table_dir))
    rows = to_dataset(src, rows_per_task=64).take_all()
    assert sorted(r["row"] for r in rows) == list(range(src.n_rows))
    assert all(r["id"] == f"r{r['row']:05d}" for r in rows)
