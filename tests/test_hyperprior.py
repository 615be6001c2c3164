"""The compress family's mean-scale hyperprior (--prior hyperprior): its bitstreams decode exactly
at any image size, cost what the model counts, and it trains; the option is checked, and run dirs
from before it load as the factorized prior. No Ray here."""

import numpy as np
import pytest
import torch

from aepipe.bitstream import FactorizedCoder, HyperpriorCoder
from aepipe.models import ModelConfig, build_model, check_config
from aepipe.run import model_config_from_json
from aepipe.training import TrainConfig, fit_local
from tests.test_compress import photo_patches


def hyper_model(shape, init="pca", seed=0):
    """A hyperprior model as after some training: each channel's base scale its latent's RMS on
    the photo, and h_s saying something (its last layer starts at zero: means 0, every scale its
    base), small random weights."""
    from aepipe.models.hyperprior import SPEED

    torch.manual_seed(seed)
    model = build_model(ModelConfig(family="compress", input_shape=shape, code_dim=8, hidden=(8,), init=init,
                                    prior="hyperprior")).eval()
    with torch.no_grad():
        rms = model.analysis(photo(shape)).pow(2).mean((0, 2, 3)).sqrt().clamp_min(0.2)
        model.hyper.log_scale.copy_(rms.log().view(-1, 1, 1) / SPEED)
        model.hyper.h_s[-1].weight.normal_(0, 0.05)
    return model


def photo(shape) -> torch.Tensor:
    """(1, H, W) grayscale or (1, 3, H, W) colour pixels in [0, 1] of a scikit-image photograph."""
    import skimage.data as skd

    if len(shape) == 2:
        return torch.from_numpy(skd.camera()[None, 100:100 + shape[0], 50:50 + shape[1]] / 255.0).float()
    return torch.from_numpy(skd.astronaut()[100:100 + shape[1], 50:50 + shape[2]].transpose(2, 0, 1)[None] / 255.0).float()


@pytest.mark.parametrize("init", ["pca", "none"])
@pytest.mark.parametrize("shape", [(40, 56), (33, 70), (3, 40, 56), (3, 33, 70)])
def test_the_hyperprior_round_trip_is_exact_at_sizes_that_are_not_multiples_of_16(shape, init):
    model = hyper_model(shape, init)
    coder = model.latent_coder()
    assert isinstance(coder, HyperpriorCoder)
    x = photo(shape)
    with torch.no_grad():
        y = model.analysis(x)
        want = model.quantize(y)[0].numpy()  # the model's rounding path: round(y - mean) + mean, float32
        x_hat = model.eval()(x)["x_hat"]
    y = y[0].numpy()
    data = coder.encode(y)
    back = coder.decode(data, y.shape)
    assert back.dtype == np.float32 and back.shape == y.shape
    assert np.array_equal(back, coder.quantize(y))  # bit for bit what the encoder meant
    # the model's float32 path gives the same integers about means that differ by float rounding only
    np.testing.assert_allclose(back, want, atol=1e-4)
    means, _ = coder.params(coder.side(y), y.shape[1:])
    assert np.array_equal(np.round(back - means), np.round(want - means))
    assert coder.encode(y) == data  # same bytes every time
    with torch.no_grad():  # the decoded image: synthesis of the decoded latent, cropped back to (H, W)
        image = model.synthesis(torch.from_numpy(back[None]), shape[-2:])
    assert image.shape[-2:] == x.shape[-2:]
    np.testing.assert_allclose(image.numpy().reshape(x_hat.shape), x_hat.numpy(), atol=1e-4)


def test_the_hyperprior_costs_what_the_model_counts_and_escapes_come_back():
    model = hyper_model((200, 120))
    coder = model.latent_coder()
    x = photo((200, 120))
    with torch.no_grad():
        y = model.analysis(x)
        _, y_bits, z_bits = model.hyper(y, noisy=False)
    counted = (y_bits + z_bits).item()
    y = y[0].numpy()
    data = coder.encode(y)
    assert z_bits.item() > 0
    # ANS spends a word or so beyond the information content per stream, plus the 4-byte length; a
    # value far in a Gaussian's tail is priced at most 30 bits (likelihoods >= 1e-9) and coded in
    # about 24 (constriction's least probability): a few % either way
    assert abs(8 * len(data) - counted) <= counted * 0.03 + 160, (counted, 8 * len(data))
    # residuals far outside the Gaussian's range take the escape path and still come back exactly
    y[0, 0, 0], y[-1, -1, -1] = 5000.0, -3000.0
    assert np.array_equal(coder.decode(coder.encode(y), y.shape), coder.quantize(y))


