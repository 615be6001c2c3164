"""Odd but valid data, read right (issue 24): files a real dataset brings that are not the plain case.

Each case ends one of two ways. Read: the values aepipe reads (open_source(...).read, what every
job reads through) are the values the file holds, as a viewer or a spreadsheet would show them.
Refused: the command exits 2 with exactly one `aepipe: error:` line naming the file and the
column or row, no traceback, nothing written and the inputs unchanged, within seconds, as in
test_hostile.py. A few go through train, encode and load_codes (zero-variance columns, a row or
two, fewer rows than --code-dim, int64 ids beyond 2^53), in this process: no Ray is started.
"""

import decimal
import hashlib
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from aepipe.sources import open_source
from aepipe.stores.read import load_codes
from tests.conftest import aepipe_here

TIME_BOUND_S = 20


# ---------------------------------------------------------------- images

def png16(tmp):
    """16-bit grayscale: 0..65535 must land on 0..255, not clip at 255."""
    a = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    Image.fromarray(a).save(tmp / "deep.png")
    assert Image.open(tmp / "deep.png").mode.startswith("I")
    return tmp / "deep.png", {}, lambda x: np.testing.assert_allclose(x[0], a / 257.0, atol=1e-3)


def cmyk_jpeg(tmp):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp / "cmyk.jpg", quality=100)  # red ink-free cyan: red

    def check(x):
        r, g, b = x[0].reshape(3, -1).mean(1)
        assert r > 240 and g < 15 and b < 15, (r, g, b)
    return tmp / "cmyk.jpg", {"mode": "RGB"}, check


def exif_rotated_jpeg(tmp):
    """Orientation 6 (the camera held a quarter turn): 6 wide by 4 high on disk, 4 wide by 6 high shown."""
    img = Image.new("L", (6, 4), 0)
    img.paste(255, (0, 0, 3, 4))  # the left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp / "turned.jpg", exif=exif.tobytes(), quality=100)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp / "turned.jpg")), np.float32)
    assert shown.shape == (6, 4)

    def check(x):
        assert x.shape == (1, 6, 4)
        np.testing.assert_array_equal(x[0], shown)
        assert x[0, :3].min() > 200 and x[0, 3:].max() < 50  # the white half on top
    return tmp / "turned.jpg", {}, check


def palette_png_with_alpha(tmp):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = bytes([0, 128])  # per-entry alpha: what Pillow warns about through convert("RGB")
    img.save(tmp / "pal.png", transparency=bytes([0, 128]))

    def check(x):
        np.testing.assert_array_equal(x[0][:, 0, 0], [255, 0, 0])  # colours exact, alpha dropped
        np.testing.assert_array_equal(x[0][:, 0, 1], [0, 0, 255])
    return tmp / "pal.png", {"mode": "RGB"}, check


def animated_gif(tmp):
    frames = [Image.new("L", (4, 4), v) for v in (10, 200, 90)]
    frames[0].save(tmp / "anim.gif", save_all=True, append_images=frames[1:])
    return tmp / "anim.gif", {}, lambda x: np.testing.assert_array_equal(x[0], np.full((4, 4), 10.0))


def tiff(tmp):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(a).save(tmp / "t.tif")
    return tmp / "t.tif", {}, lambda x: np.testing.assert_array_equal(x[0], a)


def grayscale_in_rgb_folder(tmp):
    d = tmp / "photos"
    d.mkdir()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(d / "a.png")
    Image.new("L", (4, 4), 128).save(d / "b.png")
    Image.fromarray((np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)).save(d / "c.png")  # 16-bit gray too
    Image.new("L", (4, 4), 60).save(d / "d.gif")
    Image.new("RGB", (4, 4), (0, 0, 200)).save(d / "e.tiff")

    def check(x):
        assert x.shape == (5, 3, 4, 4)
        np.testing.assert_array_equal(x[1], np.full((3, 4, 4), 128.0))  # the gray plane three times
        np.testing.assert_allclose(x[2][1], np.arange(16).reshape(4, 4) * 4369 / 257.0, atol=1e-3)
        np.testing.assert_array_equal(x[3], np.full((3, 4, 4), 60.0))
        np.testing.assert_array_equal(x[4][:, 0, 0], [0, 0, 200])
    return d, {"mode": "RGB"}, check


