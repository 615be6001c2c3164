"""The linear floor: every run reports PCA with its code size on its validation rows, --init pca
starts as exactly that PCA (the denoising family: the best linear denoiser in PCA's components,
judged on noisy rows; the vae: probabilistic PCA, judged by likelihood), a model that stays at its
floor ends as the floor of every training row,
and every family ends no worse than its floor on held-out rows of digits, a table and a folder of
real photographs' patches. Few epochs: the floor needs none."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA

from conftest import run_aepipe
from aepipe.models import REGISTRY
from aepipe.normalize import in_validation
from aepipe.run import load_run
from aepipe.sources import open_for_run, read_block

CODE = 4
SMALL = {"conv": "8,16", "recurrent": "16"}  # small nets: these tests are about the floor, not capacity


def _train(data, out, family, *extra, epochs=3):
    proc = run_aepipe("train", data, "--family", family, "--code-dim", CODE, "--hidden", SMALL.get(family, "32"),
                      "--epochs", epochs, "--out", out, *extra)
    return proc, json.loads((out / "aepipe.json").read_text())


def _rows(spec, run):
    """DATA's rows as the run reads them, normalised: the model's own input space."""
    src = open_for_run(str(spec), run.meta)
    return run.normalizer.apply(read_block(src, 0, src.n_rows)["x"])


def _ppca(x_train, k) -> PCA:
    """scikit-learn's PCA of the rows, which is PPCA (score_samples: its log-likelihood), with its
    variances over n rows as aepipe's, not n - 1."""
    flat = x_train.reshape(len(x_train), -1)
    p = PCA(k, random_state=0).fit(flat)
    p.explained_variance_ *= (len(flat) - 1) / len(flat)
    p.noise_variance_ *= (len(flat) - 1) / len(flat)
    return p


def _ppca_nll(x_train, x_test, k) -> float:
    """PPCA's mean negative log-likelihood per value of the test rows."""
    flat = x_test.reshape(len(x_test), -1)
    return float(-_ppca(x_train, k).score_samples(flat).mean() / flat.shape[1])


def _neg_elbo(model, x, draws=8) -> float:
    """The vae's mean negative ELBO per value of rows x, over a few draws of z (fixed seed)."""
    from aepipe.training.loop import same_noise

    with torch.no_grad(), same_noise():
        return float(np.mean([model.row_figures(torch.from_numpy(x)).mean() for _ in range(draws)]))


def _pca_mse(x_train, x_test, k, noise_std=0.0, seed=0) -> float:
    """PCA's test MSE; with noise_std, the linear denoiser's: Gaussian noise on the test rows, each
    component's code weighed by variance / (variance + noise_std^2) (Wiener), against the clean rows."""
    p = PCA(k, random_state=0).fit(x_train.reshape(len(x_train), -1))
    flat = x_test.reshape(len(x_test), -1)
    noisy = flat + noise_std * np.random.default_rng(seed).normal(size=flat.shape)
    var = p.explained_variance_ * (len(x_train) - 1) / len(x_train)  # aepipe's: over n rows, not n - 1
    return float(((p.inverse_transform(p.transform(noisy) * var / (var + noise_std ** 2)) - flat) ** 2).mean())


def test_epoch_zero_is_pca_and_every_run_reports_it(tmp_path):
    """--init pca scores the untrained model, which must be PCA of the training split to float
    tolerance (checked against scikit-learn's PCA on the same rows); pca.npz holds the basis."""
    proc, meta = _train("builtin:digits-train", tmp_path / "run", "dense", epochs=1)
    run = load_run(tmp_path / "run")
    x = _rows("builtin:digits-train", run)
    val = in_validation(np.arange(len(x)), 0.1)
    expected = _pca_mse(x[~val], x[val], CODE)
    pca = meta["metrics"]["pca"]
    assert pca["code_dim"] == CODE
    assert pca["init_val_loss"] == pytest.approx(expected, rel=1e-4)
    assert pca["val_loss"] == pytest.approx(expected, rel=1e-4)
    assert meta["metrics"]["val_recon"] <= pca["val_loss"]
    assert f"val mse {meta['metrics']['val_recon']:.4g}, PCA {CODE}: {pca['val_loss']:.4g}" in proc.stdout
    basis = np.load(tmp_path / "run" / "pca.npz")["components"]
    np.testing.assert_allclose(basis @ basis.T, np.eye(CODE), atol=1e-5)


