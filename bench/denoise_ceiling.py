"""How far denoising digits at sigma 0.25 can go: the denoising family beside denoisers with no code.

Issue 21 asks the denoising family for 20 dB on scikit-learn's digits (8x8, / 16) with Gaussian
noise of sigma 0.25. This bench puts aepipe's default model (code 16, bench/heldout.py's split and
noise draw) beside denoisers that keep no code at all, so that they bound what a code can reach:

  noisy rows            the noisy test rows themselves
  PCA 16                PCA's reconstruction of the noisy rows (fitted on the clean training rows)
  linear denoiser 16    PCA's codes weighed by variance / (variance + sigma^2): the denoising family's floor
  Wiener (full rank)    the best linear denoiser of all: mean + C (C + sigma^2 I)^-1 (y - mean),
                        C the clean training rows' covariance
  kernel posterior      the posterior mean under the training images as the prior (each weighed by
                        exp(-|y - x_i|^2 / 2 sigma^2))
  aepipe denoising      `aepipe train --family denoising --code-dim 16`'s defaults (fit_local);
                        and 4x wider (--hidden 1024,256)
  MLP, no code          64-512-512-64 with ReLU, fresh noise every step, batch 64, AdamW 1e-3 with
                        a cosine schedule, 10,000 steps
  CNN, no code          five 3x3 convolutions of 64 channels (ReLU) predicting the noise, as the MLP

    .venv/bin/python bench/denoise_ceiling.py             # about 9 minutes on 2 cores (the CNN: 6)
    .venv/bin/python bench/denoise_ceiling.py --steps 2000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

import heldout  # bench/heldout.py: the same digits split and noise draw
from results import record  # bench/results.py: this script's section of bench/RESULTS.md

from aepipe.analysis.metrics import format_table
from aepipe.models import ModelConfig
from aepipe.normalize import in_validation
from aepipe.training import TrainConfig, fit_local

SIGMA = heldout.SIGMA


def linear(x_train: np.ndarray, noisy: np.ndarray, k: int | None, wiener: bool) -> np.ndarray:
    """PCA's reconstruction with k components (None: all), each weighed by Wiener's gain if asked."""
    mean = x_train.mean(0)
    var, vecs = np.linalg.eigh(np.cov(x_train - mean, rowvar=False, bias=True))
    var, vecs = var[::-1][:k], vecs[:, ::-1][:, :k]
    gain = var / (var + SIGMA ** 2) if wiener else np.ones_like(var)
    return mean + ((noisy - mean) @ vecs * gain) @ vecs.T


def kernel_posterior(x_train: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    d2 = ((noisy[:, None, :] - x_train[None]) ** 2).sum(-1)
    w = np.exp(-(d2 - d2.min(1, keepdims=True)) / (2 * SIGMA ** 2))
    return (w / w.sum(1, keepdims=True)) @ x_train


def trained(net: nn.Module, x_train: torch.Tensor, steps: int, residual: bool) -> nn.Module:
    """net fitted to map noisy rows to clean ones (residual: to predict the noise), fresh noise every step."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        clean = x_train[torch.randint(len(x_train), (64,))]
        y = clean + SIGMA * torch.randn_like(clean)
        out = y - net(y) if residual else net(y)
        loss = (out - clean).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def cnn(width: int = 64) -> nn.Module:
    layers = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.Conv2d(width, 1, 3, padding=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000, help="optimiser steps of the MLP and the CNN")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = heldout.load("digits")
    x_train, x_test = data.x_train.reshape(len(data.x_train), -1), data.x_test.reshape(len(data.x_test), -1)
    noisy = heldout.noisy(data.x_test).reshape(x_test.shape)
    rows = []

    def add(name, code, run):
        t0 = time.time()
        out = np.asarray(run(), dtype=np.float64)
        mse = float(((out - x_test) ** 2).mean())
        rows.append([name, code, f"{-10 * np.log10(mse):.2f}", f"{mse:.4f}", f"{time.time() - t0:.0f}"])
        print("  ", rows[-1], flush=True)

    add("noisy rows", "-", lambda: noisy)
    add("PCA 16", 16, lambda: linear(x_train, noisy, 16, False))
    add("linear denoiser 16", 16, lambda: linear(x_train, noisy, 16, True))
    add("Wiener (full rank)", "-", lambda: linear(x_train, noisy, None, True))
    add("kernel posterior", "-", lambda: kernel_posterior(x_train, noisy))

    def aepipe_denoiser(hidden=None):
        shape = data.shapes["denoising"]
        x = data.x_train.reshape(-1, *shape)
        val = in_validation(data.ids, 0.1)
        model, _ = fit_local(ModelConfig(family="denoising", input_shape=shape, code_dim=16, noise_std=SIGMA, hidden=hidden),
                             TrainConfig(seed=0), x[~val], x[val])
        with torch.no_grad():
            return model.decode(model.encode(torch.from_numpy(noisy).reshape(-1, *shape))).reshape(len(noisy), -1)

    add("aepipe denoising (defaults)", 16, aepipe_denoiser)
    add("aepipe denoising --hidden 1024,256", 16, lambda: aepipe_denoiser((1024, 256)))
    t_train, t_noisy = torch.from_numpy(x_train).float(), torch.from_numpy(noisy).float()

    def mlp_denoised():
        net = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 64))
        net = trained(net, t_train, args.steps, residual=False)
        with torch.no_grad():
            return net(t_noisy)

    def cnn_denoised():
        net, y = trained(cnn(), t_train.reshape(-1, 1, 8, 8), args.steps, residual=True), t_noisy.reshape(-1, 1, 8, 8)
        with torch.no_grad():  # the fit above needs gradients, only the denoising here goes without
            return (y - net(y)).reshape(len(noisy), -1)

    add(f"MLP, no code ({args.steps} steps)", "-", mlp_denoised)
    add(f"CNN, no code ({args.steps} steps)", "-", cnn_denoised)
    table = format_table(["denoiser", "code", "test PSNR dB", "test MSE", "fit s"], rows)
    print(table)
    record("denoise_ceiling", table)


if __name__ == "__main__":
    main()
