"""Failures on a multi-node Ray on this machine (ray.cluster_utils.Cluster: a head and worker
nodes, each its own raylet): a node killed mid-encode, a worker process killed mid-encode, a node
killed mid-training. Ray retries the
lost work; aepipe must end with a complete store / a finished run. Each cluster has its own temp
dir and is never connected to from this process, so the session's Ray (conftest) is untouched."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import aepipe

AEPIPE = str(Path(sys.executable).with_name("aepipe"))
MB = 2 ** 20


@pytest.fixture(scope="module")
def head():
    """A head with no CPU (drivers only, as in cluster.yaml), shared by this module's tests: each
    adds the worker nodes it needs (see `cluster`)."""
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AEPIPE_CHECKPOINT_EVERY_S", "2")  # the nodes' (and so the train workers') environment
        temp = tempfile.mkdtemp(prefix="rf", dir="/tmp")  # short: Ray's socket paths are limited to 107 bytes
        c = Cluster(initialize_head=True, connect=False, head_node_args={
            "num_cpus": 0, "object_store_memory": 100 * MB, "temp_dir": temp})
        yield c
        c.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def cluster(head):
    """The shared head; the worker nodes a test added are removed after it, dead or alive."""
    yield head
    for node in head.list_all_nodes():
        if node is not head.head_node:
            head.remove_node(node, allow_graceful=False)


def add_node(c, cpus):
    return c.add_node(num_cpus=cpus, object_store_memory=100 * MB)


def workers_on(node) -> list[tuple[psutil.Process, str]]:
    """The Ray workers a node runs, with their process titles (ray::MapWorker(MapBatches(Encoder)), ...)."""
    raylet = node.all_processes["raylet"][0].process.pid
    found = []
    for kid in psutil.Process(raylet).children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker may exit between the listing and its name
            found.append((kid, kid.name()))
    return found


def start(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AEPIPE_DEBUG")}
    return subprocess.Popen([AEPIPE, *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(proc, test, what, timeout=300):
    """test()'s first true value, polled while proc runs; the test fails if proc ends first."""
    deadline = time.time() + timeout
    while not (found := test()):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()  # a no-op once it has exited
            out, err = proc.communicate()
            pytest.fail(f"{what} never happened (exit {proc.returncode}):\n{out}\n{err}")
        time.sleep(0.05)
    return found


