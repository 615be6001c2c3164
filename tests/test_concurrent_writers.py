"""Two writers of one output: the second refuses in one line while the first holds OUT, the first's
store ends whole, and a lock that a killed writer left behind blocks nobody."""

import subprocess
import sys
import time

import numpy as np

import aepipe
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
