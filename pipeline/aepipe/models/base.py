"""What every family shares: ModelConfig, the Autoencoder interface with the PCA floor under it,
and the one registry of families that build_model, check_config and `aepipe models` read.

Importing this module (or any of aepipe.models) runs aepipe/models/__init__.py first, which
imports every family module: the registry is full whichever one a caller imports.

This module knows torch only: no Ray, no files beyond a state dict.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aepipe.config import LOSSES, ModelConfig
from aepipe.pca import project, reconstruct, val_loss
from aepipe.scores import row_errors


def mlp(sizes: list[int], last_act: bool = False) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def widths(cfg: ModelConfig) -> tuple[int, ...]:
    """The hidden widths, outermost first: the config's, or its family's default."""
    return tuple(cfg.hidden) if cfg.hidden else REGISTRY[cfg.family].default_hidden


def image_chw(family: str, shape) -> tuple[int, int, int]:
    """(C, H, W) of an image family's input, shaped (H, W) or (C, H, W)."""
    if len(shape) not in (2, 3):
        raise ValueError(f"{family} needs images shaped (H, W) or (C, H, W), got {shape}")
    return (1, *shape) if len(shape) == 2 else tuple(shape)

class Autoencoder(nn.Module):
    """Shared plumbing: reconstruction loss, output squashing for bce, the forward dict, the PCA floor.

    A family implements own_code(x) -> (B, code_dim) and own_logits(z) -> (B, *input_shape), its
    own networks, and where it has them penalty, corrupt and own_training_code; the base makes
    encode, decode_logits and forward from them, with the floor under them when there is one.

    The PCA floor (--init pca, every family with pca_floor): code = PCA projection + code_gate *
    the family's own code, and output = PCA reconstruction + out_gate * the family's own output.
    Both gates start at zero, so before the first step the model IS PCA (train.fit sets it with
    set_pca, scores it as "epoch 0" and keeps the best weights), and Adam, which is blind to a
    gradient's scale, grows the corrections from there (ReZero's trick). PCA's mean and components
    are where the linear part starts, trained with the rest (frozen, bench/quality.py's denoising
    8-d probe was 0.915 against 0.948 trained, test MSE 0.0139 against 0.0117); pca.npz keeps the
    fitted PCA. Conv and recurrent take PCA of the flattened image or sequence. A family asks for
    its share of the floor through the hooks: learned_code is the part of the code its own
    networks give (Contractive penalises that Jacobian only: on the whole code, its 8-d probe fell
    below PCA's, the penalty shrank the code); own_training_code is the code it trains on (the
    VAE's sample: its noise and KL act on the correction); linear_floor is the family's floor from
    PCA (the denoiser's weighs each component, the VAE's is probabilistic PCA), floor_loss its
    validation figure and figure/row_figures the model's (the mean reconstruction loss, or the VAE's
    negative ELBO); whitened_floor divides PCA's codes by their std where the floor names no scale
    (the VAE off its PPCA floor, so that its N(0, I) prior still fits). Sparse L1 penalises the
    whole code.
    """

    default_hidden: tuple[int, ...] = (256, 64)  # widths when --hidden is not given
    options: tuple[str, ...] = ()  # the ModelConfig fields this family reads, for `aepipe models`
    pca_floor: bool = True  # --init pca applies: the code is a vector PCA can start
    whitened_floor: bool = False  # the floor's codes are PCA's divided by their std
    gates: tuple[str, ...] = ("code_gate", "out_gate")  # the learned corrections' gates, zero at the floor
    figure: str = "recon"  # the validation loss part the floor is compared on (loop.fit keeps the best by it)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_in = math.prod(cfg.input_shape)
        # the state dict adds pca_* and the gates; they start at zeros and ones, drawing no random numbers
        self.has_pca_floor = cfg.init == "pca" and self.pca_floor
        if self.has_pca_floor:
            k = cfg.code_dim
            self.pca_mean = nn.Parameter(torch.zeros(self.n_in))
            self.pca_components = nn.Parameter(torch.zeros(k, self.n_in))
            self.register_buffer("pca_scale", torch.ones(k))
            self.code_gate = nn.Parameter(torch.zeros(k))
            self.out_gate = nn.Parameter(torch.zeros(cfg.input_shape))
            # each component's share in the floor's output: 1 for PCA, less for a linear denoiser
            self.register_buffer("pca_gain", torch.ones(k))

    @classmethod
    def check_options(cls, cfg: ModelConfig) -> None:
        """Raise ValueError for option values this family cannot take; check_config calls it."""

    def param_groups(self, lr: float) -> list[dict]:
        """The optimiser's parameter groups: one rate for everything, unless a family says otherwise."""
        return [{"params": list(self.parameters()), "lr": lr}]

    # families override these
    def own_code(self, x):  # (B, *input_shape) -> (B, code_dim)
        raise NotImplementedError

    def own_logits(self, z):  # (B, code_dim) -> (B, *input_shape), before the output squashing
        raise NotImplementedError

    def own_training_code(self, x):  # the VAE samples here; every other family just codes
        return self.own_code(x)

    def penalty(self, x, z) -> dict:
        return {}

    def corrupt(self, x):  # input corruption (denoising): in training, and in validation (see forward)
        return x

    def floor_gain(self, variance):
        """Each PCA component's weight in the floor's output, from its variance: 1 (PCA) unless the
        family's objective has a better linear answer (a denoiser shrinks noisy components)."""
        return torch.ones_like(variance)

    def linear_floor(self, pca: dict) -> dict:
        """The family's linear floor from fit_pca's dict: PCA with each component's gain (floor_gain);
        a family whose floor is another linear model adds what set_pca needs for it."""
        return {**pca, "gain": self.floor_gain(pca["variance"])}

    def floor_loss(self, pca: dict, batches, reduce=lambda t: t) -> float:
        """The floor's validation figure (the model's `figure` at the floor): its mean reconstruction
        loss, on rows corrupted as in training (a denoiser's floor is judged on noisy rows)."""
        return val_loss(pca, batches, self.cfg.loss, reduce, self.corrupt)

    def row_figures(self, x, x_in=None):
        """(B,) each row's share of `figure`: its mean elementwise reconstruction loss, from x_in
        (a corrupted x) where there is one."""
        return row_errors(self, x, x_in).mean(1)

    # the floor
    @torch.no_grad()
    def set_pca(self, pca: dict) -> None:
        """Start the floor at linear_floor's {"mean", "components", "variance"} (and "gain", "scale",
        if given), on whatever device they are (copy_ moves them to the model's)."""
        self.pca_mean.copy_(pca["mean"])
        self.pca_components.copy_(pca["components"])
        if "gain" in pca:
            self.pca_gain.copy_(pca["gain"])
        if "scale" in pca:
            self.pca_scale.copy_(pca["scale"])
        elif self.whitened_floor:
            std = pca["variance"].sqrt()
            self.pca_scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def pca_code(self, x):
        return project(x, self.pca_mean, self.pca_components, self.pca_scale)

    def floor_code_and_logits(self, x):
        """The linear part alone, as the model codes and decodes with both gates at zero: its code
        (B, k) and output logits."""
        z = self.pca_code(x)
        return z, self.floor_logits(z, self.reconstruction_gain())

    def floor_logits(self, z, gain=None):
        """The linear part's output logits for codes z; gain: each PCA component's weight in it (None:
        the floor's own, pca_gain)."""
        gain = self.pca_gain if gain is None else gain
        out = reconstruct(z * gain, self.pca_mean, self.pca_components, self.pca_scale, self.cfg.loss)
        return out.view(-1, *self.cfg.input_shape)

    def reconstruction_gain(self):
        """The gain a code is reconstructed with (decode, score, denoise): None, the floor's own."""
        return None

    def learned_code(self, x):
        """The share of the code the family's own networks give: all of it without the floor."""
        return self.code_gate * self.own_code(x) if self.has_pca_floor else self.own_code(x)

    # what the rest of aepipe calls
    def encode(self, x):  # (B, *input_shape) -> (B, code_dim)
        if self.has_pca_floor:
            return self.pca_code(x) + self.code_gate * self.own_code(x)
        return self.own_code(x)

    def code_for_training(self, x):
        if self.has_pca_floor:
            return self.pca_code(x) + self.code_gate * self.own_training_code(x)
        return self.own_training_code(x)

    def decode_logits(self, z, gain=None):  # (B, *input_shape), before the output squashing
        """gain: each PCA component's weight in the floor's output (None: the floor's own, pca_gain)."""
        if not self.has_pca_floor:
            return self.own_logits(z)
        return self.floor_logits(z, gain) + self.out_gate * self.own_logits(z)

    def squash(self, logits):
        """Outputs from decode_logits' logits: the sigmoid for bce, the logits themselves otherwise."""
        return torch.sigmoid(logits) if self.cfg.loss == "bce" else logits

    def decode(self, z):
        return self.squash(self.decode_logits(z))

    def recon_loss(self, logits, x):
        if self.cfg.loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, x)
        return F.l1_loss(logits, x) if self.cfg.loss == "l1" else F.mse_loss(logits, x)

    def forward(self, x, corrupt: bool | None = None):
        """The loss on x: corrupted first in training, or when corrupt=True (validation judges a
        denoiser by denoising: training.loop.epoch passes it with the same noise every epoch)."""
        x_in = self.corrupt(x) if (self.training if corrupt is None else corrupt) else x
        z = self.code_for_training(x_in)
        logits = self.decode_logits(z)
        parts = {"recon": self.recon_loss(logits, x), **self.penalty(x_in, z)}
        return {"x_hat": self.squash(logits), "z": z, "loss": sum(parts.values()), "loss_parts": parts}

    def loss(self, x):
        out = self(x)
        return out["loss"], out["loss_parts"]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # run dirs from before the floor's gain (pca_gain) hold PCA's floor: a gain of ones
        if self.has_pca_floor and "pca_gain" not in state_dict:
            state_dict = {**state_dict, "pca_gain": torch.ones_like(self.pca_gain)}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


