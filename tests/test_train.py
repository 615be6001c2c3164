"""Training on the real local Ray and in this process: run dirs, metrics, DDP, the two fit paths,
determinism and resume across them. Naming the session's Ray (address=) sends a fit to Ray Train."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aepipe import AepipeError, load_codes
from aepipe.batch.encode import encode
from aepipe.sources import open_source
from aepipe.models import ModelConfig
from aepipe.run import load_run
from aepipe.training import TrainConfig, fit_path, train
from aepipe.training.rundir import latest_checkpoint, point_at, point_at_newest

PATH_LINES = {"process": "fitting in this process (1 worker, data in memory)", "ray train": "fitting with Ray Train ("}


def train_printing(*args, **kwargs):
    """train(), and what it printed on this process's stdout (Ray workers' epoch lines go elsewhere)."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        meta = train(*args, **kwargs)
    return meta, out.getvalue()


def test_run_dir_is_self_describing(digits_run):
    meta = json.loads((digits_run / "aepipe.json").read_text())
    for key in ("family", "model", "train", "schema", "normalizer", "metrics", "data_fingerprint",
                "model_fingerprint", "aepipe_version", "code_range"):
        assert key in meta
    assert meta["schema"]["shape"] == [8, 8] and meta["normalizer"]["scale"] == [16.0]
    hist = meta["metrics"]["history"]
    assert len(hist) == 4 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert all(h["val_loss"] > 0 for h in hist)
    assert (digits_run / "loss_curve.png").stat().st_size > 1000
    assert meta["metrics"]["path"] == "process" and meta["metrics"]["timings"]["epochs"] > 0
    run = load_run(digits_run)  # nothing from training repeated
    assert run.code_dim == 8 and len(meta["code_range"]["lo"]) == 8


