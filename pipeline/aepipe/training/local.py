"""The in-process drivers: the fit on normalised arrays in this process, on one CPU thread, with a
checkpoint on the interval and at the end in the run dir's layout (see rundir), so `--resume`
continues on either path (fit_here); the same fit writing nothing, for benchmarks (fit_local).

Both check a learned correction on small data again, by k-fold cross-validation over every row
(cross_check). The fit keeps a correction only where its gain over the floor on the validation rows
is clear of their noise (loop.beats_floor). On a small set that check has too few rows to confirm
anything: UCR GunPoint's 50 training series leave 6 validation rows, and 40 rows near a curve leave
5, on which a model with an eighth of PCA's error on new rows was within the noise. Here every row
is held out once: FOLDS models, each with its floor fitted on the other folds' rows, train side by
side through the same schedule, epoch by epoch; their held-out rows' figures are pooled into one
validation curve over all the rows, which picks the epoch count (early stopping with the fit's
patience) and whose per-row gains over the floors at that count decide. Where they are clear, the
model is fitted again on every row for that many epochs. Only here, on arrays in memory: a set this
small is fitted in this process unless --workers or --address sends it to Ray Train, which keeps the
split's answer.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from aepipe.cluster.runtime import usable_cpus
from aepipe.config import ModelConfig
from aepipe.training.config import TrainConfig, budget, set_lr
from aepipe.training.loop import (after_epoch, array_batches, clearly_positive, epoch, finish, fit, fit_floor,
                                  mean_and_se, same_noise, schedule, start)
from aepipe.training.rundir import save_checkpoint
from aepipe.training.state import FitState, checkpoint


def fit_here(mcfg: ModelConfig, tcfg: TrainConfig, arrays: dict, saved: dict | None, storage: Path,
             on_epoch=None) -> FitState:
    """Fit on arrays ({"train": ..., "val": ...}), from `saved` (a checkpoint's dict) if given;
    on_epoch(row, st) is called after every epoch (aepipe tune reports to Ray Tune there)."""
    model, inner, opt, st = start(mcfg, tcfg, saved)
    batches = array_batches(arrays, tcfg.batch_size)

    def save(row, st, due):
        if on_epoch:  # aepipe tune's trials report every epoch (and Ray Tune may stop the trial here)
            on_epoch(row, st)
        if due:
            save_checkpoint(storage, checkpoint(inner, opt, st))

    # one worker, one CPU thread, as Ray Train gives a 1-CPU worker (OMP_NUM_THREADS=1): on this
    # busy 2-core machine torch's idle threads spinning made a digits epoch 10x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        st = fit(model, opt, batches, mcfg, tcfg, st, after_epoch(len(schedule(mcfg, tcfg)), save))
        cross_check(inner, mcfg, tcfg, arrays, st)
        finish(inner, batches, st, "cpu")
    finally:
        torch.set_num_threads(threads)
    save_checkpoint(storage, checkpoint(inner, opt, st))
    return st


def fit_local(mcfg: ModelConfig, tcfg: TrainConfig, x_train: np.ndarray, x_val: np.ndarray):
    """The same fit in this process, on arrays already normalised, writing nothing: for benchmarks
    that train a hundred small models. Returns the model (eval mode) and its FitState."""
    tcfg = budget(tcfg, len(x_train))
    model, _, opt, st = start(mcfg, tcfg, None)
    arrays = {"train": x_train, "val": x_val}
    st = fit(model, opt, array_batches(arrays, tcfg.batch_size), mcfg, tcfg, st)
    cross_check(model, mcfg, tcfg, arrays, st, say=None)
    return model.eval(), st


# Sets of up to this many rows (training and validation together) get the k-fold check where the
# split's check found the gain within the noise: FOLDS more fits, each on 9/10 of the rows, plus
# one on all of them. Above it the validation rows are enough (digits' 115: gains of 13 standard errors).
CROSS_CHECK_ROWS = 1000
# 10, not 5 (bench/heldout.py): on GunPoint 5 folds of 40 rows picked epoch 114 and found the gain
# within the noise where 10 picked 432 and kept a correction 0.834x PCA's error on the test series;
# ItalyPowerDemand's dense correction, kept by 5 (1.004x on the test rows), 10 drop.
FOLDS = 10


def wanted(st: FitState, arrays: dict) -> bool:
    """Whether the fit's answer should be cross-checked: the split rejected a correction that was
    better on its validation rows (loop.back_to_floor noted its epoch), the set is small, and no
    cross-check ran yet (a resumed fit)."""
    n = sum(len(arrays[k]) for k in ("train", "val"))
    return st.rejected_epoch is not None and st.cross_check is None and FOLDS <= n <= CROSS_CHECK_ROWS


def cross_check(model, mcfg: ModelConfig, tcfg: TrainConfig, arrays: dict, st: FitState, say=print) -> None:
    """The k-fold check (see the module's doc) where wanted(st, arrays); st.cross_check records it.
    Where the correction's pooled gain is clear, `model` (the fit's, at its floor) becomes the
    correction fitted on every row, and st its state: best weights, floor, the epoch count."""
    if not wanted(st, arrays):
        return
    x = np.concatenate([arrays["train"], arrays["val"]])
    fold = np.random.default_rng(tcfg.seed).permutation(len(x)) % FOLDS
    if say:
        say(f"checking the correction over {FOLDS} folds of all {len(x)} rows "
            f"(its gain on {len(arrays['val'])} validation rows was within their noise)")
    steps, floors, figures = pooled_curve(mcfg, tcfg, x, fold, say)
    gains = floors - figures
    n_rows, total, squares = len(gains), float(gains.sum()), float((gains ** 2).sum())
    kept = steps > 0 and clearly_positive(n_rows, total, squares)
    mean, se = mean_and_se(n_rows, total, squares)
    st.cross_check = {"folds": FOLDS, "rows": n_rows, "epochs": steps, "gain": mean, "se": se, "kept": kept}
    if say:
        verdict = f"kept, fitted again on every row for {steps} epochs" if kept else "within the noise: the model stays its floor"
        say(f"cross-checked: the correction's gain over the floor {mean:.3g} +- {se:.2g} (standard error) "
            f"at epoch {steps}: {verdict}")
    if kept:
        refit = train_for(mcfg, tcfg, x, steps)
        model.load_state_dict(refit.model.state_dict())
        # the validation figures become the folds' (every row held out once), the floor's too
        st.pca, st.pca_val = refit.floor, float(floors.mean())
        st.best_val = st.best_recon = float(figures.mean())
        st.best_epoch, st.floor_refitted = steps - 1, False
        st.keep_weights(model)


def pooled_curve(mcfg: ModelConfig, tcfg: TrainConfig, x: np.ndarray, fold: np.ndarray, say=None):
    """FOLDS fits side by side through the fit's schedule, with early stopping on the pooled
    held-out figure; say(line) after each epoch, as the fit says its own. Returns the best epoch
    count (0: the floors were best), each row's figure under its fold's floor and under its fold's
    model at that count."""
    fits = [Fold(mcfg, tcfg, x[fold != f], x[fold == f]) for f in range(FOLDS)]
    floors = np.concatenate([f.figures() for f in fits])
    best, best_figs, bad = math.inf, floors, 0
    best_steps, plan = 0, schedule(mcfg, tcfg)
    with SideBySide(fits) as folds:
        for i, stage in enumerate(plan):
            figs = np.concatenate(folds.step(i))
            if say:
                say(f"cross-check epoch {i + 1}/{len(plan)}  held-out {figs.mean():.5g}  floors {floors.mean():.5g}")
            if stage is not None:  # early stopping counts the whole model only, as the fit does
                continue
            if figs.mean() < best:
                best, best_figs, best_steps, bad = figs.mean(), figs, i + 1, 0
            else:
                bad += 1
            if tcfg.patience and bad >= tcfg.patience:
                break
    if best >= floors.mean():
        return 0, floors, floors
    return best_steps, floors, best_figs


class SideBySide:
    """Runs the folds' epochs: their training on parallel threads, one per CPU this process may use
    (torch's ops release the GIL, and a recurrent model's whole sequence is one op: GunPoint's
    recurrent check took 407 s one fold after another), where training draws no random numbers;
    else one after another, since noise and sampling draw from torch's one global generator and
    threads would interleave their draws differently every run. The first epoch runs one after
    another and tells which. The held-out figures are always taken one after another (the same
    validation noise, forked from that generator)."""

    def __init__(self, fits: list):
        self.fits, self.pool = fits, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown()

    def step(self, i: int) -> list[np.ndarray]:
        if i == 0:
            before = torch.random.get_rng_state()
            for f in self.fits:
                f.train(0)
            threads = min(len(self.fits), usable_cpus())
            if threads > 1 and torch.equal(before, torch.random.get_rng_state()):
                self.pool = ThreadPoolExecutor(threads, thread_name_prefix="aepipe-fold")
        elif self.pool is None:
            for f in self.fits:
                f.train(i)
        else:
            list(self.pool.map(lambda f: f.train(i), self.fits))
        return [f.figures() for f in self.fits]


class Fold:
    """One fold's model: started at the floor of its training rows, trained an epoch at a time,
    scored on its held-out rows (corrupted once, with validation's fixed noise); with none held
    out, the fit on every row that a kept check ends with (train_for)."""

    def __init__(self, mcfg: ModelConfig, tcfg: TrainConfig, x_train: np.ndarray, x_held: np.ndarray | None = None):
        self.tcfg, self.plan = tcfg, schedule(mcfg, tcfg)
        self.model, _, self.opt, _ = start(mcfg, tcfg, None)
        self.batches = array_batches({"train": x_train}, tcfg.batch_size)
        self.floor = fit_floor(self.model, self.batches("train", None), mcfg)
        self.model.set_pca(self.floor)
        if x_held is not None:
            self.x = torch.from_numpy(x_held)
            with same_noise():
                self.x_in = self.model.corrupt(self.x)

    def train(self, i: int) -> None:
        """Epoch i of the fit's schedule (loop.schedule), with the fit's learning rate and shuffle."""
        whole = i - (len(self.plan) - self.tcfg.epochs)  # < 0 in layer-wise stages, as in loop.fit
        set_lr(self.opt, self.tcfg, max(whole, 0))
        epoch(self.model, self.batches("train", self.tcfg.seed * 100003 + i), self.opt, self.plan[i])

    def figures(self) -> np.ndarray:
        self.model.eval()
        with same_noise(), torch.no_grad():
            return self.model.row_figures(self.x, self.x_in).double().numpy()


def train_for(mcfg: ModelConfig, tcfg: TrainConfig, x: np.ndarray, steps: int) -> Fold:
    """A Fold whose model started at the floor of all rows x and trained for the schedule's first `steps` epochs."""
    fit = Fold(mcfg, tcfg, x)
    for i in range(steps):
        fit.train(i)
    fit.model.eval()
    return fit
