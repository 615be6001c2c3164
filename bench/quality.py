"""The model zoo against the classical baselines on scikit-learn's digits.

The classical split, scaling and probe (aepipe.analysis.metrics, as `aepipe probe` uses them): digits / 16,
train_test_split(test_size=0.3, random_state=0, stratify=y), LogisticRegression(max_iter=5000) on
the codes. Prints one table:

  probe k     linear-probe accuracy of k-dimensional codes (k = 8, 16, 32)
  novelty     one-class AUC, mean over the ten digits: fit on one digit's training rows (code 8),
              score every test row by reconstruction error
  denoise     PSNR (dB) of the code-16 model's output on test digits + Gaussian noise sigma 0.25,
              clipped to [0, 1], against the clean digits

Models are fitted in this process with aepipe.training.fit_local: the same models, epoch loop,
validation split, early stopping and default budget (3000 optimiser steps, cosine schedule) as
`aepipe train`, and by default its --init pca (every family starts as PCA with its code size),
without Ray Train's start-up per fit.

    .venv/bin/python bench/quality.py                 # every family, about 15 minutes on 2 cores
    .venv/bin/python bench/quality.py --families dense,denoising --epochs 50
    .venv/bin/python bench/quality.py --init none     # the families from random weights
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from results import record  # bench/results.py: this script's section of bench/RESULTS.md

from aepipe.normalize import in_validation
from aepipe.analysis.metrics import digits_split, format_table, probe_accuracy, psnr
from aepipe.models import REGISTRY, ModelConfig
from aepipe.training import TrainConfig, fit_local

# Per-family settings for digits; everything else is ModelConfig's default.
SETTINGS = {
    "dense": {},
    "stacked": {"tied": True, "layerwise": True},
    "sparse": {"sparsity": "l1", "sparsity_weight": 1e-4},
    "contractive": {"contractive_weight": 1e-3},
    # bce keeps outputs in [0, 1]; the wider net was worth +0.7 dB and +0.02 probe-16 here
    "denoising": {"noise": "gaussian", "noise_std": 0.25, "loss": "bce", "hidden": (512, 256)},
    "vae": {"beta": 0.5},
    "conv": {},
    "recurrent": {},
}
CODES = (8, 16, 32)


def split_val(x, ids):
    val = in_validation(ids, 0.1)  # the rows `aepipe train` would hold out
    return x[~val], x[val]


def fit(family, k, x, ids, tcfg, shape=(8, 8), init="pca"):
    mcfg = ModelConfig(family=family, input_shape=shape, code_dim=k, init=init, **SETTINGS[family])
    tr, va = split_val(x.reshape(-1, *shape).astype(np.float32), ids)
    model, _ = fit_local(mcfg, tcfg, tr, va)
    return model


def run(model, fn, x):
    import torch

    with torch.inference_mode():
        return fn(torch.from_numpy(x.reshape(-1, 8, 8).astype(np.float32))).numpy()


def recon_error(model, x):
    import torch

    with torch.inference_mode():
        t = torch.from_numpy(x.reshape(-1, 8, 8).astype(np.float32))
        return (model.decode(model.encode(t)) - t).pow(2).flatten(1).mean(1).numpy()


def family_row(family, data, tcfg, noisy, init):
    xtr, ytr, idtr, xte, yte, _ = data
    t0 = time.time()
    row, models = [family], {}
    for k in CODES:
        models[k] = fit(family, k, xtr, idtr, tcfg, init=init)
        row.append(probe_accuracy(run(models[k], models[k].encode, xtr), ytr, run(models[k], models[k].encode, xte), yte))
    aucs = []
    for c in range(10):
        # a tenth of the rows: the step budget already gives these ten times the epochs
        m = fit(family, 8, xtr[ytr == c], idtr[ytr == c], tcfg, init=init)
        aucs.append(roc_auc_score((yte != c).astype(int), recon_error(m, xte)))
    row.append(float(np.mean(aucs)))
    den = np.clip(run(models[16], lambda t: models[16].decode(models[16].encode(t)), noisy).reshape(len(xte), -1), 0, 1)
    row += [psnr(den, xte), f"{time.time() - t0:.0f}"]
    return row


def baseline_rows(data, noisy):
    xtr, ytr, _, xte, yte, _ = data
    pca_probe = [probe_accuracy(*(lambda p: (p.transform(xtr), ytr, p.transform(xte), yte))(PCA(k, random_state=0).fit(xtr)))
                 for k in CODES]
    auc_pca, auc_if = [], []
    for c in range(10):
        tr, lab = xtr[ytr == c], (yte != c).astype(int)
        p = PCA(8, random_state=0).fit(tr)
        auc_pca.append(roc_auc_score(lab, ((xte - p.inverse_transform(p.transform(xte))) ** 2).sum(1)))
        auc_if.append(roc_auc_score(lab, -IsolationForest(random_state=0).fit(tr).score_samples(xte)))
    p16 = PCA(16, random_state=0).fit(xtr)
    return [["PCA (baseline)", *pca_probe, float(np.mean(auc_pca)),
             psnr(np.clip(p16.inverse_transform(p16.transform(noisy)), 0, 1), xte), "-"],
            ["IsolationForest", "-", "-", "-", float(np.mean(auc_if)), "-", "-"],
            ["noisy input", "-", "-", "-", "-", psnr(noisy, xte), "-"],
            ["raw 64 pixels", probe_accuracy(xtr, ytr, xte, yte), "", "", "-", "-", "-"]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(REGISTRY), help="comma-separated families")
    ap.add_argument("--epochs", type=int, default=None, help="most epochs per fit [default: aepipe train's budget]")
    ap.add_argument("--patience", type=int, default=None, help="[default: aepipe train's, a tenth of the epochs]")
    ap.add_argument("--init", default="pca", choices=("pca", "none"), help="aepipe train --init [default: pca]")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # small models: threads cost more than they give
    tcfg = TrainConfig(epochs=args.epochs, patience=args.patience, batch_size=64, lr=1e-3, seed=0)
    data = digits_split()
    xte = data[3]
    noisy = np.clip(xte + np.random.default_rng(0).normal(0, 0.25, xte.shape), 0, 1)
    rows = baseline_rows(data, noisy)
    for family in args.families.split(","):
        rows.append(family_row(family, data, tcfg, noisy, args.init))
        print(f"  {family} done in {rows[-1][-1]} s: " + "  ".join(
            f"{v:.4f}" if isinstance(v, float) else str(v) for v in rows[-1][1:-1]), flush=True)
    table = format_table(["model", "probe 8", "probe 16", "probe 32", "novelty AUC", "denoise PSNR dB", "fit s"], rows)
    print(table)
    record("quality" + ("" if args.init == "pca" else f"_init_{args.init}"), table)


if __name__ == "__main__":
    main()
