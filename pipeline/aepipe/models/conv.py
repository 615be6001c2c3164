"""The convolutional family, for images."""

from __future__ import annotations

import math

import torch
from torch import nn

from aepipe.models.base import Autoencoder, ModelConfig, image_chw, register, widths


@register("conv")
class Conv(Autoencoder):
    """Convolutional, for images shaped (C, H, W) or (H, W): halves the size per level."""

    default_hidden = (16, 32)  # channels per level
    options = ("up", "down")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.chw = image_chw("conv", cfg.input_shape)
        chans = [self.chw[0], *widths(cfg)]
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

    def own_code(self, x):  # (B, *shape) -> (B, code_dim)
        h = self.down(x.reshape(-1, *self.chw))  # already through a ReLU
        return self.to_code(h.flatten(1))

    def own_logits(self, z):
        h = torch.relu(self.from_code(z)).view(-1, *self.bottom)
        return self.up(h).view(-1, *self.cfg.input_shape)
