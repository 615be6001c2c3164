"""The compress family: real entropy-coded bitstreams (constriction ANS), their rate, and their integrity."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr

from aepipe.bitstream import LatentCoder
from aepipe.models import ModelConfig, build_model
from aepipe.training import TrainConfig, fit_local
from tests.conftest import run_aepipe


def photo_patches(n=64, size=32):
    """Real pixels in [0, 1]: patches of scikit-image's camera and coins."""
    import skimage.data as skd

    out = []
    for im in (skd.camera(), skd.coins()):
        h, w = (im.shape[0] // size) * size, (im.shape[1] // size) * size
        out.append(im[:h, :w].reshape(h // size, size, w // size, size).transpose(0, 2, 1, 3).reshape(-1, size, size))
    return (np.concatenate(out)[:: max(1, len(np.concatenate(out)) // n)][:n] / 255.0).astype(np.float32)


def tiny(lmbda=0.01, shape=(32, 32), init="pca"):
    torch.manual_seed(0)
    return build_model(ModelConfig(family="compress", input_shape=shape, code_dim=8, hidden=(8,), lmbda=lmbda, init=init))


def block_dct(im: np.ndarray) -> np.ndarray:
    """(H, W) -> (64, H/8, W/8): scipy's orthonormal DCT of each 8x8 block, coefficient u * 8 + v."""
    from scipy.fft import dctn

    h, w = im.shape
    blocks = im.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)
    return dctn(blocks, axes=(2, 3), norm="ortho").reshape(h // 8, w // 8, 64).transpose(2, 0, 1)


def test_the_dct_floor_starts_as_a_block_dct_codec():
    """--init pca: before training, the latent is JPEG's 8x8 DCT of the image divided by the step
    --lmbda sets, and the synthesis is the inverse DCT of the rounded latent (gates at zero)."""
    import skimage.data as skd
    from scipy.fft import idctn

    from aepipe.models import YCBCR, dct_step

    model = tiny(lmbda=0.0025).eval()
    im = skd.camera()[:64, :96] / 255.0
    step = dct_step(0.0025)
    with torch.no_grad():
        y = model.analysis(torch.from_numpy(im[None]).float())[0].numpy()
        q = np.round(y)
        x_hat = model.synthesis(torch.from_numpy(q[None]).float(), im.shape)[0, 0].numpy()
    np.testing.assert_allclose(y, block_dct(im - 0.5) / step, atol=1e-3)
    back = idctn(q.transpose(1, 2, 0).reshape(8, 12, 8, 8) * step, axes=(2, 3), norm="ortho") + 0.5
    np.testing.assert_allclose(x_hat, back.transpose(0, 2, 1, 3).reshape(64, 96), atol=1e-4)
    assert step * 255 == pytest.approx(58.8, abs=0.1)  # the high-rate optimum for lmbda 0.0025, in grey levels
    # colour, as JPEG: YCbCr, luma's 8x8 DCT, chroma averaged over 2x2 pixels (4:2:0) with a 4x4 DCT;
    # unrounded, synthesis gives back luma exactly and each chroma plane's 2x2 averages
    colour = tiny(shape=(3, 32, 48)).eval()
    rgb = skd.astronaut()[:32, :48] / 255.0
    with torch.no_grad():
        y = colour.analysis(torch.from_numpy(rgb.transpose(2, 0, 1)[None]).float())[0].numpy()
        back = colour.synthesis(torch.from_numpy(y[None]), (32, 48))[0].numpy().transpose(1, 2, 0)
    assert y.shape == (96, 4, 6)
    ycc = (rgb - 0.5) @ np.array(YCBCR).T
    np.testing.assert_allclose(y[:64], block_dct(ycc[..., 0]) / dct_step(0.01), atol=1e-3)
    ycc_back = (back - 0.5) @ np.array(YCBCR).T
    np.testing.assert_allclose(ycc_back[..., 0], ycc[..., 0], atol=1e-5)
    half = ycc[..., 1:].reshape(16, 2, 24, 2, 2).mean((1, 3))
    np.testing.assert_allclose(ycc_back[..., 1:], half.repeat(2, 0).repeat(2, 1), atol=1e-5)


@pytest.mark.parametrize("init", ["pca", "none"])
def test_entropy_coded_round_trip_is_exact_and_costs_what_the_model_counts(init):
    import skimage.data as skd

    model = tiny(init=init).eval()
    coder = LatentCoder(model.density)
    with torch.no_grad():
        x = torch.from_numpy(skd.camera()[None, :200, :120] / 255.0).float()  # not a multiple of 16: padded
        y = torch.round(model.analysis(x))[0]
        counted = -torch.log2(model.density.likelihood(y[None])).sum().item()  # the rate training minimises
    y = y.numpy().astype(np.int64)
    data = coder.encode(y)
    assert np.array_equal(coder.decode(data, y.shape), y)
    # ANS spends at most a word or so beyond the information content, plus perfect=False's rounding
    assert counted <= 8 * len(data) <= counted * 1.02 + 64
    # values far outside the table's range take the escape path and still come back exactly
    y[0, 0, 0], y[-1, -1, -1] = coder.hi + 1000, coder.lo - 5
    assert np.array_equal(coder.decode(coder.encode(y), y.shape), y)
    assert coder.encode(y) == coder.encode(y)  # same bytes every time


def test_rate_falls_as_lmbda_falls():
    import skimage.data as skd

    x = photo_patches()
    # rates are measured on whole 128x128 crops: a 32x32 patch's few latents cost little beside
    # the ANS coder's last words, which every bitstream pays
    held = torch.from_numpy(np.stack([skd.camera()[:128, :128], skd.coins()[:128, :128]]) / 255.0).float()
    rates = {}
    for lmbda in (1.0, 0.0001):
        model, _ = fit_local(ModelConfig(family="compress", input_shape=(32, 32), code_dim=8, hidden=(8,), lmbda=lmbda),
                             TrainConfig(epochs=40, batch_size=8, lr=5e-3, patience=0), x[8:], x[:8])
        coder = LatentCoder(model.density)
        with torch.no_grad():
            y = torch.round(model.analysis(held)).numpy().astype(np.int64)
        rates[lmbda] = sum(8 * len(coder.encode(yi)) for yi in y) / held.numel()  # real bytes, bits per pixel
    assert rates[0.0001] < 0.7 * rates[1.0], rates


@pytest.mark.parametrize("prior", ["context", "factorized"])
def test_training_decodes_the_rounded_latent_and_prices_the_noisy_one(prior):
    """Mixed quantisation: in training the synthesis reads round(y), as the decoder will, with the
    gradient passed straight through to the analysis; the rate is priced on y plus noise (it differs
    from the rounded latent's)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="compress", input_shape=(32, 32), code_dim=8, hidden=(8,), lmbda=0.01,
                                    prior=prior)).train()
    x = torch.from_numpy(photo_patches(n=4))
    y = model.analysis(x)
    torch.manual_seed(1)
    y_hat, bits, _ = model.rate(y)
    assert torch.equal(y_hat, torch.round(y))
    y_hat.sum().backward()  # straight through: d y_hat / d y is the identity
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (model.dct.weight, model.log_step))
    with torch.no_grad():
        rounded_bits = model.eval().rate(y)[1]
    assert not torch.isclose(bits.detach(), rounded_bits)


@pytest.fixture(scope="module")
def compress_run(ray_local, tmp_path_factory):
    """`aepipe train --family compress` on 64 real 32x32 photo patches, kept as a .npy of 0..255."""
    tmp = tmp_path_factory.mktemp("compress")
    np.save(tmp / "imgs.npy", (photo_patches() * 255).astype(np.float32))
    run_aepipe("train", tmp / "imgs.npy", "--family", "compress", "--code-dim", 8, "--hidden", 8, "--lmbda", 0.01,
               "--epochs", 3, "--out", tmp / "run")
    return tmp


@pytest.mark.parametrize("fmt", ["zarr", "parquet"])
def test_encode_writes_bitstreams_and_decode_restores_the_same_pixels(compress_run, ray_local, fmt):
    from aepipe.run import load_run

    tmp = compress_run
    store = tmp / f"b.{fmt}"
    proc = run_aepipe("encode", tmp / "imgs.npy", "--model", tmp / "run", "--out", store, address=ray_local)
    if fmt == "zarr":
        g = zarr.open_group(str(store), mode="r")
        streams, nbytes = list(g["codes"][:]), g["nbytes"][:]
    else:
        t = pq.read_table(store)
        streams, nbytes = t.column("bitstream").to_pylist(), t.column("nbytes").to_numpy()
    assert len(streams) == 64 and [len(s) for s in streams] == list(nbytes)
    if fmt == "zarr":  # other tools read the same bitstreams with one plain call
        import xarray as xr

        ds = xr.open_zarr(store)
        assert ds.codes.dims == ("row",) and [bytes(b) for b in ds.codes.values] == streams
    else:
        import polars as pl

        assert pl.read_parquet(store)["bitstream"].to_list() == streams
    bpp = float(proc.stdout.split("bitstreams, ")[1].split(" bits")[0])
    assert bpp == pytest.approx(8 * sum(len(s) for s in streams) / (64 * 32 * 32), abs=1e-4)  # stored bytes = counted
    a, b = tmp / f"a_{fmt}.npy", tmp / f"b_{fmt}.npy"
    run_aepipe("decode", store, "--model", tmp / "run", "--out", a)
    run_aepipe("decode", store, "--model", tmp / "run", "--out", b, "--engine", "ray", address=ray_local)  # on Ray
    run = load_run(tmp / "run")
    x = np.load(tmp / "imgs.npy")
    with torch.no_grad():  # the model's own round trip: round(analysis) -> synthesis
        want = run.normalizer.invert(run.model.eval().decode(run.model.encode(torch.from_numpy(run.normalizer.apply(x)))).numpy())
    assert np.array_equal(np.load(a), np.load(b))  # same pixels every time, in this process or on Ray
    np.testing.assert_allclose(np.load(a), want, atol=1e-3)
    picked = tmp / f"ids_{fmt}.npy"  # named images only, in the order asked
    run_aepipe("decode", store, "--model", tmp / "run", "--out", picked, "--ids", "41,3")
    assert np.array_equal(np.load(picked), np.load(a)[[41, 3]])
    proc = run_aepipe("decode", store, "--model", tmp / "run", "--out", tmp / "none.npy", "--ids", "64", check=False)
    assert proc.returncode == 2 and 'no row with id "64"' in proc.stderr


def one(data: bytes) -> np.ndarray:
    a = np.empty(1, dtype=object)  # a vlen-bytes zarr array takes bytes objects in an object array
    a[0] = data
    return a


def test_damaged_bitstreams_are_refused_by_image_id(compress_run, ray_local):
    tmp = compress_run
    store = tmp / "damaged.zarr"
    run_aepipe("encode", tmp / "imgs.npy", "--model", tmp / "run", "--out", store, address=ray_local)
    g = zarr.open_group(str(store), mode="r+")
    good = g["codes"][5:6][0]  # a bytes object (g["codes"][5] is a 0-d object array)
    g["codes"][5:6] = one(good[:-4])  # truncated by one word
    proc = run_aepipe("decode", store, "--model", tmp / "run", "--out", tmp / "t.npy", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("aepipe: error:"), proc.stderr
    assert 'image "5"' in proc.stderr and "truncated" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp / "t.npy").exists()
    g["codes"][5:6] = one(good[:-1] + bytes([good[-1] ^ 0x10]))  # same length, one bit flipped
    proc = run_aepipe("decode", store, "--model", tmp / "run", "--out", tmp / "c.npy", check=False)
    assert proc.returncode == 2 and 'image "5"' in proc.stderr and "CRC32" in proc.stderr, proc.stderr
    assert not (tmp / "c.npy").exists()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """train/: 64 real 32x32 photo patches as PNGs; photos/: three held-out images of their own sizes,
    none a multiple of the codec's 8 or 16 but one (a.png 40x56, sub/b.jpg 33x70, c.png 64x64), and a
    compress model trained on train/ (its tiles are 32x32)."""
    import skimage.data as skd
    from PIL import Image

    tmp = tmp_path_factory.mktemp("own_sizes")
    (tmp / "train").mkdir()
    for i, p in enumerate(photo_patches()):
        Image.fromarray((p * 255).round().astype(np.uint8)).save(tmp / "train" / f"t{i:02d}.png")
    (tmp / "photos" / "sub").mkdir(parents=True)
    cam = skd.camera()
    Image.fromarray(cam[:40, :56]).save(tmp / "photos" / "a.png")
    Image.fromarray(cam[100:133, 200:270]).save(tmp / "photos" / "sub" / "b.jpg", quality=95)
    Image.fromarray(cam[300:364, 300:364]).save(tmp / "photos" / "c.png")
    run_aepipe("train", tmp / "train", "--family", "compress", "--hidden", 8, "--lmbda", 0.01, "--epochs", 3,
               "--in-process", "--out", tmp / "run")
    return tmp


SIZES = {"a.png": (40, 56), "sub/b.jpg": (33, 70), "c.png": (64, 64)}


def decoded_as_the_model_codes(photos, dec, run_dir) -> list:
    """Each of SIZES decoded at its size and within one grey level of the model's own quantised
    round trip of the whole image (model.quantize: rounding, or the hyperprior's about its means);
    (original, decoded) pixels of each."""
    from PIL import Image

    from aepipe.run import load_run

    run = load_run(run_dir)
    model = run.model.eval()
    pairs = []
    for name, size in SIZES.items():
        original = np.asarray(Image.open(photos / name), np.float32)
        decoded = np.asarray(Image.open(dec / name.replace(".jpg", ".png")), np.float32)
        assert decoded.shape == original.shape == size
        with torch.no_grad():
            x = torch.from_numpy(run.normalizer.apply(original[None]))
            want = run.normalizer.invert(model.synthesis(model.quantize(model.analysis(x)), size)[0, 0].numpy()[None])[0]
        assert np.abs(decoded - np.clip(np.rint(want), 0, 255)).max() <= 1
        pairs.append((original, decoded))
    return pairs


def test_a_codec_keeps_every_image_at_its_own_size(photo_folder, ray_local):
    """encode codes each image at its own size (not resized to the model's 32x32 tiles), on Ray as in
    this process; the rate counts the real pixels; decode gives PNGs of the original names and sizes,
    the model's own round trip of each whole image."""
    tmp = photo_folder
    here = run_aepipe("encode", tmp / "photos", "--model", tmp / "run", "--out", tmp / "b.parquet",
                      "--engine", "local")
    run_aepipe("encode", tmp / "photos", "--model", tmp / "run", "--out", tmp / "b.zarr", "--engine", "ray",
               address=ray_local)
    g = zarr.open_group(str(tmp / "b.zarr"), mode="r")
    t = pq.read_table(tmp / "b.parquet")
    assert list(g["ids"][:]) == t.column("id").to_pylist() == ["a.png", "c.png", "sub/b.jpg"]
    assert [tuple(s) for s in g["image_size"][:]] == [SIZES[i] for i in g["ids"][:]]
    assert [bytes(b) for b in g["codes"][:]] == t.column("bitstream").to_pylist()  # same bytes on Ray and here
    pixels = sum(h * w for h, w in SIZES.values())
    bpp = float(here.stdout.split("bitstreams, ")[1].split(" bits")[0])
    assert bpp == pytest.approx(8 * int(g["nbytes"][:].sum()) / pixels, abs=1e-4)
    assert f"over {pixels:,} pixels" in run_aepipe("info", tmp / "b.zarr").stdout

    run_aepipe("decode", tmp / "b.zarr", "--model", tmp / "run", "--out", tmp / "dec", "--engine", "ray",
               address=ray_local)
    for original, decoded in decoded_as_the_model_codes(tmp / "photos", tmp / "dec", tmp / "run"):
        assert 10 * np.log10(255 ** 2 / np.mean((decoded - original) ** 2)) > 22  # an image, not noise
    proc = run_aepipe("decode", tmp / "b.zarr", "--model", tmp / "run", "--out", tmp / "d.npy", check=False)
    assert proc.returncode == 2 and "own sizes" in proc.stderr and proc.stderr.count("\n") == 1


def coded_cost(model, coder, x, y) -> float:
    """bits per pixel of y's real bitstream + lmbda x 255^2 x MSE of its decoded image (x: (1, H, W))."""
    data = coder.encode(y[0].numpy())
    with torch.no_grad():
        x_hat = model.synthesis(torch.from_numpy(coder.decode(data, tuple(y.shape[1:]))[None]).float(), x.shape[-2:])
    return 8 * len(data) / x[0].numel() + model.cfg.lmbda * 255 ** 2 * torch.mean((x_hat[:, 0] - x) ** 2).item()


@pytest.mark.parametrize("tile", [64, 4])
def test_refining_the_latent_lowers_the_coded_cost_and_repeats(monkeypatch, one_thread, tile):
    """Compress.refine (encode --refine) on an image that is not a multiple of 8, whole (tile 64)
    or in tiles of 4 latent values with their margins: rounded and really coded, it costs less
    (bits + lmbda x distortion) than the analysis transform's latent, the same latent every time;
    the hyperprior refuses."""
    import skimage.data as skd

    import aepipe.models.compress as compress

    monkeypatch.setattr(compress, "REFINE_TILE", tile)
    model = tiny(lmbda=0.005).eval()
    coder = model.latent_coder()
    x = torch.from_numpy(skd.camera()[200:260, 180:252] / 255.0).float()[None]  # 60 x 72
    with torch.no_grad():
        plain = model.analysis(x)
    refined = model.refine(x, 40)
    assert torch.equal(refined, model.refine(x, 40))
    assert coded_cost(model, coder, x, refined) < 0.99 * coded_cost(model, coder, x, plain)
    hyper = build_model(ModelConfig(family="compress", input_shape=(32, 32), code_dim=8, hidden=(8,),
                                    prior="hyperprior"))
    with pytest.raises(ValueError, match="factorized or context"):
        hyper.refine(x, 5)


@pytest.fixture
def one_thread():
    """torch on one thread for the test: on a busy machine (Ray's workers, a bench beside it) idle
    torch threads spin, and the refinement's many small steps ran 30 times slower on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_encode_refine_codes_each_image_for_less_and_decodes_as_ever(photo_folder, digits_run, tmp_path, one_thread):
    """aepipe encode --refine: every image at its own size, cheaper in bits + lmbda x distortion than
    the plain encode, decoded by the plain decode; --refine on a model that is not a codec, or
    below 0, is one error line."""
    from PIL import Image

    tmp = photo_folder
    for name, extra in (("plain", []), ("refined", ["--refine", 30])):
        run_aepipe("encode", tmp / "photos", "--model", tmp / "run", "--out", tmp_path / f"{name}.zarr",
                   "--engine", "local", *extra)
        run_aepipe("decode", tmp_path / f"{name}.zarr", "--model", tmp / "run", "--out", tmp_path / name,
                   "--engine", "local")
    lmbda = 0.01  # photo_folder's --lmbda
    cost = {}
    for name in ("plain", "refined"):
        g = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r")
        nbytes = dict(zip(g["ids"][:], g["nbytes"][:].tolist()))
        total = 0.0
        for image, size in SIZES.items():
            original = np.asarray(Image.open(tmp / "photos" / image), np.float64) / 255
            decoded = np.asarray(Image.open(tmp_path / name / image.replace(".jpg", ".png")), np.float64) / 255
            assert decoded.shape == size
            total += 8 * nbytes[image] / original.size + lmbda * 255 ** 2 * np.mean((decoded - original) ** 2)
        cost[name] = total
    assert cost["refined"] < cost["plain"], cost
    for args, message in (((digits_run, 5), "only compress models refine"), ((tmp / "run", -1), "0 (off) or more")):
        proc = run_aepipe("encode", tmp / "photos", "--model", args[0], "--out", tmp_path / "x.zarr",
                          "--engine", "local", "--refine", args[1], check=False)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert not (tmp_path / "x.zarr").exists()


def test_compare_gives_each_images_bytes_and_bits_per_pixel(photo_folder, tmp_path):
    """aepipe compare --codes, in this process: an image's bytes are its stored bitstream's length (Zarr
    or Parquet), its bits per pixel 8 x bytes over its own pixels, the mean row's the rate encode
    printed; an original the store lacks is refused in one line naming its id."""
    import csv
    import shutil

    tmp = photo_folder
    for fmt in ("zarr", "parquet"):
        run = run_aepipe("encode", tmp / "photos", "--model", tmp / "run", "--out", tmp_path / f"q.{fmt}",
                         "--engine", "local")
    run_aepipe("decode", tmp_path / "q.zarr", "--model", tmp / "run", "--out", tmp_path / "dec", "--engine", "local")
    g = zarr.open_group(str(tmp_path / "q.zarr"), mode="r")
    nbytes = dict(zip(g["ids"][:], g["nbytes"][:].tolist()))
    assert nbytes == dict(zip(*pq.read_table(tmp_path / "q.parquet", columns=["id", "nbytes"]).to_pydict().values()))
    bpp = float(run.stdout.split("bitstreams, ")[1].split(" bits")[0])
    for fmt in ("zarr", "parquet"):
        run_aepipe("compare", tmp / "photos", tmp_path / "dec", "--codes", tmp_path / f"q.{fmt}",
                   "--csv", tmp_path / f"{fmt}.csv")
        with open(tmp_path / f"{fmt}.csv") as f:
            rows = {r["image"]: r for r in csv.DictReader(f)}
        for name, (h, w) in SIZES.items():
            assert int(rows[name]["bytes"]) == nbytes[name]
            assert float(rows[name]["bpp"]) == pytest.approx(8 * nbytes[name] / (h * w), rel=1e-12)
            assert float(rows[name]["psnr"]) > 22 and 0 < float(rows[name]["ms_ssim"]) <= 1
        assert float(rows["mean"]["bpp"]) == pytest.approx(bpp, abs=1e-4)

    shutil.copytree(tmp / "photos", tmp_path / "more")
    shutil.copy(tmp / "photos" / "c.png", tmp_path / "more" / "d.png")
    shutil.copy(tmp_path / "dec" / "c.png", tmp_path / "dec" / "d.png")
    ran = run_aepipe("compare", tmp_path / "more", tmp_path / "dec", "--codes", tmp_path / "q.zarr", check=False)
    assert ran.returncode == 2 and ran.stderr.count("\n") == 1, ran.stderr
    assert 'no bitstream with id "d.png"' in ran.stderr, ran.stderr


def test_images_over_the_codecs_limit_are_refused_or_skipped(photo_folder, monkeypatch):
    """An image bigger than images.MAX_PIXELS (here lowered to 3,000 pixels: c.png has 4,096) is refused
    in one line naming it, or skipped with --on-bad-row skip; nothing else is left."""
    from aepipe.sources import images

    tmp = photo_folder
    monkeypatch.setattr(images, "MAX_PIXELS", 3000)
    proc = run_aepipe("encode", tmp / "photos", "--model", tmp / "run", "--out", tmp / "big.zarr", "--engine", "local",
                      check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("aepipe: error:") and proc.stderr.count("\n") == 1
    assert "photos/c.png: 64x64 pixels is more than the 3,000" in proc.stderr, proc.stderr
    assert not (tmp / "big.zarr").exists() and not (tmp / "big.zarr.partial").exists()
    proc = run_aepipe("encode", tmp / "photos", "--model", tmp / "run", "--out", tmp / "big.zarr", "--engine", "local",
                      "--on-bad-row", "skip")
    assert "skipped 1 bad row: c.png" in proc.stdout
    assert list(zarr.open_group(str(tmp / "big.zarr"), mode="r")["ids"][:]) == ["a.png", "sub/b.jpg"]


def test_the_density_learns_at_ten_times_the_rate_through_the_schedule():
    """aepipe train's schedule scales every parameter group's own rate: the compress family's density
    keeps its 10x (it was set back to --lr each epoch, so `aepipe train` never gave it the 10x)."""
    from aepipe.training.config import set_lr

    model = tiny()
    opt = torch.optim.AdamW(model.param_groups(1e-3), lr=1e-3)  # as training.loop makes it
    tcfg = TrainConfig(epochs=10, lr=1e-3)
    for epoch in (0, 5, 9):
        set_lr(opt, tcfg, epoch)
        rest, density = (g["lr"] for g in opt.param_groups)
        assert density == pytest.approx(10 * rest) and rest <= 1e-3
    assert rest < 1e-3 / 2  # the cosine schedule has come down


@pytest.mark.parametrize("prior", ["hyperprior", "factorized"])
def test_the_other_priors_keep_every_image_at_its_own_size(photo_folder, tmp_path, prior):
    """--prior hyperprior and factorized (the default is context) through encode and decode (in this
    process): each image at its own size (the hyperprior's side latent z rounded up from the latent's
    odd sizes); decoded = the model's own quantised round trip."""
    tmp = photo_folder
    run_aepipe("train", tmp / "train", "--family", "compress", "--prior", prior, "--hidden", 8, "--lmbda", 0.01,
               "--epochs", 3, "--in-process", "--out", tmp_path / "run")
    run_aepipe("encode", tmp / "photos", "--model", tmp_path / "run", "--out", tmp_path / "b.zarr", "--engine", "local")
    assert [tuple(s) for s in zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["image_size"][:]] == [
        SIZES["a.png"], SIZES["c.png"], SIZES["sub/b.jpg"]]
    run_aepipe("decode", tmp_path / "b.zarr", "--model", tmp_path / "run", "--out", tmp_path / "dec", "--engine", "local")
    decoded_as_the_model_codes(tmp / "photos", tmp_path / "dec", tmp_path / "run")
