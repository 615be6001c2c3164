"""Where a fit stands (FitState), and what a checkpoint's state.pt holds: the model's and the
optimiser's state dicts and the fit state as a plain dict under "st", the format every aepipe
since in-process fits has written, so any earlier run dir's checkpoints still resume."""

from __future__ import annotations

import dataclasses
import math

# Kept in a checkpoint's "st" even when None; the other fields are left out until set, as the
# dicts of earlier aepipe versions did (which read e.g. a "pca" key as "the floor is fitted")
ALWAYS = ("step", "history", "best_val", "best_state", "bad", "best_epoch", "timings")


@dataclasses.dataclass
class FitState:
    step: int = 0  # epochs done, layer-wise stages included
    history: list = dataclasses.field(default_factory=list)  # one row (a dict) per epoch done
    best_val: float = math.inf  # the monitored validation loss of the best weights
    best_state: dict | None = None  # the best weights so far (CPU tensors); restored at the end
    bad: int = 0  # whole-model epochs since the best, for early stopping
    best_epoch: int = -1  # -1: the PCA start (--init pca) is still the best
    best_recon: float | None = None  # the best weights' validation figure: reconstruction loss (the vae's: -ELBO)
    timings: dict = dataclasses.field(default_factory=dict)  # this call's seconds in epochs and checkpoints
    # the PCA floor, fitted before the first epoch (see loop.floor)
    pca: dict | None = None
    pca_val: float | None = None
    init_val: float | None = None
    floor_refitted: bool | None = None  # the floor stayed the best and was fitted again on every row
    rejected_epoch: int | None = None  # the best epoch of a correction whose gain was within the noise
    cross_check: dict | None = None  # small sets: the k-fold check of that correction (see local.cross_check)
    # over the training rows with the best weights, after the fit (see loop.finish)
    code_lo: list | None = None
    code_hi: list | None = None
    code_mean: list | None = None
    code_std: list | None = None
    score_quantiles: dict | None = None
    density: dict | None = None  # the training codes' and residuals' Gaussians (scores.fit_density)
    device: str | None = None

    def keep_best(self, val: float, recon: float | None, epoch: int, model) -> None:
        self.best_val, self.best_recon, self.best_epoch, self.bad = val, recon, epoch, 0
        self.keep_weights(model)

    def keep_weights(self, model) -> None:
        """The model's weights as they are now, as the ones the fit ends with (CPU copies)."""
        self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def to_dict(self) -> dict:
        """The dict a checkpoint keeps (no deep copy: the tensors are saved as they are)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name in ALWAYS or getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, st: dict) -> FitState:
        """A checkpoint's "st", from this version or an earlier one (keys it does not know are dropped)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in st.items() if k in names})


def checkpoint(inner, opt, st: FitState) -> dict:
    """What a checkpoint's state.pt holds, on either path: tensors and plain values (see statefile)."""
    return {"model": inner.state_dict(), "opt": opt.state_dict(), "st": st.to_dict()}