def test_init_none_warns_when_it_ends_worse_than_pca(tmp_path):
    """One epoch from random weights cannot reach PCA on digits: the run says so in one line."""
    proc, meta = _train("builtin:digits-train", tmp_path / "run", "dense", "--init", "none", epochs=1)
    assert meta["metrics"]["val_recon"] > meta["metrics"]["pca"]["val_loss"]
    warn = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warn) == 1 and warn[0].startswith(f"aepipe: warning: the model ends worse than PCA {CODE}"), proc.stderr


def test_init_pca_refused_where_it_cannot_apply(tmp_path):
    proc = run_aepipe("train", "builtin:digits-train", "--family", "sparse", "--sparsity", "kl",
                      "--out", tmp_path / "run", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "aepipe: error: --init pca cannot apply to sparse --sparsity kl: its code must lie in (0, 1) and a PCA "
        "code does not; use --sparsity l1 or --init none"]
    assert not (tmp_path / "run").exists()


def _table(path, n, seed):
    """Rows on a curved 2-d surface in 10 columns (a nonlinear model has something to learn)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(-1, 1, size=(n, 2))
    mix = np.random.default_rng(99).normal(size=(6, 10))  # the same surface for every file
    x = np.concatenate([t, np.sin(3 * t), t[:, :1] * t[:, 1:], t ** 2 - t[:, ::-1]], 1)[:, :6] @ mix
    pq.write_table(pa.table({f"f{j}": x[:, j] for j in range(10)}), path)
    return path


def _photos(root, names=("camera", "moon", "coins"), size=16):
    """Non-overlapping size x size grayscale patches of scikit-image's photographs, as PNG files:
    every fifth patch into the held-out folder, the rest into the training one."""
    import skimage.data as skd
    from skimage.color import rgb2gray

    train, test = root / "photos-train", root / "photos-test"
    train.mkdir(), test.mkdir()
    n = 0
    for name in names:
        img = getattr(skd, name)()
        img = (rgb2gray(img) * 255 if img.ndim == 3 else img).astype(np.uint8)[::2, ::2]  # coarser: more detail per patch
        for i in range(0, img.shape[0] - size + 1, size):
            for j in range(0, img.shape[1] - size + 1, size):
                Image.fromarray(img[i:i + size, j:j + size]).save((test if n % 5 == 0 else train) / f"{name}-{i:03d}-{j:03d}.png")
                n += 1
    return train, test


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """(train, held-out) pairs: digits' split, two draws of one table, photographs' patches (500 and 125)."""
    d = tmp_path_factory.mktemp("floor")
    return {
        "digits": ("builtin:digits-train", "builtin:digits-test"),
        "table": (_table(d / "train.parquet", 400, 0), _table(d / "test.parquet", 200, 1)),
        "photos": _photos(d),
    }


@pytest.mark.parametrize("family", [f for f in REGISTRY if REGISTRY[f].pca_floor])  # not compress: no PCA start
def test_every_family_is_no_worse_than_pca_on_held_out_rows(family, datasets, tmp_path):
    """... or than its own floor: the denoiser's on noisy rows, the vae's (PPCA) by likelihood."""
    for name, (train, test) in datasets.items():
        if family in ("conv",) and name == "table":
            continue  # conv needs images
        _, meta = _train(train, tmp_path / name, family)
        run = load_run(tmp_path / name)
        x, test_x = _rows(train, run), _rows(test, run)
        if family == "vae":  # its floor is PPCA, whose reconstruction shrinks PCA's: judged by its ELBO
            mine, floor = _neg_elbo(run.model, test_x), _ppca_nll(x, test_x, CODE)
            assert meta["n_rows"] > 100 and mine <= floor + 0.01 * abs(floor), (name, mine, floor)
            continue
        # a denoiser is judged by denoising: Gaussian noise of its --noise-std on the held-out rows
        sigma = run.model.cfg.noise_std if family == "denoising" else 0.0
        noisy = test_x + sigma * np.random.default_rng(0).normal(size=test_x.shape).astype(np.float32)
        with torch.no_grad():
            t = torch.from_numpy(noisy)
            mine = float((run.model.decode(run.model.encode(t)) - torch.from_numpy(test_x)).pow(2).mean())
        floor = _pca_mse(x, test_x, CODE, sigma)  # the floor fitted on the same training rows as the model
        # the floor is exact on the validation rows (see the first test); on other held-out rows the
        # pick made on ~50 validation patches can miss by noise: vae on the photos ended 0.5% above PCA
        assert meta["n_rows"] > 100 and mine <= floor * 1.01, (name, mine, floor)


@pytest.mark.parametrize("features", [64, 4100])
def test_streamed_pca_matches_scikit_learn(features):
    """Narrow rows: the covariance summed batch by batch; wide ones (past NARROW): a randomized SVD
    of a uniform sample. Both give scikit-learn's subspace and variances on data of rank 6."""
    from aepipe.pca import NARROW, fit_pca

    assert (features > NARROW) == (features == 4100)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(600, 6)) * [5, 4, 3, 2, 1.5, 1]) @ rng.normal(size=(6, features)) / np.sqrt(features)
    x = (x + 0.01 * rng.normal(size=x.shape) + 3).astype(np.float32)
    got = fit_pca((torch.from_numpy(x[i:i + 64]) for i in range(0, len(x), 64)), features, 4)
    ref = PCA(4).fit(x)
    np.testing.assert_allclose(got["mean"].numpy(), ref.mean_, atol=1e-4)
    overlap = np.linalg.svd(got["components"].numpy() @ ref.components_.T, compute_uv=False)
    assert overlap.min() > 0.999  # the same subspace: every principal angle near 0
    np.testing.assert_allclose(got["variance"].numpy(), ref.explained_variance_, rtol=0.01)


