"""Decoder jobs and downstream use: decode subsets, denoise, score, probe, load_codes, the
scikit-learn transformer, and the report, through the installed command and on real stores.

Small asks run in the calling process (aepipe.batch.engine.LOCAL_ROWS) and large ones on Ray; several
tests compare the two paths on the same rows."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

import aepipe
from aepipe.sources import open_source
from aepipe.batch.decode import decode
from aepipe.batch.encode import encode
from aepipe.analysis.report import report
from aepipe.analysis.metrics import digits_split, fixed_split, probe_scores, psnr
from aepipe.models import ModelConfig
from aepipe.scores import auto_threshold, row_errors, row_scores
from aepipe.run import load_run
from aepipe.training import TrainConfig, train
from tests.conftest import run_aepipe
from tests.test_cli import fails_cleanly


@pytest.fixture(scope="module")
def digits_codes(digits_run, tmp_path_factory):
    """All 1797 digits encoded once (float32 Zarr and int8 Parquet), on Ray."""
    d = tmp_path_factory.mktemp("codes")
    encode("builtin:digits", digits_run, d / "c.zarr")
    encode("builtin:digits", digits_run, d / "q.parquet", dtype="int8")
    return d


def direct_scores(run_dir, x, kind=None):
    """The elementwise reconstruction errors of x, or (kind) its scores of that kind."""
    run = load_run(run_dir)
    with torch.inference_mode():
        t = torch.from_numpy(run.normalizer.apply(x))
        return row_errors(run.model, t).numpy() if kind is None else row_scores(run.model, t, run.density)[kind].numpy()


def test_subset_decode_equals_the_same_rows_of_a_full_decode(ray_local, digits_run, digits_codes, tmp_path):
    full = tmp_path / "full.npy"
    assert decode(digits_codes / "c.zarr", digits_run, full, engine="ray") == 1797  # the Ray Data path
    x = np.load(full)
    # small asks: in the calling process (no --address, few rows), through the installed command
    run_aepipe("decode", digits_codes / "c.zarr", "--model", digits_run, "--out", tmp_path / "rows.npy", "--rows", "100:130")
    np.testing.assert_allclose(np.load(tmp_path / "rows.npy"), x[100:130], rtol=1e-5, atol=1e-4)
    (tmp_path / "ids.txt").write_text("1500\n7\n\n3\n")
    run_aepipe("decode", digits_codes / "c.zarr", "--model", digits_run, "--out", tmp_path / "ids.zarr",
               "--ids-file", tmp_path / "ids.txt")
    g = zarr.open_group(str(tmp_path / "ids.zarr"), mode="r")
    assert list(g["ids"][:]) == [1500, 7, 3]
    np.testing.assert_allclose(g["data"][:], x[[1500, 7, 3]], rtol=1e-5, atol=1e-4)
    # int8 Parquet: ids found from the row groups' id statistics, rows as in a full decode of that store
    run_aepipe("decode", digits_codes / "q.parquet", "--model", digits_run, "--out", tmp_path / "q_all.npy")
    run_aepipe("decode", digits_codes / "q.parquet", "--model", digits_run, "--out", tmp_path / "q_ids.npy",
               "--ids", "1500,7")
    store_ids = pads.dataset(str(digits_codes / "q.parquet")).to_table().column("id").to_numpy()
    q_all = np.load(tmp_path / "q_all.npy")
    np.testing.assert_allclose(np.load(tmp_path / "q_ids.npy"),
                               q_all[[int(np.flatnonzero(store_ids == i)[0]) for i in (1500, 7)]], rtol=1e-5, atol=1e-4)
    # the whole store in-process equals the Ray pass too
    decode(digits_codes / "c.zarr", digits_run, tmp_path / "local.npy", engine="local")
    np.testing.assert_allclose(np.load(tmp_path / "local.npy"), x, rtol=1e-5, atol=1e-4)
    out = tmp_path / "bad.npy"
    fails_cleanly(["decode", digits_codes / "c.zarr", "--model", digits_run, "--out", out, "--ids", "1",
                   "--ids-file", tmp_path / "ids.txt"], "give one of them", out)
    fails_cleanly(["decode", digits_codes / "c.zarr", "--model", digits_run, "--out", out,
                   "--ids-file", tmp_path / "nope.txt"], "cannot read it", out)
    fails_cleanly(["decode", digits_codes / "c.zarr", "--model", digits_run, "--out", out, "--ids", "99999"],
                  'no row with id "99999"', out)


def test_score_auto_threshold_and_stores(digits_run, ray_local, tmp_path):
    run = load_run(digits_run)
    q = run.meta["score_quantiles"]
    assert q["n_rows"] > 1000 and q["values"] == sorted(q["values"])
    out = tmp_path / "s.parquet"
    run_aepipe("score", "builtin:digits-train", "--model", digits_run, "--out", out, "--threshold", "auto")
    t = pq.read_table(out)
    assert t.column_names == ["id", "score", "anomaly"]
    src = open_source("builtin:digits-train")
    want = direct_scores(digits_run, src.x).mean(1)
    assert np.array_equal(t.column("id").to_numpy(), src.ids)
    np.testing.assert_allclose(t.column("score").to_numpy(), want, rtol=1e-5, atol=1e-7)
    threshold = json.loads(t.schema.metadata[b"aepipe"])["threshold"]
    assert np.array_equal(t.column("anomaly").to_numpy(zero_copy_only=False), want > threshold)
    # the stored quantiles were taken on the training rows (validation rows out): about 1 % above it
    assert 0.002 <= t.column("anomaly").to_numpy(zero_copy_only=False).mean() <= 0.03
    # the same on Ray, to Zarr, with a hand-set threshold
    run_aepipe("score", "builtin:digits-train", "--model", digits_run, "--out", tmp_path / "s.zarr",
               "--threshold", "0.2", "--engine", "ray", address=ray_local)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    np.testing.assert_allclose(g["scores"][:], want, rtol=1e-5, atol=1e-7)
    assert np.array_equal(g["anomaly"][:], want > 0.2) and g.attrs["threshold"] == 0.2
    # a run dir trained before quantiles were stored
    old = tmp_path / "old_run"
    shutil.copytree(digits_run, old, ignore=shutil.ignore_patterns("checkpoints"))
    meta = json.loads((old / "aepipe.json").read_text())
    del meta["score_quantiles"]
    (old / "aepipe.json").write_text(json.dumps(meta))
    bad = tmp_path / "b.parquet"
    fails_cleanly(["score", "builtin:digits", "--model", old, "--out", bad, "--threshold", "auto"], "predates", bad)
    run_aepipe("score", "builtin:digits", "--model", old, "--out", bad)  # without a threshold it still scores
    fails_cleanly(["score", "builtin:digits", "--model", digits_run, "--out", tmp_path / "c.parquet", "--threshold", "x"],
                  '--threshold "x"')
    fails_cleanly(["score", "builtin:digits", "--model", digits_run, "--out", tmp_path / "c.parquet", "--per-feature"],
                  "only for tables")
    fails_cleanly(["score", "builtin:digits", "--model", digits_run, "--out", tmp_path / "c.parquet",
                   "--threshold", "auto", "--contamination", "0.9"], "--contamination 0.9")


def test_score_per_feature_keeps_the_tables_id_column(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2)) @ rng.normal(size=(2, 4)) * [1, 10, 100, 1000]
    cols = {f"c{j}": x[:, j] for j in range(4)}
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(300)], **cols}), tmp_path / "t.parquet")
    run_dir = tmp_path / "run"
    run_aepipe("train", tmp_path / "t.parquet", "--id-column", "key", "--out", run_dir, "--code-dim", 2,
               "--hidden", "8", "--epochs", 2)
    run_aepipe("score", tmp_path / "t.parquet", "--model", run_dir, "--out", tmp_path / "s.parquet", "--per-feature",
               "--score", "recon")
    t = pq.read_table(tmp_path / "s.parquet")
    assert t.column_names == ["key", "score", "c0_error", "c1_error", "c2_error", "c3_error"]
    assert t.column("key").to_pylist() == [f"k{i}" for i in range(300)]
    per = np.column_stack([t.column(f"c{j}_error").to_numpy() for j in range(4)])
    np.testing.assert_allclose(per, direct_scores(run_dir, x.astype(np.float32)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(t.column("score").to_numpy(), per.mean(1), rtol=1e-5)
    # a table's default score is the linear one; the per-feature errors stay the reconstruction's
    done = run_aepipe("score", tmp_path / "t.parquet", "--model", run_dir, "--out", tmp_path / "c.parquet",
                      "--per-feature", "--threshold", "auto")
    assert "(linear: the PCA detector's code and residual distance per dimension)" in done.stdout
    c = pq.read_table(tmp_path / "c.parquet")
    np.testing.assert_allclose(c.column("score").to_numpy(), direct_scores(run_dir, x.astype(np.float32), "linear"),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.column_stack([c.column(f"c{j}_error").to_numpy() for j in range(4)]), per, rtol=1e-5)
    assert 0.2 < np.median(c.column("score").to_numpy()) < 2  # about 1 for a training row
    assert json.loads(c.schema.metadata[b"aepipe"])["score_kind"] == "linear"
    done = run_aepipe("score", tmp_path / "t.parquet", "--model", run_dir, "--out", tmp_path / "m.parquet",
                      "--score", "combined")
    assert "(combined: code and residual distance per dimension)" in done.stdout
    np.testing.assert_allclose(pq.read_table(tmp_path / "m.parquet").column("score").to_numpy(),
                               direct_scores(run_dir, x.astype(np.float32), "combined"), rtol=1e-4, atol=1e-6)
    # density.pt lost: refused like altered weights; a run dir from before it: the reconstruction error, said
    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("checkpoints", "density.pt"))
    fails_cleanly(["score", tmp_path / "t.parquet", "--model", old, "--out", tmp_path / "o.parquet"],
                  "density.pt: missing, or not the one aepipe.json describes", tmp_path / "o.parquet")
    meta = json.loads((old / "aepipe.json").read_text())
    del meta["density_fingerprint"]
    (old / "aepipe.json").write_text(json.dumps(meta))
    done = run_aepipe("score", tmp_path / "t.parquet", "--model", old, "--out", tmp_path / "o.parquet")
    assert "(mse per feature)" in done.stdout and "predates stored training densities" in done.stdout
    fails_cleanly(["score", tmp_path / "t.parquet", "--model", old, "--out", tmp_path / "p.parquet", "--score", "code"],
                  "--score code: ", tmp_path / "p.parquet")
    fails_cleanly(["score", tmp_path / "t.parquet", "--model", run_dir, "--out", tmp_path / "p.parquet", "--score", "x"],
                  '--score "x": choose one of recon, code, combined, linear', tmp_path / "p.parquet")
    # a model without the linear floor: combined by default, linear refused in one line
    bare = tmp_path / "bare"
    run_aepipe("train", tmp_path / "t.parquet", "--id-column", "key", "--out", bare, "--code-dim", 2,
               "--hidden", "8", "--epochs", 2, "--init", "none")
    done = run_aepipe("score", tmp_path / "t.parquet", "--model", bare, "--out", tmp_path / "b.parquet")
    assert "(combined: code and residual distance per dimension)" in done.stdout
    fails_cleanly(["score", tmp_path / "t.parquet", "--model", bare, "--out", tmp_path / "p.parquet", "--score",
                   "linear"], "--score linear: ", tmp_path / "p.parquet")
    # a table's report draws rows as lines over their columns, and the scores `aepipe score` gives by
    # default (linear) with their threshold; labels come from a CSV joined by id
    (tmp_path / "y.csv").write_text("key,y\n" + "".join(f"k{i},{i % 3}\n" for i in range(300)))
    run_aepipe("report", "--model", run_dir, "--out", tmp_path / "rep", "--labels", tmp_path / "y.csv",
               "--labels-id-column", "key")
    _check_png(tmp_path / "rep" / "report.png")
    summary = dict(report(str(run_dir), tmp_path / "rep2", data=str(tmp_path / "t.parquet"))["summary"])
    mean = c.column("score").to_numpy().mean()
    assert summary["mean score"] == f"{mean:.4g} (linear: the PCA detector's code and residual distance per " \
                                   "dimension, normalised units)"
    assert summary["threshold"].startswith(f'{auto_threshold(load_run(run_dir), 0.01, "linear"):.4g}: ')


def test_scores_rank_a_class_the_model_never_saw_above_pca(ray_local, tmp_path):
    """One-class digits: trained on the 3s of builtin:digits-train only, scored on builtin:digits-test."""
    xtr, ytr, _, xte, yte, _ = digits_split()
    np.save(tmp_path / "threes.npy", (xtr[ytr == 3] * 16).reshape(-1, 8, 8).astype(np.float32))
    run_dir = tmp_path / "threes"
    train(str(tmp_path / "threes.npy"), run_dir, ModelConfig(family="dense", code_dim=8, hidden=(64,)),
          TrainConfig(epochs=25, batch_size=16, lr=3e-3, patience=0))
    run_aepipe("score", "builtin:digits-test", "--model", run_dir, "--out", tmp_path / "s.parquet")
    score = pq.read_table(tmp_path / "s.parquet").column("score").to_numpy()
    pca = PCA(8, random_state=0).fit(xtr[ytr == 3])
    pca_auc = roc_auc_score(yte != 3, ((xte - pca.inverse_transform(pca.transform(xte))) ** 2).sum(1))
    auc = roc_auc_score(yte != 3, score)
    assert auc > pca_auc > 0.99, (auc, pca_auc)


def test_denoise_beats_the_noisy_input_and_pca(ray_local, tmp_path):
    """Gaussian noise sigma 0.25 on digits / 16, clipped to [0, 1] (PCA 16 gets 16.5 dB back: bench/quality.py)."""
    xtr, _, _, xte, _, _ = digits_split()
    noisy = np.clip(xte + np.random.default_rng(0).normal(0, 0.25, xte.shape), 0, 1)
    np.save(tmp_path / "noisy.npy", (noisy * 16).reshape(-1, 8, 8).astype(np.float32))
    run_dir = tmp_path / "dn"
    # a random start: from PCA (the default), 25 epochs keep much of PCA's code and its noise
    train("builtin:digits-train", run_dir, ModelConfig(family="denoising", code_dim=16, hidden=(256,), loss="bce",
                                                       init="none"),
          TrainConfig(epochs=25, batch_size=32, patience=0))
    done = run_aepipe("denoise", tmp_path / "noisy.npy", "--model", run_dir, "--out", tmp_path / "clean.npy")
    assert "not trained as denoising" not in done.stderr
    clean = np.clip(np.load(tmp_path / "clean.npy").reshape(len(xte), 64) / 16, 0, 1)
    pca = PCA(16, random_state=0).fit(xtr)
    pca_psnr = psnr(np.clip(pca.inverse_transform(pca.transform(noisy)), 0, 1), xte)
    assert psnr(clean, xte) > pca_psnr > psnr(noisy, xte), (psnr(clean, xte), pca_psnr, psnr(noisy, xte))
    # to Parquet on Ray: the same rows; a model of another family says so once
    run_aepipe("denoise", tmp_path / "noisy.npy", "--model", run_dir, "--out", tmp_path / "clean.parquet",
               "--engine", "ray", address=ray_local)
    t = pads.dataset(str(tmp_path / "clean.parquet")).to_table().sort_by("id")
    got = np.stack(t.column("pixels").to_numpy(zero_copy_only=False))  # the training data's column name
    np.testing.assert_allclose(got.reshape(len(xte), 64), np.load(tmp_path / "clean.npy").reshape(len(xte), 64),
                               rtol=1e-5, atol=1e-4)


def test_denoise_with_a_plain_model_says_so_once(digits_run, tmp_path):
    done = run_aepipe("denoise", "builtin:digits-test", "--model", digits_run, "--out", tmp_path / "d.npy")
    assert done.stderr.count("not trained as denoising") == 1
    assert np.load(tmp_path / "d.npy").shape == (540, 8, 8)


def test_probe_equals_a_direct_scikit_learn_fit(digits_run, digits_codes, tmp_path):
    src = open_source("builtin:digits")
    # labels in a CSV, rows shuffled, ids as text: the join is by id
    order = np.random.default_rng(0).permutation(1797)
    (tmp_path / "labels.csv").write_text("id,digit\n" + "".join(f"{i},{y}\n" for i, y in zip(src.ids[order], src.labels[order])))
    out = run_aepipe("probe", digits_codes / "q.parquet", "--labels", tmp_path / "labels.csv",
                     "--label-column", "digit", "--data", "builtin:digits").stdout
    ids, z = aepipe.load_codes(digits_codes / "q.parquet")
    y = src.labels[ids.astype(int)]
    tr, te = fixed_split(y)
    direct = probe_scores(z[tr], y[tr], z[te], y[te])
    line = next(l for l in out.splitlines() if "codes" in l)
    assert f"{direct['accuracy']:.4f}" in line and f"{direct['macro_f1']:.4f}" in line, out
    # scikit-learn's own figures on the fixed 70/30 split: StandardScaler, then LogisticRegression
    classical = {"raw inputs": 0.9722, "PCA 8": 0.9019}
    for name, acc in classical.items():
        assert f"{acc:.4f}" in next(l for l in out.splitlines() if name in l), out
    fails_cleanly(["probe", digits_codes / "q.parquet", "--labels", tmp_path / "labels.csv"], 'no column "y"')
    # standardised: codes on any scale probe alike (the penalty no longer favours large codes)
    assert probe_scores(z[tr] * 0.01, y[tr], z[te] * 0.01, y[te]) == pytest.approx(direct, abs=0.002)


def test_load_codes_in_three_formats(digits_codes):
    ids, z = aepipe.load_codes(digits_codes / "c.zarr")
    assert z.dtype == np.float32 and z.shape == (1797, 8) and np.array_equal(ids, np.arange(1797))
    df = aepipe.load_codes(f"file://{digits_codes / 'c.zarr'}", as_="pandas")
    assert list(df.columns) == [f"code_{i}" for i in range(8)] and np.array_equal(df.to_numpy(), z)
    table = aepipe.load_codes(digits_codes / "q.parquet", as_="arrow")
    zq = np.stack(table.column("code").to_numpy(zero_copy_only=False))
    by_id = dict(zip(table.column("id").to_pylist(), zq))
    step = np.ptp(z, 0) / 254  # de-quantised int8 codes sit within about a step of the float codes
    assert (np.median(np.abs(np.stack([by_id[i] for i in range(1797)]) - z), 0) < step).all()


def test_autoencoder_features_in_a_scikit_learn_pipeline(digits_run):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.utils.estimator_checks import check_estimator

    xtr, ytr, _, xte, yte, _ = digits_split()
    feats = aepipe.AutoencoderFeatures(digits_run)
    z = feats.transform(xtr * 16)  # rows in the data's units, flattened
    run = load_run(digits_run)
    with torch.inference_mode():
        want = run.model.encode(torch.from_numpy(run.normalizer.apply((xtr * 16).reshape(-1, 8, 8).astype(np.float32))))
    np.testing.assert_allclose(z, want.numpy(), rtol=1e-5, atol=1e-6)
    back = feats.inverse_transform(z)
    assert back.shape == (len(xtr), 64)
    assert list(feats.get_feature_names_out()) == [f"autoencoderfeatures{i}" for i in range(8)]
    clf = make_pipeline(aepipe.AutoencoderFeatures(digits_run), StandardScaler(),
                        LogisticRegression(max_iter=5000)).fit(xtr * 16, ytr)
    assert clf.score(xte * 16, yte) == probe_scores(z, ytr, feats.transform(xte * 16), yte)["accuracy"]
    # scikit-learn's own checks: those that feed made-up data of other widths cannot apply to a
    # model trained on 64 pixels; every other check must pass
    results = check_estimator(feats, on_fail=None)
    failed = {r["check_name"]: f'{r["exception"]} {r["exception"].__cause__}' for r in results if r["status"] == "failed"}
    wrong_width = {k for k, v in failed.items() if "is expecting 64 features" in v}
    assert set(failed) == wrong_width, {k: v for k, v in failed.items() if k not in wrong_width}
    passed = [r["check_name"] for r in results if r["status"] == "passed"]
    assert {"check_estimator_cloneable", "check_get_params_invariance", "check_set_params", "check_fit1d",
            "check_no_attributes_set_in_init", "check_estimators_empty_data_messages"} <= set(passed), passed
    # what the width-bound checks test, on rows of the right width: pickling, fit returning self, row order
    import pickle

    again = pickle.loads(pickle.dumps(feats.fit(xtr * 16)))
    np.testing.assert_array_equal(again.transform(xte * 16), feats.transform(xte * 16))
    perm = np.random.default_rng(0).permutation(len(xte))
    np.testing.assert_allclose(feats.transform(xte[perm] * 16), feats.transform(xte * 16)[perm], rtol=1e-5, atol=1e-6)
    assert feats.n_features_in_ == 64


def test_autoencoder_features_trains_on_fit_and_passes_scikit_learns_checks():
    """Without a run dir, fit trains through aepipe's fit loop: every check of scikit-learn passes
    (the one skip is scikit-learn's own: array-API input needs SCIPY_ARRAY_API set)."""
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(aepipe.AutoencoderFeatures(code_dim=2, hidden=(8,), epochs=3), on_fail=None)
    failed = {r["check_name"]: str(r["exception"]) for r in results if r["status"] == "failed"}
    assert failed == {}
    assert [r["check_name"] for r in results if r["status"] == "skipped"] == ["check_array_api_input"]
    xtr = digits_split()[0]
    feats = aepipe.AutoencoderFeatures(code_dim=4, epochs=5).fit(xtr * 16)
    z = feats.transform(xtr * 16)
    assert z.shape == (len(xtr), 4) and z.dtype == np.float32 and z.std(0).min() > 0  # a real model's codes
    err = np.mean((feats.inverse_transform(z) - xtr * 16) ** 2)
    assert err < np.mean((xtr * 16 - (xtr * 16).mean(0)) ** 2) / 2  # it reconstructs: far below the mean's error


def test_a_pickled_transformer_works_without_its_run_dir(digits_run, tmp_path):
    import pickle
    import shutil

    shutil.copytree(digits_run, tmp_path / "run")
    xtr = digits_split()[0] * 16
    feats = aepipe.AutoencoderFeatures(tmp_path / "run").fit(xtr)
    blob = pickle.dumps(feats)
    shutil.rmtree(tmp_path / "run")
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.transform(xtr), feats.transform(xtr))
    np.testing.assert_array_equal(again.inverse_transform(feats.transform(xtr[:5])), feats.inverse_transform(feats.transform(xtr[:5])))