def test_tabular_two_workers_ddp(ray_local, table_dir, tmp_path):
    meta = train(str(table_dir), tmp_path / "run", ModelConfig(code_dim=2, hidden=(16,)),
                 TrainConfig(epochs=3, workers=2, batch_size=32))
    assert meta["train"]["workers"] == 2 and meta["metrics"]["path"] == "ray train"
    assert meta["schema"]["columns"] == [f"f{j}" for j in range(6)] and meta["id_column"] == "id"
    assert meta["normalizer"]["kind"] == "feature"
    hist = meta["metrics"]["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


# Full-batch steps on digits: the order of rows inside an epoch (Ray's local shuffle buffer vs a
# permutation here) cannot change an epoch's step, so the two paths may only differ by float rounding.
SAME_FIT = (ModelConfig(code_dim=8, hidden=(32,)), TrainConfig(epochs=25, batch_size=2048, lr=1e-2, seed=3))


@pytest.fixture(scope="module")
def fits(ray_local, tmp_path_factory):
    """The same fit, twice on each path: {path: [(meta, printed), (meta, printed)]}."""
    root = tmp_path_factory.mktemp("fits")
    return {path: [train_printing("builtin:digits", root / f"{path}-{i}", *SAME_FIT, address=address)
                   for i in range(2)]
            for path, address in (("process", None), ("ray train", ray_local))}


@pytest.mark.parametrize("path", ["process", "ray train"])
def test_each_path_is_deterministic_and_says_which_ran(fits, path):
    (a, printed_a), (b, _) = fits[path]
    assert a["metrics"]["path"] == b["metrics"]["path"] == path
    assert PATH_LINES[path] in printed_a and PATH_LINES[[p for p in PATH_LINES if p != path][0]] not in printed_a
    assert a["model_fingerprint"] == b["model_fingerprint"]
    assert a["metrics"]["history"][-1]["val_loss"] == b["metrics"]["history"][-1]["val_loss"]


def test_both_paths_reach_the_same_validation_loss(fits):
    # the last epoch's, not the best: the best may be the PCA start itself (fitted on the validation
    # rows too, 25 steps do not beat it there), which both paths would agree on without training
    here, ray = (fits[p][0][0]["metrics"]["history"][-1]["val_loss"] for p in ("process", "ray train"))
    assert abs(here - ray) / ray < 0.02, (here, ray)
    first = fits["process"][0][0]["metrics"]["history"][0]["val_loss"]
    assert here < 0.97 * first  # 25 full-batch steps (cosine lr) moved the model: the agreement means something


@pytest.mark.parametrize("first,then", [("process", "ray train"), ("ray train", "process")])
def test_resume_continues_from_either_path(ray_local, tmp_path, first, then):
    out, cfg = tmp_path / "run", ModelConfig(code_dim=4, hidden=(16,))
    address = {"process": None, "ray train": ray_local}
    one = train("builtin:digits-train", out, cfg, TrainConfig(epochs=2, batch_size=256), address=address[first])
    with pytest.raises(AepipeError, match="already holds a trained model"):
        train("builtin:digits-train", out, cfg, TrainConfig(epochs=2))
    two, printed = train_printing("builtin:digits-train", out, cfg, TrainConfig(epochs=4, batch_size=256),
                                  resume=True, address=address[then])
    h1, h2 = one["metrics"]["history"], two["metrics"]["history"]
    assert (one["metrics"]["path"], two["metrics"]["path"]) == (first, then) and PATH_LINES[then] in printed
    assert len(h2) == 4 and h2[:2] == h1  # epochs 1-2 came from the checkpoint, not a rerun


def test_bce_refused_outside_unit_range(table_dir, tmp_path):
    with pytest.raises(AepipeError, match="bce needs inputs in"):
        train(str(table_dir), tmp_path / "r", ModelConfig(loss="bce"), TrainConfig(epochs=1, normalize="standard"))
    assert not (tmp_path / "r" / "aepipe.json").exists()


def test_fit_path_rules(monkeypatch):
    src = open_source("builtin:digits")
    assert fit_path(src, TrainConfig()) == ""
    assert fit_path(src, TrainConfig(workers=2)) == "--workers 2"
    assert fit_path(src, TrainConfig(gpus_per_worker=1)) == "GPUs asked"
    assert fit_path(src, TrainConfig(), address="10.0.0.1:6379") == "cluster 10.0.0.1:6379"
    assert fit_path(src, TrainConfig(ray_train=True)) == "--ray-train"
    with pytest.raises(AepipeError, match="--in-process fits with one CPU worker"):
        fit_path(src, TrainConfig(workers=2, ray_train=False))
    monkeypatch.setattr("aepipe.training.data.MEMORY_SHARE", 0.0)
    assert "past memory" in fit_path(src, TrainConfig())
    assert fit_path(src, TrainConfig(ray_train=False)) == ""  # --in-process: the user's call
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert "cluster 10.0.0.2:6379" in fit_path(src, TrainConfig())


def test_cli_fits_in_process_without_importing_ray(tmp_path):
    """`aepipe train` on digits: the printed path line, and Ray never imported, let alone started."""
    cmd = [sys.executable, "-X", "importtime", "-m", "aepipe.cli", "train", "builtin:digits", "--epochs", "1",
           "--out", str(tmp_path / "r")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert PATH_LINES["process"] in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "ray" not in imported and "torch" in imported
    assert json.loads((tmp_path / "r" / "aepipe.json").read_text())["metrics"]["path"] == "process"
    ckpt = tmp_path / "r" / "checkpoints" / "process" / "checkpoint_latest"
    assert [f.name for f in ckpt.iterdir()] == ["state.pt"]  # written whole: no .tmp left beside it



# `aepipe train builtin:digits --code-dim 2 --hidden 8 --epochs 2 --in-process`, run by the code
# before the fit state was a dataclass and checkpoints/latest.txt named the latest checkpoint
RUN_BEFORE_29 = Path(__file__).parent / "fixtures" / "run_before_29"


def test_a_run_dir_from_before_the_latest_pointer_encodes_and_resumes(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(RUN_BEFORE_29, run)
    old = json.loads((run / "aepipe.json").read_text())
    assert not (run / "checkpoints" / "latest.txt").exists()
    encode("builtin:digits", str(run), tmp_path / "codes.zarr", engine="local")
    ids, codes = load_codes(tmp_path / "codes.zarr")
    assert codes.shape == (1797, 2) and np.isfinite(codes).all()
    meta = train("builtin:digits", run, ModelConfig(code_dim=2, hidden=(8,)), TrainConfig(epochs=3, ray_train=False),
                 resume=True)
    hist = meta["metrics"]["history"]
    assert len(hist) == 3 and hist[:2] == old["metrics"]["history"]  # epochs 1-2 from its checkpoint
    assert meta["metrics"]["pca"] == {**old["metrics"]["pca"], "floor": "PCA", "figure": "mse"}  # the floor it fitted, not fitted again
    assert (run / "checkpoints" / "latest.txt").read_text().strip() == "process/checkpoint_latest"
    assert load_run(run).code_dim == 2


def test_latest_txt_names_the_checkpoint_to_resume_whatever_the_file_times(tmp_path):
    storage = tmp_path / "checkpoints"
    here, ray = storage / "process" / "checkpoint_latest", storage / "train-1" / "checkpoint_000001"
    for d in (here, ray):
        d.mkdir(parents=True)
        (d / "state.pt").write_bytes(b"")
    os.utime(ray / "state.pt", (1, 1))
    assert latest_checkpoint(storage) == str(here)  # no latest.txt (a run dir from before it): the newest file
    point_at(storage, ray)
    assert latest_checkpoint(storage) == str(ray)
    (storage / "latest.txt").write_text("../../elsewhere")
    assert latest_checkpoint(storage) == str(here)  # a name outside checkpoints/ is ignored
    (ray.parent / "checkpoint_000002").mkdir()
    (ray.parent / "checkpoint_000002" / "state.pt").write_bytes(b"")
    point_at_newest(storage, ray.parent)  # what the Ray Train driver does while it waits
    assert latest_checkpoint(storage) == str(ray.parent / "checkpoint_000002")
