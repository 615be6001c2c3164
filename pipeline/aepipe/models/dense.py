"""The MLP families on flattened rows: dense, stacked, sparse, contractive and denoising.

Defined in the order `aepipe models` lists them (the order they register in).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aepipe.models.base import Autoencoder, ModelConfig, mlp, register, widths


@register("dense")
class Dense(Autoencoder):
    """The vanilla autoencoder: an MLP down to the code and its mirror back up."""

    def __init__(self, cfg: ModelConfig, code_act: nn.Module | None = None):
        super().__init__(cfg)
        sizes = [self.n_in, *widths(cfg), cfg.code_dim]
        self.encoder = mlp(sizes)
        self.code_act = code_act or nn.Identity()
        self.decoder = mlp(sizes[::-1])

    def own_code(self, x):  # (B, *shape) -> (B, code_dim)
        return self.code_act(self.encoder(x.flatten(1)))

    def own_logits(self, z):
        return self.decoder(z).view(-1, *self.cfg.input_shape)


@register("stacked")
class Stacked(Autoencoder):
    """A deep symmetric MLP. tied: decoder layer i is the transpose of encoder layer i.
    layerwise: training first fits each (encoder layer, decoder layer) pair on the previous
    layer's codes via forward(x, stage=i), then fine-tunes the whole stack with stage=None."""

    options = ("tied", "layerwise", "pretrain_epochs")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        sizes = [self.n_in, *widths(cfg), cfg.code_dim]
        self.enc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        if cfg.tied:  # only biases are the decoder's own
            self.dec_bias = nn.ParameterList(nn.Parameter(torch.zeros(a)) for a in sizes[:-1])
        else:
            self.dec = nn.ModuleList(nn.Linear(b, a) for a, b in zip(sizes, sizes[1:]))
        self.n_stages = len(self.enc)

    def _enc(self, i, h):
        h = self.enc[i](h)
        return torch.relu(h) if i < self.n_stages - 1 else h

    def _dec(self, i, h):  # decoder layer i maps sizes[i+1] -> sizes[i]
        h = F.linear(h, self.enc[i].weight.t(), self.dec_bias[i]) if self.cfg.tied else self.dec[i](h)
        return torch.relu(h) if i > 0 else h

    def own_code(self, x):
        h = x.flatten(1)
        for i in range(self.n_stages):
            h = self._enc(i, h)
        return h

    def own_logits(self, z):
        for i in reversed(range(self.n_stages)):
            z = self._dec(i, z)
        return z.view(-1, *self.cfg.input_shape)

    def forward(self, x, stage: int | None = None, corrupt: bool | None = None):
        if stage is None:
            return super().forward(x, corrupt)
        with torch.no_grad():  # earlier layers are frozen inputs to this stage
            h = x.flatten(1)
            for i in range(stage):
                h = self._enc(i, h)
        z = self._enc(stage, h)
        h_hat = self._dec(stage, z)
        loss = F.mse_loss(torch.sigmoid(h_hat) if stage == 0 and self.cfg.loss == "bce" else h_hat, h)
        return {"x_hat": h_hat, "z": z, "loss": loss, "loss_parts": {f"stage{stage}": loss}}


@register("sparse")
class Sparse(Dense):
    """A penalty keeps most code units quiet: L1 on the code, or KL(rho || mean activation)."""

    options = ("sparsity", "sparsity_weight", "rho")

    def __init__(self, cfg: ModelConfig):
        # KL needs activations in (0, 1); L1 pairs with ReLU so that units can be exactly zero
        super().__init__(cfg, nn.Sigmoid() if cfg.sparsity == "kl" else nn.ReLU())

    @classmethod
    def check_options(cls, cfg: ModelConfig) -> None:
        if cfg.init == "pca" and cfg.sparsity == "kl":
            raise ValueError("--init pca cannot apply to sparse --sparsity kl: its code must lie in (0, 1) and a PCA "
                             "code does not; use --sparsity l1 or --init none")

    def penalty(self, x, z):
        if self.cfg.sparsity == "kl":
            return {"sparsity": self.cfg.sparsity_weight * kl_sparsity(z, self.cfg.rho)}
        return {"sparsity": self.cfg.sparsity_weight * z.abs().sum(1).mean()}


def kl_sparsity(z, rho: float):
    """sum_j KL(rho || rho_hat_j), rho_hat_j the mean activation of code unit j over the batch."""
    rho_hat = z.mean(0).clamp(1e-6, 1 - 1e-6)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()


@register("contractive")
class Contractive(Dense):
    """Penalises the encoder's sensitivity: the squared Frobenius norm of dz/dx, exact per row."""

    options = ("contractive_weight",)

    def penalty(self, x, z):
        # on the PCA floor, PCA's share of dz/dx is fixed: contract the learned part only
        return {"contractive": self.cfg.contractive_weight * jacobian_frobenius(self.learned_code, x)}


def jacobian_frobenius(encode, x):
    """mean over the batch of ||J||_F^2, J = d encode(x_i) / d x_i, via torch.func (any depth)."""
    from torch.func import jacrev, vmap

    jac = vmap(jacrev(lambda xi: encode(xi.unsqueeze(0)).squeeze(0)))(x)  # (B, code_dim, *shape)
    return jac.pow(2).flatten(1).sum(1).mean()


@register("denoising")
class Denoising(Dense):
    """Learns to return the clean input from a corrupted one; corruption only while training."""

    options = ("noise", "noise_std", "mask_prob")

    def corrupt(self, x):
        if self.cfg.noise == "mask":
            return x * (torch.rand_like(x) >= self.cfg.mask_prob)
        return x + self.cfg.noise_std * torch.randn_like(x)

    def floor_gain(self, variance):
        """The best rank-k linear denoiser for Gaussian noise keeps PCA's components and weighs
        each by Wiener's variance / (variance + noise variance): a component the noise swamps
        is mostly noise. Masking has no such answer in PCA's components: PCA (gain 1) for it."""
        if self.cfg.noise == "mask":
            return torch.ones_like(variance)
        return variance / (variance + self.cfg.noise_std ** 2)
