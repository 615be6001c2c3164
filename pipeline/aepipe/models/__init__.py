"""The model zoo: every autoencoder family behind one interface, in one registry.

    encode(x) -> z          x: (B, *input_shape), z: (B, code_dim)
    decode(z) -> x_hat      x_hat: (B, *input_shape)
    loss(x) -> (total, parts)
    forward(x) -> {"x_hat", "z", "loss", "loss_parts"}   (what training calls, so DDP sees it; the
                            vae adds "figures": its negative ELBO, which the fit judges it by)
    sample(n)               VAE only

    base.py        ModelConfig, the Autoencoder interface and the PCA floor, REGISTRY, build_model
    dense.py       dense, stacked, sparse, contractive, denoising (MLPs on flattened rows)
    vae.py         vae
    conv.py        conv
    recurrent.py   recurrent
    compress.py    compress: GDN, the factorized density, the block DCT floor
    hyperprior.py  compress --prior hyperprior: the mean-scale hyperprior (side information z)
    context.py     compress --prior context: the latent priced by its decoded neighbours, in five passes

Each family module registers its classes as it is imported: the imports below, in this order,
are the order `aepipe models` lists the families in. These modules know torch only: no Ray, no
files beyond a state dict.
"""

from aepipe.models.base import (CHOICES, LOSSES, MAX_PARAMETERS, REGISTRY, Autoencoder, ModelConfig, build_model,
                                check_config, image_chw, mlp, parameter_bound, register, widths)
# isort: off  (the families register as imported: this order is the listing's)
from aepipe.models.dense import Contractive, Dense, Denoising, Sparse, Stacked, jacobian_frobenius, kl_sparsity
from aepipe.models.vae import VAE
from aepipe.models.conv import Conv
from aepipe.models.recurrent import Recurrent
from aepipe.models.compress import YCBCR, GDN, Compress, FactorizedDensity, dct_basis, dct_step, floor_basis
# isort: on

__all__ = ["CHOICES", "LOSSES", "MAX_PARAMETERS", "REGISTRY", "YCBCR", "GDN", "VAE", "Autoencoder", "Compress",
           "Contractive", "Conv", "Dense", "Denoising", "FactorizedDensity", "ModelConfig", "Recurrent", "Sparse",
           "Stacked", "build_model", "check_config", "dct_basis", "dct_step", "floor_basis", "image_chw",
           "jacobian_frobenius", "kl_sparsity", "mlp", "parameter_bound", "register", "widths"]
