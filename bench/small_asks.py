"""Wall time of small decoder asks through the installed command, in-process vs on a fresh Ray.

    .venv/bin/python bench/small_asks.py RUN_DIR [WORK_DIR]

RUN_DIR: a run dir trained on digits (e.g. runs/demo/model). Builds a 100,000-row digits-shaped .npy
and its codes store in WORK_DIR, then times decode (--rows, --ids) and score at several sizes with
--engine local (fastest of 3) and --engine ray; every command is a new process, as a user would
run it.
"""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from results import record  # bench/results.py: this script's section of bench/RESULTS.md

AEPIPE = str(Path(sys.executable).with_name("aepipe"))


def timed(*args) -> float:
    t = time.perf_counter()
    subprocess.run([AEPIPE, *map(str, args), "--overwrite"], check=True, capture_output=True)
    return time.perf_counter() - t


def main(run: str, work: str = "/tmp/aepipe-small-asks") -> None:
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    x = load_digits().images.astype(np.float32)
    big = np.concatenate([x] * 56)[:100_000]
    np.save(work / "big.npy", big)
    for n in (3_000, 20_000):
        np.save(work / f"small{n}.npy", big[:n])
    if not (work / "codes.zarr").exists():
        subprocess.run([AEPIPE, "encode", work / "big.npy", "--model", run, "--out", work / "codes.zarr"], check=True)
    out = work / "out.npy"
    asks = [("decode --ids (3 ids)", ["decode", work / "codes.zarr", "--model", run, "--out", out, "--ids", "7,3,99999"]),
            ("decode --rows 0:3000", ["decode", work / "codes.zarr", "--model", run, "--out", out, "--rows", "0:3000"]),
            ("decode --rows 0:20000", ["decode", work / "codes.zarr", "--model", run, "--out", out, "--rows", "0:20000"]),
            ("score 3,000 rows", ["score", work / "small3000.npy", "--model", run, "--out", work / "s.parquet"]),
            ("score 20,000 rows", ["score", work / "small20000.npy", "--model", run, "--out", work / "s.parquet"]),
            ("decode --rows 0:100000", ["decode", work / "codes.zarr", "--model", run, "--out", out, "--rows", "0:100000"])]
    lines = ["| ask | in-process s | on a fresh Ray s |", "|---|---|---|"]
    print("\n".join(lines))
    for name, args in asks:
        local = min(timed(*args, "--engine", "local") for _ in range(3))
        ray = timed(*args, "--engine", "ray")
        lines.append(f"| {name} | {local:.1f} | {ray:.1f} |")
        print(lines[-1], flush=True)
    torch_alone = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        torch_alone.append(time.perf_counter() - t)
    lines += ["", f"For scale, `python -c 'import torch'` alone: {min(torch_alone):.2f} s."]
    print(lines[-1])
    record("small_asks", "\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
