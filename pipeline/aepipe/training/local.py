"""The in-process driver: the fit on normalised arrays in this process, on one CPU thread, with a
checkpoint on the interval and at the end in the run dir's layout (see rundir), so `--resume`
continues on either path."""

from __future__ import annotations

from pathlib import Path

import torch

from aepipe.config import ModelConfig
from aepipe.training.config import TrainConfig
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
        finish(inner, batches, st, "cpu")
    finally:
        torch.set_num_threads(threads)
    save_checkpoint(storage, checkpoint(inner, opt, st))
    return st