# ---------------------------------------------------------------- CSV

def csv_file(name, data):
    def make(tmp):
        (tmp / name).write_bytes(data if isinstance(data, bytes) else data.encode())
        return tmp / name
    return make


def table_case(make, columns, values, ids=None):
    def case(tmp):
        def check(x, got_ids, src):
            assert src.schema.columns == tuple(columns)
            np.testing.assert_array_equal(x, np.asarray(values, np.float32))
            if ids is not None:
                assert list(got_ids) == ids
        return make(tmp), {}, check
    return case


def parquet_file(name, table):
    def make(tmp):
        pq.write_table(table, tmp / name)
        return tmp / name
    return make


BIG = 2 ** 53 + 1  # the first integer float64 cannot hold

READS = [
    ("png-16-bit", png16),
    ("jpeg-cmyk", cmyk_jpeg),
    ("jpeg-exif-rotated", exif_rotated_jpeg),
    ("png-palette-alpha", palette_png_with_alpha),
    ("gif-animated-first-frame", animated_gif),
    ("tiff", tiff),
    ("folder-gray-in-rgb", grayscale_in_rgb_folder),
    ("csv-bom", table_case(csv_file("bom.csv", "\ufeffid,a,b\n7,1,2\n8,3,4\n".encode("utf-8")),
                           ["a", "b"], [[1, 2], [3, 4]], ids=[7, 8])),
    ("csv-crlf", table_case(csv_file("crlf.csv", b"a,c\r\n1,x\r\n2,y\r\n"), ["a", "c=x", "c=y"],
                            [[1, 1, 0], [2, 0, 1]])),
    ("csv-quoted-newlines", table_case(csv_file("nl.csv", 'a,c\n1,"two\nlines"\n2,"one"\n3,"two\nlines"\n'),
                                       ["a", "c=one", "c=two\nlines"], [[1, 0, 1], [2, 1, 0], [3, 0, 1]])),
    ("csv-semicolon", table_case(csv_file("semi.csv", "id;a;b\nr1;1.5;2\nr2;3;4\n"), ["a", "b"],
                                 [[1.5, 2], [3, 4]], ids=["r1", "r2"])),
    ("csv-tab", table_case(csv_file("tab.csv", "a\tb\n1\t2\n3\t4\n"), ["a", "b"], [[1, 2], [3, 4]])),
    ("csv-one-column", table_case(csv_file("one.csv", "a\n1\n2\n"), ["a"], [[1], [2]])),
    ("csv-ids-beyond-2^53", table_case(csv_file("big.csv", f"id,a\n{BIG},1\n{BIG + 2},2\n"), ["a"], [[1], [2]],
                                       ids=[BIG, BIG + 2])),
    ("parquet-decimal", table_case(parquet_file("dec.parquet", pa.table({
        "a": [1.0, 2.0], "d": pa.array([decimal.Decimal("1.25"), decimal.Decimal("-3.50")], pa.decimal128(5, 2))})),
        ["a", "d"], [[1, 1.25], [2, -3.5]])),
    ("parquet-dictionary-numbers", table_case(parquet_file("dn.parquet", pa.table({
        "a": [1.0, 2.0, 1.0], "c": pa.array([0.5, 1.5, 0.5]).dictionary_encode()})),
        ["a", "c"], [[1, 0.5], [2, 1.5], [1, 0.5]])),
    ("parquet-ids-beyond-2^53", table_case(parquet_file("bigid.parquet", pa.table({
        "id": pa.array([BIG, BIG + 2], pa.int64()), "a": [1.0, 2.0]})), ["a"], [[1], [2]], ids=[BIG, BIG + 2])),
]