def test_a_denoiser_starts_as_the_linear_denoiser_and_is_judged_by_denoising():
    """The denoising family's floor weighs PCA's components by variance / (variance + sigma^2);
    validation scores it on noisy rows, the same noise every epoch: epoch 0 (the model at its
    floor) equals the floor's own figure, which beats PCA's on those noisy rows."""
    from aepipe.analysis.metrics import digits_split
    from aepipe.models import ModelConfig, build_model
    from aepipe.pca import fit_pca, val_loss
    from aepipe.training import TrainConfig, fit_local
    from aepipe.training.loop import same_noise

    x = digits_split()[0].astype(np.float32)
    val = in_validation(np.arange(len(x)), 0.1)
    cfg = ModelConfig(family="denoising", input_shape=(64,), code_dim=CODE, hidden=(32,), noise_std=0.25)
    model, st = fit_local(cfg, TrainConfig(epochs=2, seed=0), x[~val], x[val])
    var = st.pca["variance"]
    torch.testing.assert_close(st.pca["gain"], var / (var + 0.25 ** 2))
    assert st.init_val == pytest.approx(st.pca_val, rel=1e-5)
    # on noisy validation rows the linear denoiser beats PCA (and both lose to PCA on clean rows)
    pca = fit_pca(iter([torch.from_numpy(x[~val])]), 64, CODE)
    batches = [torch.from_numpy(x[val])]
    with same_noise():
        denoiser = val_loss({**pca, "gain": model.floor_gain(pca["variance"])}, iter(batches), "mse", corrupt=model.corrupt)
    with same_noise():
        as_pca = val_loss(pca, iter(batches), "mse", corrupt=model.corrupt)
    clean = val_loss(pca, iter(batches), "mse")
    assert clean < denoiser < as_pca, (clean, denoiser, as_pca)
    # a run dir from before the gain (no pca_gain in its weights) loads with PCA's: gains of one
    old = {k: v for k, v in model.state_dict().items() if k != "pca_gain"}
    again = build_model(cfg)
    again.load_state_dict(old)
    assert torch.equal(again.pca_gain, torch.ones(CODE))


