"""The model zoo: every family in the registry, and each penalty checked on its own."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aepipe.cli import app
from aepipe.models import REGISTRY, ModelConfig, build_model, jacobian_frobenius, kl_sparsity
from aepipe.run import load_run, save_run

SHAPES = {"conv": (8, 8), "recurrent": (8, 8)}  # digits are images and 8-step sequences too


# compress codes an image as a latent map priced in bits: tests/test_compress.py covers it
VECTOR_CODES = [f for f in REGISTRY if f != "compress"]


def small(family, **kw):
    hidden = {"conv": (4, 8), "recurrent": (8,)}.get(family, (16,))
    return ModelConfig(family=family, input_shape=SHAPES.get(family, (8, 8)), code_dim=4, hidden=hidden, **kw)


@pytest.mark.parametrize("family", VECTOR_CODES)
def test_builds_from_its_name_and_reloads_to_the_same_outputs(family, tmp_path):
    cls = REGISTRY[family]
    model = build_model(small(family)).eval()
    assert isinstance(model, cls)  # --init pca: the family itself, the PCA floor inside it
    x = torch.rand(5, 8, 8)
    z = model.encode(x)
    assert z.shape == (5, 4) and model.decode(z).shape == (5, 8, 8)
    total, parts = model.loss(x)
    assert "recon" in parts and torch.isclose(total, sum(parts.values()))
    meta = {"model": {**small(family).__dict__}, "schema": {"columns": ["x"], "shape": [8, 8], "tabular": False},
            "normalizer": {"kind": "none", "shift": [0.0], "scale": [1.0]}}
    save_run(tmp_path, meta, model.state_dict())
    again = load_run(tmp_path).model
    assert type(again) is type(model)
    torch.testing.assert_close(again.decode(again.encode(x)), model.decode(model.encode(x)))


def train_args(family, run):
    hidden = {"conv": "4,8", "recurrent": "16"}.get(family, "32")
    args = ["train", "builtin:digits-train", "--out", str(run), "--family", family, "--code-dim", "4",
            "--hidden", hidden, "--epochs", "3", "--batch-size", "32", "--lr", "0.003"]
    return args + (["--tied", "--layerwise", "--pretrain-epochs", "1"] if family == "stacked" else [])


@pytest.mark.parametrize("family", VECTOR_CODES)
def test_every_family_trains_in_process_and_encodes_through_the_cli(family, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, train_args(family, run))
    assert result.exit_code == 0, result.output
    meta = load_run(run).meta
    assert meta["metrics"]["path"] == "process"
    assert meta["family"] == family and isinstance(load_run(run).model, REGISTRY[family])
    hist = [h for h in meta["metrics"]["history"] if h["stage"] is None]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert runner.invoke(app, ["encode", "builtin:digits-test", "--model", str(run),
                               "--out", str(tmp_path / "c.parquet")]).exit_code == 0
    assert runner.invoke(app, ["decode", str(tmp_path / "c.parquet"), "--model", str(run),
                               "--out", str(tmp_path / "r.npy")]).exit_code == 0
    assert np.load(tmp_path / "r.npy").shape == (540, 8, 8)
    drawn = runner.invoke(app, ["sample", "--model", str(run), "--n", "5", "--out", str(tmp_path / "s.npy")])
    if family == "vae":
        assert drawn.exit_code == 0 and np.load(tmp_path / "s.npy").shape == (5, 8, 8)
    else:
        assert drawn.exit_code == 2 and "only vae can" in drawn.stderr


@pytest.mark.parametrize("family", ["stacked"])  # layer-wise stages, tied weights: the most state to carry
def test_a_family_trains_on_ray_train(family, ray_local, tmp_path):
    """The same fit on Ray Train's workers (--ray-train): the fit path a cluster takes."""
    run = tmp_path / "run"
    result = CliRunner().invoke(app, train_args(family, run) + ["--ray-train"])
    assert result.exit_code == 0, result.output
    meta = load_run(run).meta
    assert meta["metrics"]["path"] == "ray train" and isinstance(load_run(run).model, REGISTRY[family])
    assert any((run / "checkpoints").rglob("state.pt"))  # Ray Train's own checkpoints
    hist = [h for h in meta["metrics"]["history"] if h["stage"] is None]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


# the families' own mechanics, without the PCA floor (tests/test_floor.py covers it)
def test_contractive_penalty_matches_finite_differences():
    torch.manual_seed(0)
    model = build_model(ModelConfig(init="none", family="contractive", input_shape=(3,), code_dim=2, hidden=(5, 4))).double()
    x = torch.rand(4, 3, dtype=torch.float64)
    eps, fd = 1e-6, torch.zeros(4, 2, 3, dtype=torch.float64)
    for j in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[j] = eps
        fd[:, :, j] = (model.encode(x + step) - model.encode(x - step)) / (2 * eps)
    expected = fd.pow(2).sum((1, 2)).mean()
    torch.testing.assert_close(jacobian_frobenius(model.encode, x), expected, rtol=1e-6, atol=1e-9)
    parts = model.loss(x)[1]  # and it is in the loss, weighted, with a gradient
    torch.testing.assert_close(parts["contractive"], 1e-3 * expected, rtol=1e-6, atol=1e-12)
    parts["contractive"].backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0


