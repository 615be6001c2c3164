"""What a fit is asked for (TrainConfig, in aepipe.config), made concrete for the data (budget),
and the learning rate each epoch gets (set_lr)."""

from __future__ import annotations

import dataclasses
import math

from aepipe.config import TrainConfig


# The default budget: at least MIN_EPOCHS, at most MAX_EPOCHS epochs, enough for TrainConfig.steps
MIN_EPOCHS, MAX_EPOCHS = 30, 1000
LR_FLOOR = 0.05  # the cosine schedule ends at this share of --lr, not at zero
SCHEDULES = ("cosine", "constant")


def budget(tcfg: TrainConfig, n_train: int) -> TrainConfig:
    """Epochs and patience made concrete for n_train training rows. A fixed epoch count under-trains
    small data: 150 images at batch 64 are 3 steps an epoch, so 60 epochs are 180 steps. Counting in
    optimiser steps gives them more epochs; patience grows with the epochs (a tenth of them), since
    with a cosine schedule the validation loss still falls late, as the learning rate does."""
    epochs = tcfg.epochs
    if epochs is None:
        per_epoch = max(1, math.ceil(n_train / (tcfg.batch_size * tcfg.workers)))
        epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(tcfg.steps / per_epoch)))
    patience = tcfg.patience if tcfg.patience is not None else max(10, epochs // 10)
    return dataclasses.replace(tcfg, epochs=epochs, patience=patience)


def set_lr(opt, tcfg: TrainConfig, epoch: int) -> None:
    """The learning rate for whole-model epoch `epoch` (0-based) of tcfg.epochs: each parameter
    group's own rate times the schedule's share (a model's param_groups may give a group another
    rate than --lr: the compress family's density learns at 10x)."""
    if tcfg.schedule == "cosine":
        share = LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * epoch / max(tcfg.epochs, 1)))
    else:
        share = 1.0
    for g in opt.param_groups:
        g["lr"] = g.setdefault("initial_lr", g["lr"]) * share
