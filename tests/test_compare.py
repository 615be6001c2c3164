"""aepipe compare: a codec's per-image table (PSNR, MS-SSIM; with --codes bytes and bits per pixel),
and MS-SSIM itself against scikit-image's SSIM. No Ray: the --codes flow on a real codec is in
test_compress.py, beside the codec it trains."""

import csv

import numpy as np
import pytest

from aepipe.analysis.metrics import ms_ssim
from tests.conftest import run_aepipe


def camera(rows=slice(None), cols=slice(None)) -> np.ndarray:
    import skimage.data as skd

    return skd.camera()[rows, cols].astype(np.float64)


def noisy(x: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """x plus Gaussian noise, rounded and clipped to 8-bit values as a decoded PNG holds them."""
    return np.clip(np.rint(x + np.random.default_rng(seed).normal(0, sigma, x.shape)), 0, 255)


def test_ms_ssim_at_one_scale_is_scikit_images_ssim():
    """One scale is plain SSIM: scikit-image's with the Gaussian window (sigma 1.5, 11 pixels), the
    population covariance and the image's border left out, as Wang et al. define it."""
    from skimage.metrics import structural_similarity

    a = camera(slice(50, 250), slice(60, 300))
    b = noisy(a, 15)
    want = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255)
    assert ms_ssim(a, b, scales=1) == pytest.approx(want, abs=1e-3)


def test_ms_ssim_is_one_for_the_same_image_and_falls_as_noise_grows():
    a = camera(slice(0, 256), slice(0, 256))  # five scales
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    scores = [ms_ssim(a, noisy(a, sigma)) for sigma in (2, 8, 20, 50)]
    assert all(x > y for x, y in zip(scores, scores[1:])), scores
    assert 0 < scores[-1] < scores[0] < 1
    small = camera(slice(0, 60), slice(0, 90))  # 60 px: three scales (60, 30, 15), weights renormalised
    assert ms_ssim(small, noisy(small, 8)) == pytest.approx(ms_ssim(small, noisy(small, 8), scales=3))
    assert 0 < ms_ssim(small, noisy(small, 8)) < 1 and np.isnan(ms_ssim(small[:10], small[:10]))


@pytest.fixture
def pairs(tmp_path):
    """originals/: camera crops of three sizes (one a JPEG in a subfolder) and a colour photo;
    decoded/: each as read plus noise, saved as PNG under the same name, as decode writes them."""
    import skimage.data as skd
    from PIL import Image

    orig, dec = tmp_path / "originals", tmp_path / "decoded"
    (orig / "sub").mkdir(parents=True)
    (dec / "sub").mkdir(parents=True)
    images = {"a.png": skd.camera()[:200, :240], "sub/b.jpg": skd.camera()[100:140, 200:290],
              "c.png": skd.astronaut()[:180, :170]}
    for i, (name, im) in enumerate(images.items()):
        Image.fromarray(im).save(orig / name, quality=90)
        x = np.asarray(Image.open(orig / name), np.float64)  # the JPEG as decoded, not as written
        Image.fromarray(noisy(x, 4 + 4 * i, seed=i).astype(np.uint8)).save(dec / name.replace(".jpg", ".png"))
    return orig, dec


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The printed table's rows by image name (the header and rule left out)."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines() if line.startswith("| ")]
    return {r[0]: r[1:] for r in rows[1:]}


def test_compare_prints_each_images_psnr_and_ms_ssim_and_writes_them_as_csv(pairs, tmp_path):
    from PIL import Image

    from aepipe.analysis.codec_quality import LUMA

    orig, dec = pairs
    ran = run_aepipe("compare", orig, dec, "--csv", tmp_path / "q.csv")
    printed = table_rows(ran.stdout)
    with open(tmp_path / "q.csv") as f:
        written = {r["image"]: r for r in csv.DictReader(f)}
    assert list(printed) == list(written) == ["a.png", "c.png", "sub/b.jpg", "mean"]
    psnrs, ssims = [], []
    for name in ("a.png", "c.png", "sub/b.jpg"):
        a = np.asarray(Image.open(orig / name), np.float64)
        b = np.asarray(Image.open(dec / name.replace(".jpg", ".png")), np.float64)
        psnrs.append(10 * np.log10(255 ** 2 / np.mean((a - b) ** 2)))  # RGB: over all three channels
        ssims.append(ms_ssim(a @ LUMA, b @ LUMA) if a.ndim == 3 else ms_ssim(a, b))
        assert printed[name] == [f"{a.shape[1]}x{a.shape[0]}", f"{psnrs[-1]:.2f}", f"{ssims[-1]:.4f}"]
        row = written[name]
        assert (int(row["height"]), int(row["width"])) == a.shape[:2]
        assert float(row["psnr"]) == pytest.approx(psnrs[-1], abs=1e-9)
        assert float(row["ms_ssim"]) == pytest.approx(ssims[-1], abs=1e-9)
    assert printed["mean"] == ["", f"{np.mean(psnrs):.2f}", f"{np.mean(ssims):.4f}"]
    assert float(written["mean"]["psnr"]) == pytest.approx(np.mean(psnrs), abs=1e-9)


def test_an_original_without_its_decoded_image_is_named_in_one_line(pairs):
    orig, dec = pairs
    (dec / "sub" / "b.png").unlink()
    ran = run_aepipe("compare", orig, dec, check=False)
    assert ran.returncode == 2 and ran.stderr.count("\n") == 1 and ran.stderr.startswith("aepipe: error:")
    assert f"no decoded image for {orig}/sub/b.jpg" in ran.stderr, ran.stderr


def test_other_mismatches_are_one_line_each(pairs, tmp_path, digits_run):
    """A missing folder, a decoded image of another size or colour, and a --codes store of float
    codes: each one `aepipe: error:` line naming what is wrong, exit code 2."""
    from PIL import Image

    orig, dec = pairs
    codes = tmp_path / "codes.zarr"
    run_aepipe("encode", "builtin:digits-test", "--model", digits_run, "--out", codes, "--engine", "local")
    Image.open(dec / "a.png").crop((0, 0, 100, 100)).save(tmp_path / "small.png")
    Image.open(dec / "c.png").convert("L").save(tmp_path / "gray.png")
    for args, says in [((orig, tmp_path / "nowhere"), "nowhere: no such file or folder"),
                       ((orig / "a.png", tmp_path / "small.png"), "small.png is 100x100 pixels, its original"),
                       ((orig / "c.png", tmp_path / "gray.png"), "gray.png is grayscale, its original"),
                       ((orig, dec, "--codes", codes), "codes.zarr: not a bitstream store")]:
        ran = run_aepipe("compare", *args, check=False)
        assert ran.returncode == 2 and ran.stderr.count("\n") == 1 and ran.stderr.startswith("aepipe: error:")
        assert says in ran.stderr, ran.stderr
