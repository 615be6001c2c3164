"""The linear floor: PCA with the model's code size, fitted on the training split in one streamed
pass, and its reconstruction loss on the validation rows (the baseline every run reports); and
probabilistic PCA in the same components, the vae's floor, with its negative log-likelihood.

PCA is the best linear autoencoder for mean squared error: a model that starts from it
(--init pca, see models.base.Autoencoder) and keeps its best validation weights never ends worse.
PPCA (Tipping & Bishop 1999) is the best linear-Gaussian latent model for likelihood, and its exact
posterior makes a vae's ELBO equal to its likelihood: the vae's start (models.vae).
This module knows torch only; `reduce` sums a tensor over Ray Train workers (identity on one).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Up to this many features the covariance is accumulated exactly (a d x d float64 sum per worker,
# 128 MiB at 4096) and eigen-decomposed. Wider rows (images of 64x64 and up) would need GiBs for
# it, so a uniform sample of SAMPLE_ROWS training rows goes through a randomized SVD instead:
# the top components of a few thousand rows are what a code of at most a few hundred needs.
NARROW = 4096
SAMPLE_ROWS = 4096
EPS = 1e-4  # bce: PCA's output is clamped to [EPS, 1 - EPS] before its logit
# PPCA's noise variance is at least this share of the rows' mean variance per feature: a code as
# wide as the data's rank leaves no variance out, and a noise of 0 has no likelihood
NOISE_FLOOR = 1e-6


def fit_pca(batches, n_in: int, k: int, reduce=lambda t: t, rank: int = 0) -> dict:
    """{"mean" (d,), "components" (k, d) orthonormal rows, "variance" (k,), "noise" (1,)} of the rows
    `batches` yields, summed over workers: "noise" is the mean variance left out, per discarded
    direction (PPCA's noise variance). Components past the data's rank (k > d) are zero rows."""
    narrow = n_in <= NARROW
    n, s = torch.zeros(1, dtype=torch.float64), torch.zeros(n_in, dtype=torch.float64)
    squares = torch.zeros(1, dtype=torch.float64)
    gram = torch.zeros(n_in, n_in, dtype=torch.float64) if narrow else None
    pool, keys, g = None, None, torch.Generator().manual_seed(rank)
    for x in batches:
        x = x.detach().flatten(1).cpu().double()
        n += len(x)
        s += x.sum(0)
        squares += x.pow(2).sum()
        if narrow:
            gram += x.T @ x
        else:  # keep the SAMPLE_ROWS rows with the largest random keys: a uniform sample, streamed
            kx = torch.rand(len(x), generator=g, dtype=torch.float64)
            pool = x if pool is None else torch.cat([pool, x])
            keys = kx if keys is None else torch.cat([keys, kx])
            if len(pool) > SAMPLE_ROWS:
                top = keys.topk(SAMPLE_ROWS).indices
                pool, keys = pool[top], keys[top]
    n, s, squares = reduce(n), reduce(s), reduce(squares)
    mean = s / n.clamp(min=1)
    total = float((squares / n.clamp(min=1) - mean @ mean).clamp(min=0))  # the sum of every feature's variance
    if narrow:
        cov = reduce(gram) / n.clamp(min=1) - torch.outer(mean, mean)
        var, vec = torch.linalg.eigh(cov)  # ascending
        var, comps = var.flip(0)[:k].clamp(min=0), vec.flip(1)[:, :k].T
    else:
        xs = pool - mean
        q = min(k + 10, *xs.shape)
        _, sv, v = torch.svd_lowrank(xs, q=q, niter=4, M=None)
        var, comps = (sv[:k] ** 2 / max(len(xs) - 1, 1)), v[:, :k].T
        # workers sampled different rows: everyone takes rank 0's components
        var, comps = reduce(var * (rank == 0)), reduce(comps * (rank == 0))
    # a sign convention (largest entry positive) so that refits agree
    sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * torch.where(sign == 0, 1.0, sign)
    pad = k - len(comps)
    if pad > 0:
        comps, var = torch.cat([comps, comps.new_zeros(pad, n_in)]), torch.cat([var, var.new_zeros(pad)])
    left_out = (total - float(var.sum())) / (n_in - k) if n_in > k else 0.0
    noise = max(left_out, NOISE_FLOOR * total / n_in, 1e-12)
    return {"mean": mean.float(), "components": comps.float(), "variance": var.float(),
            "noise": torch.tensor([noise], dtype=torch.float32)}


def project(x, mean, components, scale):
    """(B, *shape) -> (B, k): the PCA code, divided by `scale` (1, or the std for whitened codes)."""
    return (x.flatten(1) - mean) @ components.T / scale


def reconstruct(z, mean, components, scale, loss: str):
    """(B, k) -> (B, d) PCA's output, as logits for bce (so that sigmoid gives the clamped output)."""
    x = (z * scale) @ components + mean
    return torch.logit(x.clamp(EPS, 1 - EPS)) if loss == "bce" else x


def recon_loss(logits, x, loss: str):
    """The reconstruction losses the models use, on flattened rows."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, x)
    return F.l1_loss(logits, x) if loss == "l1" else F.mse_loss(logits, x)


def val_loss(pca: dict, batches, loss: str, reduce=lambda t: t, corrupt=lambda x: x) -> float:
    """The floor's mean reconstruction loss over the rows `batches` yields (all workers'): the
    baseline. Each row is corrupted first (a denoiser's floor is judged on noisy rows) and each
    component weighed by pca["gain"] where there is one."""
    total = torch.zeros(2, dtype=torch.float64)
    one = torch.ones(len(pca["mean"]))
    gain = pca.get("gain", one[:1])
    for x in batches:
        x = x.detach().cpu().float()
        z = project(corrupt(x), pca["mean"], pca["components"], one[:1]) * gain
        x = x.flatten(1)
        total += torch.tensor([float(recon_loss(reconstruct(z, pca["mean"], pca["components"], one[:1], loss), x, loss))
                               * len(x), len(x)], dtype=torch.float64)
    total = reduce(total)
    return float(total[0] / total[1].clamp(min=1))


def ppca_loadings(variance, noise):
    """(k,) PPCA's squared loading of each PCA component: W = U_k diag(variance - noise)^1/2, its
    maximum-likelihood solution. A component no stronger than the noise would get 0 (there the
    posterior is the prior); it gets a trace of the noise instead, so that every ratio stays finite."""
    return (variance - noise).clamp(min=NOISE_FLOOR * noise)


def ppca_nll(pca: dict, batches, reduce=lambda t: t) -> float:
    """PPCA's mean negative log-likelihood per value, in nats, of the rows `batches` yields (all
    workers'): the Gaussian N(mean, W W^T + noise I), W = components^T diag(ppca_loadings)^1/2,
    through Woodbury's identities with M = W^T W + noise I (k x k)."""
    mean, comps, noise = pca["mean"].double(), pca["components"].double(), float(pca["noise"])
    w = comps.T * ppca_loadings(pca["variance"].double(), noise).sqrt()  # (d, k)
    m = w.T @ w + noise * torch.eye(w.shape[1], dtype=torch.float64)
    d, k = w.shape
    log_det = (d - k) * math.log(noise) + torch.linalg.slogdet(m)[1]  # log |W W^T + noise I|
    total = torch.zeros(2, dtype=torch.float64)
    for x in batches:
        xc = x.detach().cpu().double().flatten(1) - mean
        proj = xc @ w
        quad = (xc.pow(2).sum(1) - (proj * torch.linalg.solve(m, proj.T).T).sum(1)) / noise
        nll = 0.5 * (d * math.log(2 * math.pi) + log_det + quad)
        total += torch.tensor([float(nll.sum()), len(xc)], dtype=torch.float64)
    total = reduce(total)
    return float(total[0] / total[1].clamp(min=1) / d)
