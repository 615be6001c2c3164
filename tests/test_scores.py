"""The anomaly scores' parts (aepipe.scores): the shrunk Gaussians and the per-dimension scale of
the combined score. `aepipe score` end to end: tests/test_decoder_jobs.py."""

import numpy as np
import pytest
import torch

from aepipe.models import ModelConfig, build_model
from aepipe.pca import fit_pca
from aepipe.scores import FULL, fit_density, row_scores, shrunk_gaussian


def test_shrunk_gaussian_is_the_inverse_covariance_given_enough_rows():
    rng = np.random.default_rng(0)
    cov = np.array([[2.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]])
    mean, precision = shrunk_gaussian(rng.multivariate_normal([1, 2, 3], cov, size=20000))
    np.testing.assert_allclose(mean, [1, 2, 3], atol=0.05)
    np.testing.assert_allclose(precision, np.linalg.inv(cov), rtol=0.05, atol=0.05)


def test_few_rows_or_wide_rows_still_give_a_finite_precision():
    rng = np.random.default_rng(1)
    _, few = shrunk_gaussian(rng.normal(size=(40, 64)) @ rng.normal(size=(64, 64)))  # fewer rows than dimensions
    assert few.shape == (64, 64) and np.isfinite(few).all()
    np.testing.assert_allclose(few, few.T, atol=1e-8)
    assert np.linalg.eigvalsh(few).min() > 0
    _, wide = shrunk_gaussian(rng.normal(size=(50, FULL + 1)))  # past FULL: a diagonal
    assert wide.shape == (FULL + 1,) and (wide > 0).all()
    _, flat = shrunk_gaussian(np.zeros((30, 4)))  # no spread at all: no infinite weight
    assert np.isfinite(flat).all()


def test_combined_score_is_about_one_on_training_rows_and_large_off_them():
    """A model at its PCA floor on rows near a 3-d plane in 12 columns: training rows score about
    1 per dimension; rows off the plane, and rows on it but far along it, score far higher."""
    rng = np.random.default_rng(2)
    basis = rng.normal(size=(3, 12))
    x = torch.from_numpy((rng.normal(size=(3000, 3)) @ basis + 0.05 * rng.normal(size=(3000, 12))).astype(np.float32))
    model = build_model(ModelConfig(family="dense", input_shape=(12,), code_dim=3, hidden=(8,))).eval()
    model.set_pca(fit_pca(iter([x]), 12, 3))
    density = fit_density(model, (x[i:i + 500] for i in range(0, 3000, 500)))
    with torch.no_grad():
        train = row_scores(model, x, density)
        off = row_scores(model, x[:100] + torch.from_numpy(rng.normal(size=(100, 12)).astype(np.float32)), density)
        far = row_scores(model, x[:100] * 6, density)
    assert train["combined"].mean().item() == pytest.approx(1.0, abs=0.1)
    assert off["combined"].median() > 20 * train["combined"].median()
    assert far["code"].median() > 20 * train["code"].median()  # along the plane: the code sees it
    assert far["recon"].median() < 100 * train["recon"].median() < off["recon"].median()


@pytest.mark.parametrize("family", ["dense", "vae", "denoising"])
def test_linear_score_is_the_pca_detector_of_the_rows_the_density_saw(family):
    """A model whose corrections are open (gates at 0.5) and whose linear part has drifted off PCA:
    its linear score is the combined score of a dense model at the PCA floor of the rows its density
    was fitted on, whatever the model's own linear part, and about 1 per dimension on those rows;
    a model without the floor has no linear score."""
    rng = np.random.default_rng(3)
    x = torch.from_numpy((rng.normal(size=(2000, 3)) @ rng.normal(size=(3, 12))
                          + 0.05 * rng.normal(size=(2000, 12))).astype(np.float32))
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, input_shape=(12,), code_dim=3, hidden=(8,))).eval()
    model.set_pca(model.linear_floor(fit_pca(iter([x[:1500]]), 12, 3)))  # the vae's PPCA, the denoiser's gains
    with torch.no_grad():
        model.code_gate.fill_(0.5)
        model.out_gate.fill_(0.5)
        model.pca_components.add_(0.2 * torch.randn_like(model.pca_components))  # trained away from PCA
    density = fit_density(model, (x[i:i + 500] for i in range(0, 2000, 500)))  # every row, the last 500 too
    pca = build_model(ModelConfig(family="dense", input_shape=(12,), code_dim=3, hidden=(8,))).eval()
    pca.set_pca(fit_pca(iter([x]), 12, 3))
    probe = x[:200] + torch.from_numpy(rng.normal(size=(200, 12)).astype(np.float32)) * torch.rand(200, 1)
    with torch.no_grad():
        opened = row_scores(model, probe, density)
        classical = row_scores(pca, probe, fit_density(pca, iter([x])))
        assert row_scores(model, x, density)["linear"].mean().item() == pytest.approx(1.0, abs=0.1)
    assert not torch.allclose(opened["combined"], opened["linear"], rtol=0.05)  # the corrections count there
    torch.testing.assert_close(opened["linear"], classical["combined"], rtol=1e-4, atol=1e-5)
    bare = build_model(ModelConfig(family="dense", input_shape=(12,), code_dim=3, hidden=(8,), init="none")).eval()
    assert "linear" not in row_scores(bare, x, fit_density(bare, iter([x])))


def test_run_dirs_stored_before_the_linear_detector_had_its_own_pca_score_with_the_models_linear_part():
    """A density without floor_mean and floor_components (as stored before them) scores linear with
    the model's linear part: here PCA of the same rows, so the same scores as the stored PCA's."""
    rng = np.random.default_rng(4)
    x = torch.from_numpy((rng.normal(size=(1000, 3)) @ rng.normal(size=(3, 12))
                          + 0.05 * rng.normal(size=(1000, 12))).astype(np.float32))
    model = build_model(ModelConfig(family="dense", input_shape=(12,), code_dim=3, hidden=(8,))).eval()
    model.set_pca(fit_pca(iter([x]), 12, 3))
    density = fit_density(model, iter([x]))
    old = {k: v for k, v in density.items() if k not in ("floor_mean", "floor_components")}
    probe = x[:100] + torch.from_numpy(rng.normal(size=(100, 12)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(row_scores(model, probe, old)["linear"], row_scores(model, probe, density)["linear"],
                                   rtol=1e-4, atol=1e-5)
        model.pca_components.add_(0.3)  # the fallback reads the model's own linear part: it now differs
        assert not torch.allclose(row_scores(model, probe, old)["linear"], row_scores(model, probe, density)["linear"],
                                  rtol=0.05)
