"""The variational autoencoder: a Gaussian code with a KL penalty, and samples from its prior."""

from __future__ import annotations

import torch
from torch import nn

from aepipe.models.base import Autoencoder, ModelConfig, mlp, register, widths


@register("vae")
class VAE(Autoencoder):
    """Variational: the encoder gives mean and log-variance; the code is the mean."""

    options = ("beta",)
    whitened_floor = True  # PCA's codes divided by their std, so that the N(0, I) prior still fits

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        hidden = widths(cfg)
        self.trunk = mlp([self.n_in, *hidden], last_act=True)
        self.mu = nn.Linear(hidden[-1], cfg.code_dim)
        self.logvar = nn.Linear(hidden[-1], cfg.code_dim)
        self.decoder = mlp([cfg.code_dim, *hidden[::-1], self.n_in])
        self._kl = None

    def own_code(self, x):
        return self.mu(self.trunk(x.flatten(1)))

    def own_training_code(self, x):  # on the PCA floor, the sample is the correction: noise and KL act on it
        h = self.trunk(x.flatten(1))
        mu, logvar = self.mu(h), self.logvar(h).clamp(-20, 20)
        # KL(q(z|x) || N(0, I)) per row, divided by the input size to match the per-element recon mean
        self._kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean() / self.n_in
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu

    def penalty(self, x, z):
        return {"kl": self.cfg.beta * self._kl}

    def own_logits(self, z):
        return self.decoder(z).view(-1, *self.cfg.input_shape)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None):
        device = self.mu.weight.device
        return self.decode(torch.randn(n, self.cfg.code_dim, generator=generator).to(device))