@pytest.mark.parametrize("make", [c[1] for c in READS], ids=[c[0] for c in READS])
def test_read_right(make, tmp_path, recwarn):
    data, options, check = make(tmp_path)
    src = open_source(str(data), **options)
    ids, x = src.read(0, src.n_rows)
    if check.__code__.co_argcount == 3:
        check(x, ids, src)
    else:
        check(x)
    assert not [w for w in recwarn if "aepipe" in w.filename or "PIL" in w.filename], [str(w.message) for w in recwarn]


# ---------------------------------------------------------------- refused by name

def dict_strings(tmp):
    pq.write_table(pa.table({"a": [1.0, 2.0], "c": pa.array(["x", "y"]).dictionary_encode()}), tmp / "d.parquet")


def struct_column(tmp):
    pq.write_table(pa.table({"a": [1.0, 2.0], "s": pa.array([{"x": 1, "y": 2.0}, {"x": 3, "y": 4.0}])}),
                   tmp / "d.parquet")


def timestamp_column(tmp):
    pq.write_table(pa.table({"a": [1.0, 2.0], "t": pa.array([datetime(2020, 1, 1), datetime(2021, 1, 1)],
                                                            pa.timestamp("us"))}), tmp / "d.parquet")


def float64_huge_parquet(tmp):
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "b": [1.0, 1e300, 2.0]}), tmp / "d.parquet")


def float64_huge_npy(tmp):
    x = np.ones((4, 3))
    x[2, 1] = -5e39
    np.save(tmp / "d.npy", x)


