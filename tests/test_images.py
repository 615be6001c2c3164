"""Image folders and builtin:photos: reading, ids, modes and sizes, and a corrupt file under
--on-bad-row fail (one error line naming it) and skip (left out, listed), through the command."""

import io
import json

import numpy as np
import pyarrow.dataset as pads
import pytest
import zarr
from PIL import Image

from aepipe import AepipeError
from aepipe.batch.decode import decode
from aepipe.batch.encode import encode
from aepipe.normalize import Normalizer, combine_stats
from aepipe.sources import bad_rows, open_source, skipped_rows, to_dataset
from aepipe.stores.read import read_metadata
from aepipe.training.data import batch_stats, datasets, skipped
from tests.conftest import run_aepipe
from tests.test_cli import fails_cleanly

BAD = "c_bad.png"  # sorts among the good files, so a job meets it mid-way


def _image(rng, h, w, rgb=True) -> Image.Image:
    """Smooth colour gradients plus noise: something a small model can learn in an epoch."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([yy, xx, 1 - yy], -1) * 200 + rng.uniform(0, 55, (h, w, 3))
    img = Image.fromarray(base.astype(np.uint8), "RGB")
    return img if rgb else img.convert("L")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """PNGs of several sizes (RGB and L), JPEGs in a subfolder, a non-image, and a PNG cut short:
    its header reads, its pixels do not (no check of headers at open time can find it)."""
    root = tmp_path_factory.mktemp("imgs") / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    _image(rng, 12, 16).save(root / "a0.png")  # the first image: its size is the default
    _image(rng, 24, 24, rgb=False).save(root / "a1.png")
    _image(rng, 10, 30).save(root / "b.PNG")
    for i in range(5):
        _image(rng, 12 + i, 16).save(root / f"d{i}.png")
    _image(rng, 20, 20).save(root / "sub" / "e.jpg", quality=90)
    _image(rng, 16, 20).save(root / "sub" / "deeper" / "f.jpeg")
    _image(rng, 12, 16).save(root / "sub" / "g.jpg")
    (root / "notes.txt").write_text("not an image")
    buf = io.BytesIO()
    _image(rng, 12, 16).save(buf, "PNG")
    (root / BAD).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return root


GOOD = ["a0.png", "a1.png", "b.PNG"] + [f"d{i}.png" for i in range(5)] + ["sub/deeper/f.jpeg", "sub/e.jpg", "sub/g.jpg"]


def test_folder_rows_ids_modes_and_sizes(folder):
    src = open_source(str(folder), on_bad_row="skip")
    assert src.n_rows == len(GOOD) + 1 and src.schema.shape == (12, 16)  # L, the first image's size
    ids, x = src.read(0, src.n_rows)
    assert sorted(ids[~bad_rows(ids)]) == sorted(GOOD)
    assert [s["id"] for s in skipped_rows(ids)] == [BAD] and not x[bad_rows(ids)].any()
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255 and x[0].std() > 10
    np.testing.assert_array_equal(x[0], np.asarray(Image.open(folder / "a0.png").convert("L"), np.float32))

    rgb = open_source(str(folder), mode="RGB", image_size=(8, 6), on_bad_row="skip")
    assert rgb.schema.shape == (3, 8, 6) and rgb.read(0, 2)[1].shape == (2, 3, 8, 6)
    assert rgb.fitted() == {"mode": "RGB", "image_size": [8, 6]}
    again = open_source(str(folder), fitted=rgb.fitted())  # how encode reopens a run's data
    assert again.schema == rgb.schema

    one = open_source(str(folder / "sub" / "e.jpg"), image_size=(8, 8))
    assert one.n_rows == 1 and list(one.read(0, 1)[0]) == ["e.jpg"]

    with pytest.raises(AepipeError, match=f"{BAD}: not a readable image"):
        open_source(str(folder)).read(0, src.n_rows)  # fail is the default
    with pytest.raises(AepipeError, match='--mode "CMYK"'):
        open_source(str(folder), mode="CMYK")
    with pytest.raises(AepipeError, match="--columns does not apply"):
        open_source(str(folder), columns=("a",))


def test_train_encode_decode_an_image_folder(ray_local, folder, tmp_path):
    """Train (in-process) and encode (Ray) with the corrupt file skipped: every good id once, by
    its relative path, in Zarr and Parquet; the bad one listed in the metadata and the summary."""
    run = tmp_path / "run"
    done = run_aepipe("train", folder, "--out", run, "--family", "conv", "--hidden", "4", "--code-dim", 4,
                      "--epochs", 1, "--image-size", 8, "--val-fraction", 0.3, "--on-bad-row", "skip")
    assert f"skipped 1 bad row: {BAD}" in done.stdout
    meta = json.loads((run / "aepipe.json").read_text())
    assert meta["reader"] == {"mode": "L", "image_size": [8, 8]} and meta["n_rows"] == len(GOOD)
    assert [s["id"] for s in meta["skipped"]] == [BAD]

    # Ray Train's data path skips it too: the statistics pass and the materialised splits
    src = open_source(str(folder), image_size=(8, 8), on_bad_row="skip")
    parts = to_dataset(src, rows_per_task=4).map_batches(batch_stats, batch_size=None).take_all()
    stats = {**combine_stats(parts), "skipped": skipped(parts)}
    assert stats["count"] == len(GOOD) and [s["id"] for s in stats["skipped"]] == [BAD]
    for stream in (False, True):  # materialised, and streamed (reread every epoch)
        splits = datasets(src, Normalizer.fit("global", stats), 0.3, {"train": stream, "val": stream})
        assert splits["train"].count() + splits["val"].count() == len(GOOD)

    # the corrupt file stops encoding by default: one line naming it, exit 2, nothing left behind
    fails_cleanly(["encode", folder, "--model", run, "--out", tmp_path / "x.zarr"], f"{BAD}: not a readable image",
                  tmp_path / "x.zarr")

    done = run_aepipe("encode", folder, "--model", run, "--out", tmp_path / "c.zarr", "--on-bad-row", "skip",
                      "--chunk-rows", 4, address=ray_local)  # chunks split by the skipped row
    assert f"encoded {len(GOOD)} rows" in done.stdout and f"skipped 1 bad row: {BAD}" in done.stdout
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert list(g["ids"][:]) == GOOD and g["codes"].shape == (len(GOOD), 4)  # input order, gap closed
    kind, attrs = read_metadata(tmp_path / "c.zarr")
    assert attrs["n_rows"] == len(GOOD) and attrs["skipped"][0]["id"] == BAD and attrs["skipped"][0]["reason"]

    encode(str(folder), run, tmp_path / "c.parquet", read={"on_bad_row": "skip"})
    t = pads.dataset(str(tmp_path / "c.parquet")).to_table()
    assert sorted(t.column("id").to_pylist()) == GOOD
    kind, attrs = read_metadata(tmp_path / "c.parquet")
    assert attrs["n_rows"] == len(GOOD) and [s["id"] for s in attrs["skipped"]] == [BAD]
    by_id = dict(zip(t.column("id").to_pylist(), np.stack(t.column("code").to_numpy(zero_copy_only=False))))
    np.testing.assert_allclose(np.stack([by_id[i] for i in GOOD]), g["codes"][:], rtol=1e-5, atol=1e-6)

    # string ids select rows to decode, from either store
    run_aepipe("decode", tmp_path / "c.zarr", "--model", run, "--out", tmp_path / "sel.zarr", "--ids", "sub/e.jpg,a1.png")
    sel = zarr.open_group(str(tmp_path / "sel.zarr"), mode="r")
    assert list(sel["ids"][:]) == ["sub/e.jpg", "a1.png"] and sel["data"].shape == (2, 8, 8)
    assert decode(tmp_path / "c.parquet", run, tmp_path / "sel.npy", ids=["sub/e.jpg", "a1.png"]) == 2
    np.testing.assert_allclose(np.load(tmp_path / "sel.npy"), sel["data"][:], rtol=1e-5, atol=1e-4)

    # score: the same skip, in its store and its summary line
    done = run_aepipe("score", folder, "--model", run, "--out", tmp_path / "s.parquet", "--on-bad-row", "skip",
                      "--engine", "local")
    assert f"scored {len(GOOD)} rows" in done.stdout and f"skipped 1 bad row: {BAD}" in done.stdout
    assert sorted(pads.dataset(str(tmp_path / "s.parquet")).to_table().column("id").to_pylist()) == GOOD
    done = run_aepipe("denoise", folder, "--model", run, "--out", tmp_path / "d.zarr", "--on-bad-row", "skip",
                      "--engine", "local")
    assert f"denoised {len(GOOD)} rows" in done.stdout and list(zarr.open_group(str(tmp_path / "d.zarr"))["ids"][:]) == GOOD
    fails_cleanly(["denoise", folder, "--model", run, "--out", tmp_path / "d.npy", "--on-bad-row", "skip"],
                  "write to .zarr or .parquet", tmp_path / "d.npy")


def test_rgb_dense_model_and_bad_train(folder, tmp_path):
    """RGB at the first image's size (no --image-size) on a dense model; encode reads new images in
    the run's mode and size without being told. Training stops at the corrupt file by default."""
    fails_cleanly(["train", folder, "--out", tmp_path / "bad", "--epochs", 1], f"{BAD}: not a readable image")
    assert not (tmp_path / "bad").exists()
    run = tmp_path / "rgb"
    run_aepipe("train", folder, "--out", run, "--mode", "RGB", "--code-dim", 3, "--hidden", "16", "--epochs", 1,
               "--val-fraction", 0.3, "--on-bad-row", "skip")
    meta = json.loads((run / "aepipe.json").read_text())
    assert meta["reader"] == {"mode": "RGB", "image_size": [12, 16]} and meta["schema"]["shape"] == [3, 12, 16]
    fails_cleanly(["encode", folder, "--model", run, "--out", tmp_path / "l.zarr", "--mode", "L"],
                  "the model expects (3, 12, 16)")


