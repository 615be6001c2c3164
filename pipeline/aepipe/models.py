"""The model zoo: every autoencoder family behind one interface, in one registry.

    encode(x) -> z          x: (B, *input_shape), z: (B, code_dim)
    decode(z) -> x_hat      x_hat: (B, *input_shape)
    loss(x) -> (total, parts)
    forward(x) -> {"x_hat", "z", "loss", "loss_parts"}   (what training calls, so DDP sees it)
    sample(n)               VAE only

This module knows torch only: no Ray, no files beyond a state dict.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from aepipe.pca import project, reconstruct

LOSSES = ("mse", "l1", "bce")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str = "dense"
    input_shape: tuple[int, ...] = (64,)
    code_dim: int = 16  # the compression knob: 16 floats for 64 pixels is 4x
    hidden: tuple[int, ...] | None = None  # widths, outermost first; None: the family's default
    loss: str = "mse"
    # "pca": start as PCA with this code size plus learned corrections that start at zero (PCAFloor)
    init: str = "pca"
    # stacked
    tied: bool = False  # decoder reuses the encoder's transposed weights: half the parameters
    layerwise: bool = False  # greedy layer-wise pretraining before fine-tuning the stack
    pretrain_epochs: int = 5  # epochs per layer when layerwise
    # sparse
    sparsity: str = "l1"  # l1 on the code, or kl toward a mean activation rho
    sparsity_weight: float = 1e-3
    rho: float = 0.05
    # contractive
    contractive_weight: float = 1e-3  # weight of ||d code / d x||_F^2
    # denoising
    noise: str = "gaussian"  # gaussian or mask
    noise_std: float = 0.25
    mask_prob: float = 0.25
    # variational
    beta: float = 1.0  # 1 is the plain ELBO; >1 trades reconstruction for a smoother code
    # convolutional
    up: str = "transpose"  # transpose convolutions or nearest upsampling + convolution
    down: str = "stride"  # strided convolutions or max pooling
    # recurrent
    cell: str = "gru"  # gru or lstm
    # compress (learned compression): loss = bits per pixel + lmbda * 255^2 * MSE, as CompressAI
    lmbda: float = 0.01  # larger: more bits, higher PSNR

    def widths(self) -> tuple[int, ...]:
        return tuple(self.hidden) if self.hidden else REGISTRY[self.family].default_hidden


def mlp(sizes: list[int], last_act: bool = False) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def image_chw(family: str, shape) -> tuple[int, int, int]:
    """(C, H, W) of an image family's input, shaped (H, W) or (C, H, W)."""
    if len(shape) not in (2, 3):
        raise ValueError(f"{family} needs images shaped (H, W) or (C, H, W), got {shape}")
    return (1, *shape) if len(shape) == 2 else tuple(shape)


class Autoencoder(nn.Module):
    """Shared plumbing: reconstruction loss, output squashing for bce, the forward dict."""

    default_hidden: tuple[int, ...] = (256, 64)  # widths when --hidden is not given
    options: tuple[str, ...] = ()  # the ModelConfig fields this family reads, for `aepipe models`
    pca_floor: bool = True  # --init pca applies: the code is a vector PCA can start

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_in = math.prod(cfg.input_shape)

    def param_groups(self, lr: float) -> list[dict]:
        """The optimiser's parameter groups: one rate for everything, unless a family says otherwise."""
        return [{"params": list(self.parameters()), "lr": lr}]

    # families override these three
    def encode(self, x):
        raise NotImplementedError

    def decode_logits(self, z):  # (B, *input_shape), before the output squashing
        raise NotImplementedError

    def penalty(self, x, z) -> dict:
        return {}

    def corrupt(self, x):  # training-time input corruption (denoising); identity elsewhere
        return x

    def code_for_training(self, x):  # VAE samples here; every other family just encodes
        return self.encode(x)

    def decode(self, z):
        out = self.decode_logits(z)
        return torch.sigmoid(out) if self.cfg.loss == "bce" else out

    def recon_loss(self, logits, x):
        if self.cfg.loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, x)
        return F.l1_loss(logits, x) if self.cfg.loss == "l1" else F.mse_loss(logits, x)

    def forward(self, x):
        x_in = self.corrupt(x) if self.training else x
        z = self.code_for_training(x_in)
        logits = self.decode_logits(z)
        parts = {"recon": self.recon_loss(logits, x), **self.penalty(x_in, z)}
        x_hat = torch.sigmoid(logits) if self.cfg.loss == "bce" else logits
        return {"x_hat": x_hat, "z": z, "loss": sum(parts.values()), "loss_parts": parts}

    def loss(self, x):
        out = self(x)
        return out["loss"], out["loss_parts"]


