"""The variational autoencoder: a Gaussian code with a KL penalty, and samples from its prior.

Under the PCA floor with --loss mse (the defaults) it starts as probabilistic PCA (Tipping & Bishop
1999), the exact linear-Gaussian VAE: the encoder's mean and log-variance are PPCA's posterior,
M^-1 W^T (x - mean) and noise M^-1 (M = W^T W + noise I, diagonal in PCA's components), plus
learned corrections gated at zero; the decoder's mean is W z + mean plus a gated correction; and
the decoder is a Gaussian whose variance (one scalar, log_noise) starts at PPCA's noise and is
learned. The loss is the negative ELBO per value: -E_q log p(x|z) / d + beta * KL / d. At the start
the posterior is exact, so the ELBO is PPCA's log-likelihood (pca.ppca_nll), the floor's figure.
Off that floor (--init none, --loss l1|bce) it is as before: the reconstruction loss of a sample
plus beta * KL / d, on PCA's codes divided by their std where there is a floor.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from aepipe.models.base import Autoencoder, ModelConfig, mlp, register, widths
from aepipe.pca import ppca_loadings, ppca_nll, reconstruct

LOG_RANGE = (-20.0, 20.0)  # log-variances are clamped here: exp() stays finite in float32


@register("vae")
class VAE(Autoencoder):
    """Variational: the encoder gives mean and log-variance; the code is the mean."""

    options = ("beta",)
    whitened_floor = True  # off the PPCA floor: PCA's codes divided by their std, so that N(0, I) still fits

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        hidden = widths(cfg)
        self.trunk = mlp([self.n_in, *hidden], last_act=True)
        self.mu = nn.Linear(hidden[-1], cfg.code_dim)
        self.logvar = nn.Linear(hidden[-1], cfg.code_dim)
        self.decoder = mlp([cfg.code_dim, *hidden[::-1], self.n_in])
        self._kl = None
        self.ppca = self.has_pca_floor and cfg.loss == "mse"
        if self.ppca:  # zeros, as the base's floor: no random numbers drawn
            self.pca_logvar = nn.Parameter(torch.zeros(cfg.code_dim))  # PPCA's posterior log-variance
            self.logvar_gate = nn.Parameter(torch.zeros(cfg.code_dim))
            self.log_noise = nn.Parameter(torch.zeros(1))  # the decoder's log-variance, per value
            self.gates = (*Autoencoder.gates, "logvar_gate")
            self.figure = "neg_elbo"

    def own_code(self, x):
        return self.mu(self.trunk(x.flatten(1)))

    def own_training_code(self, x):  # off the PPCA floor, the sample is the correction: noise and KL act on it
        h = self.trunk(x.flatten(1))
        mu, logvar = self.mu(h), self.logvar(h).clamp(*LOG_RANGE)
        # KL(q(z|x) || N(0, I)) per row, divided by the input size to match the per-element recon mean
        self._kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean() / self.n_in
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu

    def penalty(self, x, z):
        return {"kl": self.cfg.beta * self._kl}

    def own_logits(self, z):
        return self.decoder(z).view(-1, *self.cfg.input_shape)

    def decode_logits(self, z):
        """A code's reconstruction (decode, score, denoise): on the PPCA floor, the linear part undone
        of PPCA's shrinkage. The code is the posterior mean, each PCA component shrunk by w^2 / M;
        the generative mean W z + mean of it (generate) is shrunk again, so it would reconstruct worse
        than PCA (1.02-1.09x PCA's held-out MSE on the breast-cancer and wine tables). The least-squares
        reconstruction from the code, E[x | code] for PPCA, is PCA's: the floor's output gain of 1."""
        return super().decode_logits(z, gain=self.reconstruction_gain())

    def reconstruction_gain(self):
        return 1.0 if self.ppca else None

    def generate(self, z):
        """The decoder's mean at z (the generative model's, which the ELBO trains): W z + mean plus the
        learned correction on the PPCA floor; what samples from the prior go through."""
        return self.squash(super().decode_logits(z))

    # the PPCA floor
    def linear_floor(self, pca: dict) -> dict:
        """PPCA in PCA's components, as the floor's code and output take it: the code divided by
        scale = M / w is the posterior mean, and the output's gain w^2 / M makes W z + mean of it
        (w^2 = ppca_loadings, M = w^2 + noise); logvar = log(noise / M) is the posterior's."""
        if not self.ppca:
            return super().linear_floor(pca)
        w2 = ppca_loadings(pca["variance"], pca["noise"])
        m = w2 + pca["noise"]
        return {**pca, "gain": w2 / m, "scale": m / w2.sqrt(), "logvar": (pca["noise"] / m).log()}

    @torch.no_grad()
    def set_pca(self, pca: dict) -> None:
        super().set_pca(pca)
        if self.ppca and "logvar" in pca:
            self.pca_logvar.copy_(pca["logvar"])
            self.log_noise.copy_(pca["noise"].log())

    def floor_loss(self, pca: dict, batches, reduce=lambda t: t) -> float:
        return ppca_nll(pca, batches, reduce) if self.ppca else super().floor_loss(pca, batches, reduce)

    def posterior(self, x):
        """(mean, log-variance) of q(z|x): PPCA's plus the gated corrections."""
        h = self.trunk(x.flatten(1))
        mean = self.pca_code(x) + self.code_gate * self.mu(h)
        return mean, (self.pca_logvar + self.logvar_gate * self.logvar(h)).clamp(*LOG_RANGE)

    def neg_elbo_terms(self, x):
        """(B,) each row's -E_q log p(x|z) and KL(q(z|x) || N(0, I)), in nats, the z drawn and its
        decoded logits. The expected squared error is the linear decoder's in closed form,
        |x - L(mean)|^2 + sum_i var_i |L_i|^2, plus the correction's share at one draw of z
        (|x - f(z)|^2 - |x - L(z)|^2, unbiased): exact while the correction is gated at zero, so
        the floor's ELBO is PPCA's likelihood, not a noisy estimate of it."""
        flat = x.flatten(1)
        mean, logvar = self.posterior(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        linear = lambda c: reconstruct(c * self.pca_gain, self.pca_mean, self.pca_components, self.pca_scale, "mse")  # noqa: E731
        at_z = linear(z)
        learned = (self.out_gate * self.own_logits(z)).flatten(1)
        columns = (self.pca_gain * self.pca_scale).pow(2) * self.pca_components.pow(2).sum(1)  # |L_i|^2
        squared = ((flat - linear(mean)).pow(2).sum(1) + (logvar.exp() * columns).sum(1)
                   + (learned * (learned - 2 * (flat - at_z))).sum(1))
        log_noise = self.log_noise.clamp(*LOG_RANGE)
        nll = 0.5 * (self.n_in * (math.log(2 * math.pi) + log_noise) + squared / log_noise.exp())
        kl = 0.5 * (logvar.exp() + mean.pow(2) - 1 - logvar).sum(1)
        return nll, kl, z, (at_z + learned).view(-1, *self.cfg.input_shape)

    def forward(self, x, corrupt: bool | None = None):
        """Off the PPCA floor, the base's loss. On it, the negative ELBO per value (the KL weighed by
        --beta): z is drawn in validation too (the fit draws the same noise every epoch there), and
        "figures" holds the unweighted -ELBO (neg_elbo: what the fit keeps the best by, whatever --beta)."""
        if not self.ppca:
            return super().forward(x, corrupt)
        nll, kl, z, logits = self.neg_elbo_terms(x)
        parts = {"recon": nll.mean() / self.n_in, "kl": self.cfg.beta * kl.mean() / self.n_in}
        return {"x_hat": self.squash(logits), "z": z, "loss": sum(parts.values()), "loss_parts": parts,
                "figures": {"neg_elbo": (nll + kl).mean() / self.n_in}}

    def row_figures(self, x, x_in=None):
        """(B,) each row's negative ELBO per value on the PPCA floor (one draw of z)."""
        if not self.ppca:
            return super().row_figures(x, x_in)
        nll, kl, _, _ = self.neg_elbo_terms(x)
        return (nll + kl) / self.n_in

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # run dirs from before the PPCA floor: their codes and outputs need none of its parameters
        # (the code stays PCA's divided by its std: pca_scale is in their weights)
        if self.ppca and "log_noise" not in state_dict:
            state_dict = {**state_dict, **{k: torch.zeros_like(getattr(self, k))
                                           for k in ("pca_logvar", "logvar_gate", "log_noise")}}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None):
        device = self.mu.weight.device
        return self.generate(torch.randn(n, self.cfg.code_dim, generator=generator).to(device))
