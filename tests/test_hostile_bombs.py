"""Resource bombs (issue 24): inputs and options that claim sizes a careless reader would allocate
or loop over. Every case is refused (or bounded) the way test_hostile.py's are: the exit code, one
`aepipe: error:` line naming the culprit, no traceback, nothing written or left behind, inputs
byte-identical, an answer in seconds. Every case runs the installed command in a child whose
address space is capped (conftest.run_installed, capped=True): a regression that tries to allocate
what the input claims fails its case with a MemoryError instead of taking the machine down.

    image bombs     a PNG of 1x1 real pixels whose header claims 100000x100000 (Pillow's
                    DecompressionBombError) or 12000x12000 (only its DecompressionBombWarning):
                    one line naming the file; with --on-bad-row skip the file is skipped and listed
    arrays          a .npy whose header claims 10^12 rows; a Zarr array whose metadata does
    run dirs        aepipe.json asking for a code or hidden width of 10^9: refused before
                    anything is built
    bitstreams      a stored latent shape of (8, 10^6, 10^6) beside an intact CRC
    tables          a CSV row of 200 MB (one field, or a quote never closed): refused past 32 MiB
                    a row; Parquet with 30000 columns: handled in seconds (trained, encoded, or
                    refused by its shape)
    options         --chunk-rows 10^12, --epochs 10^9, --code-dim 10^6, --hidden 10^9, a model
                    of 10^10 parameters: refused before any work; --batch-size 10^9 and
                    --steps 10^12 are bounded (by the rows there are, by training.config.MAX_EPOCHS)
"""

import json
import shutil
import struct
import time
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from tests.conftest import aepipe_here, run_installed
from tests.test_hostile import bad_config, snapshot

TIME_BOUND_S = 30  # a new interpreter importing torch is 2-3 s of it
BIG = 10 ** 12


def png(width: int, height: int, claim: tuple[int, int] | None = None) -> bytes:
    """A grayscale PNG of width x height real pixels; with claim, its IHDR says (width, height) =
    claim (CRC recomputed, so only the size is a lie)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    w, h = claim or (width, height)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    raw = b"".join(b"\x00" + bytes(range(width)) for _ in range(height))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def image_folder(*bombs, good: int = 0, claim=(100_000, 100_000)):
    """imgs/: `good` real 8x8 PNGs (a0.png...), then each name in bombs as a 1x1 PNG claiming `claim`."""
    def make(w, tmp):
        d = tmp / "imgs"
        d.mkdir()
        for i in range(good):
            (d / f"a{i}.png").write_bytes(png(8, 8))
        for name in bombs:
            (d / name).write_bytes(png(1, 1, claim))
    return make


def npy_claiming(rows: int):
    """claims.npy: a header saying (rows, 8, 8) float32, then the bytes of 4 rows."""
    def make(w, tmp):
        with open(tmp / "claims.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, 8, 8)})
            f.write(np.zeros((4, 8, 8), np.float32).tobytes())
    return make


def zarr_claiming(rows: int):
    """claims.zarr: 300 real rows in chunks of 100, its metadata edited to say `rows`."""
    def make(w, tmp):
        z = zarr.create_array(str(tmp / "claims.zarr"), shape=(300, 8, 8), chunks=(100, 8, 8), dtype="float32")
        z[:] = np.random.default_rng(0).random((300, 8, 8)).astype(np.float32)
        meta = json.loads((tmp / "claims.zarr" / "zarr.json").read_text())
        meta["shape"] = [rows, 8, 8]
        (tmp / "claims.zarr" / "zarr.json").write_text(json.dumps(meta))
    return make


def gigantic_run(**model):
    """run/: the digits run with aepipe.json's model entry asking for `model` (weights untouched,
    so their fingerprint still matches)."""
    def make(w, tmp):
        shutil.copytree(w["run"], tmp / "run", ignore=shutil.ignore_patterns("checkpoints"))
        meta = json.loads((tmp / "run" / "aepipe.json").read_text())
        meta["model"].update(model)
        (tmp / "run" / "aepipe.json").write_text(json.dumps(meta))
    return make


def bitstreams_claiming(fmt: str, **claims):
    """b.FMT: the compress run's bitstream store, the first image's latent shape made (8, 10^6, 10^6)
    or the columns in `claims` set so (image_size: one image of 10^12 pixels, its latent shape to
    match); its bytes, length and CRC untouched: they still check."""
    claims = claims or {"latent_shape": (8, 10 ** 6, 10 ** 6)}

    def make(w, tmp):
        store = tmp / f"b.{fmt}"
        shutil.copytree(w[f"bits.{fmt}"], store)
        for column, value in claims.items():
            if fmt == "zarr":
                a = zarr.open_array(str(store / column), mode="r+")
                values = a[:]
                values[0] = value
                a[:] = values
            else:
                part = sorted(store.glob("part-*.parquet"))[0]
                t = pq.read_table(part)
                values = t.column(column).to_pylist()
                values[0] = list(value)
                i = t.schema.get_field_index(column)
                t = t.set_column(i, t.schema.field(i), pa.array(values, t.schema.field(i).type))
                pq.write_table(t, part)
    return make


def csv_with_a_huge_field(kind: str):
    """big.csv: three rows, the second's field "b" 200 MB long (digits, or letters)."""
    def make(w, tmp):
        with open(tmp / "big.csv", "w") as f:
            f.write("a,b\n1,2\n3,")
            f.write(("7" if kind == "number" else "x") * (200 * 2 ** 20))
            f.write("\n5,6\n")
    return make


