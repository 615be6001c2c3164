"""The in-process drivers: the fit on normalised arrays in this process, on one CPU thread, with a
checkpoint on the interval and at the end in the run dir's layout (see rundir), so `--resume`
continues on either path (fit_here); the same fit writing nothing, for benchmarks (fit_local).
Both cross-check a rejected correction on small sets (crosscheck)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from aepipe.config import ModelConfig
from aepipe.training.config import TrainConfig, budget
from aepipe.training.crosscheck import cross_check
from aepipe.training.loop import after_epoch, array_batches, finish, fit, schedule, start
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
