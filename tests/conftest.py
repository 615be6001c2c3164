"""Fixtures named after what they start: a real local Ray, real run dirs, real files."""

import contextlib
import io
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aepipe.cli import main
from aepipe.models import ModelConfig
from aepipe.training import TrainConfig, train

AEPIPE = str(Path(sys.executable).with_name("aepipe"))
# Fixtures that start a Ray (or a server): a test that uses one is end-to-end, and `make check`
# (pytest -m "not e2e") leaves it to `make test`.
STARTS_A_SERVICE = {"ray_local", "cluster", "small_store_cluster", "job_server", "s3"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if STARTS_A_SERVICE & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole session (2 CPUs, no dashboard), as on the CI machine."""
    import ray

    from aepipe.cluster.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


MEMORY_CAP = 4 * 2 ** 30  # torch, zarr and pyarrow imported: ~1 GiB of address space


def _cap_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_installed(*args, address=None, check=True, env=None, capped=False, timeout=280):
    """The installed `aepipe` command in its own process, joined to the test session's Ray when
    given its address: for the tests that check the command end to end (start-up, exit, console).
    capped: the child's address space is capped (RLIMIT_AS), so an input that makes it allocate
    without bound fails that test with a MemoryError and the machine stands. Only for commands
    that start no Ray (Ray maps its object store, GiBs, into every process)."""
    cmd = [AEPIPE, *map(str, args)] + (["--address", address] if address else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**(env or os.environ), "AEPIPE_DEBUG": ""},
                          timeout=timeout, preexec_fn=_cap_memory if capped else None)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def run_aepipe(*args, address=None, check=True):
    """An aepipe command in this process (cli.main, see aepipe_here), with --address when given:
    the command itself, without the 2-3 s of a new interpreter importing torch."""
    ran = aepipe_here(*args, *(["--address", address] if address else []))
    if check and ran.returncode != 0:
        raise AssertionError(f"aepipe {' '.join(map(str, args))} exited {ran.returncode}\n"
                             f"stdout:\n{ran.stdout}\nstderr:\n{ran.stderr}")
    return ran


@dataclass
class Ran:
    """What a command returned and printed, as subprocess.run reports it."""
    returncode: int
    stdout: str
    stderr: str


def aepipe_here(*args) -> Ran:
    """One aepipe command in this process (cli.main), its output captured: what the installed
    command prints, in milliseconds instead of an interpreter's start-up. With no RAY_ADDRESS and
    no AEPIPE_DEBUG, as a user's shell would have it."""
    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "AEPIPE_DEBUG") if k in os.environ}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        os.environ.update(saved)
    return Ran(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A small dense model on the digits train split, shared by encode/decode tests (fitted in this
    process: it needs no Ray)."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    train("builtin:digits-train", out, ModelConfig(family="dense", code_dim=8, hidden=(32,)),
          TrainConfig(epochs=4, batch_size=128))
    return out


def write_table(path: Path, n: int = 600, cols: int = 6, seed: int = 0, files: int = 2) -> np.ndarray:
    """A tabular Parquet dataset: string ids, numeric features in their own units, small row groups,
    split over several files so read tasks cross file and row-group boundaries."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    x = (latent @ rng.normal(size=(2, cols)) + 0.05 * rng.normal(size=(n, cols))) * np.arange(1, cols + 1) * 10
    path.mkdir(parents=True, exist_ok=True)
    per = -(-n // files)
    for f in range(files):
        sl = slice(f * per, min(n, (f + 1) * per))
        table = pa.table({"id": [f"r{i:05d}" for i in range(n)][sl],
                          **{f"f{j}": x[sl, j] for j in range(cols)}})
        pq.write_table(table, path / f"part-{f}.parquet", row_group_size=50)
    return x


@pytest.fixture(scope="session")
def table_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "table.parquet"
    write_table(path)
    return path
