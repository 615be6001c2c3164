"""The command line: bad input gives one line and exit 2 and leaves no store; help and info teach."""

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from typer.testing import CliRunner

from aepipe.cli import app
from aepipe.run import load_run
from tests.conftest import run_installed, write_table

runner = CliRunner()


def fails_cleanly(args, message, out=None):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    ours = [line for line in result.stderr.splitlines() if line.startswith("aepipe:")]
    assert len(ours) == 1 and message in ours[0]  # one line (Ray's own log lines may come beside it)
    if out is not None:
        assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_bad_inputs_to_encode(digits_run, tmp_path, table_dir):
    out = tmp_path / "c.zarr"
    fails_cleanly(["encode", tmp_path / "nope.parquet", "--model", digits_run, "--out", out], "no such file", out)
    (tmp_path / "d.csv").write_text("a\n1\n")
    (tmp_path / "d.txt").write_text("a\n1\n")
    fails_cleanly(["encode", tmp_path / "d.txt", "--model", digits_run, "--out", out], "unsupported format", out)
    pq.write_table(pa.table({"a": pa.array([], pa.float64())}), tmp_path / "empty.parquet")
    fails_cleanly(["encode", tmp_path / "empty.parquet", "--model", digits_run, "--out", out], "empty", out)
    fails_cleanly(["encode", table_dir, "--model", digits_run, "--out", out], "rows have shape (6,)", out)
    fails_cleanly(["encode", "builtin:digits", "--model", tmp_path / "d.csv", "--out", out], "not an aepipe run dir", out)
    fails_cleanly(["encode", "builtin:digits", "--model", digits_run, "--out", tmp_path / "c.txt"], "choose an output")
    fails_cleanly(["encode", "builtin:digits", "--model", digits_run, "--out", out, "--dtype", "int4"], 'unknown --dtype "int4"')


def test_nan_late_in_the_data_leaves_no_store(ray_local, tmp_path):
    """The NaN sits in the last of three read tasks (4096 rows each), after others may have written."""
    x = np.random.default_rng(0).random((9000, 64)).astype(np.float32)
    x[8990, 5] = np.nan
    pq.write_table(pa.table({f"p{i}": x[:, i] for i in range(64)}), tmp_path / "nan.parquet", row_group_size=500)
    np.save(tmp_path / "good.npy", np.nan_to_num(x).reshape(9000, 8, 8))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(tmp_path / "good.npy"), "--out", str(run), "--epochs", "1",
                                 "--code-dim", "4", "--hidden", "16"])
    assert result.exit_code == 0, result.output
    np.save(tmp_path / "bad.npy", x.reshape(9000, 8, 8))
    for kind in ("zarr", "parquet"):
        out = tmp_path / f"codes.{kind}"
        fails_cleanly(["encode", tmp_path / "bad.npy", "--model", run, "--out", out, "--chunk-rows", 64],
                      'row 8990 holds nan in column "x[5]"', out)
    fails_cleanly(["train", tmp_path / "nan.parquet", "--out", tmp_path / "r2", "--epochs", 1], 'column "p5"')
    assert not (tmp_path / "r2" / "aepipe.json").exists()


def test_bad_train_options(ray_local, tmp_path):
    fails_cleanly(["train", "builtin:digits", "--out", tmp_path / "r", "--family", "vea"], 'unknown family "vea"')
    fails_cleanly(["train", "builtin:digits", "--out", tmp_path / "r", "--hidden", "64,x"], '--hidden "64,x"')
    fails_cleanly(["train", "builtin:digits", "--out", tmp_path / "r", "--epochs", "0"], "at least one epoch")
    fails_cleanly(["train", "builtin:nope", "--out", tmp_path / "r"], 'unknown built-in set "nope"')
    (tmp_path / "c.json").write_text('{"code_dimm": 3}')
    fails_cleanly(["train", "builtin:digits", "--out", tmp_path / "r", "--config", tmp_path / "c.json"],
                  'unknown option "code_dimm"')


def test_decode_refuses_codes_from_another_model(digits_run, ray_local, tmp_path):
    x = write_table(tmp_path / "t.parquet", n=200, cols=3, files=1)
    other = tmp_path / "other"
    assert runner.invoke(app, ["train", str(tmp_path / "t.parquet"), "--out", str(other), "--epochs", "1"]).exit_code == 0
    codes = tmp_path / "c.parquet"
    assert runner.invoke(app, ["encode", str(tmp_path / "t.parquet"), "--model", str(other), "--out", str(codes)]).exit_code == 0
    out = tmp_path / "r.npy"
    fails_cleanly(["decode", codes, "--model", digits_run, "--out", out], "was encoded by model", out)
    fails_cleanly(["decode", codes, "--model", other, "--out", out, "--rows", "5:999"], "the store has rows 0:200", out)
    fails_cleanly(["decode", codes, "--model", other, "--out", out, "--rows", "1:2:3"], "expected A:B", out)
    fails_cleanly(["decode", codes, "--model", other, "--out", out, "--concurrency", "0"], "--concurrency 0: must be a positive integer", out)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    fails_cleanly(["decode", tmp_path / "junk.parquet", "--model", other, "--out", out], "not a readable Parquet", out)
    fails_cleanly(["decode", tmp_path / "t.parquet", "--model", other, "--out", out], "not written by aepipe", out)
    result = runner.invoke(app, ["info", str(codes)])
    assert result.exit_code == 0 and "model_fingerprint" in result.output and "200" in result.output
    # what encode wrote: every input row once, under its own id, with a code per row
    written = pads.dataset(str(codes)).to_table().sort_by("id")
    assert written.column("id").to_pylist() == [f"r{i:05d}" for i in range(len(x))]
    codes_read = np.stack(written.column("code").to_numpy(zero_copy_only=False))
    assert codes_read.shape == (len(x), load_run(other).meta["model"]["code_dim"]) and np.isfinite(codes_read).all()


def test_help_info_and_models_through_the_installed_command(digits_run):
    assert "aepipe train builtin:digits" in run_installed("--help").stdout
    train_help = run_installed("train", "--help").stdout
    assert "--code-dim" in train_help and "--gpus-per-worker" in train_help
    info = run_installed("info", digits_run).stdout
    assert "dense" in info and "model fingerprint" in info
    listed = run_installed("models").stdout
    for family in ("dense", "stacked", "sparse", "contractive", "denoising", "vae", "conv", "recurrent"):
        assert family in listed
    bad = run_installed("info", digits_run / "nothing", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("aepipe: error:") and "Traceback" not in bad.stderr