def test_tied_weights_are_shared():
    tied = build_model(ModelConfig(init="none", family="stacked", input_shape=(20,), code_dim=3, hidden=(10,), tied=True))
    untied = build_model(ModelConfig(init="none", family="stacked", input_shape=(20,), code_dim=3, hidden=(10,)))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    weights = 20 * 10 + 10 * 3
    assert n(untied) - n(tied) == weights and not hasattr(tied, "dec")
    x = torch.rand(6, 20)
    before = tied.decode(torch.ones(1, 3)).clone()
    with torch.no_grad():
        tied.enc[1].weight.mul_(2)  # the decoder's last layer is this weight, transposed
    assert not torch.allclose(before, tied.decode(torch.ones(1, 3)))
    tied.zero_grad()
    torch.nn.functional.mse_loss(tied.decode(torch.randn(6, 3)), x).backward()  # decoder path only
    assert tied.enc[0].weight.grad.abs().sum() > 0


def test_sparse_penalties_at_known_values():
    z = torch.tensor([[0.5, -1.0, 0.0], [1.5, 0.0, 2.0]])
    l1 = build_model(ModelConfig(init="none", family="sparse", input_shape=(4,), code_dim=3, sparsity_weight=0.1))
    torch.testing.assert_close(l1.penalty(None, z)["sparsity"], torch.tensor(0.1 * (1.5 + 3.5) / 2))
    half = torch.full((10, 4), 0.5)
    expected = 4 * (0.05 * np.log(0.05 / 0.5) + 0.95 * np.log(0.95 / 0.5))
    assert kl_sparsity(half, 0.05).item() == pytest.approx(expected, rel=1e-6)
    assert kl_sparsity(torch.full((10, 4), 0.05), 0.05).item() == pytest.approx(0, abs=1e-6)
    kl = build_model(ModelConfig(init="none", family="sparse", input_shape=(4,), code_dim=3, sparsity="kl"))
    assert (kl.encode(torch.randn(7, 4)) > 0).all()  # sigmoid codes for KL


def test_denoising_corrupts_in_training_only():
    model = build_model(ModelConfig(init="none", family="denoising", input_shape=(8,), code_dim=3, noise="mask", mask_prob=1.0))
    x = torch.rand(5, 8)
    model.train()
    z_train = model(x)["z"]  # every input masked: the code of an all-zero row
    torch.testing.assert_close(z_train, model.encode(torch.zeros(5, 8)))
    model.eval()
    torch.testing.assert_close(model(x)["z"], model.encode(x))
    gauss = build_model(ModelConfig(init="none", family="denoising", input_shape=(8,), code_dim=3)).train()
    assert not torch.allclose(gauss(x)["x_hat"], gauss(x)["x_hat"])  # fresh noise every step
    gauss.eval()
    torch.testing.assert_close(gauss(x)["x_hat"], gauss(x)["x_hat"])  # no noise once trained


def test_vae_codes_are_means_and_it_samples():
    vae = build_model(ModelConfig(init="none", family="vae", input_shape=(8, 8), code_dim=4)).train()
    x = torch.rand(3, 8, 8)
    mu = vae.mu(vae.trunk(x.flatten(1)))
    torch.testing.assert_close(vae.encode(x), mu)  # the code is the mean, even in training mode
    assert not torch.allclose(vae(x)["z"], mu)  # while training samples around it
    assert "kl" in vae.loss(x)[1] and vae.loss(x)[1]["kl"] >= 0
    assert vae.sample(6).shape == (6, 8, 8)


@pytest.mark.parametrize("shape, up, down", [((3, 11, 13), "transpose", "stride"), ((1, 28, 28), "upsample", "pool"),
                                             ((7, 5), "transpose", "pool")])
def test_conv_any_size_and_channels(shape, up, down):
    m = build_model(ModelConfig(init="none", family="conv", input_shape=shape, code_dim=5, hidden=(4, 8, 8), up=up, down=down))
    x = torch.rand(2, *shape)
    assert m.decode(m.encode(x)).shape == x.shape


@pytest.mark.parametrize("shape, cell", [((12,), "gru"), ((9, 3), "lstm")])
def test_recurrent_sequences(shape, cell):
    m = build_model(ModelConfig(init="none", family="recurrent", input_shape=shape, code_dim=4, hidden=(8, 8), cell=cell))
    x = torch.rand(2, *shape)
    assert m.encode(x).shape == (2, 4) and m.decode(m.encode(x)).shape == x.shape


def test_bad_options_name_the_value():
    with pytest.raises(ValueError, match='unknown noise "salt"'):
        build_model(ModelConfig(init="none", family="denoising", noise="salt"))
    with pytest.raises(ValueError, match="conv needs images"):
        build_model(ModelConfig(init="none", family="conv", input_shape=(64,)))
