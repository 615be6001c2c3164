"""Training past memory: a cluster whose object store is smaller than the data streams it."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

AEPIPE = str(Path(sys.executable).with_name("aepipe"))
STORE = 80 * 2 ** 20  # Ray's floor is 75 MiB


@pytest.fixture(scope="module")
def small_store_cluster():
    """Its own one-node Ray with an 80 MiB object store, beside the session's (own temp dir: the
    two must not share sockets)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 2, "object_store_memory": STORE, "temp_dir": tempfile.mkdtemp(prefix="rs", dir="/tmp")})
    yield cluster.address
    cluster.shutdown()


def test_data_bigger_than_the_object_store_train_streamed(small_store_cluster, tmp_path):
    rows = 200_000  # 200k x 64 float32 = 51 MiB: more than half the store, so it streams
    x = np.random.default_rng(0).random((rows, 64), dtype=np.float32)
    np.save(tmp_path / "big.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([AEPIPE, "train", tmp_path / "big.npy", "--out", tmp_path / "run", "--epochs", "2",
                           "--batch-size", "1024", "--code-dim", "8", "--address", small_store_cluster],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "streaming the data every epoch" in proc.stdout
    meta = json.loads((tmp_path / "run" / "aepipe.json").read_text())
    assert meta["metrics"]["streamed"] and meta["metrics"]["path"] == "ray train"
    assert len(meta["metrics"]["history"]) == 2  # both epochs read the whole (streamed) split
    assert np.isfinite(meta["metrics"]["best_val_loss"])


def test_stream_and_in_process_refused_together(tmp_path):
    proc = subprocess.run([AEPIPE, "train", "builtin:digits", "--out", tmp_path / "r", "--stream", "--in-process"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "aepipe: error:" in proc.stderr and "--stream" in proc.stderr
