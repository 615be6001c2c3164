"""Rows per second and peak memory of `aepipe encode` beside a bare single-process loop.

It writes its own data for each source of SOURCES and fits a dense 784-256-32 autoencoder for one
epoch on a small set of the same kind (the weights do not change the cost of encoding):

  parquet 784 float32   --rows rows (default 2M): one fixed-size list column "x" (28x28 images
                        flattened) and an int64 "id", row groups of 8192
  jpeg folder 28x28     20,000 grayscale JPEGs (quality 90), 1,000 to a subfolder; ids are paths

and runs, as separate processes timed from outside:

  aepipe zarr     `aepipe encode DATA --out codes.zarr`     (default options: --engine auto runs
                  in this process or on an embedded local Ray, whichever it estimates is faster)
  aepipe parquet  `aepipe encode DATA --out codes.parquet`
  ..., on Ray / in-process: the Zarr run with --engine ray / --engine local (the choice forced)
  bare loop       this file with --bare: one process reads chunk by chunk (pyarrow row groups, or
                  PIL for the JPEGs) -> numpy -> the same normaliser and model in torch (default
                  threads: every core) -> zarr, same chunks and codecs

Each run's peak memory is the largest sum over its whole process tree (the command and every Ray
process it starts), sampled every 0.1 s with psutil: PSS where the kernel reports it (shared pages,
Ray's object store among them, counted once), else RSS. The 1x column encodes a tenth of the
source's rows, the 10x column all of them; "memory 10x / 1x" is the flatness ratio.

    .venv/bin/python bench/encode_throughput.py                 # 2M rows (6.3 GB on disk) + 20k JPEGs
    .venv/bin/python bench/encode_throughput.py --rows 200000   # 20k and 200k Parquet rows
    .venv/bin/python bench/encode_throughput.py --only jpeg     # one source
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from results import record  # bench/results.py: this script's section of bench/RESULTS.md

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


def make_jpegs(path: Path, rows: int, seed: int = 0) -> Path:
    """rows 28x28 grayscale JPEGs (quality 90) of the same kind of rows, 1,000 to a subfolder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, WIDTH)).astype(np.float32)
    for a in range(0, rows, ROW_GROUP):
        n = min(ROW_GROUP, rows - a)
        x = rng.normal(size=(n, 8)).astype(np.float32) @ w
        x = np.clip(128 + 40 * x, 0, 255).astype(np.uint8).reshape(n, 28, 28)
        for i, img in enumerate(x, start=a):
            sub = path / f"{i // 1000:04d}"
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").save(sub / f"{i:07d}.jpg", quality=90)
    return path


# Each source: name -> (rows of its 10x run, function(path, rows) -> DATA, file name). Every source
# gets the same runs and the same group of table rows, and its own model (a folder of 28x28 images
# has rows shaped (28, 28), the Parquet column (784,)).
SOURCES = {"parquet 784 float32": (None, make_parquet, "data-{}.parquet"),
           "jpeg folder 28x28": (20_000, make_jpegs, "jpegs-{}")}


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


def _parquet_batches(data: str, chunk: int):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    f = pq.ParquetFile(data)
    for batch in f.iter_batches(batch_size=chunk):
        yield batch.column("id").to_numpy(), pc.list_flatten(batch.column("x")).to_numpy().reshape(-1, WIDTH)


def _jpeg_batches(data: str, chunk: int):
    from PIL import Image

    files = sorted(Path(data).rglob("*.jpg"))
    for a in range(0, len(files), chunk):
        part = files[a:a + chunk]
        x = np.stack([np.asarray(Image.open(f).convert("L"), np.float32) for f in part])
        yield np.array([str(f.relative_to(data)) for f in part]), x


