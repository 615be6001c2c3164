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
    monkeypatch.setenv("AEPIPE_WAVE_TASKS", "3")  # and in waves: the kill and the rerun span several
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


@pytest.mark.parametrize("suffix", [".zarr", ".parquet"])
def test_a_job_of_many_tasks_runs_in_waves_into_one_store(ray_local, digits_run, digits_npy, tmp_path, monkeypatch,
                                                          suffix):
    """Ray Data's driver holds every task's read task and result until its Dataset ends: a job of more
    than AEPIPE_WAVE_TASKS tasks runs as several Datasets, one after another, into one store
    committed once, the same store as one Dataset writes."""
    from aepipe.batch import engine

    monkeypatch.setenv("AEPIPE_TASK_ROWS", "4096")  # 8 tasks
    encode(str(digits_npy), str(digits_run), tmp_path / f"one{suffix}", chunk_rows=256, engine="ray")
    monkeypatch.setenv("AEPIPE_WAVE_TASKS", "3")  # 8 tasks: waves of 3, 3 and 2
    waves, real = [], engine.RayRows.waves

    def counted(self):
        for ds in real(self):
            waves.append(ds)
            yield ds

    monkeypatch.setattr(engine.RayRows, "waves", counted)
    out = tmp_path / f"waves{suffix}"
    encode(str(digits_npy), str(digits_run), out, chunk_rows=256, engine="ray")
    assert len(waves) == 3 and not (tmp_path / f"waves{suffix}.partial").exists()
    if suffix == ".zarr":
        one, many = (zarr.open_group(str(tmp_path / f"{k}.zarr"), mode="r") for k in ("one", "waves"))
        assert many.attrs["complete"]
        np.testing.assert_array_equal(many["ids"][:], np.arange(N))
        np.testing.assert_array_equal(many["codes"][:], one["codes"][:])
    else:
        a, b = (pads.dataset(str(tmp_path / f"{k}.parquet")).to_table().sort_by("id") for k in ("one", "waves"))
        assert b.column("id").to_pylist() == list(range(N)) and a.column("code").equals(b.column("code"))


def test_ctrl_c_starts_no_more_waves(monkeypatch):
    """Ctrl-C in the main thread (run_interruptibly) while a wave runs: the job's thread, which Python
    cannot kill, starts no further wave and the sink is failed, not committed."""
    import _thread
    import threading

    from aepipe.batch import engine
    from aepipe.cluster import runtime
    from aepipe.cluster.runtime import Interrupted, run_interruptibly

    # Ctrl-C kills an embedded Ray's processes: here that would be the test session's own Ray
    monkeypatch.setattr(runtime, "stop_started_ray", lambda: None)
    monkeypatch.setenv("AEPIPE_WAVE_TASKS", "2")
    ran, failed, done = [], [], threading.Event()

    class Wave:  # stands in for a wave's Ray Dataset: the first one is interrupted while it runs
        def __init__(self, tasks):
            self.tasks = tasks

        def write_datasink(self, target):
            ran.append(self.tasks)
            if len(ran) == 1:
                time.sleep(0.5)  # the main thread is waiting on the job by now
                _thread.interrupt_main()
                time.sleep(1)  # the main thread handles Ctrl-C while this wave still runs
            target.results = []

    class Sink:
        def on_write_start(self):
            pass

        def on_write_complete(self, results):
            raise AssertionError("committed after Ctrl-C")

        def on_write_failed(self, error):
            failed.append(error)
            done.set()

    monkeypatch.setattr(engine, "as_datasink", lambda sink: type("T", (), {"results": []})())
    job = engine.RayRows([[(i, i + 1)] for i in range(6)], Wave)
    with pytest.raises(Interrupted):
        run_interruptibly(job.write_datasink, Sink())
    assert done.wait(5) and ran == [[[(0, 1)], [(1, 2)]]] and isinstance(failed[0], Interrupted)


def test_tasks_are_planned_on_part_edges_from_the_sources_own_steps():
    """sources.plan: steps (a source's own ranges, uneven as row groups are) grouped into tasks whose
    edges fall on multiples of part_rows, a step across an edge cut there; every row once, in order."""
    from aepipe.sources import plan

    class Steps:
        n_rows = 1000

        def ranges(self, rows_per_task=None):
            return [(0, 130), (130, 400), (400, 410), (410, 999), (999, 1000)]

    tasks = plan(Steps(), 300, part_rows=256)
    assert [t[0][0] for t in tasks] == [0, 256, 512, 768]
    assert tasks[0] == [(0, 130), (130, 256)] and tasks[1] == [(256, 400), (400, 410), (410, 512)]
    flat = [r for t in tasks for r in t]
    assert flat[0][0] == 0 and flat[-1][1] == 1000 and all(a[1] == b[0] for a, b in zip(flat, flat[1:]))
    assert plan(Steps(), 300) == [[r] for r in Steps().ranges()]  # no part size: a task per step


def test_part_rows_aims_at_the_part_size_in_whole_units(monkeypatch):
    from aepipe.stores import PART_BYTES, part_rows

    monkeypatch.delenv("AEPIPE_TASK_ROWS", raising=False)
    row = 32 * 4 + 8  # a 32-d float32 code and its id
    big = part_rows(1024, row, 10 ** 9)
    assert big % 1024 == 0 and PART_BYTES - 1024 * row < big * row <= PART_BYTES  # 128 MiB parts
    assert part_rows(1024, row, 100_000) == 25 * 1024  # small data: 4 tasks at least, whole chunks
    assert part_rows(1024, row, 1000) == 1024  # never less than one chunk
    monkeypatch.setenv("AEPIPE_TASK_ROWS", "4096")
    assert part_rows(256, row, 10 ** 9) == 4096