def test_builtin_photos():
    import skimage.data as skd

    src = open_source("builtin:photos")
    sizes = [getattr(skd, n)().shape[:2] for n in ("camera", "astronaut", "coffee", "chelsea", "rocket", "horse",
                                                    "coins", "moon", "grass", "gravel", "brick")]
    assert src.n_rows == sum((h // 32) * (w // 32) for h, w in sizes)
    assert src.schema.shape == (32, 32) and src.ids[0] == "camera/0000" and src.ids[-1].startswith("brick/")
    assert len(set(src.ids)) == src.n_rows and src.labels.max() == 10
    ids, x = src.read(0, 2)
    assert 0 <= x.min() and x.max() <= 255
    np.testing.assert_allclose(x[1], skd.camera()[:32, 32:64])  # row-major over the grid


def test_png_folder_output_from_decode_and_denoise(ray_local, folder, tmp_path, table_dir):
    """decode and denoise write a folder of PNGs named by the input's relative paths (suffix .png),
    pixels the .npy output's values on the training images' 0..255 range; on Ray and in-process.
    A model whose rows are not images is refused before anything runs."""
    from aepipe.run import load_run
    from aepipe.stores.png_sink import PngSink

    run = tmp_path / "run"
    run_aepipe("train", folder, "--out", run, "--hidden", "16", "--code-dim", 4, "--epochs", 1, "--image-size", 8,
               "--val-fraction", 0.3, "--on-bad-row", "skip")
    run_aepipe("encode", folder, "--model", run, "--out", tmp_path / "c.zarr", "--on-bad-row", "skip")
    names = sorted(PngSink.name_for(i) for i in GOOD)
    assert names[:3] == ["a0.png", "a1.png", "b.png"] and "sub/deeper/f.png" in names
    norm = load_run(run).normalizer
    lo, span = norm.shift[0], norm.scale[0]

    def check(out, npy):
        manifest = json.loads((out / "_aepipe_manifest.json").read_text())
        assert manifest["files"] == names and manifest["n_rows"] == len(GOOD)
        got = np.stack([np.asarray(Image.open(out / n)) for n in map(PngSink.name_for, GOOD)])
        want = np.clip(np.rint((np.load(npy) - lo) / span * 255), 0, 255)
        assert got.shape == (len(GOOD), 8, 8) and np.abs(got - want).max() <= 1

    run_aepipe("decode", tmp_path / "c.zarr", "--model", run, "--out", tmp_path / "rec.npy")
    run_aepipe("decode", tmp_path / "c.zarr", "--model", run, "--out", tmp_path / "rec", "--engine", "ray")
    check(tmp_path / "rec", tmp_path / "rec.npy")
    run_aepipe("denoise", folder, "--model", run, "--out", tmp_path / "den.zarr", "--on-bad-row", "skip")
    den = zarr.open_group(str(tmp_path / "den.zarr"), mode="r")
    np.save(tmp_path / "den.npy", den["data"][:])
    done = run_aepipe("denoise", folder, "--model", run, "--out", tmp_path / "den", "--on-bad-row", "skip")
    assert f"skipped 1 bad row: {BAD}" in done.stdout
    check(tmp_path / "den", tmp_path / "den.npy")

    table_run = tmp_path / "table_run"
    run_aepipe("train", table_dir, "--out", table_run, "--code-dim", 2, "--hidden", "8", "--epochs", 1)
    fails_cleanly(["denoise", table_dir, "--model", table_run, "--out", tmp_path / "t"],
                  "a folder of PNG images needs an image model", tmp_path / "t")
