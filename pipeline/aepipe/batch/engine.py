"""The job engine every model job stands on (encode, decode, denoise, score): its option checks,
its provenance, the choice between a Ray Data pass and this process for a model actor (see
aepipe.batch.actors), and the write of a job's rows into a sink.

    model_job(src, Actor, kwargs) -> RayRows, CPUs          one task per row range reads, runs the
                                                            model and writes (Ray fuses the three)
                                  -> RayRows, GPUs          reads -> an actor pool on the GPUs -> writes
                                  -> LocalRows              small asks: no Ray started at all

RayRows runs a job as Ray Datasets of at most WAVE_TASKS tasks each, one after another, into one
sink: Ray Data's driver holds every task's read task and write result until its Dataset ends.

Both answer `write_datasink(sink)` and `iter_batches(...)`, so a job writes its output the same way
whichever ran it. The cut (engine "auto"): jobs of up to LOCAL_ROWS rows run in this process, and so
do larger ones that this process would finish sooner than an embedded Ray could: Ray costs ~10 s to
start here and its tasks gain little on a machine whose every CPU already serves this process's
model (see local_is_faster).
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from aepipe import remote
from aepipe.checks import at_least, positive
from aepipe.cluster.runtime import init_ray, require, run_interruptibly, stop_if_interrupted, user_errors
from aepipe.errors import AepipeError
from aepipe.sources import ROWS_PER_TASK, Source, plan, read_block, to_dataset
from aepipe.stores.raydata import as_datasink
from aepipe.version import __version__

# Ray Data may otherwise fill half the object store with blocks waiting for the actors (GBs on
# a large machine): memory would grow with the dataset. 16 blocks of 64 MiB keep every stage busy.
STREAM_BYTES = 2 ** 30
LOCAL_ROWS = 20_000  # at most this many rows run in-process (measured: bench/RESULTS.md, "small_asks")
# An embedded Ray's start-up before its first task (ray.init, Ray Data's actors, workers importing
# torch): ~10 s on a 2-CPU machine, measured 2026-11-24 (bench/RESULTS.md, "encode_throughput")
RAY_START_S = 10.0
ENGINES = ("auto", "local", "ray")
# A Ray Dataset's driver keeps ~25 KiB a task until the Dataset ends (its read task, put up front,
# and its write result, a one-row pandas frame, gathered at the end): 2 GiB at 100,000 tasks,
# measured (bench/RESULTS.md, "driver_scale"). A job of more tasks runs as Datasets of this many,
# one after another, into one sink: the driver's memory stays at one wave's (~100 MiB) at any size.
WAVE_TASKS = 4096


def actor_pool(concurrency: int, num_gpus: float) -> dict:
    """map_batches arguments for C model-holding actors. The actors never take the cluster's last
    CPU: read and write tasks need one, and without it the pipeline waits forever (seen with
    --concurrency 2 on a 2-CPU machine)."""
    import ray
    from ray.data import ActorPoolStrategy

    require(gpus=num_gpus * concurrency, what=f"--concurrency {concurrency} --gpus {num_gpus:g}")
    cpus = ray.cluster_resources().get("CPU", 1)
    return dict(compute=ActorPoolStrategy(size=concurrency), num_gpus=num_gpus or None,
                num_cpus=min(1.0, max(cpus - 1, 0.25) / concurrency))


def in_batches(fn, block: dict, batch_size: int) -> dict:
    """fn over a block of rows, batch_size rows per call, outputs joined back into one block."""
    n = len(next(iter(block.values())))
    outs = [fn({k: v[i:i + batch_size] for k, v in block.items()}) for i in range(0, n, batch_size) or [0]]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


_LOADED: dict = {}  # job token -> the actor instance this worker process built for that job


class PerProcess:
    """A model job's function for Ray tasks on CPUs: builds actor(**kwargs) once per worker
    process (Ray reuses its workers from task to task) and runs every block through it.

    Why tasks and not an actor pool here: Ray fuses task-pool steps, so one task reads its row
    range, runs the model and writes its share of the output. With an actor pool every 25 MB input
    block crossed the object store, one CPU read while the actor's CPU ran the model, and writes
    waited for a free CPU until the reads were done: 300k rows x 784 took 41.7 s against 19.5 s
    fused, on the same loaded 2-CPU machine (measured 2026-11-24, see bench/RESULTS.md, "encode_throughput")."""

    def __init__(self, actor, kwargs: dict, batch_size: int):
        self.actor, self.kwargs, self.batch_size = actor, kwargs, batch_size
        self.token = uuid.uuid4().hex  # one model per job, even when a driver runs many jobs

    def __call__(self, block: dict) -> dict:
        fn = _LOADED.get(self.token)
        if fn is None:
            _LOADED.clear()  # a worker outliving an earlier job frees that job's model
            fn = _LOADED[self.token] = self.actor(**self.kwargs)
        return in_batches(fn, block, self.batch_size)


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise AepipeError(f'--engine "{engine}": choose one of {", ".join(ENGINES)}')


def runs_local(n_rows: int, engine: str = "auto", address: str | None = None, concurrency: int | None = None,
               num_gpus: float = 0) -> bool | None:
    """True: run in this process; False: on Ray; None (auto, nothing asks for Ray: no cluster
    address, one model copy, no GPU, more than LOCAL_ROWS rows, Ray not started in this process):
    let local_is_faster decide."""
    check_engine(engine)
    if engine != "auto":
        return engine == "local"
    if address or os.environ.get("RAY_ADDRESS") or (concurrency or 1) != 1 or num_gpus:
        return False
    if n_rows <= LOCAL_ROWS:
        return True
    # a Python caller that already started Ray has paid its start-up: use it
    return False if "ray" in sys.modules and sys.modules["ray"].is_initialized() else None


def local_is_faster(src: Source, fn, batch_size: int) -> bool:
    """Time this process on the source's first read unit and compare the whole job's estimate
    with Ray's (local_beats_ray)."""
    return local_beats_ray(time_here(src, fn, batch_size), _cpus())