def finish(proc, timeout=400):
    """The command's (stdout, stderr); killed, not left behind, if it hangs."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")


def rows_and_model(tmp_path, seed: int) -> np.ndarray:
    """200,000 rows of 16 floats in x.npy, and a small model fitted on the first 5,000 (run)."""
    x = np.random.default_rng(seed).random((200_000, 16), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "small.npy", x[:5000])
    subprocess.run([AEPIPE, "train", tmp_path / "small.npy", "--code-dim", "4", "--hidden", "16", "--epochs", "1",
                    "--out", tmp_path / "run"], check=True, capture_output=True)
    return x


def every_id_once(proc, x, store, run) -> None:
    """The encode ended well, and its store holds every row's id once, with the model's codes."""
    out, err = finish(proc)
    assert proc.returncode == 0, err
    assert f"encoded {len(x)} rows" in out
    ids, codes = aepipe.load_codes(store)
    assert np.array_equal(np.sort(ids), np.arange(len(x)))  # every id exactly once
    ref = aepipe.AutoencoderFeatures(str(run)).transform(x)
    np.testing.assert_allclose(codes[np.argsort(ids)], ref, atol=1e-6)


@pytest.mark.slow
def test_node_killed_mid_encode_store_complete(cluster, tmp_path, monkeypatch):
    # small tasks (aepipe's own are up to 32768 rows): the encode is surely still running at the kill
    monkeypatch.setenv("AEPIPE_TASK_ROWS", "4096")
    x = rows_and_model(tmp_path, seed=0)
    nodes = [add_node(cluster, 2), add_node(cluster, 2)]
    cluster.wait_for_nodes()
    proc = start("encode", tmp_path / "x.npy", "--model", tmp_path / "run", "--out", tmp_path / "codes.zarr",
                 "--concurrency", "2", "--address", cluster.address)
    done = tmp_path / "codes.zarr.partial" / "_aepipe_done"
    wait_for(proc, lambda: done.exists() and any(done.iterdir()), "a first chunk")
    # kill a node running an encode task (read, model and write fused in one), so the failure hits
    # the model's work, not only a read
    # a worker shows "ray::IDLE" between its tasks: look until one is caught inside an encode task
    victim = wait_for(proc, lambda: next((n for n in nodes if any("MapBatches" in t for _, t in workers_on(n))), None),
                      "an encode task running on a worker node", timeout=60)
    cluster.remove_node(victim)
    add_node(cluster, 2)  # what an autoscaler does: the lost tasks get somewhere to rerun
    every_id_once(proc, x, tmp_path / "codes.zarr", tmp_path / "run")


@pytest.mark.slow
def test_worker_process_killed_mid_encode_every_id_once(cluster, tmp_path, monkeypatch):
    """SIGKILL one Ray worker process while it runs an encode task (the OOM killer's way): Ray
    starts another and reruns the task; the store holds every id exactly once, the right codes."""
    monkeypatch.setenv("AEPIPE_TASK_ROWS", "4096")
    x = rows_and_model(tmp_path, seed=1)
    node = add_node(cluster, 2)
    cluster.wait_for_nodes()
    proc = start("encode", tmp_path / "x.npy", "--model", tmp_path / "run", "--out", tmp_path / "codes.parquet",
                 "--engine", "ray", "--address", cluster.address)
    done = tmp_path / "codes.parquet.partial"
    wait_for(proc, lambda: done.exists() and any(p.suffix == ".parquet" for p in done.iterdir()), "a first part")
    victim = wait_for(proc, lambda: next((p for p, t in workers_on(node) if "MapBatches" in t), None),
                      "a worker inside an encode task", timeout=60)
    victim.kill()
    every_id_once(proc, x, tmp_path / "codes.parquet", tmp_path / "run")
    assert not psutil.pid_exists(victim.pid) or victim.status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_node_killed_mid_training_run_finishes_from_checkpoint(cluster, tmp_path):
    """Two DDP workers on two 1-CPU nodes; the node of one of them dies after a checkpoint. Ray
    Train's FailureConfig restarts the worker group from that checkpoint on a new node."""
    epochs = 5  # about 5 s an epoch here after the restart (2 DDP workers on a loaded 2-core machine); the kill
    # comes after the second checkpoint (epoch 2), so epochs 3-5 run after the restart
    nodes = [add_node(cluster, 1), add_node(cluster, 1)]
    cluster.wait_for_nodes()
    run = tmp_path / "run"
    proc = start("train", "builtin:digits", "--code-dim", "8", "--hidden", "32", "--epochs", epochs, "--patience", "0",
                 "--workers", "2", "--out", run, "--address", cluster.address)
    # two checkpoint folders: the first is then registered with Ray Train (a folder alone may still
    # be on its way in when the node dies, and the restart then rightly begins at epoch 1)
    wait_for(proc, lambda: len(list(run.glob("checkpoints/train-*/checkpoint_*"))) >= 2, "two checkpoints")
    victim = next((n for n in nodes if any("TrainWorker" in t for _, t in workers_on(n))), None)
    assert victim is not None, [workers_on(n) for n in nodes]
    cluster.remove_node(victim)
    add_node(cluster, 1)
    out, err = finish(proc)
    assert proc.returncode == 0, err
    meta = json.loads((run / "aepipe.json").read_text())
    assert meta["metrics"]["path"] == "ray train"
    assert len(meta["metrics"]["history"]) == epochs  # every epoch once: none lost, none repeated
    assert out.count(f"epoch 1/{epochs} ") == 1  # the restart went on from the checkpoint, not from epoch 1
    assert out.count(f"epoch {epochs}/{epochs} ") == 1
