"""aepipe demo: the whole flow on scikit-learn's digits, from training to a table against PCA and
raw pixels. It runs other jobs (train, encode, decode); the command line hands them in, so that no
job module imports another."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aepipe.analysis.metrics import (by_id, digits_split, format_table, pca_baseline, plot_reconstructions,
                                     probe_accuracy, psnr)
from aepipe.cluster.runtime import init_ray
from aepipe.stores.read import load_codes


def demo(out: str | Path, code_dim: int, *, train, encode, decode, address: str | None = None) -> str:
    """builtin digits: train on builtin:digits-train, encode all 1797 rows to Zarr (float32) and
    Parquet (int8), decode both, and compare with PCA of the same size and raw pixels.

    The jobs: train(data, run_dir) fits a dense model with `code_dim`; encode(data, run_dir, store,
    dtype=) and decode(store, run_dir, out) overwrite what a previous demo left."""
    out = Path(out)
    run_dir = out / "model"
    if not (run_dir / "aepipe.json").exists():  # a second demo reuses the model it trained before
        train("builtin:digits-train", run_dir)
    init_ray(address)  # after the fit: on one machine, Ray's start-up would take CPU from it
    xtr, ytr, idtr, xte, yte, idte = digits_split()
    rows = [["raw pixels", 64 * 4, 0.0, "inf", probe_accuracy(xtr, ytr, xte, yte)]]
    ztr, zte, rec = pca_baseline(code_dim, xtr, xte)
    rows.append([f"PCA {code_dim} (float32)", code_dim * 4, float(np.mean((rec - xte) ** 2)), psnr(rec, xte),
                 probe_accuracy(ztr, ytr, zte, yte)])
    recons = {}
    for dtype, store in (("float32", "codes.zarr"), ("int8", "codes_int8.parquet")):
        encode("builtin:digits", run_dir, out / store, dtype=dtype)
        decode(out / store, run_dir, out / f"recon_{dtype}.npy")
        ids, codes = load_codes(out / store)
        rec = np.load(out / f"recon_{dtype}.npy").reshape(-1, 64)[idte] / 16  # .npy rows follow store rows = ids
        recons[f"dense {dtype}"] = rec
        rows.append([f"aepipe dense {code_dim} ({dtype})", code_dim * np.dtype(dtype).itemsize,
                     float(np.mean((rec - xte) ** 2)), psnr(rec, xte),
                     probe_accuracy(by_id(ids, codes, idtr), ytr, by_id(ids, codes, idte), yte)])
    plot_reconstructions(xte, {f"PCA {code_dim}": pca_baseline(code_dim, xtr, xte)[2], **recons},
                         out / "reconstructions.png")
    header = ["codes", "bytes/row", "test MSE", "test PSNR dB", "probe accuracy"]
    return format_table(header, rows)
