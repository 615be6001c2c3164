"""Anomaly scores per row, and their quantiles over the training rows: what training stores in the
run dir and what `score` (and `encode --append`, `report`) compares new rows with. Below both
training and the batch jobs, so neither imports the other for them.

Four kinds (SCORE_KINDS), all larger for rows less like the training rows:
  recon     the reconstruction error, the per-row mean of the training loss (what encode --scores stores)
  code      how far the code lies from the training codes: its Mahalanobis distance under their
            Gaussian, per code dimension
  combined  the row's distance under a Gaussian of the code and one of the residual (the row minus
            its reconstruction), per input dimension: about 1 for a training row. Tables' columns are
            correlated in ways a reconstruction error weighs equally; on scikit-learn's
            wine table this ranks anomalies above PyOD's detectors (bench/anomaly.py)
  linear    the classical PCA detector beside the model: PCA with the code size, fitted on the
            training rows the densities see (the validation rows included), and the combined score
            of its code and residual (Hotelling's T^2 plus the distance of the row's part outside
            it). On a small table a learned correction reconstructs the anomalies better too (breast
            cancer, 214 rows: combined 0.951, linear 0.961, PyOD's best 0.960), so this is the
            tables' default; only models with the floor (--init pca) store it. Its own PCA, not the
            model's linear part: that part trains with the corrections on 90 % of the rows (0.960)
The Gaussians are fitted on a sample of the training rows, their covariances shrunk by
Ledoit-Wolf's rule (towards a multiple of the identity, as far as the rows per dimension call for:
a one-digit model's 64x64 residual covariance from 160 rows, unshrunk, ranked worse than the
reconstruction error).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from aepipe.errors import AepipeError
from aepipe.pca import fit_pca, project, reconstruct

QUANTILE_LEVELS = np.round(np.linspace(0.5, 1.0, 501), 4)  # contamination 0.001 .. 0.5 in steps of 0.001
SCORE_KINDS = ("recon", "code", "combined", "linear")
SAMPLE_ROWS = 4096  # training rows the Gaussians are fitted on (a uniform sample beyond) ...
SAMPLE_VALUES = 2 ** 23  # ... and fewer for wide rows: at most 64 MiB of float64 codes and residuals (row_parts)
FULL = 1024  # up to this many dimensions a covariance is kept whole; wider ones, their diagonal
RESIDUAL_FLOOR = 1e-5  # the least residual variance counted, as a share of the rows' own (see fit_density)


def row_errors(model, x: torch.Tensor, x_in: torch.Tensor | None = None) -> torch.Tensor:
    """(B, features) reconstruction error of normalised rows, elementwise, in the training loss;
    the model given x_in (a corrupted x) where there is one."""
    return elementwise(model, model.decode_logits(model.encode(x if x_in is None else x_in)), x)


def elementwise(model, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, features) the training loss of each value of x, from the model's logits for it."""
    if model.cfg.loss == "bce":
        e = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif model.cfg.loss == "l1":
        e = (logits - x).abs()
    else:
        e = (logits - x).pow(2)
    return e.flatten(1)


