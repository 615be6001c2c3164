"""encode at scale: --resume after a real SIGKILL, refusals, torch threads per actor, info's bytes per row,
the auto engine's choice between this process and Ray."""

import os
import signal
import subprocess
import time

import numpy as np
import pyarrow.dataset as pads
import pytest
import zarr

from aepipe import AepipeError
from aepipe.batch.encode import encode
from aepipe.stores.read import describe_store
from tests.conftest import AEPIPE, run_aepipe

N = 30_000  # 8 read ranges of 4096 rows, 118 chunks of 256 rows: killed long before the end


@pytest.fixture(scope="module")
def digits_npy(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("scale") / "digits.npy"
    np.save(path, rng.uniform(0, 16, size=(N, 8, 8)).astype(np.float32))
    return path


def finished(partial):
    """Finished units of a partial store, each with its files' modification times."""
    if partial.suffix == ".partial" and (partial / "_aepipe_done").is_dir():
        return {m.name: [(partial / a / "c" / m.name / tail).stat().st_mtime_ns
                         for a, tail in (("codes", "0"), ("ids", ""))]
                for m in (partial / "_aepipe_done").iterdir()}
    return {p.name: p.stat().st_mtime_ns for p in partial.glob("part-*.parquet")}


def kill_mid_encode(cmd, partial, ray_address):
    """Start encode, SIGKILL the driver once its partial has a few finished units, let Ray stop its work."""
    proc = subprocess.Popen(cmd + ["--address", ray_address], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(finished(partial)) >= 2:
                break
        except OSError:  # the partial is being created
            pass
        time.sleep(0.02)
    assert proc.poll() is None, f"encode ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)  # the cluster notices the dead driver and kills its tasks and actors


@pytest.mark.parametrize("suffix", [".zarr", ".parquet"])
def test_resume_after_sigkill_finishes_without_rewriting(ray_local, digits_run, digits_npy, tmp_path, suffix,
                                                         monkeypatch):
    monkeypatch.setenv("AEPIPE_TASK_ROWS", "4096")  # many small tasks: a few are done at the kill, most not
    out = tmp_path / f"codes{suffix}"
    partial = tmp_path / f"codes{suffix}.partial"
    cmd = [AEPIPE, "encode", str(digits_npy), "--model", str(digits_run), "--out", str(out),
           "--chunk-rows", "256", "--batch-size", "64"]
    kill_mid_encode(cmd, partial, ray_local)
    before = finished(partial)
    assert before and not out.exists()
    if suffix == ".zarr":
        assert len(before) < -(-N // 256), "every chunk was done before the kill"

    # another option: refused, and the partial is kept for the right rerun
    with pytest.raises(AepipeError, match="--resume: .* was started with dtype") as e:
        encode(str(digits_npy), str(digits_run), out, dtype="float16", chunk_rows=256, resume=True)
    assert e.value.exit_code == 2 and partial.is_dir()

    run_aepipe(*cmd[1:], "--resume", address=ray_local)
    assert not partial.exists() and out.exists()
    if suffix == ".zarr":
        g = zarr.open_group(str(out), mode="r")
        ids = g["ids"][:]
        assert g.attrs["complete"] and not (out / "_aepipe_done").exists()
        np.testing.assert_array_equal(ids, np.arange(N))  # every row at its place, exactly once
    else:
        t = pads.dataset(str(out)).to_table()
        ids = np.sort(t.column("id").to_numpy())
        np.testing.assert_array_equal(ids, np.arange(N))
        assert not (out / "_aepipe_resume.json").exists()
    after = finished(out) if suffix == ".parquet" else {
        k: [(out / a / "c" / k / tail).stat().st_mtime_ns for a, tail in (("codes", "0"), ("ids", ""))] for k in before}
    assert {k: after[k] for k in before} == before  # finished chunks/parts were not rewritten

    # the codes equal a fresh, uninterrupted encode
    fresh = tmp_path / f"fresh{suffix}"
    encode(str(digits_npy), str(digits_run), fresh, chunk_rows=256, batch_size=64)
    if suffix == ".zarr":
        np.testing.assert_array_equal(zarr.open_group(str(out))["codes"][:], zarr.open_group(str(fresh))["codes"][:])
    else:
        a, b = (pads.dataset(str(s)).to_table().sort_by("id") for s in (out, fresh))
        assert a.column("code").equals(b.column("code"))


def test_resume_refuses_without_a_partial(digits_run, digits_npy, tmp_path):
    p = run_aepipe("encode", digits_npy, "--model", digits_run, "--out", tmp_path / "c.zarr", "--resume", check=False)
    assert p.returncode == 2 and p.stderr.startswith("aepipe: error: --resume:") and "nothing to resume" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "c.zarr.partial").exists()


def test_resume_refuses_other_data(ray_local, digits_run, digits_npy, tmp_path):
    """A partial left by a run over other data (here: the same file, rewritten) is not finished."""
    data = tmp_path / "d.npy"
    np.save(data, np.load(digits_npy)[:5000])
    partial = tmp_path / "c.parquet.partial"
    partial.mkdir()
    (partial / "_aepipe_resume.json").write_text('{"data": "elsewhere"}')
    p = run_aepipe("encode", data, "--model", digits_run, "--out", tmp_path / "c.parquet", "--resume", check=False)
    assert p.returncode == 2 and p.stderr.startswith("aepipe: error: --resume:") and "data" in p.stderr


def test_actor_torch_threads_follow_its_cpus(ray_local, digits_run):
    import ray

    from aepipe.batch.actors import ModelActor

    @ray.remote(num_cpus=2)
    class Probe(ModelActor):
        def threads(self):
            import torch

            return torch.get_num_threads()

    a = Probe.remote(str(digits_run))
    assert ray.get(a.threads.remote()) == 2
    ray.kill(a)


def test_info_shows_bytes_per_row_and_ratio(ray_local, digits_run, digits_npy, tmp_path):
    data = tmp_path / "d.npy"
    np.save(data, np.load(digits_npy)[:3000])

    encode(str(data), str(digits_run), tmp_path / "c.zarr", dtype="int8")
    rows = dict(describe_store(tmp_path / "c.zarr"))
    size = sum(f.stat().st_size for f in (tmp_path / "c.zarr").rglob("*") if f.is_file())
    assert rows["bytes per row"].startswith(f"{size / 3000:.1f} on disk")
    assert "raw input: 256 B/row (3000 rows x 64 float32)" in rows["vs input"]
    assert f"input files: {data.stat().st_size / 3000:.1f} B/row" in rows["vs input"]


def test_auto_engine_runs_in_process_when_that_beats_ray(ray_local, digits_run, digits_npy, monkeypatch):
    """engine auto: forced choices and Ray asked for are obeyed; otherwise the first read unit is timed
    here and the job's estimate compared with Ray's start-up (RAY_START_S) and its gain per CPU."""
    from aepipe.batch import engine
    from aepipe.batch.actors import Encoder
    from aepipe.run import load_run
    from aepipe.sources import open_for_run

    assert engine.runs_local(10, "auto") is True  # a small ask
    assert engine.runs_local(10 ** 6, "local") is True and engine.runs_local(10, "ray") is False
    assert engine.runs_local(10 ** 6, address="127.0.0.1:6379") is False
    assert engine.runs_local(10 ** 6, num_gpus=1) is False and engine.runs_local(10 ** 6, concurrency=2) is False
    assert engine.runs_local(10 ** 6) is False  # Ray already runs in this process (the session's)
    src = open_for_run(str(digits_npy), load_run(digits_run).meta)
    fn = Encoder(str(digits_run), "float32", False)
    monkeypatch.setattr(engine, "RAY_START_S", 1e6)
    assert engine.local_is_faster(src, fn, 1024)
    if len(os.sched_getaffinity(0)) >= 2:  # Ray can gain something only with 2 CPUs or more
        monkeypatch.setattr(engine, "RAY_START_S", 0.0)
        assert not engine.local_is_faster(src, fn, 1024)


@pytest.mark.parametrize("cpus, cut", [(2, 30.0), (4, 15.0), (8, 12.0)])  # 10 s / (1 - 1 / (0.75 x CPUs))
def test_engine_choice_at_its_cut_on_a_measured_job(digits_run, digits_npy, cpus, cut):
    """Between the extremes: this process wins while its estimate is under Ray's start-up over
    Ray's gain, and loses just past it; on the time measured for a real job, too."""
    from aepipe.batch import engine
    from aepipe.batch.actors import Encoder
    from aepipe.run import load_run
    from aepipe.sources import open_for_run

    assert engine.local_beats_ray(0.95 * cut, cpus, ray_start_s=10.0)
    assert not engine.local_beats_ray(1.05 * cut, cpus, ray_start_s=10.0)
    assert engine.local_beats_ray(1e9, 1)  # one CPU: Ray's tasks gain nothing over this process
    src = open_for_run(str(digits_npy), load_run(digits_run).meta)
    here = engine.time_here(src, Encoder(str(digits_run), "float32", False), 1024)
    assert 0 < here < 60  # 30,000 digits-shaped rows: about a second here
    start_at_cut = here * (1 - 1 / (0.75 * cpus))  # the Ray start-up at which the two tie
    assert engine.local_beats_ray(here, cpus, ray_start_s=1.05 * start_at_cut)
    assert not engine.local_beats_ray(here, cpus, ray_start_s=0.95 * start_at_cut)


def test_encode_in_process_writes_what_ray_writes(ray_local, digits_run, digits_npy, tmp_path):
    """`--engine local` (what auto picks on a small machine) and a Ray encode give the same store."""
    for suffix in (".zarr", ".parquet"):
        run_aepipe("encode", digits_npy, "--model", digits_run, "--out", tmp_path / f"here{suffix}", "--engine", "local")
        run_aepipe("encode", digits_npy, "--model", digits_run, "--out", tmp_path / f"ray{suffix}", address=ray_local)
    here, ray_ = (zarr.open_group(str(tmp_path / f"{k}.zarr"), mode="r") for k in ("here", "ray"))
    np.testing.assert_array_equal(here["ids"][:], np.arange(N))
    np.testing.assert_array_equal(here["codes"][:], ray_["codes"][:])
    a, b = (pads.dataset(str(tmp_path / f"{k}.parquet")).to_table().sort_by("id") for k in ("here", "ray"))
    assert a.column("id").to_pylist() == list(range(N)) and a.column("code").equals(b.column("code"))
