"""train -> encode -> decode through the installed `aepipe` command and the library, on real stores."""

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch
import zarr

from aepipe.batch.decode import decode
from aepipe.batch.encode import encode
from aepipe.run import load_run
from aepipe.sources import open_source
from aepipe.stores.quantize import dequantize
from aepipe.stores.read import load_codes
from tests.conftest import run_aepipe, run_installed


def direct_codes(run_dir, x):
    run = load_run(run_dir)
    with torch.inference_mode():
        z = run.model.encode(torch.from_numpy(run.normalizer.apply(x)))
        return z.numpy(), run.normalizer.invert(run.model.decode(z).numpy())


def test_round_trip_through_the_installed_command(ray_local, table_dir, tmp_path):
    """Every id exactly once in Zarr and Parquet; decoded rows equal an in-process decode."""
    run = tmp_path / "run"
    run_installed("train", table_dir, "--out", run, "--code-dim", 3, "--hidden", "16", "--epochs", 3)  # in its process
    src = open_source(str(table_dir))
    ids, x = src.read(0, src.n_rows)
    z_ref, x_ref = direct_codes(run, x)

    # small chunks and two encoder actors: many write tasks, chunks split between tasks
    run_installed("encode", table_dir, "--model", run, "--out", tmp_path / "c.zarr", "--chunk-rows", 64,
               "--batch-size", 100, "--concurrency", 2, "--scores", address=ray_local)
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert g.attrs["complete"] and g["codes"].shape == (600, 3) and g["codes"].chunks == (64, 3)
    assert sorted(g["ids"][:]) == sorted(ids) and len(set(g["ids"][:])) == 600
    np.testing.assert_allclose(g["codes"][:], z_ref, rtol=1e-4, atol=1e-5)  # positions follow input rows
    assert (g["scores"][:] > 0).all()

    # the rest in this process (the command's own code, on the same Ray): an interpreter's start-up saved each
    run_aepipe("encode", table_dir, "--model", run, "--out", tmp_path / "c.parquet", "--concurrency", 2,
               address=ray_local)
    t = pads.dataset(str(tmp_path / "c.parquet")).to_table()
    assert sorted(t.column("id").to_pylist()) == sorted(ids) and t.num_rows == 600
    by_id = dict(zip(t.column("id").to_pylist(), np.stack(t.column("code").to_numpy(zero_copy_only=False))))
    np.testing.assert_allclose(np.stack([by_id[i] for i in ids]), z_ref, rtol=1e-4, atol=1e-5)

    for store in ("c.zarr", "c.parquet"):
        out = tmp_path / f"r-{store}.npy"
        run_aepipe("decode", tmp_path / store, "--model", run, "--out", out, address=ray_local)
        got = np.load(out)
        if store == "c.zarr":
            np.testing.assert_allclose(got, x_ref, rtol=1e-4, atol=1e-3)
        else:  # Parquet rows are in store order: match them by id
            order = {i: k for k, i in enumerate(ids)}
            np.testing.assert_allclose(got, x_ref[[order[i] for i in t.column("id").to_pylist()]], rtol=1e-4, atol=1e-3)

    # the same table with its columns in another order: read by name, same codes
    shuffled = tmp_path / "shuffled.parquet"
    table = pads.dataset(str(table_dir)).to_table()
    pq.write_table(table.select(["f3", "id", "f5", "f0", "f2", "f1", "f4"]), shuffled)
    run_aepipe("encode", shuffled, "--model", run, "--out", tmp_path / "s.zarr", address=ray_local)
    np.testing.assert_allclose(zarr.open_group(str(tmp_path / "s.zarr"))["codes"][:], z_ref, rtol=1e-4, atol=1e-5)

    out = tmp_path / "part.parquet"
    run_aepipe("decode", tmp_path / "c.zarr", "--model", run, "--out", out, "--rows", "10:20", address=ray_local)
    part = pads.dataset(str(out)).to_table().sort_by("id")
    assert part.column_names == ["id"] + [f"f{j}" for j in range(6)]  # the table's own columns come back
    np.testing.assert_allclose(np.column_stack([part.column(f"f{j}") for j in range(6)]), x_ref[10:20],
                               rtol=1e-4, atol=1e-3)


def test_digits_encode_int8_and_decode_by_ids(digits_run, tmp_path):
    encode("builtin:digits", digits_run, tmp_path / "q.zarr", dtype="int8")
    encode("builtin:digits", digits_run, tmp_path / "f.zarr", dtype="float32")
    ids_q, zq = load_codes(tmp_path / "q.zarr")
    ids_f, zf = load_codes(tmp_path / "f.zarr")
    assert zarr.open_group(str(tmp_path / "q.zarr"))["codes"].dtype == np.int8
    assert np.array_equal(ids_q, np.arange(1797)) and np.array_equal(ids_f, ids_q)
    lo, hi = load_run(digits_run).code_range()  # the training codes' overall range sets the one int8 scale
    lo, hi = lo.min(), hi.max()
    inside = ((zf >= lo) & (zf <= hi)).all(1)
    assert inside.mean() > 0.9
    assert (np.abs(zq - zf)[inside] <= (hi - lo) / 254 * 1.01 + 1e-6).all()  # half a step of 254
    np.testing.assert_allclose(zq[~inside], np.clip(zf[~inside], lo, hi), atol=(hi - lo).max() / 254 * 1.01)
    n = decode(tmp_path / "f.zarr", digits_run, tmp_path / "sel.zarr", ids=["7", "3", "1500"])
    g = zarr.open_group(str(tmp_path / "sel.zarr"))
    assert n == 3 and list(g["ids"][:]) == [7, 3, 1500] and g["data"].shape == (3, 8, 8)
    _, x_ref = direct_codes(digits_run, open_source("builtin:digits").x[[7, 3, 1500]])
    np.testing.assert_allclose(g["data"][:], x_ref, rtol=1e-4, atol=1e-3)


def test_dequantize_inverts_quantize_within_a_step():
    from aepipe.stores.quantize import int8_scale, quantize

    z = np.random.default_rng(0).uniform(-3, 5, size=(100, 4)).astype(np.float32)
    scale = int8_scale(z.min(0), z.max(0))
    back = dequantize(quantize(z, "int8", scale), "int8", scale)
    assert np.abs(back - z).max() <= (z.max() - z.min()) / 254 / 2 + 1e-6  # half a step


def test_int8_stores_of_the_per_dimension_layout_read_as_before():
    """Stores written before the one-scale layout record a range per dimension (lo, hi)."""
    from aepipe.stores.quantize import quant_scale

    lo, hi = np.array([-1.0, 0.0, 2.0]), np.array([1.0, 0.5, 2.0])  # the last dimension never varied
    q = np.array([[-127, 0, 127], [127, -127, 5]], np.int8)
    before = (q.astype(np.float32) + 127) / 254 * np.where(hi > lo, hi - lo, 1.0) + lo  # the old dequantize
    got = dequantize(q, "int8", quant_scale({"quantization": {"lo": lo.tolist(), "hi": hi.tolist()}}))
    np.testing.assert_allclose(got, before, rtol=1e-6, atol=1e-6)