def test_parquet_parts_are_of_the_part_size(digits_run, digits_npy, tmp_path, monkeypatch):
    """--part-mb: one part per task, each about that many MiB of codes (here 1 MiB / 40 B a row =
    26,214 rows, fewer: N / 4 so that every CPU has a task), read back whole and in order."""
    monkeypatch.delenv("AEPIPE_TASK_ROWS", raising=False)
    out = tmp_path / "codes.parquet"
    run_aepipe("encode", digits_npy, "--model", digits_run, "--out", out, "--engine", "local", "--part-mb", "1")
    import pyarrow.parquet as pq

    rows = [pq.ParquetFile(p).metadata.num_rows for p in sorted(out.glob("part-*.parquet"))]
    assert rows == [7500] * 4, rows
    ids, codes = aepipe_load(out)
    assert np.array_equal(ids, np.arange(N))


def aepipe_load(store):
    import aepipe

    return aepipe.load_codes(store)


def test_zarr_shards_hold_many_chunks_per_object_and_read_the_same(digits_run, digits_npy, tmp_path, monkeypatch):
    """--shards: each array's chunks of 256 rows stored as shards of whole tasks (one object each);
    the codes equal an unsharded store's, load_codes, xarray and `info --verify` read it."""
    import xarray as xr

    monkeypatch.delenv("AEPIPE_TASK_ROWS", raising=False)
    plain, sharded = tmp_path / "plain.zarr", tmp_path / "sharded.zarr"
    common = ["--model", digits_run, "--engine", "local", "--chunk-rows", "256"]
    run_aepipe("encode", digits_npy, "--out", plain, *common)
    run_aepipe("encode", digits_npy, "--out", sharded, *common, "--shards")
    g = zarr.open_group(str(sharded), mode="r")
    assert g["codes"].chunks == (256, 8) and g["codes"].shards == (7680, 8)  # N / 4, in whole chunks
    assert len(list((sharded / "codes" / "c").rglob("*"))) < len(list((plain / "codes" / "c").rglob("*"))) / 10
    np.testing.assert_array_equal(g["codes"][:], zarr.open_group(str(plain), mode="r")["codes"][:])
    ids, codes = aepipe_load(sharded)
    assert np.array_equal(ids, np.arange(N))
    with xr.open_zarr(sharded) as ds:
        np.testing.assert_array_equal(ds["codes"].values, codes)
    assert run_aepipe("info", sharded, "--verify").returncode == 0
    shard = sharded / "codes" / "c" / "1" / "0"
    shard.unlink()  # a lost object: named, never read as zeros
    ran = run_aepipe("info", sharded, check=False)
    assert ran.returncode == 2 and "shard codes/c/1/0 is missing (1 of 4 shards lost)" in ran.stderr, ran.stderr


def test_resume_refuses_other_part_sizes(digits_run, digits_npy, tmp_path, monkeypatch):
    """Parquet parts are named by their first row: a resume cutting other parts would write rows
    twice, so the part size is one of the settings a --resume must find unchanged."""
    import errno

    from aepipe.stores.parquet_sink import ParquetSink

    out, partial = tmp_path / "c.parquet", tmp_path / "c.parquet.partial"
    commit = ParquetSink.on_write_complete

    def full_disk(self, results):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ParquetSink, "on_write_complete", full_disk)
    monkeypatch.setenv("AEPIPE_TASK_ROWS", "4096")
    with pytest.raises(AepipeError, match="what was written is kept in"):
        encode(str(digits_npy), str(digits_run), out, engine="local")
    assert partial.is_dir() and len(list(partial.glob("part-*.parquet"))) == 8
    monkeypatch.setattr(ParquetSink, "on_write_complete", commit)
    monkeypatch.setenv("AEPIPE_TASK_ROWS", "3072")
    with pytest.raises(AepipeError, match="was started with part_rows = 4096, this run has 3072"):
        encode(str(digits_npy), str(digits_run), out, engine="local", resume=True)
    monkeypatch.setenv("AEPIPE_TASK_ROWS", "4096")
    encode(str(digits_npy), str(digits_run), out, engine="local", resume=True)
    t = pads.dataset(str(out)).to_table()
    assert np.array_equal(np.sort(t.column("id").to_numpy()), np.arange(N)) and not partial.exists()


def test_a_read_task_does_not_carry_the_plan(digits_npy):
    """Every read task ships its source: a resumed encode's (Remaining) must not take the list of
    every range along, or N tasks move N x N ranges (1.1 MiB a task at 100,000 tasks)."""
    import cloudpickle

    from aepipe.batch.encode import Remaining
    from aepipe.sources import open_source

    src = open_source(str(digits_npy))
    small, big = (Remaining(src, [(a, a + 1) for a in range(n)]) for n in (10, 100_000))
    assert len(cloudpickle.dumps(big)) == len(cloudpickle.dumps(small)) < 4096
    shipped = cloudpickle.loads(cloudpickle.dumps(big))
    for got, want in zip(shipped.read(3, 9), src.read(3, 9)):
        np.testing.assert_array_equal(got, want)