def test_a_hyperprior_bitstream_decodes_the_same_on_any_number_of_threads():
    """Encoder and decoder compute y's scales apart (a Ray worker on one thread, a driver on all its
    CPUs): the coder takes them on one thread, snapped to SCALE_TABLE's levels, so the decoder's
    probabilities are the encoder's wherever it runs."""
    from aepipe.bitstream import SCALE_TABLE

    model = hyper_model((200, 120))
    with torch.no_grad():
        y = model.analysis(photo((200, 120)))[0].numpy()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        coder = model.latent_coder()
        data, want = coder.encode(y), coder.quantize(y)
        torch.set_num_threads(8)
        again = model.latent_coder()
        assert np.array_equal(again.decode(data, y.shape), want)
        assert torch.get_num_threads() == 8  # the coder's one thread was given back
        _, scales = again.params(again.side(y), y.shape[1:])
        assert np.isin(scales, SCALE_TABLE).all()
    finally:
        torch.set_num_threads(threads)


def test_a_damaged_hyperprior_bitstream_is_refused():
    from aepipe.bitstream import BitstreamError

    model = hyper_model((40, 56))
    coder = model.latent_coder()
    with torch.no_grad():
        y = model.analysis(photo((40, 56)))[0].numpy()
    data = coder.encode(y)
    for bad in (data[:3], (10 ** 6).to_bytes(4, "little") + data[4:], data[:-1]):
        with pytest.raises(BitstreamError):
            coder.decode(bad, y.shape)


def test_the_hyperprior_trains_and_beats_the_factorized_prior_from_the_same_start():
    """The same short fit (aepipe train's, in this process) of both priors on photo patches: the
    hyperprior's rate-distortion loss on held-out patches is no worse, and its side bits count."""
    x = photo_patches(n=128)
    held = torch.from_numpy(x[:16])
    losses = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as training.local: on a busy machine, idle torch threads spinning cost 10x
    try:
        models = {prior: fit_local(ModelConfig(family="compress", input_shape=(32, 32), code_dim=8, hidden=(8,),
                                               lmbda=0.01, prior=prior),
                                   TrainConfig(epochs=20, batch_size=8, lr=5e-3, patience=0, seed=0), x[16:], x[:16])[0]
                  for prior in ("factorized", "hyperprior")}
    finally:
        torch.set_num_threads(threads)
    for prior, model in models.items():
        with torch.no_grad():
            out = model.eval()(held)
        losses[prior] = out["loss"].item()
        side, bpp = out["side_bpp"].item(), out["loss_parts"]["bpp"].item()
        if prior == "hyperprior":
            assert 0 < side < 0.2 * bpp  # counted in the bits per pixel, a small share of them
        else:
            assert side == 0
    assert losses["hyperprior"] <= losses["factorized"], losses


def test_the_prior_option_is_checked_and_old_run_dirs_load_as_factorized():
    with pytest.raises(ValueError, match='unknown prior "gaussian"; choose one of factorized, hyperprior, context'):
        check_config(ModelConfig(family="compress", input_shape=(32, 32), prior="gaussian"))
    # a run dir from before --prior: its aepipe.json has no "prior", its weights no hyperprior
    torch.manual_seed(0)
    old = build_model(ModelConfig(family="compress", input_shape=(32, 32), code_dim=8, hidden=(8,), prior="factorized"))
    cfg = model_config_from_json({"family": "compress", "input_shape": [32, 32], "code_dim": 8, "hidden": [8],
                                  "init": "pca", "lmbda": 0.01})
    assert cfg.prior == "factorized"
    model = build_model(cfg)
    model.load_state_dict(old.state_dict())  # strict: the same parameters, no more
    assert isinstance(model.latent_coder(), FactorizedCoder) and model.hyper is None
    hyper = build_model(ModelConfig(family="compress", input_shape=(32, 32), code_dim=8, hidden=(8,), prior="hyperprior"))
    assert any(k.startswith("hyper.") for k in hyper.state_dict()) and "density.matrices.0" not in hyper.state_dict()
