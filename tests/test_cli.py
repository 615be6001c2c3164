"""The command line: bad input gives one line and exit 2 and leaves no store; help and info teach."""

import dataclasses
import re

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from aepipe.cli import app
from aepipe.models import ModelConfig
from aepipe.run import load_run
from aepipe.training import TrainConfig
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


# ------------------------------------------------------------------ defaults: one source of truth

def shown_defaults(command: str) -> dict[str, tuple[str, str]]:
    """option name (as the dataclass field) -> (its flags, the default its help shows), parsed from
    `aepipe COMMAND --help` written one option a line."""
    result = runner.invoke(app, [command, "--help"], terminal_width=1000)
    assert result.exit_code == 0, result.output
    found = {}
    for line in result.output.splitlines():
        m = re.match(r"\s+(--[a-z-]+(?: / --[a-z-]+)?)(?: <\w+>)?\s+(.*)$", line)
        if m:
            default = re.search(r"\[default: ([^\]]+)\]", m.group(2))
            name = m.group(1).split(" / ")[0].removeprefix("--").replace("-", "_")
            found[name] = (m.group(1), default.group(1) if default else None)
    return found


def as_shown(flags: str, text: str, want):
    """The default a help line shows, as the dataclass would hold it."""
    if isinstance(want, bool):
        return text == flags.split(" / ")[0]
    return type(want)(text)


@pytest.mark.parametrize("command", ["train", "tune", "demo"])
def test_help_shows_the_config_dataclasses_defaults(command):
    """train takes every ModelConfig and TrainConfig field, and each help shows the field's own
    default: the CLI restates none of them, so one changed in the dataclass changes here too."""
    shown = shown_defaults(command)
    fields = [f for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls) if f.name != "input_shape"]
    if command == "train":
        assert {f.name for f in fields} <= set(shown)
    own = {"tune": {"code_dim", "epochs"}, "demo": {"epochs"}}.get(command, set())  # grids and budgets of their own
    checked = [f for f in fields if f.name in shown and f.name not in own and f.default is not None]
    assert checked
    for f in checked:
        flags, text = shown[f.name]
        assert text is not None, f"{command} --{f.name}: no default shown"
        assert as_shown(flags, text, f.default) == f.default, f"{command} {flags}: [default: {text}], {f.default!r}"


def test_a_changed_dataclass_default_shows_in_the_help(monkeypatch):
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    monkeypatch.setattr(fields["code_dim"], "default", 17)
    monkeypatch.setattr(fields["tied"], "default", True)
    shown = shown_defaults("train")
    assert shown["code_dim"][1] == "17" and shown["tied"][1] == "--tied"