def test_a_vae_starts_as_ppca_and_ends_no_worse_on_held_out_rows():
    """The vae's floor is probabilistic PCA: before training its code is PPCA's posterior mean and
    its negative ELBO on each row is PPCA's negative log-likelihood (scikit-learn's, on the same
    rows), the figure the fit reports for its floor; a code reconstructs as PCA; after a short fit its negative ELBO on held-out
    rows is below PPCA's; and a run dir from before the PPCA floor loads and codes as before."""
    from aepipe.analysis.metrics import digits_split
    from aepipe.models import ModelConfig, build_model
    from aepipe.pca import project, reconstruct
    from aepipe.training import TrainConfig, fit_local
    from aepipe.training.loop import fit_floor

    x, _, ids, x_test, _, _ = digits_split()
    x, x_test = x.astype(np.float32), x_test.astype(np.float32)
    val = in_validation(ids, 0.1)
    train, rows = x[~val], torch.from_numpy(x[val])
    cfg = ModelConfig(family="vae", input_shape=(64,), code_dim=CODE, hidden=(32,))
    model = build_model(cfg).eval()
    model.set_pca(fit_floor(model, iter([torch.from_numpy(train)]), cfg))
    ppca = _ppca(train, CODE)
    var, noise = ppca.explained_variance_, ppca.noise_variance_
    # PPCA's posterior mean M^-1 W^T (x - mean), W = U (var - noise)^1/2, M = W^T W + noise I = diag(var)
    expected = (x[val] - ppca.mean_) @ ppca.components_.T * np.sqrt(var - noise) / var
    with torch.no_grad():
        code, nll = model.encode(rows).numpy(), model.row_figures(rows).double().numpy() * 64
    code *= np.sign((code * expected).sum(0))  # the components' signs follow each library's convention
    np.testing.assert_allclose(code, expected, atol=1e-4)
    np.testing.assert_allclose(nll, -ppca.score_samples(x[val]), rtol=1e-4, atol=1e-3)
    # a code's reconstruction is PCA's (the shrinkage undone), the generative mean W z + mean PPCA's
    u = ppca.components_.T
    with torch.no_grad():
        recon, mean = (f(model.encode(rows)).numpy() for f in (model.decode, model.generate))
    np.testing.assert_allclose(recon, (x[val] - ppca.mean_) @ u @ u.T + ppca.mean_, atol=1e-3)
    np.testing.assert_allclose(mean, ((x[val] - ppca.mean_) @ u * (var - noise) / var) @ u.T + ppca.mean_, atol=1e-3)

    model, st = fit_local(cfg, TrainConfig(epochs=20, seed=0), train, x[val])
    assert st.pca["logvar"].shape == (CODE,) and st.init_val == pytest.approx(st.pca_val, rel=1e-5)
    assert st.pca_val == pytest.approx(_ppca_nll(train, x[val], CODE), rel=1e-4)
    assert st.best_epoch >= 0 and st.best_recon < st.init_val  # digits' 115 validation rows keep a learned gain
    assert _neg_elbo(model, x_test) < _ppca_nll(train, x_test, CODE)

    # before the PPCA floor a vae's code was PCA's divided by its std, its output PCA's (no gain)
    old = {k: v for k, v in model.state_dict().items() if k not in ("pca_gain", "pca_logvar", "logvar_gate", "log_noise")}
    old["pca_scale"] = torch.from_numpy(np.sqrt(var)).float()
    again = build_model(cfg).eval()
    again.load_state_dict(old)
    t = torch.from_numpy(x_test)
    with torch.no_grad():
        z = project(t, old["pca_mean"], old["pca_components"], old["pca_scale"]) + old["code_gate"] * again.own_code(t)
        out = reconstruct(z, old["pca_mean"], old["pca_components"], old["pca_scale"], "mse") + old["out_gate"] * again.own_logits(z)
        torch.testing.assert_close(again.encode(t), z)
        torch.testing.assert_close(again.decode(again.encode(t)), out)


def test_a_vae_run_reports_its_elbo_beside_ppca(tmp_path):
    """aepipe train's summary and aepipe info name the vae's floor and figure: its negative ELBO per
    value beside PPCA's negative log-likelihood, the model's own at epoch 0."""
    proc, meta = _train("builtin:digits-train", tmp_path / "run", "vae", epochs=1)
    pca, mine = meta["metrics"]["pca"], meta["metrics"]["val_recon"]
    assert pca["floor"] == "PPCA" and pca["figure"] == "-ELBO"
    assert pca["init_val_loss"] == pytest.approx(pca["val_loss"], rel=1e-5) and mine <= pca["val_loss"]
    assert f"val -ELBO {mine:.4g}, PPCA {CODE}: {pca['val_loss']:.4g}" in proc.stdout
    assert f"PPCA {CODE}: {pca['val_loss']:.4g}" in run_aepipe("info", tmp_path / "run").stdout


