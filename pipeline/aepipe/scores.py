"""Reconstruction errors per row, and their quantiles over the training rows: what training stores
in the run dir and what `score` (and `encode --append`, `report`) compares new rows with. Below
both training and the batch jobs, so neither imports the other for them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from aepipe.errors import AepipeError

QUANTILE_LEVELS = np.round(np.linspace(0.5, 1.0, 501), 4)  # contamination 0.001 .. 0.5 in steps of 0.001


def row_errors(model, x: torch.Tensor) -> torch.Tensor:
    """(B, features) reconstruction error of normalised rows, elementwise, in the training loss."""
    logits = model.decode_logits(model.encode(x))
    if model.cfg.loss == "bce":
        e = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif model.cfg.loss == "l1":
        e = (logits - x).abs()
    else:
        e = (logits - x).pow(2)
    return e.flatten(1)


def training_quantiles(model, batches) -> dict:
    """Quantiles of the per-row score over the training rows (normalised x batches), gathered from
    every Ray Train worker: what `score --threshold auto` turns into a threshold. Runs at training time."""
    model.eval()
    with torch.no_grad():
        errs = np.concatenate([row_errors(model, x).mean(1).cpu().numpy() for x in batches])
    if torch.distributed.is_initialized():  # each worker scored its own shard
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, errs)
        errs = np.concatenate(parts)
    return {"levels": QUANTILE_LEVELS.tolist(), "values": np.quantile(errs, QUANTILE_LEVELS).tolist(),
            "n_rows": int(len(errs))}


def auto_threshold(run, contamination: float) -> float:
    """The training score above which a share `contamination` of the training rows lie."""
    q = run.meta.get("score_quantiles")
    if not q:
        raise AepipeError(f"{run.path}: run dir predates stored training scores, so --threshold auto has "
                          "nothing to go by; retrain it, or pass --threshold X")
    if not 0.001 <= contamination <= 0.5:
        raise AepipeError(f"--contamination {contamination}: choose a share between 0.001 and 0.5")
    return float(np.interp(1 - contamination, q["levels"], q["values"]))
