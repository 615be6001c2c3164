"""encode --append on a folder that grows: each run encodes only the new files, every id is in the
store once, a rerun is a no-op, and the drift of new codes against the training codes is kept."""


import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import aepipe
from aepipe.sources import locate
from aepipe.stores import read_manifest
from tests.conftest import run_aepipe, write_table


@pytest.fixture(scope="module")
def growing(tmp_path_factory):
    """A model trained on one table; a folder holding 2 files of new rows of the same kind, and a
    third file to add later whose rows are shifted far from the training data."""
    root = tmp_path_factory.mktemp("append")
    write_table(root / "train", n=600, files=2, seed=0)
    run_aepipe("train", root / "train", "--code-dim", "3", "--hidden", "16", "--epochs", "3", "--out", root / "run")
    # the training rows again: another seed draws another 2-d plane in the 6 columns, off which a
    # PCA-started model's third code dimension (std 0.006) moved 2.8 sd: that is drift, not "same kind"
    write_table(root / "inc", n=600, files=3, seed=0)
    later = root / "inc" / "part-2.parquet"
    table = pq.read_table(later)
    shifted = table.set_column(0, "id", pc.binary_join_element_wise("s", table.column("id"), ""))
    for j, name in enumerate(table.column_names[1:], start=1):  # 3 sd of each column off
        col = table.column(name).to_numpy()
        shifted = shifted.set_column(j, name, [col + 3 * col.std()])
    later.unlink()
    return root, shifted


def parts(store):
    return {p.name: p.stat().st_mtime_ns for p in store.glob("part-*.parquet")}


@pytest.mark.slow
def test_append_twice_then_noop(growing, ray_local):
    root, shifted = growing
    store = root / "codes.parquet"
    first = run_aepipe("encode", root / "inc", "--model", root / "run", "--append", store, "--scores",
                       address=ray_local)
    assert "appended 400 rows of 2 new files" in first.stdout and "drift:" in first.stdout
    before = parts(store)
    # sorts between part-0 and part-1: the new rows sit mid-folder, their read ranges renumbered
    pq.write_table(shifted, root / "inc" / "part-0b.parquet", row_group_size=50)
    second = run_aepipe("encode", root / "inc", "--model", root / "run", "--append", store, address=ray_local)
    assert "appended 200 rows of 1 new files" in second.stdout
    after = parts(store)
    assert all(after[name] == t for name, t in before.items())  # the first run's parts untouched
    ids, codes = aepipe.load_codes(store)
    want = [f"r{i:05d}" for i in range(400)] + [f"sr{i:05d}" for i in range(400, 600)]
    assert sorted(ids.tolist()) == want  # every id exactly once
    assert len(pq.read_table(store, columns=["score"])) == 600  # the store's --scores kept for the new part
    again = run_aepipe("encode", root / "inc", "--model", root / "run", "--append", store, address=ray_local)
    assert again.stdout.startswith("nothing to append") and parts(store) == after
    drift = read_manifest(locate(str(store)))["drift"]
    assert [d["n_rows"] for d in drift] == [400, 200]
    assert drift[0]["max_abs_shift_sd"] < 1 < drift[1]["max_abs_shift_sd"]  # the shifted file shows
    assert drift[0]["above_threshold"] < drift[1]["above_threshold"]
    assert not list(root.glob("*staging*"))


def test_append_refusals(growing, ray_local, tmp_path):
    root, _ = growing
    base = ("encode", root / "inc", "--model", root / "run")
    for args, said in [(("--append", tmp_path / "c.zarr"), "Parquet store"),
                       (("--append", tmp_path / "c.parquet", "--out", tmp_path / "d.parquet"), "not both"),
                       (("--out", tmp_path / "e.parquet", "--append", root / "codes.parquet"), "not both")]:
        proc = run_aepipe(*base, *args, check=False)
        assert proc.returncode == 2 and said in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    noid = tmp_path / "noid"
    noid.mkdir()
    pq.write_table(pq.read_table(root / "inc" / "part-0.parquet").drop(["id"]), noid / "a.parquet")
    proc = run_aepipe("encode", noid, "--model", root / "run", "--append", tmp_path / "n.parquet", check=False)
    assert proc.returncode == 2 and "no id column" in proc.stderr
    store = tmp_path / "grown.parquet"
    src = tmp_path / "src"
    write_table(src, n=100, files=1, seed=2)
    run_aepipe("encode", src, "--model", root / "run", "--append", store, address=ray_local)
    table = pq.read_table(src / "part-0.parquet")
    pq.write_table(table.slice(0, 50), src / "part-0.parquet")  # rewritten in place: its rows are in the store
    proc = run_aepipe("encode", src, "--model", root / "run", "--append", store, check=False)
    assert proc.returncode == 2 and "changed since it was encoded" in proc.stderr
