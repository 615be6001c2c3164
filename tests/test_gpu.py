"""Training and encoding on a CUDA device; skipped where there is none (CI has none)."""

import numpy as np
import pytest
import torch
import zarr

from aepipe.batch.encode import encode
from aepipe.models import ModelConfig
from aepipe.training import TrainConfig, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_train_and_encode_on_the_gpu(ray_local, tmp_path):
    meta = train("builtin:digits-train", tmp_path / "run", ModelConfig(family="conv", code_dim=8),
                 TrainConfig(epochs=3, gpus_per_worker=1))
    assert meta["metrics"]["device"].startswith("cuda")
    hist = meta["metrics"]["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    encode("builtin:digits", tmp_path / "run", tmp_path / "gpu.zarr", num_gpus=1)
    encode("builtin:digits", tmp_path / "run", tmp_path / "cpu.zarr")
    gpu, cpu = (zarr.open_group(str(tmp_path / f"{d}.zarr"))["codes"][:] for d in ("gpu", "cpu"))
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)  # same codes, other device
