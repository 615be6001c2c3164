"""The compress family's mean-scale hyperprior (Minnen et al. 2018, as CompressAI's
MeanScaleHyperprior): side information z = h_a(y), coded with its own factorized density, from
which h_s predicts a mean and a scale for every latent value; y is priced (and coded, see
aepipe/bitstream.py's HyperpriorCoder) as a Gaussian of that mean and scale, quantised to bins of 1.

The start (--init pca keeps the DCT floor under it): h_s's last layer starts at zero, so before
training every mean is 0 and every scale is its channel's base scale, exp(SPEED * log_scale),
which starts wide (WIDE, as wide as the factorized density starts): y's prior is a zero-mean
Gaussian per channel, the rounded latent is round(y) as under the factorized prior, and the floor
is the block-DCT codec it was. Why a zeroed last layer rather than per-channel gates on h_s's
output (the floor's ReZero trick): a gate's gradient is the correlation of a fixed random branch
with what would help, weak, and until the gates grew z was useless and its rate squeezed it to
nothing (tried: the side latent collapsed to zero within 150 steps, 0.87 bpp at 31.1 dB where the
factorized prior had 0.70 at 31.4); a zeroed layer's gradient picks the useful directions of z's
features at once. Why SPEED: Adam moves a parameter by about its learning rate a step whatever
the gradient, and the per-channel scales must travel from WIDE to 0.2-10 (a factor of 50 between
DCT coefficients): in units of 1/SPEED of a nat they get there in tens of steps, as the factorized
density's stacked layers do, not hundreds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SCALE_BOUND = 0.11  # CompressAI's lower bound on the scale: below it a bin's mass hardly changes
WIDE = 10.0  # the per-channel scale at the start: wide, so no value is priced near zero
SPEED = 8.0  # the base log-scales' parameters are in units of 1/SPEED of a nat (see above)
HYPER_FACTOR = 4  # h_a's downsampling of y: y is padded to a multiple of it


class LowerBound(torch.autograd.Function):
    """max(x, bound), whose gradient still passes where it pushes x up (CompressAI's LowerBound):
    a scale stuck under the bound would otherwise never learn back."""

    @staticmethod
    def forward(ctx, x, bound: float):
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ((x >= ctx.bound) | (grad < 0)).to(grad.dtype), None


def gaussian_likelihood(v, scales):
    """P of the bin [v - 0.5, v + 0.5] under N(0, scale), v the value less its mean; computed on
    the lower tail (erfc) where both CDFs are near 1, as CompressAI's GaussianConditional."""
    v = v.abs()
    upper = 0.5 * torch.erfc((v - 0.5) / (scales * math.sqrt(2)))
    lower = 0.5 * torch.erfc((v + 0.5) / (scales * math.sqrt(2)))
    return (upper - lower).clamp_min(1e-9)


class HyperPrior(nn.Module):
    """h_a, h_s (CompressAI's MeanScaleHyperprior: a 3x3 conv then two strided 5x5 convs with
    LeakyReLU; back with two transposed 5x5 convs and a 3x3 conv to 2M channels), z's density
    and the per-channel base scales (see the module's doc). The density of z is handed in
    (compress.py's FactorizedDensity over N channels), as this module knows no other."""

    def __init__(self, m: int, n: int, density: nn.Module):
        super().__init__()
        self.h_a = nn.Sequential(nn.Conv2d(m, n, 3, padding=1), nn.LeakyReLU(),
                                 nn.Conv2d(n, n, 5, stride=2, padding=2), nn.LeakyReLU(),
                                 nn.Conv2d(n, n, 5, stride=2, padding=2))
        wide = m * 3 // 2
        self.h_s = nn.Sequential(nn.ConvTranspose2d(n, m, 5, stride=2, padding=2, output_padding=1), nn.LeakyReLU(),
                                 nn.ConvTranspose2d(m, wide, 5, stride=2, padding=2, output_padding=1), nn.LeakyReLU(),
                                 nn.Conv2d(wide, 2 * m, 3, padding=1))
        self.density = density
        with torch.no_grad():  # h_s starts silent: zero means, every scale its channel's base (the module's doc)
            self.h_s[-1].weight.zero_()
            self.h_s[-1].bias.zero_()
        self.log_scale = nn.Parameter(torch.full((m, 1, 1), math.log(WIDE) / SPEED))
        self.side_channels = n

    def z_shape(self, hw) -> tuple[int, int, int]:
        """The side latent's shape (N, h / 4, w / 4, rounded up) for a latent of height and width hw."""
        return (self.side_channels, *(-(-s // HYPER_FACTOR) for s in hw))

    def entropy_parameters(self) -> list[nn.Parameter]:
        """What the compress family trains at the density's rate: z's density and the base scales."""
        return [*self.density.parameters(), self.log_scale]

    def side(self, y):  # y (B, M, h, w) -> z (B, N, h / 4, w / 4), not rounded; y padded by its edge
        h, w = y.shape[-2:]
        # h_a sees y in units of each channel's base scale: the floor's DC (10x the high frequencies'
        # spread) does not drown the rest, and z's start is the same whatever step --lmbda sets
        y = y / torch.exp(SPEED * self.log_scale.detach())
        return self.h_a(F.pad(y, (0, -w % HYPER_FACTOR, 0, -h % HYPER_FACTOR), mode="replicate"))

    def params(self, z_hat, hw):  # -> (means, scales) of y, cropped to the latent's hw
        mean, scale = self.h_s(z_hat)[..., :hw[0], :hw[1]].chunk(2, 1)
        return mean, LowerBound.apply(torch.exp(SPEED * self.log_scale + scale), SCALE_BOUND)

    def forward(self, y, noisy: bool):
        """(y_hat, bits of y, bits of z) for the batch: noisy (training), uniform noise on y and z
        stands in for rounding; otherwise z is rounded and y rounded about its mean, round(y - mean) + mean,
        what the bitstream carries."""
        z = self.side(y)
        z_hat = z + torch.empty_like(z).uniform_(-0.5, 0.5) if noisy else torch.round(z)
        means, scales = self.params(z_hat, y.shape[-2:])
        y_hat = y + torch.empty_like(y).uniform_(-0.5, 0.5) if noisy else torch.round(y - means) + means
        y_bits = -torch.log2(gaussian_likelihood(y_hat - means, scales)).sum()
        return y_hat, y_bits, -torch.log2(self.density.likelihood(z_hat)).sum()
