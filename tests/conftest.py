"""Fixtures named after what they start: a real local Ray, real run dirs, real files."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.models import ModelConfig
from pipeline.train import TrainConfig, train

AEPIPE = str(Path(sys.executable).with_name("aepipe"))


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole session (2 CPUs, no dashboard), as on the CI machine."""
    import ray

    from pipeline.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def run_aepipe(*args, address=None, check=True):
    """The installed `aepipe` command, joined to the test session's Ray when given its address."""
    cmd = [AEPIPE, *map(str, args)] + (["--address", address] if address else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "AEPIPE_DEBUG": ""})
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def digits_run(ray_local, tmp_path_factory):
    """A small dense model on the digits train split, shared by encode/decode tests."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    train("builtin:digits-train", out, ModelConfig(family="dense", code_dim=8, hidden=(32,)),
          TrainConfig(epochs=4, batch_size=128))
    return out


def write_table(path: Path, n: int = 600, cols: int = 6, seed: int = 0, files: int = 2) -> np.ndarray:
    """A tabular Parquet dataset: string ids, numeric features in their own units, small row groups,
    split over several files so read tasks cross file and row-group boundaries."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    x = (latent @ rng.normal(size=(2, cols)) + 0.05 * rng.normal(size=(n, cols))) * np.arange(1, cols + 1) * 10
    path.mkdir(parents=True, exist_ok=True)
    per = -(-n // files)
    for f in range(files):
        sl = slice(f * per, min(n, (f + 1) * per))
        table = pa.table({"id": [f"r{i:05d}" for i in range(n)][sl],
                          **{f"f{j}": x[sl, j] for j in range(cols)}})
        pq.write_table(table, path / f"part-{f}.parquet", row_group_size=50)
    return x


@pytest.fixture(scope="session")
def table_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "table.parquet"
    write_table(path)
    return path
