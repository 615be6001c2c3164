"""What the driver of a big encode costs per task: a job of many tiny read tasks on a local
multi-node Ray (ray.cluster_utils.Cluster: a head with no CPU, as cluster.yaml has it, and worker
nodes), as a cluster of many machines would run a billion rows in 100,000 tasks.

    .venv/bin/python bench/driver_scale.py [TASKS ...]        # default: 1000 10000 100000
    .venv/bin/python bench/driver_scale.py 100000 --stores parquet --section driver_scale_100k

For each task count: TASKS x 8 rows of 8 floats, a tiny dense model, `aepipe encode --engine ray`
run through the Python API in this process (this process is the driver), 8 rows per task and per
Zarr chunk (AEPIPE_TASK_ROWS=8, --chunk-rows 8), to Zarr and to Parquet. Measured: the job's wall
time per task, the driver's peak memory above its start (RSS sampled every 0.05 s) per task, and
the commit (the sink's on_write_complete, on the driver: joining every task's result, removing
the resume markers, the manifest or consolidated metadata) in total and per task. Flat columns
mean the driver's cost grows with the task count and no faster. A job of more than 4,096 tasks runs
as Ray Datasets of 4,096 tasks, one after another (aepipe.batch.engine.WAVE_TASKS), so the driver's
peak should stay at one wave's while the tasks grow.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from results import record  # bench/results.py: this script's section of bench/RESULTS.md

ROWS_PER_TASK = 8
MB = 2 ** 20


class Peak(threading.Thread):
    """This process's peak RSS above where it stood at start, sampled every 0.05 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.proc, self.stop, self.peak = psutil.Process(), threading.Event(), 0
        self.base = self.proc.memory_info().rss

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss - self.base)
            time.sleep(0.05)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join()


def timed_commits(sink_classes):
    """Wrap each sink class's on_write_complete to add its seconds to the returned list."""
    spent = []
    for cls in sink_classes:
        inner = cls.on_write_complete

        def wrapped(self, results, _inner=inner):
            t = time.perf_counter()
            try:
                return _inner(self, results)
            finally:
                spent.append(time.perf_counter() - t)

        cls.on_write_complete = wrapped
    return spent


def main(counts: list[int], stores: list[str], section: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from aepipe.batch.encode import encode
    from aepipe.config import ModelConfig, TrainConfig
    from aepipe.stores.parquet_sink import ParquetSink
    from aepipe.stores.zarr_sink import ZarrSink
    from aepipe.training import train

    counts = counts or [1000, 10000, 100000]
    os.environ["AEPIPE_TASK_ROWS"] = str(ROWS_PER_TASK)
    work = Path(tempfile.mkdtemp(prefix="aepipe-driver-"))
    temp = tempfile.mkdtemp(prefix="rd", dir="/tmp")  # Ray's socket paths are limited to 107 bytes
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "object_store_memory": 200 * MB, "temp_dir": temp})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=200 * MB)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    rng = np.random.default_rng(0)
    np.save(work / "small.npy", rng.normal(size=(2000, 8)).astype(np.float32))
    train(str(work / "small.npy"), work / "run", ModelConfig(code_dim=2, hidden=(8,)), TrainConfig(epochs=1))
    commits = timed_commits([ZarrSink, ParquetSink])
    lines = ["| tasks | store | wall s | ms per task | driver peak MiB | KiB per task | commit s | commit ms per task |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    try:
        for n in counts:
            np.save(work / "x.npy", rng.normal(size=(n * ROWS_PER_TASK, 8)).astype(np.float32))
            for suffix in (f".{s}" for s in stores):
                out = work / f"codes{suffix}"
                shutil.rmtree(out, ignore_errors=True)
                before = len(commits)
                t = time.perf_counter()
                with Peak() as peak:
                    encode(str(work / "x.npy"), str(work / "run"), out, chunk_rows=ROWS_PER_TASK, engine="ray",
                           overwrite=True)
                wall = time.perf_counter() - t
                commit = sum(commits[before:])
                lines.append(f"| {n:,} | {suffix[1:]} | {wall:.1f} | {1000 * wall / n:.2f} | {peak.peak / MB:.0f} | "
                             f"{peak.peak / 1024 / n:.2f} | {commit:.2f} | {1000 * commit / n:.3f} |")
                print(lines[-1], flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    lines += ["", f"{ROWS_PER_TASK} rows per task and per chunk; a head with no CPU and 2 worker nodes of 1 CPU "
              "(ray.cluster_utils.Cluster on this machine); the driver is this process."]
    record(section, "\n".join(lines))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("counts", nargs="*", type=int, help="task counts [default: 1000 10000 100000]")
    ap.add_argument("--stores", default="zarr,parquet", help="comma-separated: zarr, parquet")
    ap.add_argument("--section", default="driver_scale", help="bench/RESULTS.md section to record into")
    args = ap.parse_args()
    main(args.counts, args.stores.split(","), args.section)
