"""Where the wall time of `aepipe train` goes, on both fit paths, beside a plain torch loop.

For each dataset (builtin:digits, and a synthetic .npy of --rows rows x 64 features) it runs, as
separate processes timed from outside:

  process    `aepipe train DATA --in-process`  (the default for 1 CPU worker, data in memory)
  ray train  `aepipe train DATA --ray-train`   (embedded local Ray, a 1-worker TorchTrainer)
  plain      this file with --plain: the same model (aepipe.models), rows, normalisation and
             split, fitted by a bare Adam loop with no validation bookkeeping, checkpoints or plot

All three fit on one CPU thread (a 1-CPU Ray Train worker gets OMP_NUM_THREADS=1; the in-process
path sets the same).
and prints one table. The phases come from the run dir's aepipe.json (metrics.timings, measured
inside train()); "imports, CLI" is launch to train() entry, "save, exit" is the run dir write and
interpreter exit. Epoch rows: the first epoch (it pays torch's lazy imports and, on Ray, the
dataset iterator's start), then the median of the others; the overhead ratio compares that median
plus the per-epoch report/checkpoint cost with the plain loop's median epoch.

    .venv/bin/python bench/train_overhead.py   # about 6 min on the shared 2-core machine (timings noisy there)
    .venv/bin/python bench/train_overhead.py --rows 300000 --epochs 3 --digits-epochs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import record  # bench/results.py: this script's section of bench/RESULTS.md

AEPIPE = str(Path(sys.executable).with_name("aepipe"))


def run_aepipe(data: str, out: Path, epochs: int, path_flag: str) -> dict:
    cmd = [AEPIPE, "train", data, "--out", str(out), "--epochs", str(epochs), "--patience", "0", path_flag]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    m = json.loads((out / "aepipe.json").read_text())["metrics"]
    t, hist = m["timings"], m["history"]
    known = sum(t.get(k, 0.0) for k in ("ray_start", "statistics", "datasets", "fit", "plot"))
    return {
        "imports, CLI": t["started_at"] - t0,
        "open source, checks": t["before_save"] - t["started_at"] - known,
        "Ray import + start": t.get("ray_start", 0.0),
        "statistics pass": t["statistics"],
        "datasets (normalise, split)": t["datasets"],
        "trainer start/stop, model, code range": t["fit"] - t["epochs"] - t["checkpoints"],
        "first epoch": hist[0]["seconds"],
        "later epochs (sum)": sum(h["seconds"] for h in hist[1:]),
        "reports + checkpoints (sum)": t["checkpoints"],
        "plot": t["plot"],
        "save run dir, exit": t0 + wall - t["before_save"],
        "total wall": wall,
        "_epoch": statistics.median(h["seconds"] for h in hist[1:]) if len(hist) > 1 else hist[0]["seconds"],
        "_ckpt_per_epoch": t["checkpoints"] / len(hist),
        "_val": m["best_val_loss"],
    }


def run_plain(data: str, epochs: int, batch_size: int) -> dict:
    t0 = time.time()
    proc = subprocess.run([sys.executable, __file__, "--plain", data, str(epochs), str(batch_size)],
                          capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"plain loop failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    ep = r["epochs"]
    return {"imports, CLI": r["imported_at"] - t0, "datasets (normalise, split)": r["data"],
            "trainer start/stop, model, code range": r["model"], "first epoch": ep[0],
            "later epochs (sum)": sum(ep[1:]), "save run dir, exit": t0 + wall - r["done_at"], "total wall": wall,
            "_epoch": statistics.median(ep[1:]) if len(ep) > 1 else ep[0], "_ckpt_per_epoch": 0.0,
            "_val": r["val"]}


def plain(data: str, epochs: int, batch_size: int) -> None:
    """A bare script: read, normalise, split, then Adam over shuffled batches; one JSON line out."""
    import torch

    from aepipe.normalize import in_validation
    from aepipe.sources import open_source
    from aepipe.models import ModelConfig, build_model

    imported = time.time()
    torch.set_num_threads(1)  # as aepipe's 1-worker fit on either path
    src = open_source(data)
    _, x = src.read(0, src.n_rows)
    x = (x - x.min()) / (x.max() - x.min())  # --normalize global, aepipe's default for arrays
    val = in_validation(np.arange(len(x)), 0.1)
    xtr, xva = torch.from_numpy(x[~val]), torch.from_numpy(x[val])
    t = time.time()
    timings = {"data": t - imported}
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_shape=src.schema.shape))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    timings["model"], ep = time.time() - t, []
    for e in range(epochs):
        t = time.time()
        model.train()
        for idx in torch.randperm(len(xtr), generator=torch.Generator().manual_seed(e)).split(batch_size):
            loss = model(xtr[idx])["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val_loss = sum(float(model(b)["loss"]) * len(b) for b in xva.split(batch_size)) / len(xva)
        ep.append(time.time() - t)
    print(json.dumps({**timings, "epochs": ep, "val": val_loss, "imported_at": imported, "done_at": time.time()}))


ROWS = ["imports, CLI", "open source, checks", "Ray import + start", "statistics pass", "datasets (normalise, split)",
        "trainer start/stop, model, code range", "first epoch", "later epochs (sum)", "reports + checkpoints (sum)",
        "plot", "save run dir, exit", "total wall"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300_000, help="rows of the synthetic dataset (64 features)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs on the synthetic dataset")
    ap.add_argument("--digits-epochs", type=int, default=5, help="epochs on builtin:digits")
    ap.add_argument("--plain", nargs=3, metavar=("DATA", "EPOCHS", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        return plain(args.plain[0], int(args.plain[1]), int(args.plain[2]))
    from aepipe.analysis.metrics import format_table
    from aepipe.training import TrainConfig

    batch = TrainConfig().batch_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)  # rows on a 4-d manifold plus noise, so there is something to learn
        z = rng.normal(size=(args.rows, 4)).astype(np.float32)
        np.save(tmp / "synthetic.npy", np.tanh(z @ rng.normal(size=(4, 64)).astype(np.float32))
                + 0.05 * rng.normal(size=(args.rows, 64)).astype(np.float32))
        sets = [("digits", "builtin:digits", args.digits_epochs), (f"{args.rows // 1000}k x 64", str(tmp / "synthetic.npy"), args.epochs)]
        cols, results = [], []
        for name, data, epochs in sets:
            for label, flag in (("process", "--in-process"), ("ray train", "--ray-train")):
                print(f"{name}: aepipe train {label} ({epochs} epochs) ...", file=sys.stderr, flush=True)
                results.append(run_aepipe(data, tmp / f"{name}-{label}".replace(" ", "_"), epochs, flag))
                cols.append(f"{name} {label}")
            print(f"{name}: plain torch loop ...", file=sys.stderr, flush=True)
            results.append(run_plain(data, epochs, batch))
            cols.append(f"{name} plain")
    rows = [[r] + [f"{res[r]:.2f}" if r in res else "-" for res in results] for r in ROWS]
    rows.append(["epoch, steady (median)"] + [f"{res['_epoch']:.3f}" for res in results])
    ratio = []
    for i, res in enumerate(results):
        base = results[(i // 3) * 3 + 2]["_epoch"]
        ratio.append(f"{(res['_epoch'] + res['_ckpt_per_epoch']) / base:.2f}x")
    rows.append(["per-epoch cost vs plain"] + ratio)
    rows.append(["best val loss"] + [f"{res['_val']:.5f}" for res in results])
    text = (f"seconds of wall time; batch {batch}, default dense model (256-64-16); "
            f"digits {args.digits_epochs} epochs, synthetic {args.epochs} epochs; one run each\n\n"
            + format_table(["phase (s)"] + cols, rows))
    print(text)
    record("train_overhead", text)


if __name__ == "__main__":
    main()