def _check_png(path, size=(1600, 960)):
    from PIL import Image

    img = np.asarray(Image.open(path).convert("L"), np.float32)
    assert img.shape == size[::-1]
    assert img.std() > 20 and (img < 128).mean() > 0.02  # ink on the page, not a blank canvas


def test_report_png_and_html(digits_run, tmp_path):
    done = run_aepipe("report", "--model", digits_run, "--out", tmp_path / "rep", "--data", "builtin:digits-test")
    png = tmp_path / "rep" / "report.png"
    _check_png(png)
    import base64

    page = (tmp_path / "rep" / "report.html").read_text()
    assert base64.b64encode(png.read_bytes()).decode() in page and "threshold" in page  # self-contained
    assert "report.png" in done.stdout
    fails_cleanly(["report", "--model", digits_run, "--out", tmp_path / "rep"], "already holds a report")


def test_readme_python_example_runs(digits_run, digits_codes, tmp_path, monkeypatch):
    """The README's Python example (its `python runnable` block), run as written against the run dir and
    stores its command-line example leaves (runs/digits, codes.zarr, an int8 codes.parquet)."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"```python runnable\n(.*?)```", text, re.S).group(1)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "digits").symlink_to(digits_run)
    (tmp_path / "codes.zarr").symlink_to(digits_codes / "c.zarr")
    (tmp_path / "codes.parquet").symlink_to(digits_codes / "q.parquet")
    monkeypatch.chdir(tmp_path)
    printed = []
    exec(compile(block, "README.md", "exec"), {"print": printed.append})
    assert 0.3 < printed[-1] <= 1.0  # a probe on an 8-d code of a 4-epoch model: far above chance (0.1)
    assert np.load(tmp_path / "first.npy").shape == (10, 8, 8)  # the decode it runs through aepipe.cli.main


def test_ids_are_bisected_across_many_chunks_and_scanned_when_unsorted(tmp_path, monkeypatch):
    """--ids in a Zarr store: sorted ids are found by bisection over chunks (each read once), an
    unsorted ids array falls back to scanning it (a store written before the ids index), and both
    give store positions in the asked order."""
    from aepipe.batch.rows import find_ids
    from aepipe.stores.ids_index import bisect
    from aepipe.stores.read import ZarrCodesSource

    rng = np.random.default_rng(0)
    for name, ids in (("sorted", np.arange(0, 30_000, 3)), ("shuffled", rng.permutation(10_000) * 3)):
        g = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="w")
        g.create_array("ids", data=ids, chunks=(256,))
        g.create_array("codes", data=np.zeros((len(ids), 2), np.float32), chunks=(256, 2))
        src = ZarrCodesSource(str(tmp_path / f"{name}.zarr"), {})
        want = [int(ids[p]) for p in (9_999, 0, 5_000, 255, 256, 4_321)]
        assert list(find_ids(src, [str(i) for i in want])) == [int(np.flatnonzero(ids == i)[0]) for i in want]
        if name == "sorted":  # found by bisection alone, not by the scan behind it
            assert bisect(g["ids"], [str(i) for i in want]) == {str(i): i // 3 for i in want}
        with pytest.raises(aepipe.AepipeError, match='no row with id "1"'):
            find_ids(src, ["3", "1"])


@pytest.mark.parametrize("kind", ["int64", "str"])
def test_unsorted_ids_are_found_through_the_index_without_a_scan(tmp_path, monkeypatch, kind):
    """A table whose own ids are shuffled, encoded to Zarr: the store gets an ids index at commit,
    and decode --ids finds rows through it alone (the scan is made to fail here), a missing id
    included; the rows decoded are the asked ones. A store in order gets no index."""
    from aepipe.batch import rows as rows_module
    from aepipe.stores.ids_index import INDEX_GROUP

    rng = np.random.default_rng(1)
    n = 20_000
    ids = rng.permutation(n) * 7 + 5
    ids = ids if kind == "int64" else np.array([f"item-{i}" for i in ids])
    x = rng.normal(size=(n, 4)).astype(np.float32)
    pq.write_table(pa.table({"key": ids, **{f"f{j}": x[:, j] for j in range(4)}}), tmp_path / "t.parquet")
    pq.write_table(pa.table({f"f{j}": x[:500, j] for j in range(4)}), tmp_path / "small.parquet")
    run_aepipe("train", tmp_path / "small.parquet", "--code-dim", "2", "--hidden", "8", "--epochs", "1",
               "--out", tmp_path / "run")
    run_aepipe("encode", tmp_path / "t.parquet", "--id-column", "key", "--model", tmp_path / "run",
               "--out", tmp_path / "c.zarr", "--engine", "local", "--chunk-rows", "1024")
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert INDEX_GROUP in g and np.array_equal(g[INDEX_GROUP]["ids"][:], np.sort(ids))
    assert xr_variables(tmp_path / "c.zarr") == {"codes", "ids"}  # xarray sees no index arrays

    def no_scan(*args):
        raise AssertionError("scanned the ids: the index was not used")

    monkeypatch.setattr(rows_module, "_id_blocks", no_scan)
    asked = [ids[p] for p in (19_999, 3, 10_000)]
    run_aepipe("decode", tmp_path / "c.zarr", "--model", tmp_path / "run", "--out", tmp_path / "picked.parquet",
               "--ids", ",".join(map(str, asked)), "--engine", "local")
    got = pq.read_table(tmp_path / "picked.parquet")
    assert [str(v) for v in got.column("id").to_pylist()] == [str(v) for v in asked]
    missing = run_aepipe("decode", tmp_path / "c.zarr", "--model", tmp_path / "run", "--out", tmp_path / "no.npy",
                         "--ids", f"{asked[0]},nope", "--engine", "local", check=False)
    assert missing.returncode == 2 and 'no row with id "nope"' in missing.stderr
    run_aepipe("encode", tmp_path / "small.parquet", "--model", tmp_path / "run", "--out", tmp_path / "in_order.zarr",
               "--engine", "local")
    assert INDEX_GROUP not in zarr.open_group(str(tmp_path / "in_order.zarr"), mode="r")


def xr_variables(store) -> set[str]:
    import xarray as xr

    with xr.open_zarr(store) as ds:
        return set(ds.variables)


def test_small_asks_import_no_ray_zarr_or_pandas(tmp_path):
    """What keeps a small ask under 2 s (bench/RESULTS.md, "small_asks"): the command's modules
    import neither Ray nor pandas, and zarr only when a Zarr store is touched; Parquet and CSV rows
    are read, and a Parquet table written, without pyarrow's to_numpy() and pa.array(), which
    import pandas."""
    import subprocess
    import sys

    (tmp_path / "t.csv").write_text("id,a,b\n1,0.5,2\n2,1.5,3\n")
    code = ("import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq\n"
            "import aepipe.cli, aepipe.batch.decode, aepipe.batch.reconstruct, aepipe.batch.encode\n"
            "from aepipe.stores.parquet_sink import arrow_array\n"
            "from aepipe.sources import open_source\n"
            f"d = {str(tmp_path)!r}\n"
            "pq.write_table(pa.table({'id': arrow_array(np.arange(2)), 'a': arrow_array(np.ones(2)),"
            " 'ok': arrow_array(np.ones(2, bool))}), d + '/t.parquet')\n"
            "for f in ('t.parquet', 't.csv'):\n"
            "    ids, x = open_source(f'{d}/{f}', id_column='id', columns=('a',)).read(0, 2)\n"
            "    assert list(ids) == ([0, 1] if f == 't.parquet' else [1, 2]), ids\n"
            "print(sorted(m for m in ('ray', 'ray.data', 'zarr', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("col", [pa.array([3, 1, 2], pa.int64()), pa.array([0.5, 1.5], pa.float32()),
                                 pa.chunked_array([pa.array([1.0, 2.0]), pa.array([3.0])]),
                                 pa.array(np.arange(10.0)).slice(3, 4), pa.array([1.0, None, 3.0]),
                                 pa.array([True, False]), pa.array(["a", "b"])])
def test_numpy_of_equals_to_numpy(col):
    from aepipe.sources import numpy_of

    want = col.to_numpy(zero_copy_only=False)
    got = numpy_of(col)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("v", [np.arange(11, dtype=np.int64), np.linspace(0, 1, 9, dtype=np.float32),
                               np.ones(5, np.float16), np.array([1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1], bool),
                               np.arange(20, dtype=np.float32).reshape(4, 5)[:, 2], np.array(["a", "bc"])])
def test_arrow_array_equals_pa_array(v):
    from aepipe.stores.parquet_sink import arrow_array

    got = arrow_array(v)
    assert got.equals(pa.array(v)) and got.type == pa.array(v).type


def test_exported_encoder_gives_the_codes_encode_writes_without_aepipe(digits_run, tmp_path):
    """aepipe export -> a torch.export program that a Python without aepipe loads and runs."""
    import subprocess
    import sys

    from tests.conftest import run_aepipe

    done = run_aepipe("export", digits_run, "--out", tmp_path / "enc.pt2")
    assert done.stdout.startswith("exported the dense encoder (64 features -> 8 codes")
    encode("builtin:digits", digits_run, tmp_path / "c.zarr", engine="local")
    ids, codes = aepipe.load_codes(tmp_path / "c.zarr")
    np.save(tmp_path / "rows.npy", open_source("builtin:digits").x.reshape(1797, -1).astype(np.float32))
    serve = ("import sys; sys.modules['aepipe'] = None  # no aepipe here\n"
             "import numpy as np, torch\n"
             f"enc = torch.export.load({str(tmp_path / 'enc.pt2')!r}).module()\n"
             f"np.save({str(tmp_path / 'z.npy')!r}, enc(torch.from_numpy(np.load({str(tmp_path / 'rows.npy')!r}))).detach().numpy())\n")
    subprocess.run([sys.executable, "-c", serve], check=True, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "z.npy")[ids], codes, rtol=1e-5, atol=1e-5)
    again = run_aepipe("export", digits_run, "--out", tmp_path / "enc.pt2", check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    wrong = run_aepipe("export", digits_run, "--out", tmp_path / "enc.onnx", check=False)
    assert wrong.returncode == 2 and ".pt2" in wrong.stderr and not (tmp_path / "enc.onnx").exists()


def test_score_and_decode_parts_are_planned_like_encodes(digits_run, digits_codes, tmp_path):
    """score, decode and denoise outputs are cut like encode's (stores.part_rows): Parquet parts
    of ~128 MiB at most, here at least 4 of 1,797 rows (450 each), every row once, in order."""
    import pyarrow.parquet as pq

    run_aepipe("score", "builtin:digits", "--model", digits_run, "--out", tmp_path / "s.parquet", "--engine", "local")
    run_aepipe("decode", digits_codes / "c.zarr", "--model", digits_run, "--out", tmp_path / "d.parquet",
               "--engine", "local")
    for out in ("s.parquet", "d.parquet"):
        parts = sorted((tmp_path / out).glob("part-*.parquet"))
        assert [pq.ParquetFile(p).metadata.num_rows for p in parts] == [450, 450, 450, 447], out
        ids = np.concatenate([pq.read_table(p, columns=["id"]).column(0).to_numpy() for p in parts])
        assert np.array_equal(ids.astype(int), np.arange(1797)), out