def bare(data: str, model: str, out: str) -> None:
    """The bare loop: no Ray, no checks; prints its own encode seconds (import and load excluded)."""
    import torch
    import zarr

    from aepipe.run import load_run
    from aepipe.stores import chunk_rows_for

    run = load_run(model)
    images = Path(data).is_dir()
    if images:
        n = sum(1 for _ in Path(data).rglob("*.jpg"))
    else:
        import pyarrow.parquet as pq

        n = pq.ParquetFile(data).metadata.num_rows
    d = run.code_dim
    chunk = chunk_rows_for(4 * d)
    g = zarr.open_group(out, mode="w")
    codecs = dict(compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()])
    codes = g.create_array("codes", shape=(n, d), chunks=(chunk, d), dtype="float32", **codecs)
    ids = g.create_array("ids", shape=(n,), chunks=(chunk,), dtype=str if images else "int64", **codecs)
    t0, start = time.time(), 0
    # whole chunks, so every zarr write is one chunk
    for id_, x in (_jpeg_batches if images else _parquet_batches)(data, chunk):
        with torch.inference_mode():
            z = run.model.encode(torch.from_numpy(run.normalizer.apply(x))).numpy()
        codes[start:start + len(z)] = z
        ids[start:start + len(z)] = id_
        start += len(z)
    assert start == n
    print(json.dumps({"encode_s": time.time() - t0}))


def train_model(folder: Path, make, file_name: str) -> Path:
    """A dense 784-256-32 model fitted for one epoch on 2k-20k rows of the source's kind, in this process."""
    from aepipe.models import ModelConfig
    from aepipe.training import TrainConfig, train

    rows = 20_000 if make is make_parquet else 2_000
    small = make(folder / ("train-" + file_name.format(rows)), rows, seed=1)
    out = folder / f"model-{make.__name__}"
    train(str(small), out, ModelConfig(family="dense", code_dim=32, hidden=(256,)), TrainConfig(epochs=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows of the 10x run (the 1x run takes a tenth)")
    ap.add_argument("--only", default="", help="run only the sources whose name contains this (parquet, jpeg)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the data (default: a temporary folder)")
    ap.add_argument("--bare", nargs=3, metavar=("DATA", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        return bare(*args.bare)
    from aepipe.analysis.metrics import format_table

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        table = []
        for name, (source_rows, make, file_name) in SOURCES.items():
            if args.only and args.only not in name:
                continue
            print(f"{name}: fitting a dense 784-256-32 model (1 epoch) ...", file=sys.stderr, flush=True)
            model = train_model(tmp, make, file_name)
            results = {}
            top = source_rows or args.rows
            for scale, rows in (("1x", top // 10), ("10x", top)):
                print(f"{name}: writing {rows} rows ...", file=sys.stderr, flush=True)
                data = make(tmp / file_name.format(rows), rows)
                enc = [AEPIPE, "encode", str(data), "--model", str(model), "--out"]
                runs = {"aepipe zarr": enc + [str(tmp / "c.zarr")],
                        "aepipe parquet": enc + [str(tmp / "c.parquet")],
                        # auto picks this process or Ray (aepipe.batch.engine.local_is_faster): both, forced
                        "aepipe zarr, on Ray": enc + [str(tmp / "c.zarr"), "--engine", "ray"],
                        "aepipe zarr, in-process": enc + [str(tmp / "c.zarr"), "--engine", "local"],
                        "bare loop": [sys.executable, __file__, "--bare", str(data), str(model), str(tmp / "bare.zarr")]}
                for label, cmd in runs.items():
                    print(f"{name} {scale}: {label} ...", file=sys.stderr, flush=True)
                    wall, peak = timed(cmd + (["--overwrite"] if label.startswith("aepipe") else []))
                    results[label, scale] = (rows / wall, peak)
                shutil.rmtree(data) if data.is_dir() else data.unlink()
            base = results["bare loop", "10x"][0]
            for label in runs:
                (r1, m1), (r10, m10) = results[label, "1x"], results[label, "10x"]
                table.append([name, f"{top:,}", label, f"{r10:,.0f}", f"{r10 / base:.2f}x", f"{r1:,.0f}",
                              f"{m1 / 2 ** 30:.2f}", f"{m10 / 2 ** 30:.2f}", f"{m10 / m1:.2f}x"])
    text = ("rows of 784 values (10x: the rows column; 1x: a tenth); dense 784-256-32, code float32; wall time "
            "of the whole command (start-up included), one run each\n\n"
            + format_table(["source", "rows 10x", "run", "rows/s 10x", "vs bare", "rows/s 1x", "peak GiB 1x",
                            "peak GiB 10x", "memory 10x/1x"], table))
    print("\n" + text)
    record("encode_throughput", text)


if __name__ == "__main__":
    main()
