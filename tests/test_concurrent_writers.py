"""Two writers of one output: the second refuses in one line while the first holds OUT, the first's
store ends whole, and a lock that a killed writer left behind blocks nobody. A writer and readers:
a store replaced (--overwrite) while another process reads it is read whole, old or new, or refused
in one line; never rows of both."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

import aepipe
from aepipe.checks import output_path
from aepipe.errors import AepipeError
from aepipe.sources import locate
from aepipe.stores.parquet_sink import ParquetSink
from aepipe.stores.read import StoreGuard, open_codes
from tests.conftest import AEPIPE, run_aepipe

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def holder(lock):
    """Another process holding OUT's lock, as a running aepipe does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_refuses_while_the_first_holds_out(digits_run, tmp_path):
    out = tmp_path / "codes.zarr"
    proc = holder(tmp_path / "codes.zarr.lock")
    try:
        ran = run_aepipe("encode", "builtin:digits", "--model", digits_run, "--out", out, check=False)
        assert ran.returncode == 2, ran.stderr
        assert ran.stderr.strip() == f"aepipe: error: {out} is being written by another aepipe right now; let it " \
                                     "finish, or choose another --out"
        assert not out.exists() and not out.with_name("codes.zarr.partial").exists()
    finally:
        proc.kill()
        proc.wait()
    # the holder died without unlocking (as a SIGKILLed aepipe): its lock file blocks nothing
    assert (tmp_path / "codes.zarr.lock").exists()
    run_aepipe("encode", "builtin:digits", "--model", digits_run, "--out", out)
    assert len(aepipe.load_codes(out)[0]) == 1797
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.zarr"]  # the lock file went with the commit


