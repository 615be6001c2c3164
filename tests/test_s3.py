"""DATA, stores and run dirs by URI, against a real S3 API: moto's server on loopback.

The AWS_* variables go to the `aepipe` subprocesses only (and, through runtime_env, to the Ray
workers they start or join); this process talks to the server through its own S3FileSystem.
"""

import os
import re
import socket
import subprocess

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tests.conftest import AEPIPE, aepipe_here, write_table

pytest.importorskip("moto.server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3():
    """(environment for aepipe, S3FileSystem for the test) with buckets data, runs and out."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                           endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True)
    for bucket in ("data", "runs", "out"):
        fs.create_dir(bucket)
    yield env, fs
    server.stop()


def aepipe(s3, *args, address=None, code=0):
    """A command with the S3 environment: joined to the session's Ray, the installed command (its
    AWS_* variables reach the Ray workers through runtime_env); else in this process."""
    if address:
        cmd = [AEPIPE, *map(str, args), "--address", address]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **s3[0], "AEPIPE_DEBUG": ""})
    else:
        cmd = ["aepipe", *map(str, args)]
        with pytest.MonkeyPatch.context() as mp:
            for k, v in s3[0].items():
                mp.setenv(k, v)
            proc = aepipe_here(*args)
    assert proc.returncode == code, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="session")
def s3_table(s3, tmp_path_factory):
    """A Parquet folder (two files, string ids) uploaded to s3://data/table.parquet."""
    local = tmp_path_factory.mktemp("s3data") / "table.parquet"
    write_table(local, n=600)
    pafs.copy_files(str(local), "data/table.parquet", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=s3[1])
    return "s3://data/table.parquet"


@pytest.fixture(scope="session")
def s3_run(s3, s3_table):
    """train from S3 into a run dir on S3."""
    aepipe(s3, "train", s3_table, "--out", "s3://runs/tab", "--code-dim", 3, "--hidden", "16", "--epochs", 2)
    return "s3://runs/tab"


def test_run_dir_on_s3_is_complete_and_loads(s3, s3_run):
    names = {f.base_name for f in s3[1].get_file_info(pafs.FileSelector("runs/tab", recursive=True))}
    assert {"aepipe.json", "model.pt", "loss_curve.png"} <= names
    out = aepipe(s3, "info", s3_run, "--verify").stdout
    assert "weights match the fingerprint" in out and "s3://data/table.parquet" in out
    again = aepipe(s3, "train", "s3://data/table.parquet", "--out", s3_run, "--epochs", 1, code=2)
    assert "already holds a trained model" in again.stderr
    # --resume downloads the run dir, checkpoints included, continues and uploads it again
    aepipe(s3, "train", "s3://data/table.parquet", "--out", s3_run, "--code-dim", 3, "--hidden", "16",
           "--epochs", 3, "--resume")
    assert re.search(r"epochs run\s+3 ", aepipe(s3, "info", s3_run).stdout)


@pytest.mark.parametrize("suffix", [".zarr", ".parquet"])
def test_encode_s3_to_s3_then_decode_every_id_once(s3, s3_table, s3_run, ray_local, tmp_path, suffix):
    store = f"s3://out/codes{suffix}"
    aepipe(s3, "encode", s3_table, "--model", s3_run, "--out", store, "--overwrite", address=ray_local)
    info = aepipe(s3, "info", store, "--verify").stdout
    assert "verified" in info
    if suffix == ".zarr":  # an existing object prefix is not replaced without --overwrite
        refused = aepipe(s3, "encode", s3_table, "--model", s3_run, "--out", store, address=ray_local, code=2)
        assert refused.stderr.count("\n") == 1 and "already exists" in refused.stderr
    recon = tmp_path / "recon.parquet"
    aepipe(s3, "decode", store, "--model", s3_run, "--out", recon, address=ray_local)
    ids = pq.read_table(recon, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == [f"r{i:05d}" for i in range(600)]  # every id, exactly once
    if suffix == ".parquet":  # the manifest, written last, is there and lists every part
        names = {f.base_name for f in s3[1].get_file_info(pafs.FileSelector("out/codes.parquet"))}
        assert "_aepipe_manifest.parquet" in names and not any(n.endswith(".tmp") for n in names)


def test_npy_on_s3_trains_and_scores(s3, ray_local, tmp_path):
    x = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
    with s3[1].open_output_stream("data/x.npy") as f:
        np.save(f, x)
    run = tmp_path / "npy_run"
    aepipe(s3, "train", "s3://data/x.npy", "--out", run, "--code-dim", 2, "--hidden", "8", "--epochs", 1)
    aepipe(s3, "score", "s3://data/x.npy", "--model", run, "--out", "s3://out/x_scores.parquet",
           "--engine", "ray", address=ray_local)
    table = pq.read_table("out/x_scores.parquet", filesystem=s3[1])
    assert sorted(table.column("id").to_pylist()) == list(range(300))


@pytest.mark.parametrize("args", [
    ("train", "s3://no-such-bucket/t.parquet", "--out", "runs/x"),
    ("encode", "s3://data/table.parquet", "--model", "s3://runs/tab", "--out", "s3://no-such-bucket/c.zarr"),
])
def test_missing_bucket_is_one_error_line(s3, s3_run, args):
    proc = aepipe(s3, *args, code=2)
    assert proc.stderr.startswith("aepipe: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "no-such-bucket" in proc.stderr