# family name -> class, in the order `aepipe models` lists them: the order the family modules
# register in (aepipe/models/__init__.py imports them all)
REGISTRY: dict[str, type[Autoencoder]] = {}


def register(name: str):
    """Class decorator that puts a family in REGISTRY under `name` (CompressAI's register_model)."""
    def add(cls: type[Autoencoder]) -> type[Autoencoder]:
        REGISTRY[name] = cls
        return cls
    return add


CHOICES = {"loss": LOSSES, "sparsity": ("l1", "kl"), "noise": ("gaussian", "mask"),
           "up": ("transpose", "upsample"), "down": ("stride", "pool"), "cell": ("gru", "lstm"), "init": ("pca", "none"),
           "prior": ("factorized", "hyperprior", "context")}


def check_config(cfg: ModelConfig) -> None:
    """Raise ValueError naming the bad value; callers at the edges turn it into a user error."""
    if cfg.family not in REGISTRY:
        raise ValueError(f'unknown family "{cfg.family}"; choose one of {", ".join(REGISTRY)}')
    for field, allowed in CHOICES.items():
        if getattr(cfg, field) not in allowed:
            raise ValueError(f'unknown {field} "{getattr(cfg, field)}"; choose one of {", ".join(allowed)}')
    if cfg.code_dim < 1 or any(w < 1 for w in widths(cfg)):
        raise ValueError(f"code size and widths must be positive, got {cfg.code_dim} and {widths(cfg)}")
    REGISTRY[cfg.family].check_options(cfg)
    if not (cfg.lmbda > 0 and math.isfinite(cfg.lmbda)):
        raise ValueError(f"lmbda {cfg.lmbda}: must be a positive, finite number")