def test_a_model_that_keeps_its_floor_ends_as_pca_of_every_training_row():
    """Where no epoch beats the floor on the validation rows (here: a learning rate of ~0), the
    model is the floor refitted on all the rows, validation rows included; its reported figure
    stays the held-out one."""
    from aepipe.analysis.metrics import digits_split
    from aepipe.models import ModelConfig
    from aepipe.training import TrainConfig, fit_local

    x = digits_split()[0].astype(np.float32)
    val = in_validation(np.arange(len(x)), 0.1)
    model, st = fit_local(ModelConfig(input_shape=(64,), code_dim=CODE, hidden=(16,)),
                          TrainConfig(epochs=2, lr=1e-12, seed=0), x[~val], x[val])
    assert st.best_epoch == -1 and st.floor_refitted
    with torch.no_grad():
        mse = float((model.decode(model.encode(torch.from_numpy(x))) - torch.from_numpy(x)).pow(2).mean())
    assert mse == pytest.approx(_pca_mse(x, x, CODE), rel=1e-4)  # PCA of all of x, on x
    assert st.pca_val == pytest.approx(_pca_mse(x[~val], x[val], CODE), rel=1e-4)


def test_a_correction_within_the_validation_noise_is_dropped():
    """Rows on a plane of the code's size (nothing past PCA to learn but the noise): whatever the
    correction gains on 6 validation rows is within their noise, so the fit keeps the floor
    (refitted on every row); digits' 115 validation rows keep a trained model's gain."""
    from aepipe.analysis.metrics import digits_split
    from aepipe.models import ModelConfig
    from aepipe.training import TrainConfig, fit_local
    from aepipe.training.loop import clearly_positive

    def positive(gains):
        g = np.asarray(gains, dtype=float)
        return clearly_positive(len(g), g.sum(), (g ** 2).sum())

    assert not positive([0.5, 0, 0, 0, 0, 0])  # one lucky row of six: a mean of one standard error
    assert not positive([0.1, -0.1, 0.12, -0.08, 0.1, -0.1])
    assert positive([1, 1.1, 0.9, 1, 1.05, 0.95]) and positive([0.2, 0.1, 0.3, 0.0, 0.2, 0.1])
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(60, CODE)) @ rng.normal(size=(CODE, 24)) + 0.01 * rng.normal(size=(60, 24))).astype(np.float32)
    val = in_validation(np.arange(len(x)), 0.1)
    _, st = fit_local(ModelConfig(input_shape=(24,), code_dim=CODE), TrainConfig(epochs=60, seed=0), x[~val], x[val])
    assert st.best_epoch == -1 and st.floor_refitted and st.best_recon == st.init_val
    x = digits_split()[0].astype(np.float32)
    val = in_validation(np.arange(len(x)), 0.1)
    _, st = fit_local(ModelConfig(input_shape=(64,), code_dim=CODE, hidden=(32,)), TrainConfig(epochs=20, seed=0),
                      x[~val], x[val])
    assert st.best_epoch >= 0 and not st.floor_refitted and st.best_recon < st.init_val


