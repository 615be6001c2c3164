"""The fit: one epoch loop (`fit`) that the in-process driver and Ray Train's workers share, with
the learning-rate schedule, validation, early stopping and the best weights; the PCA floor before
it (`floor`) and the code statistics after it (`finish`). Nothing here knows where it runs: DDP's
reductions are no-ops on one worker, and batches(split, seed) comes from the driver."""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import os
import time

import torch

from aepipe.errors import AepipeError
from aepipe.config import ModelConfig
from aepipe.models.base import build_model, widths
from aepipe.pca import fit_pca
from aepipe.scores import fit_density, training_quantiles
from aepipe.training.config import TrainConfig, set_lr
from aepipe.training.state import FitState

# Sub-second epochs would spend more time checkpointing than fitting: the best weights stay in
# memory (FitState.best_state), a checkpoint is written when this much time passed since the last,
# and at the end. Read where the fit runs (a Ray Train worker's environment): tests that kill a
# worker set it low.
CHECKPOINT_EVERY_S = float(os.environ.get("AEPIPE_CHECKPOINT_EVERY_S", 30))
# Validation corrupts its rows as training does (a denoiser is judged by denoising), with the same
# noise every epoch so that epochs compare: drawn from this seed, apart from training's random state.
VALIDATION_NOISE_SEED = 20_211


def schedule(mcfg: ModelConfig, tcfg: TrainConfig) -> list:
    """Epochs in order: layer-wise stages first (stacked --layerwise), then the whole model (None)."""
    n_stages = len(widths(mcfg)) + 1 if mcfg.family == "stacked" and mcfg.layerwise else 0
    return [s for s in range(n_stages) for _ in range(mcfg.pretrain_epochs)] + [None] * tcfg.epochs


