"""What a user asks of a model and of its fit: ModelConfig and TrainConfig, with their defaults,
the one place each default is written (the command line's help reads them here). Plain
dataclasses, importing nothing heavy: `aepipe train --help` shows them without waiting for torch.
"""

from __future__ import annotations

import dataclasses

LOSSES = ("mse", "l1", "bce")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str = "dense"
    input_shape: tuple[int, ...] = (64,)
    code_dim: int = 16  # the compression knob: 16 floats for 64 pixels is 4x
    hidden: tuple[int, ...] | None = None  # widths, outermost first; None: the family's default
    loss: str = "mse"
    # "pca": start as PCA with this code size plus learned corrections that start at zero (the PCA floor)
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
    prior: str = "context"  # the latent's entropy model: context (the default), factorized or hyperprior


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int | None = None  # None: enough epochs for `steps` optimiser steps (see budget)
    steps: int = 3000  # the default budget in optimiser steps: small data get more epochs
    batch_size: int = 64  # small data, small batches: more steps per epoch
    lr: float = 1e-3  # Adam's usual default; the peak of the cosine schedule
    schedule: str = "cosine"  # cosine: lr decays to LR_FLOOR * lr over the epochs; constant: lr throughout
    weight_decay: float = 0.0  # AdamW's decoupled decay (0: plain Adam)
    seed: int = 0
    workers: int = 1
    gpus_per_worker: float = 0.0
    val_fraction: float = 0.1  # rows held out by a fixed hash of their index
    patience: int | None = None  # epochs without a better val loss before stopping; 0: never; None: see budget
    normalize: str | None = None  # None: "global" for arrays/images, "feature" for tables
    ray_train: bool | None = None  # None: choose (see fit_path); True/False: force Ray Train / this process
    stream: bool | None = None  # None: choose (see data.streams); True: reread every epoch; False: materialise
