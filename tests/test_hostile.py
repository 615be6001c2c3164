"""Bad, damaged and hostile input to `aepipe`, one case each.

Every case checks what a user relies on: the exit code (2 bad input, 1 a failure at run time),
exactly one `aepipe: error:` line naming the culprit, no traceback, nothing written or left behind
(every file under the case's folders is byte-identical afterwards, and no new file appeared:
no output, no `.partial`, no file a planted payload would have made), and an answer in seconds.
Cases that need a cluster join the test session's Ray with --address; the rest start no Ray.

Most cases run the command in this process (cli.main); those joined to the session's Ray by
--address find this process already connected to it. Through the installed command, on purpose:
the address checks themselves and one failure inside a Ray worker (END_TO_END), and the inputs
that claim sizes a regression would try to allocate, in a child with capped memory (CAPPED,
conftest.run_installed with capped=True).
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from aepipe.normalize import Normalizer
from aepipe.sources import Schema
from aepipe.batch.encode import encode
from aepipe.models import ModelConfig, build_model
from aepipe.run import save_run
from tests.conftest import AEPIPE, aepipe_here, run_installed, write_table

TIME_BOUND_S = 20  # measured here on a quiet machine: at most 8.2 s (a NaN found inside a running Ray job)


class Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint or weights file holds."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def world(digits_run, tmp_path_factory):
    """Good inputs every case starts from: a run dir, codes stores, a table, arrays."""
    w = tmp_path_factory.mktemp("world")
    shutil.copytree(digits_run, w / "run", ignore=shutil.ignore_patterns("checkpoints"))
    encode("builtin:digits", w / "run", w / "codes.zarr", chunk_rows=256)
    encode("builtin:digits", w / "run", w / "codes.parquet", concurrency=1)
    write_table(w / "table.parquet", n=300, cols=4, files=2)
    x = np.random.default_rng(0).random((300, 8, 8)).astype(np.float32)
    np.save(w / "x.npy", x)
    x[290, 1, 2] = np.nan
    np.save(w / "nan.npy", x)
    vae = build_model(ModelConfig(family="vae", input_shape=(8, 8), code_dim=4, hidden=(16,)))
    save_run(w / "vae", {"family": "vae", "model": {**ModelConfig(family="vae", input_shape=(8, 8), code_dim=4,
                                                                  hidden=(16,)).__dict__},
                         "schema": Schema(("x",), (8, 8), False).to_json(),
                         "normalizer": Normalizer("none", (0.0,), (1.0,)).to_json()}, vae.state_dict())
    return {"world": w}


# ---------------------------------------------------------------- damaged and hostile copies

def copy_of(name):
    def make(w, tmp):
        dest = tmp / name
        (shutil.copytree if (w / name).is_dir() else shutil.copy)(w / name, dest)
        return dest
    return make


def zarr_without_chunk(w, tmp):
    z = copy_of("codes.zarr")(w, tmp)
    (z / "codes" / "c" / "1" / "0").unlink()


def zarr_flipped_byte(w, tmp):
    z = copy_of("codes.zarr")(w, tmp)
    chunk = z / "codes" / "c" / "2" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


def zarr_bad_array_meta(w, tmp):
    z = copy_of("codes.zarr")(w, tmp)
    (z / "codes" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array", "shape": "many"}')


def zarr_incomplete(w, tmp):
    z = copy_of("codes.zarr")(w, tmp)
    meta = json.loads((z / "zarr.json").read_text())
    meta["attributes"]["complete"] = False
    (z / "zarr.json").write_text(json.dumps(meta))


def zarr_short_ids(w, tmp):
    z = copy_of("codes.zarr")(w, tmp)
    meta = json.loads((z / "ids" / "zarr.json").read_text())
    meta["shape"] = [1000]
    (z / "ids" / "zarr.json").write_text(json.dumps(meta))


def parquet_without_part(w, tmp):
    p = copy_of("codes.parquet")(w, tmp)
    sorted(p.glob("part-*.parquet"))[0].unlink()


def parquet_extra_part(w, tmp):
    p = copy_of("codes.parquet")(w, tmp)
    shutil.copy(sorted(p.glob("part-*.parquet"))[0], p / "part-99999.parquet")


def run_swapped_weights(w, tmp):
    r = copy_of("run")(w, tmp)
    state = torch.load(r / "model.pt")
    torch.save({k: v + 0.01 for k, v in state.items()}, r / "model.pt")


def run_payload_weights(w, tmp):
    r = copy_of("run")(w, tmp)
    torch.save(Payload(tmp / "pwned"), r / "model.pt")


def run_swapped_density(w, tmp):
    r = copy_of("run")(w, tmp)
    density = torch.load(r / "density.pt")
    torch.save({k: v * 2 for k, v in density.items()}, r / "density.pt")


def run_payload_density(w, tmp):
    r = copy_of("run")(w, tmp)
    torch.save(Payload(tmp / "pwned"), r / "density.pt")


def run_payload_checkpoint(w, tmp):
    r = copy_of("run")(w, tmp)
    ckpt = r / "checkpoints" / "train-1" / "checkpoint_000001"
    ckpt.mkdir(parents=True)
    torch.save({"model": {}, "opt": {}, "st": Payload(tmp / "pwned")}, ckpt / "state.pt")


def run_damaged_json(w, tmp):
    r = copy_of("run")(w, tmp)
    (r / "aepipe.json").write_text((r / "aepipe.json").read_text()[:200])


def mixed_parquet_folder(w, tmp):
    d = tmp / "mixed.parquet"
    d.mkdir()
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0]}), d / "part-0.parquet")
    pq.write_table(pa.table({"a": ["x", "y"], "b": [3.0, 4.0]}), d / "part-1.parquet")


def corrupt_parquet_in_folder(w, tmp):
    d = copy_of("table.parquet")(w, tmp)
    (d / "part-9.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")


def empty_parquet(w, tmp):
    pq.write_table(pa.table({"a": pa.array([], pa.float64())}), tmp / "empty.parquet")


def complex_npy(w, tmp):
    np.save(tmp / "c.npy", np.ones((10, 4), np.complex64))


def string_npy(w, tmp):
    np.save(tmp / "s.npy", np.array([["a", "b"]] * 5))


def bad_config(text, name="c.json"):
    def make(w, tmp):
        (tmp / name).write_text(text)
    return make


def a_file(name):
    def make(w, tmp):
        (tmp / name).write_text("not a folder")
    return make


def trained_run(w, tmp):
    copy_of("run")(w, tmp)


def input_inside_out(w, tmp):
    (tmp / "wrap.parquet").mkdir()
    shutil.copy(w / "x.npy", tmp / "wrap.parquet" / "x.npy")


LONG = "c" * 260 + ".zarr"

# id, setup, arguments ({w}: the shared world, {t}: this case's folder, {addr}: the session's Ray),
# exit code, text the one error line must hold
CASES = [
    # usage
    ("no-such-command", None, "encodee", 2, "No such command"),
    ("unknown-option", None, "encode builtin:digits --model {w}/run --out {t}/o.zarr --frobnicate", 2, "No such option"),
    ("missing-out", None, "encode builtin:digits --model {w}/run", 2, "--out"),
    ("batch-size-not-int", None, "train builtin:digits --out {t}/r --batch-size ten", 2, "--batch-size"),
    ("sample-n-float", None, "sample --model {w}/vae --n 1e12 --out {t}/s.npy", 2, "--n"),
    # train options, refused before Ray starts
    ("train-batch-size-0", None, "train builtin:digits --out {t}/r --batch-size 0", 2, "--batch-size 0"),
    ("train-batch-size-neg", None, "train builtin:digits --out {t}/r --batch-size -5", 2, "--batch-size -5"),
    ("train-lr-nan", None, "train builtin:digits --out {t}/r --lr nan", 2, "--lr nan"),
    ("train-lr-zero", None, "train builtin:digits --out {t}/r --lr 0", 2, "--lr 0"),
    ("train-lr-inf", None, "train builtin:digits --out {t}/r --lr inf", 2, "--lr inf"),
    ("train-workers-0", None, "train builtin:digits --out {t}/r --workers 0", 2, "--workers 0"),
    ("train-epochs-0", None, "train builtin:digits --out {t}/r --epochs 0", 2, "at least one epoch"),
    ("train-epochs-neg", None, "train builtin:digits --out {t}/r --epochs -3", 2, "--epochs -3"),
    ("train-val-fraction-big", None, "train builtin:digits --out {t}/r --val-fraction 1.5", 2, "--val-fraction 1.5"),
    ("train-val-fraction-0", None, "train builtin:digits --out {t}/r --val-fraction 0", 2, "--val-fraction 0"),
    ("train-patience-neg", None, "train builtin:digits --out {t}/r --patience -1", 2, "--patience -1"),
    ("train-code-dim-0", None, "train builtin:digits --out {t}/r --code-dim 0", 2, "--code-dim 0"),
    ("train-hidden-zero", None, "train builtin:digits --out {t}/r --hidden 64,0", 2, "--hidden 64,0"),
    ("train-hidden-text", None, "train builtin:digits --out {t}/r --hidden 64,x", 2, '--hidden "64,x"'),
    ("train-gpus-neg", None, "train builtin:digits --out {t}/r --gpus-per-worker -1", 2, "--gpus-per-worker -1"),
    ("train-noise-std-neg", None, "train builtin:digits --out {t}/r --family denoising --noise-std -1", 2, "--noise-std -1"),
    ("train-mask-prob", None, "train builtin:digits --out {t}/r --family denoising --mask-prob 1.5", 2, "--mask-prob 1.5"),
    ("train-rho-0", None, "train builtin:digits --out {t}/r --family sparse --rho 0", 2, "--rho 0"),
    ("train-family", None, "train builtin:digits --out {t}/r --family vea", 2, 'unknown family "vea"'),
    ("train-loss", None, "train builtin:digits --out {t}/r --loss huber", 2, 'unknown loss "huber"'),
    ("train-normalize", None, "train builtin:digits --out {t}/r --normalize zscore", 2, 'normalisation "zscore"'),
    ("train-config-type", bad_config('{"epochs": "ten"}'), "train builtin:digits --out {t}/r --config {t}/c.json", 2, '"epochs" must be int'),
    ("train-config-hidden", bad_config('{"hidden": "big"}'), "train builtin:digits --out {t}/r --config {t}/c.json", 2, '--hidden "big"'),
    ("train-config-unknown", bad_config('{"code_dimm": 3}'), "train builtin:digits --out {t}/r --config {t}/c.json", 2, 'unknown option "code_dimm"'),
    ("train-config-damaged", bad_config('{"epochs": 3'), "train builtin:digits --out {t}/r --config {t}/c.json", 2, "cannot read it"),
    ("train-config-list", bad_config('[1, 2]'), "train builtin:digits --out {t}/r --config {t}/c.json", 2, "expected a table"),
    ("train-config-toml", bad_config('epochs = [3', "c.toml"), "train builtin:digits --out {t}/r --config {t}/c.toml", 2, "cannot read it"),
    ("train-config-missing", None, "train builtin:digits --out {t}/r --config {t}/none.json", 2, "cannot read it"),
    # train data and run dirs
    ("train-no-data", None, "train {t}/none.parquet --out {t}/r", 2, "no such file"),
    ("train-builtin", None, "train builtin:nope --out {t}/r", 2, 'unknown built-in set "nope"'),
    ("train-txt", bad_config("a,b\n1,2\n", "d.txt"), "train {t}/d.txt --out {t}/r", 2, "unsupported format"),
    ("train-csv-hole", bad_config("a,b\n1,\n", "d.csv"), "train {t}/d.csv --out {t}/r", 2, 'column "b" is empty'),
    ("train-csv-no-rows", bad_config("a,b\n", "d.csv"), "train {t}/d.csv --out {t}/r", 2, "empty (0 rows)"),
    ("train-empty", empty_parquet, "train {t}/empty.parquet --out {t}/r", 2, "empty"),
    ("train-mixed-folder", mixed_parquet_folder, "train {t}/mixed.parquet --out {t}/r", 2, 'column "a" is string'),
    ("train-corrupt-part", corrupt_parquet_in_folder, "train {t}/table.parquet --out {t}/r", 2, "part-9.parquet: not a readable Parquet"),
    ("train-complex", complex_npy, "train {t}/c.npy --out {t}/r", 2, "real-valued"),
    ("train-strings", string_npy, "train {t}/s.npy --out {t}/r", 2, "real-valued"),
    ("train-out-is-file", a_file("r"), "train builtin:digits --out {t}/r", 2, "not a folder"),
    ("train-out-in-data", copy_of("table.parquet"), "train {t}/table.parquet --out {t}/table.parquet/run", 2, "overlaps the training data"),
    ("train-already-trained", trained_run, "train builtin:digits --out {t}/run", 2, "already holds a trained model"),
    ("train-resume-nothing", trained_run, "train builtin:digits-train --out {t}/run --resume", 2, "nothing to resume"),
    ("train-resume-payload", run_payload_checkpoint, "train builtin:digits-train --out {t}/run --resume --epochs 6", 2, "refusing to load it"),
    ("train-workers-4", None, "train builtin:digits --out {t}/r --workers 4 --address {addr}", 2, "needs 4 CPUs but the Ray cluster has 2"),
    ("train-nan", None, "train {w}/nan.npy --out {t}/r --address {addr}", 2, 'row 290 holds nan'),
    ("bad-address", None, "train builtin:digits --out {t}/r --address 127.0.0.1:1", 1, "cannot reach the Ray cluster at 127.0.0.1:1"),
    ("address-not-host-port", None, "encode builtin:digits --model {w}/run --out {t}/o.zarr --address nonsense", 2, '"nonsense": expected HOST:PORT'),
    # encode
    ("encode-out-is-input", copy_of("table.parquet"), "encode {t}/table.parquet --model {w}/run --out {t}/table.parquet --overwrite", 2, "is the input"),
    ("encode-out-inside-input", copy_of("table.parquet"), "encode {t}/table.parquet --model {w}/run --out {t}/table.parquet/c.zarr", 2, "lies inside the input"),
    ("encode-out-holds-input", input_inside_out, "encode {t}/wrap.parquet/x.npy --model {w}/run --out {t}/wrap.parquet --overwrite", 2, "holds the input"),
    ("encode-out-in-run", trained_run, "encode builtin:digits --model {t}/run --out {t}/run/codes.zarr", 2, "lies inside the input"),
    ("encode-batch-size-0", None, "encode builtin:digits --model {w}/run --out {t}/o.zarr --batch-size 0", 2, "--batch-size 0"),
    ("encode-concurrency-0", None, "encode builtin:digits --model {w}/run --out {t}/o.zarr --concurrency 0", 2, "--concurrency 0"),
    ("encode-chunk-rows-0", None, "encode builtin:digits --model {w}/run --out {t}/o.zarr --chunk-rows 0", 2, "--chunk-rows 0"),
    ("encode-chunk-rows-neg", None, "encode builtin:digits --model {w}/run --out {t}/o.zarr --chunk-rows -4", 2, "--chunk-rows -4"),
    ("encode-gpus-neg", None, "encode builtin:digits --model {w}/run --out {t}/o.zarr --gpus -1", 2, "--gpus -1"),
    ("encode-gpus-none", None, "encode builtin:digits --model {w}/run --out {t}/o.zarr --gpus 1 --address {addr}", 2, "needs 1 GPUs but the Ray cluster has 0"),
    ("encode-dtype", None, "encode builtin:digits --model {w}/run --out {t}/o.zarr --dtype int4", 2, 'unknown --dtype "int4"'),
    ("encode-suffix", None, "encode builtin:digits --model {w}/run --out {t}/o.txt", 2, "choose an output ending in"),
    ("encode-exists", copy_of("codes.zarr"), "encode builtin:digits --model {w}/run --out {t}/codes.zarr", 2, "already exists"),
    ("encode-parent-file", a_file("f"), "encode builtin:digits --model {w}/run --out {t}/f/o.zarr", 2, "is a file, not a folder"),
    ("encode-name-too-long", None, "encode builtin:digits --model {w}/run --out {t}/" + LONG, 2, "output name too long"),
    ("encode-not-run", None, "encode builtin:digits --model {w}/table.parquet --out {t}/o.zarr", 2, "not an aepipe run dir"),
    ("encode-swapped-weights", run_swapped_weights, "encode builtin:digits --model {t}/run --out {t}/o.zarr", 2, "the run dir was altered"),
    ("encode-payload-weights", run_payload_weights, "encode builtin:digits --model {t}/run --out {t}/o.zarr", 2, "refusing to load it"),
    ("score-swapped-density", run_swapped_density, "score builtin:digits --model {t}/run --out {t}/s.parquet", 2, "density.pt: missing, or not the one"),
    ("score-payload-density", run_payload_density, "score builtin:digits --model {t}/run --out {t}/s.parquet", 2, "refusing to load it"),
    ("encode-damaged-json", run_damaged_json, "encode builtin:digits --model {t}/run --out {t}/o.zarr", 2, "aepipe.json: not readable JSON"),
    ("encode-wrong-shape", None, "encode {w}/table.parquet --model {w}/run --out {t}/o.zarr", 2, "rows have shape (4,)"),
    ("encode-complex", complex_npy, "encode {t}/c.npy --model {w}/run --out {t}/o.zarr", 2, "real-valued"),
    ("encode-nan-in-worker", None, "encode {w}/nan.npy --model {w}/run --out {t}/o.zarr --chunk-rows 64 --address {addr}", 2, 'row 290 holds nan in column "pixels[10]"'),
    ("encode-nan-parquet", None, "encode {w}/nan.npy --model {w}/run --out {t}/o.parquet --address {addr}", 2, "row 290 holds nan"),
    # decode and the stores it reads
    ("decode-out-is-codes", copy_of("codes.zarr"), "decode {t}/codes.zarr --model {w}/run --out {t}/codes.zarr --overwrite", 2, "is the input"),
    ("decode-out-is-run", trained_run, "decode {w}/codes.zarr --model {t}/run --out {t}/run/model.npy", 2, "lies inside the input"),
    ("decode-missing-chunk", zarr_without_chunk, "decode {t}/codes.zarr --model {w}/run --out {t}/r.npy", 2, "chunk codes/c/1/0 is missing"),
    ("decode-damaged-chunk", zarr_flipped_byte, "decode {t}/codes.zarr --model {w}/run --out {t}/r.npy --address {addr}", 2, "chunk codes/c/2/0 is damaged"),
    ("decode-bad-array-meta", zarr_bad_array_meta, "decode {t}/codes.zarr --model {w}/run --out {t}/r.npy", 2, 'array "codes" is missing or its metadata is damaged'),
    ("decode-incomplete", zarr_incomplete, "decode {t}/codes.zarr --model {w}/run --out {t}/r.npy", 2, "incomplete"),
    ("decode-short-ids", zarr_short_ids, "decode {t}/codes.zarr --model {w}/run --out {t}/r.npy", 2, "array ids has 1000 rows"),
    ("decode-missing-part", parquet_without_part, "decode {t}/codes.parquet --model {w}/run --out {t}/r.npy", 2, "is missing"),
    ("decode-extra-part", parquet_extra_part, "decode {t}/codes.parquet --model {w}/run --out {t}/r.npy", 2, "part-99999.parquet, which the store's manifest does not list"),
    ("decode-other-model", None, "decode {w}/codes.zarr --model {w}/vae --out {t}/r.npy", 2, "was encoded by model"),
    ("decode-rows", None, "decode {w}/codes.zarr --model {w}/run --out {t}/r.npy --rows 5:99999", 2, "the store has rows 0:1797"),
    ("decode-ids", None, "decode {w}/codes.zarr --model {w}/run --out {t}/r.npy --ids 3,nope", 2, 'no row with id "nope"'),
    ("decode-not-store", None, "decode {w}/table.parquet --model {w}/run --out {t}/r.npy", 2, "not written by aepipe"),
    ("decode-concurrency", None, "decode {w}/codes.zarr --model {w}/run --out {t}/r.npy --concurrency 0", 2, "--concurrency 0"),
    ("decode-parent-file", a_file("f"), "decode {w}/codes.zarr --model {w}/run --out {t}/f/r.npy", 2, "is a file, not a folder"),
    # info and sample
    ("info-missing", None, "info {t}/nothing", 2, "no such file"),
    ("info-damaged-json", run_damaged_json, "info {t}/run", 2, "aepipe.json: not readable JSON"),
    ("info-verify-missing-chunk", zarr_without_chunk, "info {t}/codes.zarr --verify", 2, "chunk codes/c/1/0 is missing"),
    ("info-verify-damaged-chunk", zarr_flipped_byte, "info {t}/codes.zarr --verify", 2, "chunk codes/c/2/0 is damaged"),
    ("info-verify-swapped", run_swapped_weights, "info {t}/run --verify", 2, "the run dir was altered"),
    ("sample-n-0", None, "sample --model {w}/vae --n 0 --out {t}/s.npy", 2, "--n 0"),
    ("sample-n-huge", None, "sample --model {w}/vae --n 1000000000000 --out {t}/s.npy", 2, "GiB"),
    ("sample-not-vae", None, "sample --model {w}/run --n 3 --out {t}/s.npy", 2, "only vae can"),
    ("sample-out-in-run", None, "sample --model {w}/vae --n 3 --out {w}/vae/s.npy", 2, "lies inside the input"),
]


# inputs that claim sizes a broken check would allocate (10^12 samples is terabytes)
CAPPED = {"sample-n-huge", "sample-n-float", "no-such-command"}
# a new process that joins (or fails to join) a cluster by address, as a user's would
END_TO_END = {"bad-address", "address-not-host-port", "encode-nan-in-worker"}


def snapshot(*roots) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for root in roots for p in sorted(Path(root).rglob("*"))}


def through_the_command(case) -> bool:
    return case[0] in CAPPED or case[0] in END_TO_END


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.e2e] if through_the_command(c) or "{addr}" in c[2]
                                               else [])
                                  for c in CASES], ids=[c[0] for c in CASES])
def test_refused_cleanly(case, world, tmp_path, request):
    name, setup, args, code, message = case
    w = world["world"]
    if setup:
        setup(w, tmp_path)
    addr = request.getfixturevalue("ray_local") if "{addr}" in args else None
    argv = args.format(w=w, t=tmp_path, addr=addr).split()
    before = snapshot(w, tmp_path)
    t0 = time.time()
    if through_the_command(case):
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AEPIPE_DEBUG")}
        env["AEPIPE_RESOURCE_WAIT_S"] = "2"  # joined by address, aepipe waits for an autoscaler: not here
        proc = run_installed(*argv, check=False, env=env, capped=name in CAPPED, timeout=120)
    else:
        proc = aepipe_here(*argv)
    took = time.time() - t0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("aepipe: error:")]
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert len(ours) == 1 and message in ours[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert snapshot(w, tmp_path) == before  # inputs untouched; no output, .partial or payload left
    assert took < TIME_BOUND_S, f"took {took:.1f} s"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_an_encode_removes_the_partial_and_exits_130(world, ray_local, tmp_path, monkeypatch, sig):
    """A real SIGINT (or a scheduler's SIGTERM) to a real encode, while its workers are writing."""
    # small tasks (aepipe's own are up to 32768 rows): the encode is far from done at its first chunk
    monkeypatch.setenv("AEPIPE_TASK_ROWS", "4096")
    np.save(tmp_path / "big.npy", np.random.default_rng(1).random((400_000, 8, 8)).astype(np.float32))
    out = tmp_path / "big.zarr"
    proc = subprocess.Popen([AEPIPE, "encode", tmp_path / "big.npy", "--model", world["world"] / "run", "--out", out,
                             "--batch-size", "64", "--chunk-rows", "256", "--address", ray_local],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = out.with_name(out.name + ".partial")
    deadline = time.time() + 90
    while not (partial / "codes" / "c").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    t0 = time.time()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert time.time() - t0 < TIME_BOUND_S
    assert [line for line in stderr.splitlines() if line.startswith("aepipe:")] == \
        [f"aepipe: error: interrupted; removed {partial}"]
    time.sleep(2)  # a worker that was mid-write has had time to finish: still nothing there
    assert not out.exists() and not partial.exists()


def test_verify_passes_on_good_stores_and_swapped_weights_are_caught_on_load(world):
    w = world["world"]
    for store in ("codes.zarr", "codes.parquet"):
        ran = aepipe_here("info", w / store, "--verify")
        assert ran.returncode == 0 and "verified" in ran.stdout, ran.stderr
