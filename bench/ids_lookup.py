"""decode --ids of 3 ids on a 10M-row Zarr store whose ids are not in order: through the store's ids
index, against the scan that stores without one get, and against a store whose ids are in order.

    .venv/bin/python bench/ids_lookup.py [ROWS] [WORK_DIR]

Writes a ROWS-row Parquet table (default 10,000,000) whose own id column is a shuffled permutation,
trains a tiny model on its first rows, encodes it to Zarr (the index is built at the commit), then
times the installed command (a new process each, best of 3, --engine local) with the index, with
the index removed (the scan), and on the same rows encoded with row indices for ids (bisection).
"""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from results import record  # bench/results.py: this script's section of bench/RESULTS.md

AEPIPE = str(Path(sys.executable).with_name("aepipe"))


def run(*args) -> float:
    t = time.perf_counter()
    subprocess.run([AEPIPE, *map(str, args)], check=True, capture_output=True)
    return time.perf_counter() - t


def best(*args) -> float:
    return min(run(*args, "--overwrite") for _ in range(3))


def main(rows: str = "10000000", work: str = "/tmp/aepipe-ids-lookup") -> None:
    n, work = int(rows), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = rng.permutation(n).astype(np.int64) * 11 + 1_000_003
    x = rng.normal(size=(n, 4)).astype(np.float32)
    features = {f"f{j}": x[:, j] for j in range(4)}
    pq.write_table(pa.table({"key": ids, **features}), work / "shuffled.parquet", row_group_size=1 << 20)
    pq.write_table(pa.table(features), work / "plain.parquet", row_group_size=1 << 20)
    pq.write_table(pa.table({k: v[:20_000] for k, v in features.items()}), work / "small.parquet")
    model = work / "run"
    if not model.exists():
        run("train", work / "small.parquet", "--code-dim", "2", "--hidden", "8", "--epochs", "1", "--out", model)
    t_index = run("encode", work / "shuffled.parquet", "--id-column", "key", "--model", model,
                  "--out", work / "shuffled.zarr", "--engine", "local", "--overwrite")
    t_plain = run("encode", work / "plain.parquet", "--model", model, "--out", work / "plain.zarr",
                  "--engine", "local", "--overwrite")
    out = work / "picked.npy"
    want = ",".join(str(ids[p]) for p in (n - 1, 3, n // 2))
    asks = [("ids out of order, through the index", work / "shuffled.zarr", want)]
    noindex = work / "shuffled-noindex.zarr"
    shutil.rmtree(noindex, ignore_errors=True)
    shutil.copytree(work / "shuffled.zarr", noindex)
    shutil.rmtree(noindex / "ids_index")  # the store as written before the index: the ids scanned
    subprocess.run([sys.executable, "-c", f"import zarr; zarr.consolidate_metadata('{noindex}')"], check=True)
    asks += [("ids out of order, no index (scan)", noindex, want),
             ("ids in order (bisection)", work / "plain.zarr", f"{n - 1},3,{n // 2}")]
    lines = [f"{n:,} rows; encode with the index built at commit {t_index:.1f} s, "
             f"in-order ids (no index) {t_plain:.1f} s.", "",
             "| decode --ids (3 ids) | seconds (best of 3, a new process each) |", "|---|---|"]
    print("\n".join(lines), flush=True)
    for name, store, asked in asks:
        lines.append(f"| {name} | {best('decode', store, '--model', model, '--out', out, '--ids', asked, '--engine', 'local'):.2f} |")
        print(lines[-1], flush=True)
    torch_alone = min(run_python("import torch") for _ in range(3))
    lines += ["", f"For scale, `python -c 'import torch'` alone: {torch_alone:.2f} s."]
    print(lines[-1])
    record("ids_lookup", "\n".join(lines))


def run_python(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t


if __name__ == "__main__":
    main(*sys.argv[1:])