def test_two_encodes_started_together_one_store_whole(digits_run, tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((60_000, 8, 8)).astype(np.float32))
    out = tmp_path / "codes.parquet"
    argv = [AEPIPE, "encode", tmp_path / "x.npy", "--model", digits_run, "--out", out, "--engine", "local"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    time.sleep(0.3)
    procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = [(p.wait(timeout=240), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in done)
    assert codes == [0, 2], done
    refused = next(err for code, _, err in done if code == 2)
    assert "is being written by another aepipe" in refused or "already exists" in refused, refused
    ids, _ = aepipe.load_codes(out)
    assert sorted(ids.tolist()) == list(range(60_000))  # every row once: nothing interleaved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.parquet", "x.npy"]


def test_a_store_committed_after_the_output_check_is_not_replaced(digits_run, tmp_path):
    """The race of the test above, made certain: this run checks OUT (free, no --overwrite), another
    aepipe writes OUT and commits before this run takes OUT's lock: this run refuses, the other's store
    stays."""
    out = tmp_path / "codes.parquet"
    output_path(out, False, (".parquet",))
    other = subprocess.run([AEPIPE, "encode", "builtin:digits", "--model", digits_run, "--out", out, "--engine",
                            "local"], capture_output=True, text=True)
    assert other.returncode == 0, other.stderr
    sink = ParquetSink(out, 3, {"id": ("id", "scalar")}, {}, [(0, 3)], {"a": 1})
    with pytest.raises(AepipeError, match="already exists .another aepipe wrote it while this one started."):
        sink.prepare()
    assert len(aepipe.load_codes(out)[0]) == 1797
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.parquet"]  # no partial, no lock left


@pytest.mark.parametrize("suffix", [".zarr", ".parquet"])
def test_a_store_replaced_between_two_reads_is_refused_not_mixed(digits_run, tmp_path, suffix):
    """A reader reads a store range by range; another run replaces the store between two ranges:
    the next read says so, where it used to return the new store's rows as the old one's."""
    out = tmp_path / f"codes{suffix}"
    run_aepipe("encode", "builtin:digits", "--model", digits_run, "--out", out, "--engine", "local",
               "--chunk-rows", "256")
    src, _ = open_codes(out)
    ranges = src.ranges(256)
    assert len(ranges) > 2
    first = src.read(*ranges[0])
    run_aepipe("encode", "builtin:digits", "--model", digits_run, "--out", out, "--engine", "local",
               "--dtype", "int8", "--overwrite", "--chunk-rows", "256")
    with pytest.raises(AepipeError, match="replaced by another aepipe run .--overwrite. while this one read it"):
        src.read(*ranges[1])
    with pytest.raises(AepipeError, match="replaced"):
        src.read(*ranges[0])  # even rows already read once: they may be another store's by now
    again, attrs = open_codes(out)  # opened anew: the new store, whole
    assert attrs["dtype"] == "int8" and np.array_equal(again.read(*ranges[0])[0], first[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # the old store went, nothing beside


READ_LOOP = """
import json, os, sys, numpy as np, aepipe
from aepipe.checks import output_path
from aepipe.errors import AepipeError
refs = [np.load(p) for p in sys.argv[2:4]]
stop = sys.argv[4]
whole, refused, last = [0, 0], [], None
print("reading", flush=True)
while last is None:
    done = os.path.exists(stop)  # the writer has finished: the load after it must be whole
    try:
        ids, codes = aepipe.load_codes(sys.argv[1])
    except AepipeError as e:
        refused.append(str(e).splitlines()[0])
        continue
    codes = codes[np.argsort(ids)]
    hits = [k for k, ref in enumerate(refs) if np.array_equal(codes, ref)]
    if not hits:
        sys.exit("MIXED: a read matched neither store")
    whole[hits[0]] += 1
    last = hits[0] if done else None
print(json.dumps({"whole": whole, "last": last, "refused": sorted(set(m.split(": ", 1)[1] for m in refused))}))
"""


def test_overwrites_while_another_process_reads_each_read_whole_or_refused(digits_run, tmp_path):
    """A reader process loads the store again and again while this test replaces it 8 times,
    float32 and int8 by turns: each load is one of the two stores, whole, or one AepipeError; the
    load after the last write is that store."""
    out = tmp_path / "codes.zarr"
    refs = []
    for dtype in ("float32", "int8"):
        run_aepipe("encode", "builtin:digits", "--model", digits_run, "--out", out, "--engine", "local",
                   "--dtype", dtype, "--overwrite", "--chunk-rows", "256")
        ids, codes = aepipe.load_codes(out)
        np.save(tmp_path / f"{dtype}.npy", codes[np.argsort(ids)])
        refs.append(tmp_path / f"{dtype}.npy")
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READ_LOOP, out, *refs, stop], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "reading", reader.stderr.read()
    for rounds in range(8):
        run_aepipe("encode", "builtin:digits", "--model", digits_run, "--out", out, "--engine", "local",
                   "--dtype", ("float32", "int8")[rounds % 2], "--overwrite", "--chunk-rows", "256")
    stop.touch()
    stdout, stderr = reader.communicate(timeout=120)
    assert reader.returncode == 0, stderr  # "MIXED": a load returned rows of two stores
    seen = json.loads(stdout)
    assert seen["last"] == 1 and sum(seen["whole"]) > 0, seen  # int8 was written last
    # the refusals: the store swapped under a read, or absent for the instant between two renames
    assert all("replaced by another aepipe run" in m or "no such file" in m for m in seen["refused"]), seen


@pytest.mark.parametrize("suffix", [".zarr", ".parquet"])
def test_two_writes_of_the_same_rows_are_told_apart(digits_run, tmp_path, suffix):
    """Two commits of the same settings within one second wrote byte-identical root metadata, so a
    reader that started on the first and read rows of a store written between them took the second
    for the first (A, B, A' in quick turns: int8 rows read as float32, once in ~8 loaded runs of the
    test above). Every commit's metadata now carries its own write_id."""
    out = tmp_path / f"codes{suffix}"
    tokens = []
    for _ in range(2):
        run_aepipe("encode", "builtin:digits", "--model", digits_run, "--out", out, "--engine", "local", "--overwrite")
        tokens.append(StoreGuard(locate(str(out))).token)
    assert None not in tokens and tokens[0] != tokens[1]