class Dense(Autoencoder):
    """The vanilla autoencoder: an MLP down to the code and its mirror back up."""

    def __init__(self, cfg: ModelConfig, code_act: nn.Module | None = None):
        super().__init__(cfg)
        sizes = [self.n_in, *cfg.widths(), cfg.code_dim]
        self.encoder = mlp(sizes)
        self.code_act = code_act or nn.Identity()
        self.decoder = mlp(sizes[::-1])

    def encode(self, x):  # (B, *shape) -> (B, code_dim)
        return self.code_act(self.encoder(x.flatten(1)))

    def decode_logits(self, z):
        return self.decoder(z).view(-1, *self.cfg.input_shape)


class Sparse(Dense):
    """A penalty keeps most code units quiet: L1 on the code, or KL(rho || mean activation)."""

    options = ("sparsity", "sparsity_weight", "rho")

    def __init__(self, cfg: ModelConfig):
        # KL needs activations in (0, 1); L1 pairs with ReLU so that units can be exactly zero
        super().__init__(cfg, nn.Sigmoid() if cfg.sparsity == "kl" else nn.ReLU())

    def penalty(self, x, z):
        if self.cfg.sparsity == "kl":
            return {"sparsity": self.cfg.sparsity_weight * kl_sparsity(z, self.cfg.rho)}
        return {"sparsity": self.cfg.sparsity_weight * z.abs().sum(1).mean()}


def kl_sparsity(z, rho: float):
    """sum_j KL(rho || rho_hat_j), rho_hat_j the mean activation of code unit j over the batch."""
    rho_hat = z.mean(0).clamp(1e-6, 1 - 1e-6)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()


class Contractive(Dense):
    """Penalises the encoder's sensitivity: the squared Frobenius norm of dz/dx, exact per row."""

    options = ("contractive_weight",)

    def penalty(self, x, z):
        return {"contractive": self.cfg.contractive_weight * jacobian_frobenius(self.encode, x)}


def jacobian_frobenius(encode, x):
    """mean over the batch of ||J||_F^2, J = d encode(x_i) / d x_i, via torch.func (any depth)."""
    from torch.func import jacrev, vmap

    jac = vmap(jacrev(lambda xi: encode(xi.unsqueeze(0)).squeeze(0)))(x)  # (B, code_dim, *shape)
    return jac.pow(2).flatten(1).sum(1).mean()


class Denoising(Dense):
    """Learns to return the clean input from a corrupted one; corruption only while training."""

    options = ("noise", "noise_std", "mask_prob")

    def corrupt(self, x):
        if self.cfg.noise == "mask":
            return x * (torch.rand_like(x) >= self.cfg.mask_prob)
        return x + self.cfg.noise_std * torch.randn_like(x)


class VAE(Autoencoder):
    """Variational: the encoder gives mean and log-variance; the code is the mean."""

    options = ("beta",)

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        widths = cfg.widths()
        self.trunk = mlp([self.n_in, *widths], last_act=True)
        self.mu = nn.Linear(widths[-1], cfg.code_dim)
        self.logvar = nn.Linear(widths[-1], cfg.code_dim)
        self.decoder = mlp([cfg.code_dim, *widths[::-1], self.n_in])
        self._kl = None

    def encode(self, x):
        return self.mu(self.trunk(x.flatten(1)))

    def code_for_training(self, x):
        h = self.trunk(x.flatten(1))
        mu, logvar = self.mu(h), self.logvar(h).clamp(-20, 20)
        # KL(q(z|x) || N(0, I)) per row, divided by the input size to match the per-element recon mean
        self._kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean() / self.n_in
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu

    def penalty(self, x, z):
        return {"kl": self.cfg.beta * self._kl}

    def decode_logits(self, z):
        return self.decoder(z).view(-1, *self.cfg.input_shape)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None):
        device = self.mu.weight.device
        return self.decode(torch.randn(n, self.cfg.code_dim, generator=generator).to(device))


