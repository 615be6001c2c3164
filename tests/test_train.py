"""Training through Ray Train on the real local Ray: run dirs, metrics, DDP, resume."""

import json

import numpy as np
import pytest
import torch

from pipeline import AepipeError
from pipeline.models import ModelConfig
from pipeline.run import load_run
from pipeline.train import TrainConfig, train


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
    run = load_run(digits_run)  # nothing from training repeated
    assert run.code_dim == 8 and len(meta["code_range"]["lo"]) == 8


def test_tabular_two_workers_ddp(ray_local, table_dir, tmp_path):
    meta = train(str(table_dir), tmp_path / "run", ModelConfig(code_dim=2, hidden=(16,)),
                 TrainConfig(epochs=3, workers=2, batch_size=32))
    assert meta["train"]["workers"] == 2
    assert meta["schema"]["columns"] == [f"f{j}" for j in range(6)] and meta["id_column"] == "id"
    assert meta["normalizer"]["kind"] == "feature"
    hist = meta["metrics"]["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


def test_resume_continues_from_the_last_checkpoint(ray_local, tmp_path):
    out = tmp_path / "run"
    cfg = ModelConfig(code_dim=4, hidden=(16,))
    first = train("builtin:digits-train", out, cfg, TrainConfig(epochs=2, batch_size=256))
    with pytest.raises(AepipeError, match="already holds a trained model"):
        train("builtin:digits-train", out, cfg, TrainConfig(epochs=2))
    second = train("builtin:digits-train", out, cfg, TrainConfig(epochs=4, batch_size=256), resume=True)
    h1, h2 = first["metrics"]["history"], second["metrics"]["history"]
    assert len(h2) == 4 and h2[:2] == h1  # epochs 1-2 came from the checkpoint, not a rerun


def test_bce_refused_outside_unit_range(ray_local, table_dir, tmp_path):
    with pytest.raises(AepipeError, match="bce needs inputs in"):
        train(str(table_dir), tmp_path / "r", ModelConfig(loss="bce"), TrainConfig(epochs=1, normalize="standard"))
    assert not (tmp_path / "r" / "aepipe.json").exists()


def test_same_seed_same_weights(ray_local, tmp_path):
    cfg, tcfg = ModelConfig(code_dim=4, hidden=(16,)), TrainConfig(epochs=2, batch_size=128, seed=3)
    a = train("builtin:digits-train", tmp_path / "a", cfg, tcfg)
    b = train("builtin:digits-train", tmp_path / "b", cfg, tcfg)
    assert a["model_fingerprint"] == b["model_fingerprint"]
    wa = torch.load(tmp_path / "a" / "model.pt")
    wb = torch.load(tmp_path / "b" / "model.pt")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