def csv_with_an_unclosed_quote(w, tmp):
    """open.csv: a quote opened in row 1 and never closed, then 40 MB of ordinary rows."""
    with open(tmp / "open.csv", "w") as f:
        f.write('a,b\n1,"2\n')
        f.write("3,4\n" * (10 * 2 ** 20))


def csv_with_a_long_field(w, tmp):
    """long.csv: a text column whose second value is 20 MB long (under the row limit: read)."""
    with open(tmp / "long.csv", "w") as f:
        f.write("a,b\n1,x\n3," + "y" * (20 * 2 ** 20) + "\n5,x\n")


def zarr_with_zero_tail(w, tmp):
    """tail.zarr: 300 rows in chunks of 100, the last 100 all zeros, so Zarr never stores their chunk."""
    x = np.random.default_rng(0).random((300, 8, 8)).astype(np.float32)
    x[200:] = 0
    zarr.create_array(str(tmp / "tail.zarr"), shape=(300, 8, 8), chunks=(100, 8, 8), dtype="float32")[:] = x
    assert not (tmp / "tail.zarr" / "c" / "2").exists()


def wide_parquet(cols: int):
    def make(w, tmp):
        pq.write_table(pa.table({f"c{i}": np.arange(3, dtype=np.float64) for i in range(cols)}), tmp / "wide.parquet")
    return make


@pytest.fixture(scope="module")
def world(digits_run, tmp_path_factory):
    """The digits run, and a tiny compress run (trained in this process, no Ray) with its bitstream
    stores in both formats."""
    w = tmp_path_factory.mktemp("bombs")
    shutil.copytree(digits_run, w / "run", ignore=shutil.ignore_patterns("checkpoints"))
    x = np.random.default_rng(0).random((300, 8, 8)).astype(np.float32)
    np.save(w / "x.npy", x)
    imgs = (np.random.default_rng(1).random((8, 16, 16)) * 255).astype(np.float32)
    np.save(w / "imgs.npy", imgs)
    for args in (("train", w / "imgs.npy", "--family", "compress", "--code-dim", 8, "--hidden", 8, "--epochs", 1,
                  "--in-process", "--out", w / "compress"),
                 *(("encode", w / "imgs.npy", "--model", w / "compress", "--engine", "local", "--out", w / f"bits.{f}")
                   for f in ("zarr", "parquet")),
                 ("encode", w / "x.npy", "--model", w / "run", "--engine", "local", "--out", w / "codes.zarr")):
        ran = aepipe_here(*args)
        assert ran.returncode == 0, ran.stderr
    return {"run": w / "run", "compress": w / "compress", "x.npy": w / "x.npy", "imgs.npy": w / "imgs.npy",
            "bits.zarr": w / "bits.zarr", "bits.parquet": w / "bits.parquet", "codes.zarr": w / "codes.zarr", "root": w}


TRAIN = "train {t}/imgs --out {t}/r --in-process"
ENCODE = "encode {x} --model {run} --engine local --out {t}/o.zarr"

