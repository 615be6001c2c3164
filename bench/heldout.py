"""Every family at its default settings on held-out rows, beside PCA with the same code size.

Datasets, each with its own train and test rows (the models never see a test row):

  digits          scikit-learn's digits, aepipe.analysis.metrics.digits_split (/ 16), images (8, 8), code 16
  breast_cancer   scikit-learn's tables, train_test_split(test_size=0.3, random_state=0, stratified),
  wine            every column to [0, 1] by the training rows' min and max (`aepipe train`'s "feature");
                  code 8 (wine, 13 columns: code 4)
  gunpoint        UCR sets from aeon, their own train/test splits, to [0, 1] by the training rows'
  italy_power     min and max ("global"); dense reads rows (T,), recurrent sequences (T, 1); code 8

Families: dense, sparse, contractive, denoising, vae everywhere; stacked and conv on digits (conv
needs images); recurrent on the UCR sets. Each is ModelConfig's defaults but for code_dim (so
--init pca: it starts as PCA) and TrainConfig(seed=0)'s budget, fitted in this process with
aepipe.training.fit_local on the training rows less the validation rows `aepipe train` holds out.
PCA is fitted on all the training rows, the same rows the model saw. One table:

  test MSE    mean squared error of model.decode(model.encode(x)) on the scaled test rows; for
              denoising, of its output on the test rows plus Gaussian noise of its --noise-std
              (0.25, a fixed draw) against the clean rows (PSNR dB = -10 log10 MSE)
  PCA MSE     the same for PCA's reconstruction (denoising: the linear denoiser's, PCA's codes
              weighed by variance / (variance + sigma^2); "PCA" on its own: PCA's on the noisy rows);
              vs PCA = test MSE / PCA MSE (below 1: better)
  probe       linear-probe accuracy (aepipe.analysis.metrics.linear_probe) of the test codes,
              the probe fitted on the training rows' codes; PCA probe: the same on PCA's codes
              (PPCA's codes, its posterior means, are PCA's scaled per dimension: the same probe);
              vs PCA: the mean over the test rows of (model's probe right) - (PCA's right), +- its
              standard error (paired: what a difference must clear to mean anything)
  -ELBO       vae only: its negative ELBO on the test rows, nats per value, the mean of 8 draws of z
              (model.row_figures); PPCA NLL: PPCA's negative log-likelihood of the same rows, nats
              per value (scikit-learn's PCA.score_samples, fitted on all the training rows)
  fit s       seconds fit_local took

    .venv/bin/python bench/heldout.py                               # everything, 21 fits
    .venv/bin/python bench/heldout.py --datasets wine,gunpoint --families dense,recurrent
"""

from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import numpy as np

from results import record  # bench/results.py: this script's section of bench/RESULTS.md

from aepipe.analysis.metrics import digits_split, format_table, linear_probe, pca_baseline
from aepipe.models import ModelConfig
from aepipe.normalize import in_validation
from aepipe.training import TrainConfig, fit_local

TABLE = ("dense", "sparse", "contractive", "denoising", "vae")
IMAGE = ("dense", "stacked", "sparse", "contractive", "denoising", "vae", "conv")


class Data(NamedTuple):
    x_train: np.ndarray  # (n, d) float32, scaled
    y_train: np.ndarray
    ids: np.ndarray  # the training rows' indices, for the validation split
    x_test: np.ndarray
    y_test: np.ndarray
    shapes: dict  # family -> the input_shape it reads the rows as
    code_dim: int


def digits():
    xtr, ytr, ids, xte, yte, _ = digits_split()
    return Data(xtr, ytr, ids, xte, yte, {f: (8, 8) for f in IMAGE}, 16)