class Stacked(Autoencoder):
    """A deep symmetric MLP. tied: decoder layer i is the transpose of encoder layer i.
    layerwise: training first fits each (encoder layer, decoder layer) pair on the previous
    layer's codes via forward(x, stage=i), then fine-tunes the whole stack with stage=None."""

    options = ("tied", "layerwise", "pretrain_epochs")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        sizes = [self.n_in, *cfg.widths(), cfg.code_dim]
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

    def encode(self, x):
        h = x.flatten(1)
        for i in range(self.n_stages):
            h = self._enc(i, h)
        return h

    def decode_logits(self, z):
        for i in reversed(range(self.n_stages)):
            z = self._dec(i, z)
        return z.view(-1, *self.cfg.input_shape)

    def forward(self, x, stage: int | None = None):
        if stage is None:
            return super().forward(x)
        with torch.no_grad():  # earlier layers are frozen inputs to this stage
            h = x.flatten(1)
            for i in range(stage):
                h = self._enc(i, h)
        z = self._enc(stage, h)
        h_hat = self._dec(stage, z)
        loss = F.mse_loss(torch.sigmoid(h_hat) if stage == 0 and self.cfg.loss == "bce" else h_hat, h)
        return {"x_hat": h_hat, "z": z, "loss": loss, "loss_parts": {f"stage{stage}": loss}}