def _curve(n, seed=0):
    """n rows of 8 columns near a parabola (t, t^2) in a random plane: PCA of one component keeps
    only its straight part, a code of one learned number the whole curve."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(-1, 1, n)
    plane = np.random.default_rng(0).normal(size=(2, 8))
    return (np.stack([t, t ** 2 - 1 / 3], 1) @ plane + 0.1 * rng.normal(size=(n, 8))).astype(np.float32)


def test_a_small_sets_correction_is_cross_checked_over_every_row():
    """On 40 rows the split leaves 5 validation rows, too few to confirm the correction, so the fit
    drops it; the k-fold check over all 40 rows finds its gain clear, fits it again on every row
    (the floor too), and on new rows of the same curve it beats PCA fitted on all 40. Rows on a
    plane (nothing to learn past PCA) stay at their floor under the k-fold check too."""
    from aepipe.models import ModelConfig
    from aepipe.training import TrainConfig, fit_local

    x, new = _curve(40), _curve(500, seed=1)
    val = in_validation(np.arange(len(x)), 0.1)
    cfg = ModelConfig(input_shape=(8,), code_dim=1, hidden=(32,))
    model, st = fit_local(cfg, TrainConfig(epochs=200, lr=1e-2, seed=0), x[~val], x[val])
    assert st.rejected_epoch is not None and st.cross_check["rows"] == 40 and st.cross_check["kept"]
    assert st.best_epoch == st.cross_check["epochs"] - 1 and not st.floor_refitted
    assert st.best_recon < st.pca_val  # both over the folds' held-out rows
    np.testing.assert_allclose(st.pca["mean"].numpy(), x.mean(0), atol=1e-5)  # the floor of all 40 rows
    with torch.no_grad():
        mse = float((model.decode(model.encode(torch.from_numpy(new))) - torch.from_numpy(new)).pow(2).mean())
    assert mse < 0.5 * _pca_mse(x, new, 1)  # (measured: 0.13x)

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(40, 2)) @ rng.normal(size=(2, 8)) + 0.01 * rng.normal(size=(40, 8))).astype(np.float32)
    model, st = fit_local(ModelConfig(input_shape=(8,), code_dim=2, hidden=(32,)), TrainConfig(epochs=200, lr=1e-2, seed=0),
                          x[~val], x[val])
    assert st.best_epoch == -1 and st.floor_refitted
    assert st.rejected_epoch is None or not st.cross_check["kept"]


@pytest.mark.parametrize("family", ["dense", "denoising"])
def test_the_folds_train_on_threads_only_where_that_changes_nothing(family, monkeypatch):
    """The k-fold check trains its folds on parallel threads where training draws no random numbers
    (dense): the same curve to the last bit as one fold after another. A denoiser's noise comes from
    torch's one generator, so its folds train one after another whatever the CPUs."""
    import aepipe.training.local as local
    from aepipe.models import ModelConfig
    from aepipe.training import TrainConfig

    x = _curve(40)
    fold = np.random.default_rng(0).permutation(len(x)) % local.FOLDS
    cfg, tcfg = ModelConfig(family=family, input_shape=(8,), code_dim=1, hidden=(32,)), TrainConfig(epochs=30, lr=1e-2)
    pools = []
    real = local.SideBySide.step

    def step(self, i):
        out = real(self, i)
        pools.append(self.pool)
        return out

    monkeypatch.setattr(local.SideBySide, "step", step)
    runs = {}
    for cpus in (1, 4):
        monkeypatch.setattr(local, "usable_cpus", lambda: cpus)
        torch.manual_seed(0)
        runs[cpus] = local.pooled_curve(cfg, tcfg, x, fold)
        assert all(p is None for p in pools) if cpus == 1 or family == "denoising" else pools[-1] is not None
        pools.clear()
    assert runs[1][0] == runs[4][0] > 0
    for a, b in zip(runs[1][1:], runs[4][1:]):
        np.testing.assert_array_equal(a, b)


def test_train_says_what_the_cross_check_found(tmp_path):
    """aepipe train on a small table says the k-fold check's verdict and keeps it in aepipe.json,
    which aepipe info shows (the rows as they are: on this little data the correction's gain
    depends on their scale)."""
    x = _curve(40)
    pq.write_table(pa.table({f"c{i}": x[:, i] for i in range(8)}), tmp_path / "curve.parquet")
    proc = run_aepipe("train", tmp_path / "curve.parquet", "--code-dim", 1, "--hidden", 32, "--epochs", 200, "--lr", 0.01,
                      "--normalize", "none", "--out", tmp_path / "run")
    check = json.loads((tmp_path / "run" / "aepipe.json").read_text())["metrics"]["cross_check"]
    assert check["kept"] and check["rows"] == 40
    assert "checking the correction over 10 folds of all 40 rows" in proc.stdout
    assert f"cross-check epoch {check['epochs']}/200  held-out" in proc.stdout
    assert f"kept, fitted again on every row for {check['epochs']} epochs" in proc.stdout
    info = run_aepipe("info", tmp_path / "run").stdout
    assert f"10 folds of 40 rows: gain over the floor {check['gain']:.3g}" in info
    assert f"then {check['epochs']} on every row after the k-fold check" in info