def table(load, code_dim):
    from sklearn.model_selection import train_test_split

    x, y = load(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    lo, hi = xtr.min(0), xtr.max(0)
    scale = np.where(hi > lo, hi - lo, 1.0)  # as normalize.Normalizer's "feature"
    return Data((xtr - lo) / scale, ytr, np.arange(len(xtr)), (xte - lo) / scale, yte,
                {f: (x.shape[1],) for f in TABLE}, code_dim)


def ucr(load):
    (xtr, ytr), (xte, yte) = load(split="train"), load(split="test")
    xtr, xte = xtr[:, 0], xte[:, 0]  # (n, 1, T) -> (n, T): one channel
    lo, hi = xtr.min(), xtr.max()  # as "global": the test rows may leave [0, 1]
    t = xtr.shape[1]
    return Data((xtr - lo) / (hi - lo), ytr, np.arange(len(xtr)), (xte - lo) / (hi - lo), yte,
                {"dense": (t,), "recurrent": (t, 1)}, 8)


def load(name) -> Data:
    from aeon.datasets import load_gunpoint, load_italy_power_demand
    from sklearn.datasets import load_breast_cancer, load_wine

    data = {"digits": digits, "breast_cancer": lambda: table(load_breast_cancer, 8),
            "wine": lambda: table(load_wine, 4), "gunpoint": lambda: ucr(load_gunpoint),
            "italy_power": lambda: ucr(load_italy_power_demand)}[name]()
    return data._replace(x_train=data.x_train.astype(np.float32), x_test=data.x_test.astype(np.float32))


DATASETS = ("digits", "breast_cancer", "wine", "gunpoint", "italy_power")


SIGMA = 0.25  # the denoising family's default --noise-std


def noisy(x):
    return (x + np.random.default_rng(0).normal(0, SIGMA, x.shape)).astype(np.float32)


def codes_and_mse(model, shape, data, denoise=False):
    """(train codes, test codes, test MSE): the model's, on rows reshaped to its input (denoise:
    its output on the noisy test rows against the clean ones)."""
    import torch

    with torch.inference_mode():
        tr, te = (torch.from_numpy(x.reshape(-1, *shape)) for x in (data.x_train, data.x_test))
        z_te = model.encode(te)
        out = model.decode(model.encode(torch.from_numpy(noisy(data.x_test)).reshape(te.shape))) if denoise else model.decode(z_te)
        return model.encode(tr).numpy(), z_te.numpy(), float((out - te).pow(2).mean())


def baseline(data):
    """(test MSE, probe accuracy, the linear denoiser's and PCA's MSE on noisy test rows, PPCA's
    negative log-likelihood per value of the test rows) of PCA with the models' code size, fitted
    on all training rows."""
    from sklearn.decomposition import PCA

    z_tr, z_te, recon = pca_baseline(data.code_dim, data.x_train, data.x_test)
    p = PCA(data.code_dim, random_state=0).fit(data.x_train)
    var = p.explained_variance_ * (len(data.x_train) - 1) / len(data.x_train)
    z_noisy = p.transform(noisy(data.x_test))
    wiener = p.inverse_transform(z_noisy * var / (var + SIGMA ** 2))
    mse = lambda r: float(np.mean((r - data.x_test) ** 2))  # noqa: E731
    return (mse(recon), probe_right(z_tr, z_te, data), mse(wiener),
            mse(p.inverse_transform(z_noisy)), float(-p.score_samples(data.x_test).mean() / data.x_test.shape[1]))


def neg_elbo(model, shape, data, draws=8) -> float:
    """The vae's negative ELBO per value of the test rows, the mean of `draws` draws of z."""
    import torch

    from aepipe.training.loop import same_noise

    with torch.inference_mode(), same_noise():
        x = torch.from_numpy(data.x_test.reshape(-1, *shape))
        return float(np.mean([model.row_figures(x).mean() for _ in range(draws)]))


def probe_right(z_tr, z_te, data) -> np.ndarray:
    """Whether the linear probe (aepipe.analysis.metrics.linear_probe), fitted on the training
    rows' codes, gets each test row right."""
    return linear_probe(z_tr, data.y_train).predict(z_te) == data.y_test


def paired(right: np.ndarray, pca_right: np.ndarray) -> str:
    d = right.astype(float) - pca_right
    return f"{d.mean():+.4f} +- {d.std(ddof=1) / np.sqrt(len(d)):.4f}"


def family_row(name, family, data, pca_mse, pca_right, denoiser_mse, ppca_nll):
    shape = data.shapes[family]
    mcfg = ModelConfig(family=family, input_shape=shape, code_dim=data.code_dim)
    x = data.x_train.reshape(-1, *shape)
    val = in_validation(data.ids, 0.1)  # the rows `aepipe train` would hold out
    t0 = time.time()
    model, _ = fit_local(mcfg, TrainConfig(seed=0), x[~val], x[val])
    seconds = time.time() - t0
    z_tr, z_te, mse = codes_and_mse(model, shape, data, denoise=family == "denoising")
    right = probe_right(z_tr, z_te, data)
    floor = denoiser_mse if family == "denoising" else pca_mse
    likelihood = [neg_elbo(model, shape, data), ppca_nll] if family == "vae" else ["-", "-"]
    return [name, family + (" (noisy rows)" if family == "denoising" else ""), mse, floor,
            f"{mse / floor:.3f}", right.mean(), pca_right.mean(), paired(right, pca_right), *likelihood,
            f"{seconds:.0f}"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated datasets")
    ap.add_argument("--families", default=",".join(IMAGE + ("recurrent",)),
                    help="comma-separated families; each dataset fits those it takes")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # small models: threads cost more than they give
    families = args.families.split(",")
    rows = []
    for name in args.datasets.split(","):
        data = load(name)
        pca_mse, pca_right, denoiser_mse, pca_noisy, ppca_nll = baseline(data)
        if "denoising" in families:
            rows.append([name, "PCA (noisy rows)", pca_noisy, denoiser_mse, f"{pca_noisy / denoiser_mse:.3f}",
                         "-", "-", "-", "-", "-", "-"])
        for family in (f for f in families if f in data.shapes):
            rows.append(family_row(name, family, data, pca_mse, pca_right, denoiser_mse, ppca_nll))
            print("  " + "  ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in rows[-1]), flush=True)
    table = format_table(["dataset", "model", "test MSE", "PCA MSE", "vs PCA", "probe", "PCA probe", "probe vs PCA", "-ELBO",
                          "PPCA NLL", "fit s"], rows)
    print(table)
    record("heldout", table)


if __name__ == "__main__":
    main()