def start(mcfg: ModelConfig, tcfg: TrainConfig, saved: dict | None, prepare=lambda m: m):
    """Model, optimiser and fit state: fresh for the seed, or continued from a checkpoint's dict."""
    torch.manual_seed(tcfg.seed)
    model = prepare(build_model(mcfg))
    inner = getattr(model, "module", model)  # DDP wraps the model; its state dict is the inner one's
    opt = torch.optim.AdamW(inner.param_groups(tcfg.lr), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    st = FitState()
    if saved:
        inner.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        st = FitState.from_dict(saved["st"])
    st.timings = {"epochs": 0.0, "checkpoints": 0.0}  # this call's, not an earlier fit's
    return model, inner, opt, st


def fit(model, opt, batches, mcfg: ModelConfig, tcfg: TrainConfig, st: FitState, after_epoch=None) -> FitState:
    """The epoch loop: the schedule, validation, early stopping, the best weights kept and restored
    at the end. batches(split, seed) yields x tensors of "train" (shuffled by seed) or "val";
    after_epoch(row, st) reports and checkpoints."""
    inner = getattr(model, "module", model)  # DDP wraps the model; its state dict is the inner one's
    epochs = schedule(mcfg, tcfg)
    floor(inner, batches, mcfg, st)
    # the floor is a promise about its figure (reconstruction; the vae's: the ELBO): with it,
    # penalties and weights (--beta) shape the path, not the pick
    monitor = inner.figure if inner.has_pca_floor else "loss"
    while st.step < len(epochs) and not (tcfg.patience and st.bad >= tcfg.patience):
        stage, t0 = epochs[st.step], time.time()
        whole = st.step - (len(epochs) - tcfg.epochs)  # the whole model's epoch, < 0 in layer-wise stages
        set_lr(opt, tcfg, max(whole, 0))
        tr = epoch(model, batches("train", tcfg.seed * 100003 + st.step), opt, stage)
        va = epoch(model, batches("val", None), None, stage)
        row = {"epoch": st.step, "stage": stage, "train_loss": tr["loss"], "val_loss": va["loss"],
               "val_parts": {k: v for k, v in va.items() if k != "loss"}, "seconds": time.time() - t0}
        st.history.append(row)
        st.step += 1
        if stage is None:  # early stopping and best weights only count on the whole model
            if va[monitor] < st.best_val:
                st.keep_best(va[monitor], va.get(inner.figure), row["epoch"], inner)
            else:
                st.bad += 1
        if not math.isfinite(tr["loss"]):
            raise AepipeError(f"training loss became {tr['loss']} at epoch {row['epoch'] + 1}; "
                              "try a lower --lr or --normalize standard")
        if after_epoch:
            after_epoch(row, st)
    if st.best_state is None:
        # train() refuses --epochs 0, so only a validation loss that was never finite lands here
        raise AepipeError("the validation loss was never finite; try a lower --lr or --normalize standard")
    inner.load_state_dict(st.best_state)
    if st.best_epoch >= 0 and inner.has_pca_floor and not beats_floor(inner, batches("val", None), st):
        back_to_floor(inner, st)
    refit_floor(inner, batches, mcfg, st)
    return st


def epoch(model, batches, opt=None, stage=None) -> dict:
    """One pass over `batches` (x tensors): training with opt, else validation (the same corruption
    as training, the same draw every time); returns the loss, its parts and the model's figures
    (the vae's negative ELBO) averaged over all workers."""
    sums, n = {}, 0
    model.train(opt is not None)
    with contextlib.nullcontext() if opt is not None else same_noise():
        for x in batches:
            with torch.set_grad_enabled(opt is not None):
                out = model(x, corrupt=True, **({} if stage is None else {"stage": stage}))
            if opt is not None:
                opt.zero_grad()
                out["loss"].backward()
                opt.step()
            for k, v in {"loss": out["loss"], **out["loss_parts"], **out.get("figures", {})}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(x)
            n += len(x)
    keys = sorted(sums)
    t = all_reduce(torch.tensor([sums[k] for k in keys] + [n], dtype=torch.float64), model)
    return {k: float(v / max(t[-1], 1)) for k, v in zip(keys, t[:-1])}


@contextlib.contextmanager
def same_noise():
    """torch's random numbers from VALIDATION_NOISE_SEED inside, training's own state restored after."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(VALIDATION_NOISE_SEED)
        yield


def all_reduce(t: torch.Tensor, model, op=None) -> torch.Tensor:
    """Sum (or op) over workers; a no-op on one. NCCL only reduces tensors on the GPU."""
    if not torch.distributed.is_initialized():
        return t
    t = t.to(next(model.parameters()).device)
    torch.distributed.all_reduce(t, op=op or torch.distributed.ReduceOp.SUM)
    return t.cpu()


def floor(inner, batches, mcfg: ModelConfig, st: FitState) -> None:
    """Before the first epoch: the linear floor with the code size — PCA, with each component's
    gain for the family's objective (a denoiser's), or PPCA (the vae's) — fitted on the training
    rows, kept in st (the run dir gets pca.npz); its figure on the validation rows under the
    family's objective (a reconstruction loss; the vae's: PPCA's negative log-likelihood); and, under
    --init pca, the model set to it and scored as epoch 0, its weights the best so far: a learned
    correction is kept only where it beats the floor on the validation rows. A resumed fit has all
    of these already. (Where the floor stays the best, refit_floor fits it again on every row.)"""
    if st.pca is not None or not inner.pca_floor:  # resumed, or a family PCA means nothing to (compress)
        return
    st.pca = fit_floor(inner, batches("train", None), mcfg)
    with same_noise():
        st.pca_val = inner.floor_loss(st.pca, batches("val", None), lambda t: all_reduce(t, inner))
    if inner.has_pca_floor and st.step == 0:
        inner.set_pca(st.pca)
        va = epoch(inner, batches("val", None))
        st.init_val = va[inner.figure]
        st.keep_best(va[inner.figure], va[inner.figure], -1, inner)


def fit_floor(inner, rows, mcfg: ModelConfig) -> dict:
    """PCA of the rows with the code size, made the family's linear floor (a denoiser's gains, the
    vae's PPCA)."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    pca = fit_pca(rows, inner.n_in, mcfg.code_dim, lambda t: all_reduce(t, inner), rank)
    return inner.linear_floor(pca)


# A learned correction is kept where its mean gain over the floor on the validation rows is at
# least this many standard errors of the per-row gains: on 7 validation rows (UCR ItalyPowerDemand)
# a gain of 1.2 of them picked a model 10 % worse than PCA on the test rows; on digits' 115 rows
# the gains are 13 standard errors.
SIGNIFICANT = 2.0


def beats_floor(inner, batches, st: FitState) -> bool:
    """Whether the model's per-row validation figures (row_figures: the reconstruction loss, the
    vae's negative ELBO) beat its floor's (the same corrupted rows, the same noise, every worker's
    rows) by SIGNIFICANT standard errors."""
    floor_model = set_floor(copy.deepcopy(inner), st.pca).eval()
    inner.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    with same_noise(), torch.no_grad():
        for x in batches:
            x_in = inner.corrupt(x)
            gain = (floor_model.row_figures(x, x_in) - inner.row_figures(x, x_in)).double().cpu()
            sums += torch.stack([torch.tensor(float(len(gain))), gain.sum(), gain.pow(2).sum()])
    return clearly_positive(*all_reduce(sums, inner).tolist())


def clearly_positive(n: float, total: float, squares: float) -> bool:
    """Whether values with this count, sum and sum of squares have a mean above SIGNIFICANT
    standard errors of it."""
    if n < 2:
        return total > 0
    mean, se = mean_and_se(n, total, squares)
    return mean > SIGNIFICANT * se


def mean_and_se(n: float, total: float, squares: float) -> tuple[float, float]:
    """The mean of values with this count (at least 2), sum and sum of squares, and its standard error."""
    mean = total / n
    return mean, math.sqrt(max(squares / n - mean ** 2, 0.0) / (n - 1))


def set_floor(model, pca: dict):
    """The model made its floor: PCA (with its gains; the vae's PPCA) and the learned corrections'
    gates at zero."""
    with torch.no_grad():
        for gate in model.gates:
            getattr(model, gate).zero_()
    model.set_pca(pca)
    return model


def back_to_floor(inner, st: FitState) -> None:
    """The model set back to its floor, which is what the fit keeps: the correction's gain on the
    validation rows was within their noise (on a small set, local.cross_check looks again)."""
    st.rejected_epoch = st.best_epoch
    set_floor(inner, st.pca)
    st.best_val, st.best_recon, st.best_epoch = st.init_val, st.init_val, -1
    st.keep_weights(inner)


def refit_floor(inner, batches, mcfg: ModelConfig, st: FitState) -> None:
    """Where no learned correction beat the floor on the validation rows, the model IS the floor:
    fitted again on every training row, validation rows included, it is the PCA a user would fit
    on all the data (the floor of 90 % of the rows lost to it on held-out rows: tiny tables and
    UCR sets, where 6-7 validation rows decide). The floor's reported loss stays the held-out one."""
    if not (inner.has_pca_floor and st.best_epoch == -1) or st.floor_refitted:
        return
    st.pca = fit_floor(inner, itertools.chain(batches("train", None), batches("val", None)), mcfg)
    st.keep_weights(set_floor(inner, st.pca))
    st.floor_refitted = True


def finish(inner, batches, st: FitState, device) -> None:
    """After the fit, on either path, with the best weights: the codes' range (int8 quantisation's
    scale), their moments (what `encode --append` measures drift against), the Gaussians of codes
    and residuals (the code, combined and linear scores: over every training row, the validation
    rows included, as the linear detector's PCA is) and the score quantiles, over the training split."""
    st.code_lo, st.code_hi = code_range(inner, batches("train", None))
    st.code_mean, st.code_std = code_moments(inner, batches("train", None))
    st.density = fit_density(inner, itertools.chain(batches("train", None), batches("val", None)))
    st.score_quantiles = training_quantiles(inner, batches("train", None), st.density)
    st.device = str(device)


def code_range(model, batches):
    """Per-dimension min/max of the codes over the training rows."""
    lo, hi = None, None
    model.eval()
    with torch.no_grad():
        for x in batches:
            z = model.encode(x)
            lo = z.min(0).values if lo is None else torch.minimum(lo, z.min(0).values)
            hi = z.max(0).values if hi is None else torch.maximum(hi, z.max(0).values)
    t = all_reduce(torch.stack([-lo, hi]).cpu().double(), model, torch.distributed.ReduceOp.MAX)
    return (-t[0]).tolist(), t[1].tolist()


def code_moments(model, batches):
    """Per-dimension mean and standard deviation of the codes over the training rows."""
    n, total, squares = 0, 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for x in batches:
            z = model.encode(x).double()
            n, total, squares = n + len(z), total + z.sum(0), squares + z.pow(2).sum(0)
    t = all_reduce(torch.cat([torch.tensor([float(n)]), torch.as_tensor(total).cpu().double().reshape(-1),
                              torch.as_tensor(squares).cpu().double().reshape(-1)]), model)
    n, d = t[0], (len(t) - 1) // 2
    mean = t[1:1 + d] / n
    std = (t[1 + d:] / n - mean.pow(2)).clamp(min=0).sqrt()
    return mean.tolist(), std.tolist()


def after_epoch(n_epochs: int, save, say=print):
    """fit's after_epoch on both paths: say the epoch's line, then save(row, st, due), where due
    says a checkpoint is wanted (CHECKPOINT_EVERY_S since the last); time both for the metrics."""
    last = [time.time()]

    def report(row, st: FitState):
        if say:
            say(epoch_line(row, n_epochs))
        t0 = time.time()
        due = t0 - last[0] >= CHECKPOINT_EVERY_S
        save(row, st, due)
        if due:
            last[0] = time.time()
        st.timings["epochs"] += row["seconds"]
        st.timings["checkpoints"] += time.time() - t0

    return report


def epoch_line(row: dict, n_epochs: int) -> str:
    stage = "" if row["stage"] is None else f" (layer {row['stage']})"
    return f"epoch {row['epoch'] + 1}/{n_epochs}{stage}  train {row['train_loss']:.5f}  val {row['val_loss']:.5f}"


def array_batches(arrays: dict, batch_size: int):
    """fit's batches(split, seed) over in-memory arrays: train shuffled by seed, val in order."""
    data = {k: torch.from_numpy(v) for k, v in arrays.items()}

    def batches(split, seed):
        x = data[split]
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) if seed is not None else None
        for i in range(0, len(x), batch_size):
            yield x[order[i:i + batch_size]] if order is not None else x[i:i + batch_size]

    return batches