# The largest model aepipe builds: 2^30 parameters are 4 GiB of float32 weights (training holds
# about four times that). A config asking for more (a code or hidden width of 10^9 in a hostile
# aepipe.json) is refused before a byte of it is allocated.
MAX_PARAMETERS = 2 ** 30


def build_model(cfg: ModelConfig) -> Autoencoder:
    check_config(cfg)
    cls = REGISTRY[cfg.family]
    n = parameter_bound(cls, cfg)
    if n > MAX_PARAMETERS:
        raise ValueError(f"model too large: code size {cfg.code_dim} and widths {widths(cfg)} on input "
                         f"{tuple(cfg.input_shape)} make {n:,} parameters; aepipe builds at most {MAX_PARAMETERS:,}")
    return cls(cfg)


def parameter_bound(cls: type[Autoencoder], cfg: ModelConfig) -> int:
    """At least the model's parameter count: exact, from a copy built on the meta device (shapes
    only, no memory), where it could pass MAX_PARAMETERS. A config whose sizes cannot come near
    that is not built twice: its rough bound
    (each layer at most the widest size squared, times 32 for a kernel) is returned instead, since
    the meta device's first call imports torch._dynamo (1-5 s here) for some families."""
    widest = max(cfg.code_dim, *widths(cfg))
    rough = (len(widths(cfg)) + 2) * max(math.prod(cfg.input_shape), widest) * widest * 32
    if rough <= MAX_PARAMETERS:
        return rough
    with torch.device("meta"):
        return sum(p.numel() for p in cls(cfg).parameters())
