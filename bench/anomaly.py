"""Anomaly scores: `aepipe score`'s four kinds beside PyOD's detectors, on held-out rows.

  breast cancer  scikit-learn's table: trained on 60 % of the benign rows, scored on the rest of
                 the rows (malignant = anomaly); mean ROC AUC over 10 random splits (seeds 0-9)
  wine           the same, class 2 as the anomaly
  digits         novelty: trained on one digit's rows of the classical train split, scored on the
                 test split (any other digit = anomaly); mean over the ten digits

aepipe's model is `aepipe train`'s default (dense, code 16, --init pca, the default budget) fitted
in this process (aepipe.training.fit_local) on rows scaled as `aepipe train` scales them (tables
per column to [0, 1] by the training rows, digits / 16), with the density `train` stores
(aepipe.scores.fit_density); the scores are aepipe.scores.row_scores, what `aepipe score` writes.
PyOD's detectors (IForest, PCA, AutoEncoder, VAE) at their defaults on the same scaled rows.
`--score`'s default is linear for tables, recon for images: the rows marked "(default)".
"vs PyOD's best": the mean over the splits of each split's AUC minus that of the PyOD detector with
the best mean, +- its standard error (the splits' spread, which a difference must clear to mean
anything).

    .venv/bin/pip install pyod            # a bench dependency: pip install -e '.[bench]'
    .venv/bin/python bench/anomaly.py     # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.metrics import roc_auc_score

from results import record  # bench/results.py: this script's section of bench/RESULTS.md

from aepipe.analysis.metrics import digits_split, format_table
from aepipe.models import ModelConfig
from aepipe.normalize import in_validation
from aepipe.scores import fit_density, row_scores
from aepipe.training import TrainConfig, fit_local

KINDS = ("recon", "code", "combined", "linear")


def table_splits(name: str, seeds=range(10)):
    """(train rows, test rows, test labels) per seed: 60 % of the normal rows to train on."""
    d = load_breast_cancer() if name == "breast cancer" else load_wine()
    normal = d.target == 1 if name == "breast cancer" else d.target != 2
    for seed in seeds:
        idx = np.flatnonzero(normal)
        np.random.default_rng(seed).shuffle(idx)
        train = idx[: int(0.6 * len(idx))]
        test = np.setdiff1d(np.arange(len(d.target)), train)
        lo, hi = d.data[train].min(0), d.data[train].max(0)
        scale = lambda a: ((a - lo) / np.where(hi > lo, hi - lo, 1)).astype(np.float32)  # noqa: E731
        yield scale(d.data[train]), scale(d.data[test]), (~normal[test]).astype(int)


def digit_splits():
    xtr, ytr, _, xte, yte, _ = digits_split()
    for digit in range(10):
        yield xtr[ytr == digit].astype(np.float32), xte.astype(np.float32), (yte != digit).astype(int)


def aepipe_scores(x_train, x_test) -> dict:
    val = in_validation(np.arange(len(x_train)), 0.1)  # the rows `aepipe train` holds out
    model, _ = fit_local(ModelConfig(input_shape=(x_train.shape[1],)), TrainConfig(seed=0), x_train[~val], x_train[val])
    density = fit_density(model, iter([torch.from_numpy(x_train)]))  # as training: every training row
    with torch.no_grad():
        return {k: v.numpy() for k, v in row_scores(model, torch.from_numpy(x_test), density).items()}


def pyod_detectors():
    from pyod.models.auto_encoder import AutoEncoder
    from pyod.models.iforest import IForest
    from pyod.models.pca import PCA
    from pyod.models.vae import VAE

    return {"PyOD IForest": lambda: IForest(random_state=0), "PyOD PCA": lambda: PCA(),
            "PyOD AutoEncoder": lambda: AutoEncoder(random_state=0, verbose=0),
            "PyOD VAE": lambda: VAE(random_state=0, verbose=0)}


def evaluate(splits, default: str) -> tuple[dict, dict]:
    """({detector: [AUC per split]}, {detector: fit seconds over all splits})."""
    aucs, secs = {}, {}
    for x_train, x_test, labels in splits:
        t0 = time.time()
        for kind, s in aepipe_scores(x_train, x_test).items():
            name = f"aepipe {kind}" + (" (default)" if kind == default else "")
            aucs.setdefault(name, []).append(roc_auc_score(labels, s))
            secs.setdefault(name, []).append(time.time() - t0)
        for name, make in pyod_detectors().items():
            t0 = time.time()
            det = make().fit(x_train)
            aucs.setdefault(name, []).append(roc_auc_score(labels, det.decision_function(x_test)))
            secs.setdefault(name, []).append(time.time() - t0)
    return aucs, {k: float(np.sum(v)) for k, v in secs.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="breast cancer,wine,digits", help="comma-separated")
    args = ap.parse_args()
    unknown = set(args.datasets.split(",")) - {"breast cancer", "wine", "digits"}
    if unknown:
        ap.error(f"unknown dataset {sorted(unknown)[0]!r}: breast cancer, wine or digits")
    warnings.filterwarnings("ignore")  # PyOD's and torch's deprecation notes
    torch.set_num_threads(1)
    rows = []
    for name in args.datasets.split(","):
        splits = digit_splits() if name == "digits" else table_splits(name)
        aucs, secs = evaluate(splits, "recon" if name == "digits" else "linear")
        best = np.asarray(max((v for k, v in aucs.items() if k.startswith("PyOD")), key=np.mean))
        for detector, v in sorted(aucs.items(), key=lambda kv: -np.mean(kv[1])):
            diff = np.asarray(v) - best
            se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
            rows.append([name, detector, float(np.mean(v)), f"{diff.mean():+.4f} +- {se:.4f}", f"{secs[detector]:.1f}"])
            print("  ", rows[-1], flush=True)
    table = format_table(["data", "detector", "ROC AUC", "vs PyOD's best", "fit s (all splits)"], rows)
    print(table)
    record("anomaly", table)


if __name__ == "__main__":
    main()
