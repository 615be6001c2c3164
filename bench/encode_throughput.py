"""Rows per second and peak memory of `aepipe encode` beside a bare single-process loop.

It writes its own data (--rows x 784 float32 rows, one fixed-size list column "x", as 28x28 images
flattened, plus an int64 "id"), fits a dense 784-256-32 autoencoder for one epoch on a 20k-row slice
(the weights do not change the cost of encoding), and then runs, as separate processes timed from
outside:

  aepipe zarr     `aepipe encode DATA --out codes.zarr`     (embedded local Ray, default options)
  aepipe parquet  `aepipe encode DATA --out codes.parquet`
  bare loop       this file with --bare: pyarrow reads row group by row group -> numpy -> the same
                  normaliser and model in torch (default threads: every core) -> zarr, same chunks
                  and codecs, in one process

Each run's peak memory is the largest sum over its whole process tree (the command and every Ray
process it starts), sampled every 0.1 s with psutil: PSS where the kernel reports it (shared pages,
Ray's object store among them, counted once), else RSS. The 1x column encodes --rows // 10 rows, the
10x column all --rows; "memory 10x / 1x" is the flatness ratio.

Sources are rows of SOURCES: each names how to make its data; the table gets one row group of results
per source. An image-folder source belongs there as one more entry.

    .venv/bin/python bench/encode_throughput.py                 # 2M rows (6.3 GB on disk): long
    .venv/bin/python bench/encode_throughput.py --rows 200000   # 20k and 200k rows
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

AEPIPE = str(Path(sys.executable).with_name("aepipe"))
WIDTH = 784
ROW_GROUP = 8192  # rows per Parquet row group: ~25 MiB of input, one read task each


def make_parquet(path: Path, rows: int, seed: int = 0) -> Path:
    """rows x 784 float32 on an 8-d manifold plus noise, written in row groups of ROW_GROUP."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, WIDTH)).astype(np.float32)
    schema = pa.schema([("id", pa.int64()), ("x", pa.list_(pa.float32(), WIDTH))])
    with pq.ParquetWriter(str(path), schema) as out:
        for a in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - a)
            x = rng.normal(size=(n, 8)).astype(np.float32) @ w
            x += 0.05 * rng.standard_normal((n, WIDTH), dtype=np.float32)
            col = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), WIDTH)
            out.write_table(pa.table({"id": np.arange(a, a + n), "x": col}, schema=schema), row_group_size=ROW_GROUP)
    return path


# Where each source's data comes from: name -> function(folder, rows) -> DATA path. Every source
# gets the same runs and the same table rows; the image folder source is added here.
SOURCES = {"parquet 784 float32": lambda folder, rows: make_parquet(folder / f"data-{rows}.parquet", rows)}


def tree_memory(proc) -> int:
    """Bytes held by a process and all its descendants: PSS if readable, else RSS."""
    import psutil

    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            m = p.memory_full_info()
            total += getattr(m, "pss", m.rss)
        except psutil.Error:
            pass
    return total


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak tree memory of one command (exits the bench if it fails)."""
    import psutil

    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, ps = [0], psutil.Process(proc.pid)

    def sample():
        while proc.poll() is None:
            try:
                peak[0] = max(peak[0], tree_memory(ps))
            except Exception:  # the tree changes under us; the next sample counts
                pass
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    wall = time.time() - t0
    th.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, peak[0]


def bare(data: str, model: str, out: str) -> None:
    """The bare loop: no Ray, no checks; prints its own encode seconds (import and load excluded)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import torch
    import zarr

    from pipeline.run import load_run
    from pipeline.store import chunk_rows_for

    run = load_run(model)
    f = pq.ParquetFile(data)
    n, d = f.metadata.num_rows, run.code_dim
    chunk = chunk_rows_for(4 * d)
    g = zarr.open_group(out, mode="w")
    codecs = dict(compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()])
    codes = g.create_array("codes", shape=(n, d), chunks=(chunk, d), dtype="float32", **codecs)
    ids = g.create_array("ids", shape=(n,), chunks=(chunk,), dtype="int64", **codecs)
    t0, start = time.time(), 0
    for batch in f.iter_batches(batch_size=chunk):  # whole chunks, so every zarr write is one chunk
        x = pc.list_flatten(batch.column("x")).to_numpy().reshape(-1, WIDTH)
        with torch.inference_mode():
            z = run.model.encode(torch.from_numpy(run.normalizer.apply(x))).numpy()
        codes[start:start + len(z)] = z
        ids[start:start + len(z)] = batch.column("id").to_numpy()
        start += len(z)
    assert start == n
    print(json.dumps({"encode_s": time.time() - t0}))


def train_model(folder: Path, data: Path) -> Path:
    """A dense 784-256-32 model fitted for one epoch on 20k rows in this process."""
    from pipeline.models import ModelConfig
    from pipeline.train import TrainConfig, train

    small = make_parquet(folder / "train.parquet", 20_000, seed=1)
    out = folder / "model"
    train(str(small), out, ModelConfig(family="dense", code_dim=32, hidden=(256,)), TrainConfig(epochs=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows of the 10x run (the 1x run takes a tenth)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the data (default: a temporary folder)")
    ap.add_argument("--bare", nargs=3, metavar=("DATA", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        return bare(*args.bare)
    from pipeline.evaluate import format_table

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        print("fitting a dense 784-256-32 model (1 epoch, 20k rows) ...", file=sys.stderr, flush=True)
        model = train_model(tmp, tmp)
        table = []
        for name, make in SOURCES.items():
            results = {}
            for scale, rows in (("1x", args.rows // 10), ("10x", args.rows)):
                print(f"{name}: writing {rows} rows ...", file=sys.stderr, flush=True)
                data = make(tmp, rows)
                runs = {"aepipe zarr": [AEPIPE, "encode", str(data), "--model", str(model), "--out", str(tmp / "c.zarr")],
                        "aepipe parquet": [AEPIPE, "encode", str(data), "--model", str(model), "--out", str(tmp / "c.parquet")],
                        "bare loop": [sys.executable, __file__, "--bare", str(data), str(model), str(tmp / "bare.zarr")]}
                for label, cmd in runs.items():
                    print(f"{name} {scale}: {label} ...", file=sys.stderr, flush=True)
                    wall, peak = timed(cmd + (["--overwrite"] if label.startswith("aepipe") else []))
                    results[label, scale] = (rows / wall, peak)
                data.unlink()
            base = results["bare loop", "10x"][0]
            for label in ("aepipe zarr", "aepipe parquet", "bare loop"):
                (r1, m1), (r10, m10) = results[label, "1x"], results[label, "10x"]
                table.append([name, label, f"{r10:,.0f}", f"{r10 / base:.2f}x", f"{r1:,.0f}",
                              f"{m1 / 2 ** 30:.2f}", f"{m10 / 2 ** 30:.2f}", f"{m10 / m1:.2f}x"])
    print(f"\n{args.rows:,} rows (10x) and {args.rows // 10:,} rows (1x) of 784 float32; dense 784-256-32, "
          "code float32; wall time of the whole command (start-up included), one run each\n")
    print(format_table(["source", "run", "rows/s 10x", "vs bare", "rows/s 1x", "peak GiB 1x", "peak GiB 10x",
                        "memory 10x/1x"], table))


if __name__ == "__main__":
    main()
