"""The compress family's spatial context prior (--prior context): its bitstreams decode exactly at
any image size, cost what the model counts, decode the same on any number of threads, refuse damage,
and it trains to fewer bits than the factorized prior from the same start. No Ray here."""

import numpy as np
import pytest
import torch

from aepipe.bitstream import BitstreamError, ContextCoder
from aepipe.models import ModelConfig, build_model
from aepipe.models.context import pass_masks
from aepipe.training import TrainConfig, fit_local
from tests.test_compress import photo_patches
from tests.test_hyperprior import photo


def context_model(shape, init="pca"):
    """A context model as after some training: means and the energy term saying something."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="compress", input_shape=shape, code_dim=8, hidden=(8,), init=init,
                                    prior="context")).eval()
    with torch.no_grad():
        model.context.mean_weight.normal_(0, 0.5)
        model.context.w_energy.normal_(0, 0.3)
    return model


def test_the_passes_cover_every_position_once_and_read_only_decoded_neighbours():
    from aepipe.bitstream import LAPLACE_SCALES
    from aepipe.models.context import DISTANCE, SCALE_BOUND, neighbour_mean

    assert LAPLACE_SCALES[0] == pytest.approx(SCALE_BOUND)
    for h, w in [(1, 1), (1, 5), (4, 4), (5, 7), (9, 12)]:
        masks = pass_masks(h, w)
        assert (masks.sum(0) == 1).all()
    masks = pass_masks(9, 12)
    for k in range(1, len(masks)):  # every value of a later pass has some decoded neighbour on its ring
        count = neighbour_mean(torch.ones(1, 1, 9, 12), masks[:k].any(0), DISTANCE[k])
        assert (count[0, 0][masks[k]] == 1).all()


def test_the_coder_prices_each_pass_as_the_model_does():
    """ContextCoder computes the neighbours' sums at one pass's positions only (params_at), training
    everywhere at once (params): the same means and scales."""
    model = context_model((200, 120))
    with torch.no_grad():
        q = torch.round(model.analysis(photo((200, 120)))[0]).double()
        context = model.context.double()
        masks = pass_masks(*q.shape[1:])
        for k in range(1, len(masks)):
            means, scales = context.params(q[None], masks[:k].any(0), k)
            at_means, at_scales = context.params_at(q, masks[:k].any(0), masks[k], k)
            torch.testing.assert_close(at_means, means[0][:, masks[k]], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(at_scales, scales[0][:, masks[k]], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("init", ["pca", "none"])
@pytest.mark.parametrize("shape", [(40, 56), (33, 70), (8, 8), (3, 40, 56), (3, 33, 70)])
def test_the_context_round_trip_is_exact_at_any_size(shape, init):
    model = context_model(shape, init)
    coder = model.latent_coder()
    assert isinstance(coder, ContextCoder)
    x = photo(shape)
    with torch.no_grad():
        y = model.analysis(x)
        x_hat = model(x)["x_hat"]
    y = y[0].numpy()
    data = coder.encode(y)
    back = coder.decode(data, y.shape)
    assert back.dtype == np.float32 and back.shape == y.shape
    assert np.array_equal(back, np.round(y)) and np.array_equal(back, model.quantize(torch.from_numpy(y)).numpy())
    assert coder.encode(y) == data  # same bytes every time
    with torch.no_grad():
        image = model.synthesis(torch.from_numpy(back[None]), shape[-2:])
    np.testing.assert_allclose(image.numpy().reshape(x_hat.shape), x_hat.numpy(), atol=1e-5)


def test_the_context_costs_what_the_model_counts_and_escapes_come_back():
    model = context_model((200, 120))
    coder = model.latent_coder()
    x = photo((200, 120))
    with torch.no_grad():
        y = model.analysis(x)
        counted = model(x)["loss_parts"]["bpp"].item() * model.pixels
    y = y[0].numpy()
    data = coder.encode(y)
    # the scales are rounded up to SCALE_TABLE's levels (13 % apart) and ANS spends a word or so a
    # stream beyond the information content: a few % either way
    assert abs(8 * len(data) - counted) <= counted * 0.05 + 160, (counted, 8 * len(data))
    y[0, 0, 0], y[5, 1, 1], y[-1, -1, -2] = 5000.0, -3000.0, 2500.0  # one in each pass, far in the tails
    assert np.array_equal(coder.decode(coder.encode(y), y.shape), np.round(y))


def test_a_context_bitstream_decodes_the_same_on_any_number_of_threads():
    """The neighbours' sums are sums of integers, exact in any order: a decoder on other threads
    (a Ray worker on one, a driver on all its CPUs) sees the encoder's probabilities."""
    model = context_model((200, 120))
    with torch.no_grad():
        y = model.analysis(photo((200, 120)))[0].numpy()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        data = model.latent_coder().encode(y)
        torch.set_num_threads(8)
        assert np.array_equal(model.latent_coder().decode(data, y.shape), np.round(y))
    finally:
        torch.set_num_threads(threads)


def test_a_damaged_context_bitstream_is_refused():
    model = context_model((40, 56))
    coder = model.latent_coder()
    with torch.no_grad():
        y = model.analysis(photo((40, 56)))[0].numpy()
    data = coder.encode(y)
    for bad in (data[:3], (10 ** 6).to_bytes(4, "little") + data[4:], data[:-1]):
        with pytest.raises(BitstreamError):
            coder.decode(bad, y.shape)
    with pytest.raises(BitstreamError, match="channels"):
        coder.decode(data, (y.shape[0] + 1, *y.shape[1:]))


def test_the_context_trains_to_fewer_bits_than_the_factorized_prior_from_the_same_start():
    """The same short fit (aepipe train's, in this process) of both priors on photo patches: on
    held-out patches the context prior's rate-distortion loss is lower."""
    x = photo_patches(n=128)
    held = torch.from_numpy(x[:16])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as training.local: on a busy machine, idle torch threads spinning cost 10x
    try:
        losses = {}
        for prior in ("factorized", "context"):
            model = fit_local(ModelConfig(family="compress", input_shape=(32, 32), code_dim=8, hidden=(8,),
                                          lmbda=0.01, prior=prior),
                              TrainConfig(epochs=20, batch_size=8, lr=5e-3, patience=0, seed=0), x[16:], x[:16])[0]
            with torch.no_grad():
                losses[prior] = model.eval()(held)["loss"].item()
    finally:
        torch.set_num_threads(threads)
    assert losses["context"] < losses["factorized"], losses