class Conv(Autoencoder):
    """Convolutional, for images shaped (C, H, W) or (H, W): halves the size per level."""

    default_hidden = (16, 32)  # channels per level
    options = ("up", "down")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.chw = image_chw("conv", cfg.input_shape)
        chans = [self.chw[0], *cfg.widths()]
        sizes = [self.chw[1:]]
        down = []
        for a, b in zip(chans, chans[1:]):
            if cfg.down == "pool":
                down += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            else:
                down += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU()]
            sizes.append(tuple((s + 1) // 2 for s in sizes[-1]))
        self.down = nn.Sequential(*down)
        self.bottom = (chans[-1], *sizes[-1])
        flat = math.prod(self.bottom)
        self.to_code = nn.Linear(flat, cfg.code_dim)
        self.from_code = nn.Linear(cfg.code_dim, flat)
        up = []
        for i in reversed(range(1, len(chans))):  # level i: chans[i] at sizes[i] -> chans[i-1] at sizes[i-1]
            a, b, target = chans[i], chans[i - 1], sizes[i - 1]
            if cfg.up == "upsample":
                up += [nn.Upsample(size=target, mode="nearest"), nn.Conv2d(a, b, 3, padding=1)]
            else:  # output_padding picks the exact size back: even sizes need one more row/column
                pad = tuple(t - (2 * s - 1) for t, s in zip(target, sizes[i]))
                up += [nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=pad)]
            if i > 1:
                up.append(nn.ReLU())
        self.up = nn.Sequential(*up)

    def encode(self, x):  # (B, *shape) -> (B, code_dim)
        h = self.down(x.reshape(-1, *self.chw))  # already through a ReLU
        return self.to_code(h.flatten(1))

    def decode_logits(self, z):
        h = torch.relu(self.from_code(z)).view(-1, *self.bottom)
        return self.up(h).view(-1, *self.cfg.input_shape)


class Recurrent(Autoencoder):
    """Sequences shaped (T, F) or (T,): an RNN reads the sequence to a code, another writes it back
    from the code repeated at every step."""

    default_hidden = (64,)
    options = ("cell",)

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        shape = cfg.input_shape
        if len(shape) not in (1, 2):
            raise ValueError(f"recurrent needs sequences shaped (T,) or (T, F), got {shape}")
        self.t, self.f = shape[0], (shape[1] if len(shape) == 2 else 1)
        widths = cfg.widths()
        rnn = nn.LSTM if cfg.cell == "lstm" else nn.GRU
        self.enc_rnn = rnn(self.f, max(widths), num_layers=len(widths), batch_first=True)
        self.to_code = nn.Linear(max(widths), cfg.code_dim)
        self.dec_rnn = rnn(cfg.code_dim, max(widths), num_layers=len(widths), batch_first=True)
        self.out = nn.Linear(max(widths), self.f)

    def encode(self, x):  # (B, T, F) -> (B, code_dim)
        _, h = self.enc_rnn(x.reshape(-1, self.t, self.f))
        h = h[0] if isinstance(h, tuple) else h  # LSTM returns (h, c)
        return self.to_code(h[-1])

    def decode_logits(self, z):
        y, _ = self.dec_rnn(z.unsqueeze(1).expand(-1, self.t, -1).contiguous())
        return self.out(y).view(-1, *self.cfg.input_shape)


class PCAFloor:
    """--init pca, for every family: code = PCA projection + code_gate * the family's own code, and
    output = PCA reconstruction + out_gate * the family's own output. Both gates start at zero, so
    before the first step the model IS PCA (train.fit scores it as "epoch 0" and keeps the best
    weights), and Adam, which is blind to a gradient's scale, grows the corrections from there
    (ReZero's trick). PCA's mean and components are where the linear part starts, trained with the
    rest (frozen, bench/quality.py's denoising 8-d probe was 0.915 against 0.948 trained, test MSE
    0.0139 against 0.0117); pca.npz keeps the fitted PCA. Contractive penalises the correction's
    Jacobian only (on the whole code, its 8-d probe fell below PCA's: the penalty shrank the code).
    Conv and recurrent take PCA of the flattened image or sequence; the VAE's mean path is PCA +
    correction, its noise and KL act on the correction, and its PCA codes are whitened so that its
    N(0, I) prior still fits. Sparse L1 penalises the whole code. Mixed in before the family."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        k = cfg.code_dim
        self.pca_mean = nn.Parameter(torch.zeros(self.n_in))
        self.pca_components = nn.Parameter(torch.zeros(k, self.n_in))
        self.register_buffer("pca_scale", torch.ones(k))
        self.code_gate = nn.Parameter(torch.zeros(k))
        self.out_gate = nn.Parameter(torch.zeros(cfg.input_shape))

    @torch.no_grad()
    def set_pca(self, pca: dict) -> None:
        self.pca_mean.copy_(pca["mean"])
        self.pca_components.copy_(pca["components"])
        if self.cfg.family == "vae":
            std = pca["variance"].sqrt()
            self.pca_scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def pca_code(self, x):
        return project(x, self.pca_mean, self.pca_components, self.pca_scale)

    def encode(self, x):
        return self.pca_code(x) + self.code_gate * super().encode(x)

    def code_for_training(self, x):
        if isinstance(self, VAE):  # its own sampled code is the correction here
            return self.pca_code(x) + self.code_gate * super().code_for_training(x)
        return self.encode(x)

    def penalty(self, x, z):
        if isinstance(self, Contractive):  # PCA's share of dz/dx is fixed: contract the learned part only
            return {"contractive": self.cfg.contractive_weight * jacobian_frobenius(self._correction, x)}
        return super().penalty(x, z)

    def _correction(self, x):
        return self.code_gate * super().encode(x)

    def decode_logits(self, z):
        pca = reconstruct(z, self.pca_mean, self.pca_components, self.pca_scale, self.cfg.loss)
        return pca.view(-1, *self.cfg.input_shape) + self.out_gate * super().decode_logits(z)


class GDN(nn.Module):
    """Generalised divisive normalisation (Balle et al. 2016): y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2);
    inverse=True multiplies instead (IGDN, the synthesis side). beta and gamma are kept positive by
    squaring their parameters (CompressAI uses a lower-bounded reparametrisation to the same end)."""

    def __init__(self, ch: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(ch))
        self.gamma = nn.Parameter(math.sqrt(0.1) * torch.eye(ch).view(ch, ch, 1, 1))

    def forward(self, x):
        norm = F.conv2d(x * x, self.gamma ** 2, self.beta ** 2 + 1e-6).sqrt()
        return x * norm if self.inverse else x / norm


class FactorizedDensity(nn.Module):
    """A learned density per latent channel (Balle et al. 2018, appendix 6.1; CompressAI's
    EntropyBottleneck): its CDF is a small monotone network of the scalar value: softplus-positive
    matrices, tanh gates, ending in a logit. P(round(y) = k) = CDF(k + 0.5) - CDF(k - 0.5)."""

    def __init__(self, channels: int, filters=(3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices, self.biases, self.factors = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for i, (a, b) in enumerate(zip(dims, dims[1:])):
            init = math.log(math.expm1(1 / scale / b))  # softplus(init) = 1 / scale / b: the CDF starts wide
            self.matrices.append(nn.Parameter(torch.full((channels, b, a), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, b, 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, b, 1)))

    def logits_cdf(self, v):  # v: (C, 1, n) -> logit of the CDF at v, same shape
        for i, (m, b) in enumerate(zip(self.matrices, self.biases)):
            v = torch.matmul(F.softplus(m), v) + b
            if i < len(self.factors):
                v = v + torch.tanh(self.factors[i]) * torch.tanh(v)
        return v

    def likelihood(self, y):  # y: (B, C, H, W) of integers (or noisy) -> P per element, same shape
        c = y.shape[1]
        v = y.transpose(0, 1).reshape(c, 1, -1)
        lo, hi = self.logits_cdf(v - 0.5), self.logits_cdf(v + 0.5)
        # difference of sigmoids on the side where they are not both near 1 (float precision)
        s = -torch.sign(lo + hi).detach()
        p = (torch.sigmoid(s * hi) - torch.sigmoid(s * lo)).abs()
        return p.clamp_min(1e-9).reshape(c, y.shape[0], *y.shape[2:]).transpose(0, 1)


def dct_basis(n: int = 8) -> torch.Tensor:
    """The orthonormal 2-D DCT-II basis of n x n blocks, (n * n, n, n), coefficient u * n + v."""
    k = torch.arange(n, dtype=torch.float64)
    c = torch.cos(math.pi * (2 * k[None] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)  # (freq, pos)
    c[0] /= math.sqrt(2)
    return torch.einsum("ux,vy->uvxy", c, c).reshape(n * n, n, n).float()


def dct_step(lmbda: float) -> float:
    """The uniform quantiser step (pixels in [0, 1]) that minimises bpp + lmbda * 255^2 * MSE for an
    orthonormal transform at high rate: each coefficient's bits fall by 1 / (s ln 2) per unit of
    step s while its MSE grows by s^2 / 12, so s^2 = 6 / (lmbda * 255^2 * ln 2)."""
    return math.sqrt(6 / (lmbda * math.log(2))) / 255


# JPEG's RGB -> YCbCr (ITU-R BT.601, full range): luma and two colour differences, coded apart
YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def floor_basis(c: int) -> torch.Tensor:
    """The DCT floor's filters, (M, c, 8, 8), orthonormal rows: grayscale, the 64 DCT basis images of
    an 8x8 block; colour (Y, Cb, Cr), as JPEG's 4:2:0: 64 for luma and, for each chroma plane, the 16
    4x4 DCT basis images of its 2x2-averaged block (each value spread over 2x2 pixels, halved). As a
    transposed convolution the same filters invert it: exactly for luma, chroma upsampled 2x."""
    if c == 1:
        return dct_basis(8).unsqueeze(1)
    w = torch.zeros(96, 3, 8, 8)
    w[:64, 0] = dct_basis(8)
    chroma = dct_basis(4).repeat_interleave(2, 1).repeat_interleave(2, 2) / 2  # (16, 8, 8)
    w[64:80, 1], w[80:, 2] = chroma, chroma
    return w


class Compress(Autoencoder):
    """Learned image compression to real bitstreams: bits per pixel + lmbda * 255^2 * MSE.

    A factorized-prior model (Balle et al. 2018, as CompressAI's FactorizedPrior): analysis
    transform -> latent, rounded -> per-channel learned density -> synthesis transform back.
    `aepipe encode` entropy-codes the latent (pipeline/aepipe/bitstream.py), one bitstream per image.

    --init pca (the default): the classical floor under it, as the PCA floor under the other
    families: JPEG's 8x8 block DCT (close to the PCA of natural 8x8 blocks) with a uniform step
    set by --lmbda, plus gated nonlinear corrections (strided 5x5 convs with GDN, 8x smaller) that
    start at zero. Epoch 0 is a DCT codec with a learned entropy model (about JPEG's curve on the
    held-out photos of bench/rate_distortion.py); training moves both transforms from there. The
    latent has one channel per DCT coefficient (--code-dim is not used): 64 for grayscale; colour
    images go through JPEG's YCbCr first (a learned 1x1 convolution that starts there) and JPEG's
    4:2:0 (chroma at half resolution): 64 + 16 + 16 channels.
    --init none: CompressAI's four strided convs with GDN (16x smaller), --code-dim channels."""

    default_hidden = (64,)  # channels of the transforms' hidden layers (CompressAI's N)
    options = ("lmbda",)
    pca_floor = False  # its floor is its own (the block DCT), not a PCA of whole images

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.chw = image_chw("compress", cfg.input_shape)
        n, c = cfg.widths()[0], self.chw[0]
        self.floor = cfg.init == "pca"
        self.factor = 8 if self.floor else 16  # the analysis transform's downsampling: images are padded to it
        m = self.latent_channels = (64 if c == 1 else 96) if self.floor else cfg.code_dim

        def down(a, b):
            return nn.Conv2d(a, b, 5, stride=2, padding=2)

        def up(a, b):
            return nn.ConvTranspose2d(a, b, 5, stride=2, padding=2, output_padding=1)

        if self.floor:
            self.color = self.uncolor = None
            if c == 3:
                self.color, self.uncolor = nn.Conv2d(3, 3, 1, bias=False), nn.Conv2d(3, 3, 1, bias=False)
                with torch.no_grad():
                    ycc = torch.tensor(YCBCR)
                    self.color.weight.copy_(ycc.view(3, 3, 1, 1))
                    self.uncolor.weight.copy_(torch.linalg.inv(ycc).view(3, 3, 1, 1))
            self.dct = nn.Conv2d(c, m, 8, stride=8, bias=False)
            self.idct = nn.ConvTranspose2d(m, c, 8, stride=8, bias=False)
            with torch.no_grad():
                w = floor_basis(c)
                self.dct.weight.copy_(w)
                self.idct.weight.copy_(w)
            self.log_step = nn.Parameter(torch.full((m, 1, 1), math.log(dct_step(cfg.lmbda))))
            self.gate_a, self.gate_s = nn.Parameter(torch.zeros(m, 1, 1)), nn.Parameter(torch.zeros(c, 1, 1))
            self.g_a = nn.Sequential(down(c, n), GDN(n), down(n, n), GDN(n), down(n, m))
            self.g_s = nn.Sequential(up(m, n), GDN(n, True), up(n, n), GDN(n, True), up(n, c))
        else:
            self.g_a = nn.Sequential(down(c, n), GDN(n), down(n, n), GDN(n), down(n, n), GDN(n), down(n, m))
            self.g_s = nn.Sequential(up(m, n), GDN(n, True), up(n, n), GDN(n, True), up(n, n), GDN(n, True), up(n, c))
        self.density = FactorizedDensity(m)
        self.latent_hw = tuple(-(-s // self.factor) for s in self.chw[1:])
        self.pixels = math.prod(self.chw[1:])  # per image, whatever its channels: bits per pixel counts these

    def param_groups(self, lr: float, density_lr: float | None = None) -> list[dict]:
        """The density at 10x the rate (unless density_lr says): it learns 64+ distributions from a
        wide start, and until it has, the rate it prices is far above the transforms' real one."""
        density = list(self.density.parameters())
        rest = [p for p in self.parameters() if all(p is not d for d in density)]
        return [{"params": rest, "lr": lr}, {"params": density, "lr": 10 * lr if density_lr is None else density_lr}]

    def pad(self, x):  # (B, C, H, W) -> padded to a multiple of the factor by repeating the edge
        h, w = x.shape[-2:]
        ph, pw = -h % self.factor, -w % self.factor
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    def analysis(self, x):  # (B, H, W) or (B, C, H, W), any size -> latent y (B, M, h, w), not rounded
        x = self.pad(x.unsqueeze(1) if x.dim() == 3 else x)
        if not self.floor:
            return self.g_a(x)
        centred = x - 0.5 if self.color is None else self.color(x - 0.5)
        return self.dct(centred) / self.log_step.exp() + self.gate_a * self.g_a(x)

    def synthesis(self, y_hat, hw=None):  # latent -> images (B, C, H, W), cropped to hw
        h, w = hw or self.chw[1:]
        if not self.floor:
            return self.g_s(y_hat)[..., :h, :w]
        back = self.idct(y_hat * self.log_step.exp())
        back = back if self.uncolor is None else self.uncolor(back)
        x = back + 0.5 + self.gate_s * self.g_s(y_hat)
        return x[..., :h, :w]

    def encode(self, x):  # the rounded latent, flat: the integers the bitstream carries
        return torch.round(self.analysis(x)).flatten(1)

    def decode_logits(self, z):
        return self.synthesis(z.view(-1, self.latent_channels, *self.latent_hw)).reshape(-1, *self.cfg.input_shape)

    def forward(self, x):
        y = self.analysis(x)
        # training: additive uniform noise stands in for rounding (differentiable, same rate in expectation)
        y_hat = y + torch.empty_like(y).uniform_(-0.5, 0.5) if self.training else torch.round(y)
        x_hat = self.synthesis(y_hat, x.shape[-2:]).reshape(x.shape)
        bpp = -torch.log2(self.density.likelihood(y_hat)).sum() / (x.shape[0] * self.pixels)
        mse = F.mse_loss(x_hat, x)
        # CompressAI's scale: MSE on [0, 1] pixels times 255^2, so lmbda 0.01 sits near 0.3-0.5 bpp
        parts = {"bpp": bpp, "distortion": self.cfg.lmbda * 255 ** 2 * mse}
        return {"x_hat": x_hat, "z": y_hat.flatten(1), "loss": bpp + parts["distortion"], "loss_parts": parts}


REGISTRY: dict[str, type[Autoencoder]] = {
    "dense": Dense, "stacked": Stacked, "sparse": Sparse, "contractive": Contractive,
    "denoising": Denoising, "vae": VAE, "conv": Conv, "recurrent": Recurrent, "compress": Compress,
}

CHOICES = {"loss": LOSSES, "sparsity": ("l1", "kl"), "noise": ("gaussian", "mask"),
           "up": ("transpose", "upsample"), "down": ("stride", "pool"), "cell": ("gru", "lstm"), "init": ("pca", "none")}


def check_config(cfg: ModelConfig) -> None:
    """Raise ValueError naming the bad value; callers at the edges turn it into a user error."""
    if cfg.family not in REGISTRY:
        raise ValueError(f'unknown family "{cfg.family}"; choose one of {", ".join(REGISTRY)}')
    for field, allowed in CHOICES.items():
        if getattr(cfg, field) not in allowed:
            raise ValueError(f'unknown {field} "{getattr(cfg, field)}"; choose one of {", ".join(allowed)}')
    if cfg.code_dim < 1 or any(w < 1 for w in cfg.widths()):
        raise ValueError(f"code size and widths must be positive, got {cfg.code_dim} and {cfg.widths()}")
    if cfg.init == "pca" and cfg.family == "sparse" and cfg.sparsity == "kl":
        raise ValueError("--init pca cannot apply to sparse --sparsity kl: its code must lie in (0, 1) and a PCA "
                         "code does not; use --sparsity l1 or --init none")


    if not (cfg.lmbda > 0 and math.isfinite(cfg.lmbda)):
        raise ValueError(f"lmbda {cfg.lmbda}: must be a positive, finite number")


# The largest model aepipe builds: 2^30 parameters are 4 GiB of float32 weights (training holds
# about four times that). A config asking for more (a code or hidden width of 10^9 in a hostile
# aepipe.json) is refused before a byte of it is allocated.
MAX_PARAMETERS = 2 ** 30


def build_model(cfg: ModelConfig) -> Autoencoder:
    check_config(cfg)
    cls = REGISTRY[cfg.family]
    if cfg.init == "pca" and cls.pca_floor:  # the family with the PCA floor under it; its state dict adds pca_* and the gates
        cls = _floored(cls)
    n = parameter_bound(cls, cfg)
    if n > MAX_PARAMETERS:
        raise ValueError(f"model too large: code size {cfg.code_dim} and widths {cfg.widths()} on input "
                         f"{tuple(cfg.input_shape)} make {n:,} parameters; aepipe builds at most {MAX_PARAMETERS:,}")
    return cls(cfg)


def parameter_bound(cls: type[Autoencoder], cfg: ModelConfig) -> int:
    """At least the model's parameter count: exact, from a copy built on the meta device (shapes
    only, no memory), where it could pass MAX_PARAMETERS. A config whose sizes cannot come near
    that is not built twice: its rough bound
    (each layer at most the widest size squared, times 32 for a kernel) is returned instead, since
    the meta device's first call imports torch._dynamo (1-5 s here) for some families."""
    widest = max(cfg.code_dim, *cfg.widths())
    rough = (len(cfg.widths()) + 2) * max(math.prod(cfg.input_shape), widest) * widest * 32
    if rough <= MAX_PARAMETERS:
        return rough
    with torch.device("meta"):
        return sum(p.numel() for p in cls(cfg).parameters())


@functools.cache
def _floored(cls: type[Autoencoder]) -> type[Autoencoder]:
    return type(f"PCAFloor{cls.__name__}", (PCAFloor, cls), {})