def time_here(src: Source, fn, batch_size: int) -> float:
    """Seconds this process would take for the whole job, timed on the source's first read unit (a
    row group, a chunk, a few images: reads cost by those, not by rows)."""
    a, b = src.ranges(256)[0]
    in_batches(fn, read_block(src, a, min(b, a + 64)), batch_size)  # torch's and the reader's first call
    t = time.perf_counter()  # cost 4x the next ones here (53 against 12 us a row)
    in_batches(fn, read_block(src, a, b), batch_size)
    return (time.perf_counter() - t) * src.n_rows / (b - a)


def local_beats_ray(here_s: float, cpus: int, ray_start_s: float | None = None) -> bool:
    """Ray's tasks use one CPU each, while this process runs the model on all of them: Ray counts
    as 0.75 x CPUs times this process's rate (measured at 2 CPUs: 1.13x on 784-wide Parquet rows,
    ~2x on JPEGs, whose decoding is single-threaded here), after its start-up of ray_start_s."""
    ray_start_s = RAY_START_S if ray_start_s is None else ray_start_s
    speedup = 0.75 * cpus
    return speedup <= 1 or here_s < ray_start_s / (1 - 1 / speedup)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def model_job(src: Source, actor, kwargs: dict, batch_size: int = 1024, concurrency: int | None = None,
              num_gpus: float = 0, engine: str = "auto", address: str | None = None,
              rows_per_task: int = ROWS_PER_TASK, part_rows: int | None = None):
    """Rows of `src` through actor(**kwargs), as a Ray Dataset or, in this process, LocalRows.
    concurrency: model copies at work at once (None: a task per CPU, or one GPU actor). Options
    are checked by the caller (check_job_options), before anything starts. A task reads, runs and
    writes part_rows rows (None: rows_per_task) in steps of about rows_per_task (sources.plan)."""
    local = runs_local(src.n_rows, engine, address, concurrency, num_gpus)
    tasks = plan(src, rows_per_task, part_rows)
    if local is not False:
        fn = actor(**kwargs)
        if local or local_is_faster(src, fn, batch_size):
            return LocalRows(src, fn, batch_size, tasks)

    init_ray(address)  # a no-op when the caller (or a test) already connected
    from ray.data import DataContext

    opts = DataContext.get_current().execution_options
    # a CPU job's tasks each take a CPU: capping the CPUs Ray Data uses caps the model copies
    cpus = None if num_gpus else concurrency
    opts.resource_limits = opts.resource_limits.copy(object_store_memory=STREAM_BYTES, cpu=cpus)
    if num_gpus:
        pool = actor_pool(concurrency or 1, num_gpus)
        return RayRows(tasks, lambda wave: to_dataset(src, tasks=wave).map_batches(
            actor, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy", **pool))
    # batch_size=None and no task-pool size of its own: Ray fuses the read, this step and the write
    fn = PerProcess(actor, kwargs, batch_size)  # one for every wave: a worker loads the model once
    return RayRows(tasks, lambda wave: to_dataset(src, tasks=wave).map_batches(fn, batch_size=None,
                                                                               batch_format="numpy"))


class RayRows:
    """A model job on Ray: its tasks in waves of WAVE_TASKS (AEPIPE_WAVE_TASKS, where set), each
    wave a Ray Dataset (`dataset(tasks)`) run to its end before the next starts. Writes go into one
    sink, which Ray's calls reach only for its writes: the job starts it once, gathers every wave's
    results and commits (or fails) it once, as LocalRows does."""

    def __init__(self, tasks: list, dataset):
        self.tasks, self.dataset = tasks, dataset
        self.wave = max(1, int(os.environ.get("AEPIPE_WAVE_TASKS", WAVE_TASKS)))

    def waves(self):
        for i in range(0, len(self.tasks), self.wave):
            stop_if_interrupted()
            yield self.dataset(self.tasks[i:i + self.wave])

    def iter_batches(self, **args):
        for ds in self.waves():
            yield from ds.iter_batches(**args)

    def write_datasink(self, sink) -> None:
        staged(sink, lambda: [r for ds in self.waves() for r in self._wave(ds, sink)])

    @staticmethod
    def _wave(ds, sink) -> list:
        target = as_datasink(sink)
        ds.write_datasink(target)
        return target.results


class LocalRows:
    """A model job in this process: the tasks Ray would run, one after another, each a block per
    read step through one actor instance. Streams: one step's input in memory at a time."""

    def __init__(self, src: Source, fn, batch_size: int, tasks: list[list[tuple[int, int]]]):
        self.src, self.fn, self.batch_size, self.tasks = src, fn, batch_size, tasks
        self.bar = None

    def _task(self, steps):
        for a, b in steps:
            yield in_batches(self.fn, read_block(self.src, a, b), self.batch_size)
            if self.bar is not None:
                self.bar.update(b - a)

    def _tasks(self):
        # a bar for a long job on a terminal, as Ray Data draws one for its own
        if sum(map(len, self.tasks)) > 1 and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=sum(b - a for t in self.tasks for a, b in t), unit=" rows", unit_scale=True,
                            leave=False)
        try:
            for steps in self.tasks:
                stop_if_interrupted()
                yield self._task(steps)
        finally:
            if self.bar is not None:
                self.bar.close()

    def iter_batches(self, batch_format="numpy", batch_size=None):
        for task in self._tasks():
            yield from task

    def write_datasink(self, sink) -> None:
        staged(sink, lambda: [sink.write(task) for task in self._tasks()])


def staged(sink, results) -> None:
    """A job's write into a staged sink, whichever engine ran it: the calls Ray makes on a Datasink,
    in its order (start, the writes' results(), commit; or fail), so sinks stay all-or-nothing."""
    try:
        sink.on_write_start()
        sink.on_write_complete(results())
    except BaseException as e:
        sink.on_write_failed(e)
        raise


def provenance(run, data: str, **extra) -> dict:
    return {"aepipe_version": __version__, "model": run.path if remote.is_uri(run.path) else str(Path(run.path).resolve()),
            "model_fingerprint": run.fingerprint, "family": run.meta["family"], "source": data,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **extra}


def check_job_options(batch_size: int, concurrency: int, num_gpus: float, engine: str = "auto") -> None:
    """What every model job (encode, decode, ...) takes, checked before Ray starts."""
    check_engine(engine)
    positive("batch_size", batch_size)
    positive("concurrency", concurrency)
    at_least("gpus", num_gpus, 0)


def write(ds, sink) -> None:
    """Run the job into `sink`: Ray errors back as user errors, Ctrl-C removes the partial store."""
    sink.lock()  # first: a job refused here must not clear another writer's partial
    try:
        with user_errors(sink.final, kept=lambda: sink.kept):
            run_interruptibly(ds.write_datasink, sink, partial=[sink.tmp], kept=lambda: sink.kept)
    finally:
        sink.unlock()  # committed, failed or interrupted: OUT is free for the next writer