def write(name, text):
    def make(tmp):
        (tmp / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return make


# id, setup, DATA (in the case's folder), text the one error line must hold
REFUSED = [
    ("csv-duplicate-header", write("d.csv", "a,b,a\n1,2,3\n4,5,6\n"), "d.csv", 'names column "a" twice'),
    ("csv-inf", write("d.csv", "a,b\n1,2\n3,inf\n"), "d.csv", 'row 2 (1-based, header not counted), column "b" holds "inf"'),
    ("csv-minus-infinity", write("d.csv", "a,b\n1,-Infinity\n3,4\n"), "d.csv", 'row 1 (1-based, header not counted), column "b" holds "-Infinity"'),
    ("csv-nan", write("d.csv", "a,b\n1,2\n3,NaN\n"), "d.csv", 'row 2 (1-based, header not counted), column "b" is empty (or NaN'),
    ("csv-beyond-float32", write("d.csv", "a,b\n1,2\n3,1e300\n"), "d.csv", 'column "b" holds "1e300"; aepipe needs finite numbers within float32'),
    ("csv-decimal-comma", write("d.csv", "a;b\n1,5;2\n3,25;4\n"), "d.csv", 'column "a" holds numbers with a decimal comma'),
    ("csv-bare-cr", write("d.csv", b"a,b\r1,2\r3,4\r"), "d.csv", "bare CR"),
    ("parquet-beyond-float32", float64_huge_parquet, "d.parquet", "row 1 holds 1e+300 in column \"b\", beyond float32's range"),
    ("npy-beyond-float32", float64_huge_npy, "d.npy", "row 2 holds -5e+39 in column \"x[1]\", beyond float32's range"),
    ("parquet-struct", struct_column, "d.parquet", 'column "s" is struct<x: int64, y: double>'),
    ("parquet-timestamp", timestamp_column, "d.parquet", 'column "t" is timestamp[us]'),
    ("parquet-dictionary-strings", dict_strings, "d.parquet", 'column "c" is dictionary<values=string'),
    ("gif-not-an-image", write("d.gif", b"GIF89a not really"), "d.gif", "d.gif: not a readable image"),
    ("one-row", write("d.csv", "a,b\n1,2\n"), "d.csv", "too few rows (1)"),
]


def snapshot(root: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def refused(argv, where: Path, message: str, code: int = 2):
    before = snapshot(where)
    t0 = time.time()
    ran = aepipe_here(*argv)
    took = time.time() - t0
    ours = [line for line in ran.stderr.splitlines() if line.startswith("aepipe: error:")]
    assert ran.returncode == code, f"exit {ran.returncode}\n{ran.stdout}\n{ran.stderr}"
    assert len(ours) == 1 and message in ours[0], ran.stderr
    assert ran.stderr.strip() == ours[0], ran.stderr  # no warning, no traceback: the one line
    assert "Traceback" not in ran.stdout
    assert snapshot(where) == before  # inputs untouched; no run dir, output or .partial left
    assert took < TIME_BOUND_S, f"took {took:.1f} s"
    return ours[0]


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_by_name(case, tmp_path):
    name, setup, data, message = case
    setup(tmp_path)
    line = refused(["train", tmp_path / data, "--epochs", "1", "--out", tmp_path / "run"], tmp_path, message)
    assert str(tmp_path / data) in line  # the file named, as the user wrote it


# ---------------------------------------------------------------- through train, encode and load_codes

def train_encode(tmp: Path, data: Path, *train_args, store="codes.zarr"):
    """Train (in this process), encode with --engine local, load the codes; every step one clean exit."""
    ran = aepipe_here("train", data, "--epochs", "2", "--out", tmp / "run", *train_args)
    assert ran.returncode == 0, ran.stderr
    assert "Warning" not in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    ran = aepipe_here("encode", data, "--model", tmp / "run", "--out", tmp / store, "--engine", "local")
    assert ran.returncode == 0, ran.stderr
    return load_codes(tmp / store)


def test_zero_variance_columns_train_and_encode_to_finite_codes(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    pq.write_table(pa.table({"a": rng.normal(size=n), "same": np.full(n, 3.0), "zero": np.zeros(n),
                             "b": rng.normal(size=n)}), tmp_path / "flat.parquet")
    for normalize in ("feature", "standard"):
        out = tmp_path / normalize
        out.mkdir()
        ids, codes = train_encode(out, tmp_path / "flat.parquet", "--normalize", normalize, "--code-dim", "2")
        assert np.isfinite(codes).all() and codes.shape == (n, 2)
        assert list(ids) == list(range(n))


def test_two_rows_and_fewer_rows_than_code_dim_train(tmp_path):
    pq.write_table(pa.table({"a": [1.0, 3.0], "b": [2.0, 5.0]}), tmp_path / "two.parquet")
    (tmp_path / "two").mkdir()
    ids, codes = train_encode(tmp_path / "two", tmp_path / "two.parquet")  # code 16 of 2 features: a loss of 0
    assert list(ids) == [0, 1] and np.isfinite(codes).all()

    rng = np.random.default_rng(1)
    pq.write_table(pa.table({f"f{i}": rng.normal(size=5) for i in range(12)}), tmp_path / "five.parquet")
    (tmp_path / "five").mkdir()
    ids, codes = train_encode(tmp_path / "five", tmp_path / "five.parquet", "--code-dim", "8")
    assert codes.shape == (5, 8) and np.isfinite(codes).all()


@pytest.mark.parametrize("store", ["codes.zarr", "codes.parquet"])
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_int64_ids_beyond_2_53_round_trip(kind, store, tmp_path):
    """Ids that float64 would round (2^53 + 1 reads as 2^53) come back from the store exactly."""
    rng = np.random.default_rng(2)
    ids = np.array([BIG + 2 * i for i in range(40)] + [2 ** 63 - 1, -(2 ** 63)], np.int64)
    x = rng.normal(size=(len(ids), 3))
    data = tmp_path / f"d.{kind}"
    if kind == "parquet":
        pq.write_table(pa.table({"id": ids, **{f"f{j}": x[:, j] for j in range(3)}}), data)
    else:
        data.write_text("id,f0,f1,f2\n" + "".join(f"{i},{a!r},{b!r},{c!r}\n" for i, (a, b, c) in zip(ids, x)))
    got, codes = train_encode(tmp_path, data, "--code-dim", "2", store=store)
    assert got.dtype == np.int64 and got.tolist() == ids.tolist()
    assert np.isfinite(codes).all()