# id, setup, arguments ({t}: this case's folder, {run}: the digits run, {compress}: the compress
# run, {x}: a (300, 8, 8) .npy, {codes}: its codes by the digits run), exit code, text the one error line must hold
CASES = [
    # images whose header claims 10^10 pixels (Pillow's DecompressionBombError) or 1.44 * 10^8 (its warning)
    ("image-bomb-train", image_folder("bomb.png"), TRAIN, 2, "imgs/bomb.png: not a readable image"),
    ("image-bomb-train-second", image_folder("bomb.png", good=2), TRAIN + " --image-size 8", 2, "imgs/bomb.png"),
    ("image-bomb-warning-size", image_folder("bomb.png", claim=(12_000, 12_000)), TRAIN, 2, "imgs/bomb.png"),
    ("image-bomb-encode", image_folder("bomb.png", good=1),
     "encode {t}/imgs --model {run} --engine local --image-size 8 --out {t}/o.zarr", 2, "imgs/bomb.png"),
    ("image-bomb-skip-all", image_folder("bomb.png"), TRAIN + " --on-bad-row skip", 2, "none of its 1 images"),
    # arrays whose metadata claims 10^12 rows
    ("npy-claims-rows-train", npy_claiming(BIG), "train {t}/claims.npy --out {t}/r --in-process", 2, "claims.npy"),
    ("npy-claims-rows-encode", npy_claiming(BIG), "encode {t}/claims.npy --model {run} --engine local --out {t}/o.zarr",
     2, "claims.npy"),
    ("zarr-claims-rows-train", zarr_claiming(BIG), "train {t}/claims.zarr --out {t}/r --in-process", 2, "claims.zarr"),
    ("zarr-claims-rows-encode", zarr_claiming(BIG),
     "encode {t}/claims.zarr --model {run} --engine local --out {t}/o.zarr", 2, "claims.zarr"),
    # run dirs asking for a gigantic model
    ("run-code-dim-1e9", gigantic_run(code_dim=10 ** 9), "encode {x} --model {t}/run --engine local --out {t}/o.zarr",
     2, "too large"),
    ("run-hidden-1e9", gigantic_run(hidden=[10 ** 9]), "encode {x} --model {t}/run --engine local --out {t}/o.zarr",
     2, "too large"),
    ("run-hidden-many", gigantic_run(hidden=[60_000] * 4), "decode {codes} --model {t}/run --engine local --out {t}/r.npy",
     2, "too large"),
    # bitstream stores claiming a huge latent
    ("bitstream-huge-latent-zarr", bitstreams_claiming("zarr"),
     "decode {t}/b.zarr --model {compress} --engine local --out {t}/r.npy", 2, "latent shape (8, 1000000, 1000000)"),
    ("bitstream-huge-latent-parquet", bitstreams_claiming("parquet"),
     "decode {t}/b.parquet --model {compress} --engine local --out {t}/r.npy", 2, "latent shape (8, 1000000, 1000000)"),
    *((f"bitstream-huge-image-{f}", bitstreams_claiming(f, image_size=(10 ** 6, 10 ** 6),
                                                          latent_shape=(64, 125_000, 125_000)),
       f"decode {{t}}/b.{f} --model {{compress}} --engine local --out {{t}}/r", 2,
       "claims an image of 1000000x1000000 pixels") for f in ("zarr", "parquet")),
    # tables
    ("csv-huge-number", csv_with_a_huge_field("number"), "train {t}/big.csv --out {t}/r --in-process", 2,
     "big.csv: a row longer than 32 MiB"),
    ("csv-huge-text", csv_with_a_huge_field("text"), "train {t}/big.csv --out {t}/r --in-process", 2,
     "big.csv: a row longer than 32 MiB"),
    ("csv-unclosed-quote", csv_with_an_unclosed_quote, "train {t}/open.csv --out {t}/r --in-process", 2,
     "open.csv: a row longer than 32 MiB"),
    ("parquet-30000-columns", wide_parquet(30_000), "encode {t}/wide.parquet --model {run} --engine local --out {t}/o.zarr",
     2, "wide.parquet rows have shape (30000,)"),
    # options that would size a chunk, a schedule or a layer
    ("encode-chunk-rows-1e12", None, ENCODE + f" --chunk-rows {BIG}", 2, f"--chunk-rows {BIG}: a chunk that long"),
    ("encode-chunk-rows-1e8", None, ENCODE + " --chunk-rows 100000000", 2, "at most 4194304 rows here"),
    ("train-epochs-1e9", None, "train {x} --out {t}/r --in-process --epochs 1000000000", 2, "--epochs 1000000000: at most"),
    ("train-pretrain-epochs-1e9", None, "train {x} --out {t}/r --in-process --family stacked --layerwise "
     "--pretrain-epochs 1000000000", 2, "--pretrain-epochs 1000000000: at most"),
    ("train-code-dim-1e6", None, "train {x} --out {t}/r --in-process --code-dim 1000000", 2, "--code-dim 1000000: at most"),
    ("train-config-code-dim-1e6", bad_config('{"code_dim": 1000000}'), "train {x} --out {t}/r --config {t}/c.json", 2,
     "--code-dim 1000000: at most"),
    ("train-hidden-1e9", None, "train {x} --out {t}/r --in-process --hidden 1000000000", 2, "--hidden 1000000000: at most"),
    ("train-width-1e9", None, "train {x} --out {t}/r --in-process --depth 2 --width 1000000000", 2,
     "--hidden 1000000000,1000000000: at most"),
    ("train-model-too-large", None, "train {x} --out {t}/r --in-process --hidden 60000,60000,60000", 2,
     "model too large"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bomb_refused_in_bounded_memory(case, world, tmp_path):
    name, setup, args, code, message = case
    if setup:
        setup(world, tmp_path)
    argv = args.format(t=tmp_path, run=world["run"], compress=world["compress"], x=world["x.npy"],
                       codes=world["codes.zarr"]).split()
    before = snapshot(world["root"], tmp_path)
    t0 = time.time()
    proc = run_installed(*argv, check=False, capped=True, timeout=60)
    took = time.time() - t0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("aepipe: error:")]
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert len(ours) == 1 and message in ours[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert snapshot(world["root"], tmp_path) == before  # inputs untouched; no output or .partial left
    assert took < TIME_BOUND_S, f"took {took:.1f} s"


# id, setup, arguments, what stdout says: sizes that are bounded rather than refused (a batch is
# never more rows than there are, a step budget never more than training.config.MAX_EPOCHS epochs), and
# near-bombs that are valid data, read right
BOUNDED = [
    ("image-bomb-skipped", image_folder("bomb.png", good=1),
     "encode {t}/imgs --model {run} --engine local --image-size 8 --on-bad-row skip --out {t}/o.zarr",
     "encoded 1 rows"),
    ("zarr-zero-tail", zarr_with_zero_tail, "encode {t}/tail.zarr --model {run} --engine local --out {t}/o.zarr",
     "encoded 300 rows"),
    ("csv-20mb-field", csv_with_a_long_field, "train {t}/long.csv --out {t}/r --in-process --epochs 2",
     "trained dense"),
    ("parquet-30000-columns", wide_parquet(30_000), "train {t}/wide.parquet --out {t}/r --in-process --epochs 2",
     "trained dense"),
    ("encode-batch-size-1e9", None, ENCODE + " --batch-size 1000000000", "encoded 300 rows"),
    ("decode-batch-size-1e9", None, "decode {codes} --model {run} --engine local --batch-size 1000000000 "
     "--out {t}/r.npy", "decoded 300 rows"),
    ("train-batch-size-1e9", None, "train {x} --out {t}/r --in-process --batch-size 1000000000", "trained dense"),
    ("train-steps-1e12", None, f"train {{x}} --out {{t}}/r --in-process --steps {BIG}", "trained dense"),
]


@pytest.mark.parametrize("case", BOUNDED, ids=[c[0] for c in BOUNDED])
def test_bounded_in_time_and_memory(case, world, tmp_path):
    name, setup, args, said = case
    if setup:
        setup(world, tmp_path)
    argv = args.format(t=tmp_path, run=world["run"], x=world["x.npy"], codes=world["codes.zarr"]).split()
    before = snapshot(world["root"])
    t0 = time.time()
    proc = run_installed(*argv, check=False, capped=True, timeout=60)
    took = time.time() - t0
    assert proc.returncode == 0 and said in proc.stdout, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "aepipe: error:" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(world["root"]) == before
    assert took < TIME_BOUND_S, f"took {took:.1f} s"
    if name == "image-bomb-skipped":  # the bomb is listed as skipped, by name
        skipped = zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["skipped"]
        assert [s["id"] for s in skipped] == ["bomb.png"] and "exceeds limit" in skipped[0]["reason"], skipped
        assert "bomb.png" in proc.stdout