def residual(model, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(B, features): the row minus its reconstruction (from the model's logits), in the input's units."""
    return (x - model.squash(logits)).flatten(1)


def row_scores(model, x: torch.Tensor, density: dict | None) -> dict:
    """{kind: (B,) scores} of normalised rows: recon always, code and combined given the density
    (one encode and one decode for all of them)."""
    z = model.encode(x)
    logits = model.decode_logits(z)
    out = {"recon": elementwise(model, logits, x).mean(1)}
    if density is not None:
        code = mahalanobis(z.double(), density["code_mean"], density["code_precision"])
        resid = mahalanobis(residual(model, x, logits).double(), density["resid_mean"], density["resid_precision"])
        out["code"] = (code / z.shape[1]).float()
        # per input dimension: the code takes k of them and the residual about the other d - k
        out["combined"] = ((code + resid) / x[0].numel()).float()
    if density is not None and "floor_code_mean" in density:
        fz, flogits = linear_code_and_logits(model, x, density)
        code = mahalanobis(fz.double(), density["floor_code_mean"], density["floor_code_precision"])
        resid = mahalanobis(residual(model, x, flogits).double(), density["floor_resid_mean"],
                            density["floor_resid_precision"])
        out["linear"] = ((code + resid) / x[0].numel()).float()
    return out


def linear_code_and_logits(model, x, density: dict):
    """The linear detector's code (B, k) and output logits for x: its PCA's (density's floor_mean
    and floor_components), or, in run dirs stored before it had its own, the model's linear part."""
    if "floor_components" not in density:
        return model.floor_code_and_logits(x)
    return pca_code_and_logits(x, density["floor_mean"].to(x), density["floor_components"].to(x), model.cfg.loss)


def pca_code_and_logits(x, mean, components, loss: str):
    """PCA's code (B, k) of rows x and its output logits, shaped as x."""
    z = project(x, mean, components, 1.0)
    return z, reconstruct(z, mean, components, 1.0, loss).view(x.shape)


def mahalanobis(v: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(B,) squared distances; precision (d, d), or (d,) for a diagonal covariance."""
    d = v - mean.to(v)
    p = precision.to(v)
    return (d * (d @ p if p.dim() == 2 else d * p)).sum(1)


def fit_density(model, batches) -> dict:
    """The Gaussians of the codes and of the residuals of (a uniform sample of) the training rows,
    every Ray Train worker's sample pooled: {code_mean, code_precision, resid_mean, resid_precision},
    and for a model with the floor the linear detector's: its PCA of the same sample (floor_mean,
    floor_components) and the Gaussians of that PCA's code and residual (floor_code_*,
    floor_resid_*); float64 tensors. Runs at training time, after the fit."""
    parts, spread = sample_rows(model, batches)
    if torch.distributed.is_initialized():  # each worker sampled its own shard: every worker fits on all
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (parts, spread))
        parts = {k: np.concatenate([g[0][k] for g in gathered]) for k in parts}
        spread = float(np.mean([g[1] for g in gathered]))
    out = {}
    if "rows" in parts:
        out, parts = linear_detector(model, parts)
    # a residual's spread counts down to RESIDUAL_FLOOR of the rows' own: a model that rebuilds all
    # but float noise (a code as wide as the rows) would otherwise weigh that noise (wine, code 16 of
    # 13 columns: ROC AUC 0.950 without the floor, 0.966 with it; breast cancer unchanged, 0.962)
    for name, v in parts.items():
        floor = RESIDUAL_FLOOR * spread if name.endswith("resid") else 0.0
        out[f"{name}_mean"], out[f"{name}_precision"] = (torch.from_numpy(a) for a in shrunk_gaussian(v, floor))
    return out


def row_parts(model, x) -> dict:
    """{name: (B, n) float64} what the densities are fitted on: the code and the residual, and the
    rows themselves where the model has the floor (for the linear detector)."""
    z = model.encode(x)
    parts = {"code": z, "resid": residual(model, x, model.decode_logits(z))}
    if getattr(model, "has_pca_floor", False):  # the linear detector's PCA is fitted on these (fit_density)
        parts["rows"] = x.flatten(1)
    return {k: v.double().cpu() for k, v in parts.items()}


def linear_detector(model, parts: dict) -> tuple[dict, dict]:
    """The linear detector from the sampled rows (parts["rows"]): PCA with the code size, as floor_mean
    and floor_components, and the parts with its code and residual (floor_code, floor_resid) in
    place of the rows."""
    rows = torch.from_numpy(parts["rows"])
    pca = fit_pca(iter([rows]), rows.shape[1], model.cfg.code_dim)
    mean, components = pca["mean"].double(), pca["components"].double()
    z, logits = pca_code_and_logits(rows, mean, components, model.cfg.loss)
    rest = {k: v for k, v in parts.items() if k != "rows"}
    return ({"floor_mean": mean, "floor_components": components},
            {**rest, "floor_code": z.numpy(), "floor_resid": residual(model, rows, logits).numpy()})


def sample_rows(model, batches) -> tuple[dict, float]:
    """({name: rows} of row_parts for up to SAMPLE_ROWS training rows (fewer for wide rows:
    SAMPLE_VALUES), each row kept with equal chance (the rows with the largest random keys), in one
    streamed pass; the rows' mean variance per feature, over every row)."""
    g = torch.Generator().manual_seed(0)
    keys, kept = None, {}
    n, total, squares = 0, 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for x in batches:
            flat = x.flatten(1).double().cpu()
            n, total, squares = n + len(flat), total + flat.sum(0), squares + flat.pow(2).sum(0)
            parts = row_parts(model, x)
            k = torch.rand(len(x), generator=g)
            keys = k if keys is None else torch.cat([keys, k])
            kept = {name: torch.cat([kept[name], v]) if kept else v for name, v in parts.items()}
            most = min(SAMPLE_ROWS, max(256, SAMPLE_VALUES // sum(v.shape[1] for v in parts.values())))
            if len(keys) > most:
                top = keys.topk(most).indices
                keys, kept = keys[top], {name: v[top] for name, v in kept.items()}
    spread = float((squares / n - (total / n) ** 2).clamp(min=0).mean())
    return {name: v.numpy() for name, v in kept.items()}, spread


def shrunk_gaussian(v: np.ndarray, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision of rows v: the covariance shrunk by Ledoit-Wolf (whole up to FULL
    dimensions, else its diagonal shrunk towards its mean), plus floor on its diagonal, then
    inverted on its eigenvalues."""
    from sklearn.covariance import ledoit_wolf

    mean = v.mean(0)
    if v.shape[1] > FULL:
        var = v.var(0)
        return mean, 1 / np.maximum(0.9 * var + 0.1 * var.mean() + floor, 1e-12)
    cov = (ledoit_wolf(v)[0] if len(v) > 1 else np.eye(v.shape[1])) + floor * np.eye(v.shape[1])
    w, vec = np.linalg.eigh(cov)
    w = np.maximum(w, max(w.max(), 1e-12) * 1e-9)  # a dimension with no spread at all: no infinite weight
    return mean, (vec / w) @ vec.T


def training_quantiles(model, batches, density: dict | None = None) -> dict:
    """Quantiles of the per-row scores over the training rows (normalised x batches), gathered from
    every Ray Train worker: what `score --threshold auto` turns into a threshold. "values" are the
    reconstruction errors' (as before the other kinds), and each other kind's under its name.
    Runs at training time."""
    model.eval()
    scores = {}
    with torch.no_grad():
        for x in batches:
            for kind, v in row_scores(model, x, density).items():
                scores.setdefault(kind, []).append(v.cpu().numpy())
    scores = {k: np.concatenate(v) for k, v in scores.items()}
    if torch.distributed.is_initialized():  # each worker scored its own shard
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, scores)
        scores = {k: np.concatenate([p[k] for p in parts]) for k in scores}
    q = {k: np.quantile(v, QUANTILE_LEVELS).tolist() for k, v in scores.items()}
    return {"levels": QUANTILE_LEVELS.tolist(), "values": q.pop("recon"), **q, "n_rows": int(len(scores["recon"]))}


def auto_threshold(run, contamination: float, kind: str = "recon") -> float:
    """The training score of this kind above which a share `contamination` of the training rows lie."""
    q = run.meta.get("score_quantiles")
    if not q or (kind != "recon" and kind not in q):
        raise AepipeError(f"{run.path}: run dir predates stored training scores, so --threshold auto has "
                          "nothing to go by; retrain it, or pass --threshold X")
    if not 0.001 <= contamination <= 0.5:
        raise AepipeError(f"--contamination {contamination}: choose a share between 0.001 and 0.5")
    return float(np.interp(1 - contamination, q["levels"], q["values" if kind == "recon" else kind]))


def score_kind(run, kind: str | None) -> tuple[str, list[str]]:
    """The kind of score, and a note where the default had to fall back. Default: linear for
    tables (measured on the breast-cancer and wine tables: it ranks anomalies well above the
    reconstruction error, and above combined on the small breast-cancer table), combined for a
    table's model without the linear floor, recon for images and arrays (one digit against the
    rest: the reconstruction error ranks best)."""
    if kind is not None and kind not in SCORE_KINDS:
        raise AepipeError(f'--score "{kind}": choose one of {", ".join(SCORE_KINDS)}')
    if kind not in (None, "recon") and run.density is None:
        raise AepipeError(f"--score {kind}: {run.path} predates stored training densities; retrain it, "
                          "or pass --score recon")
    has_linear = run.density is not None and "floor_code_mean" in run.density
    if kind == "linear" and not has_linear:
        raise AepipeError(f"--score linear: {run.path} has no linear part's density (a model trained with "
                          "--init none, or before aepipe stored it); pass --score combined")
    if kind is not None:
        return kind, []
    if not run.schema.tabular:
        return "recon", []
    if run.density is None:
        return "recon", [f"{run.path} predates stored training densities: scored by reconstruction error "
                         "(retrain it for the linear score)"]
    return ("linear" if has_linear else "combined"), []


def describe(kind: str, loss: str) -> str:
    """What a score of this kind measures, in a few words (score's summary, report's labels)."""
    return {"recon": f"{loss} per feature", "code": "code distance per dimension",
            "combined": "combined: code and residual distance per dimension",
            "linear": "linear: the PCA detector's code and residual distance per dimension"}[kind]
