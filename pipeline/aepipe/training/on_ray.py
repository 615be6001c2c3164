"""The Ray Train driver: a TorchTrainer whose N workers (DDP) each run the shared fit loop
(train_loop) on their shard of the Ray Data splits. Rank 0 checkpoints through Ray Train into
the run dir's checkpoints/train-*/; the driver prints rank 0's epoch lines as they come and keeps
checkpoints/latest.txt naming the newest checkpoint, so `--resume` continues from it, on either
path, even after an interruption."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import torch

from aepipe.cluster.runtime import init_ray, require, run_interruptibly, user_errors
from aepipe.config import ModelConfig
from aepipe.training.config import TrainConfig
from aepipe.training.loop import after_epoch, finish, fit, schedule, start
from aepipe.training.rundir import STATE, load_checkpoint, point_at, point_at_newest
from aepipe.training.state import FitState, checkpoint

# Batches taken from Ray Data's iterator at a time (see _shard_batches)
FETCH_BATCHES = 16


def start_ray(address: str | None, tcfg: TrainConfig) -> None:
    """Ray started or joined, and refused at once if it cannot hold the workers asked for."""
    import ray.train.torch  # noqa: F401 - here, so the metrics' "ray_start" counts importing Ray Train too

    init_ray(address)
    require(cpus=tcfg.workers, gpus=tcfg.workers * tcfg.gpus_per_worker,
            what=f"--workers {tcfg.workers}" + (f" --gpus-per-worker {tcfg.gpus_per_worker:g}" if tcfg.gpus_per_worker else ""))


def fit_on_ray(mcfg: ModelConfig, tcfg: TrainConfig, datasets: dict, streamed: bool, latest: str | None,
               storage: Path) -> FitState:
    """Fit on Ray Train's workers, from the checkpoint `latest` if given; returns the final state."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage.mkdir(parents=True, exist_ok=True)
    stamp = int(time.time())
    progress, name = storage / f"progress-{stamp}.txt", f"train-{stamp}"
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"model": dataclasses.asdict(mcfg), "train": dataclasses.asdict(tcfg),
                           "resume_from": latest, "progress": str(progress)},
        scaling_config=ScalingConfig(num_workers=tcfg.workers, use_gpu=tcfg.gpus_per_worker > 0,
                                     resources_per_worker={"CPU": _worker_cpus(tcfg, streamed),
                                                           **({"GPU": tcfg.gpus_per_worker}
                                                              if tcfg.gpus_per_worker else {})}),
        run_config=RunConfig(storage_path=str(storage), name=name,
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=2),
                             # one line per epoch from us, not Ray Train's INFO line per checkpoint
                             logging_config=LoggingConfig(log_level="WARNING")),
        datasets=datasets,
    )
    watch = _Watch(progress, storage, storage / name)
    try:
        with user_errors():
            result = run_interruptibly(trainer.fit, poll=watch)
    finally:
        watch.point()  # an interrupted or failed fit's newest checkpoint: --resume goes on from it
    point_at(storage, result.checkpoint.path)
    with result.checkpoint.as_directory() as d:
        return FitState.from_dict(load_checkpoint(d)["st"])


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker. Rank 0 writes checkpoints; every rank reports every epoch."""
    import ray.train
    import ray.train.torch

    # Ray Train logs each report at INFO through a logger that propagates to the root
    logging.getLogger().setLevel(logging.WARNING)
    mcfg, tcfg = ModelConfig(**config["model"]), TrainConfig(**config["train"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    # a restart after a worker failure gets its checkpoint from Ray; --resume names one from an earlier fit
    saved, ckpt = None, ray.train.get_checkpoint() or (config["resume_from"] and ray.train.Checkpoint(config["resume_from"]))
    if ckpt:
        with ckpt.as_directory() as d:
            saved = load_checkpoint(d)
    model, inner, opt, st = start(mcfg, tcfg, saved, lambda m: ray.train.torch.prepare_model(
        m, parallel_strategy_kwargs={"find_unused_parameters": mcfg.layerwise}))
    batches = _shard_batches(tcfg, device)
    report = after_epoch(len(schedule(mcfg, tcfg)), lambda row, st, due: _report(row, inner, opt, st, rank, due),
                         say=rank == 0 and _appender(config["progress"]))
    st = fit(model, opt, batches, mcfg, tcfg, st, report)
    finish(inner, batches, st, device)
    _report({"epoch": st.step, "final": True}, inner, opt, st, rank, True)


def _shard_batches(tcfg: TrainConfig, device):
    """fit's batches(split, seed) over this worker's shards of the Ray Data splits."""
    import ray.train

    shards = {s: ray.train.get_dataset_shard(s) for s in ("train", "val")}

    def batches(split, seed):
        # Ray Data's iterator costs a few ms per batch it yields (a 300k-row epoch at batch 64 took 1.8x
        # a plain loop's): take FETCH_BATCHES batches at a time, already shuffled, and cut them here
        fetch = tcfg.batch_size * FETCH_BATCHES
        shuffle = dict(local_shuffle_buffer_size=fetch * 4, local_shuffle_seed=seed) if seed is not None else {}
        for b in shards[split].iter_torch_batches(batch_size=fetch, device=device, **shuffle):
            yield from b["x"].split(tcfg.batch_size)

    return batches


def _report(metrics: dict, inner, opt, st: FitState, rank: int, due: bool) -> None:
    """Every rank reports (Ray Train expects it); rank 0 attaches a checkpoint when one is due."""
    import ray.train

    metrics = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    if not (due and rank == 0):
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save(checkpoint(inner, opt, st), Path(d) / STATE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _appender(path: str):
    """Rank 0's epoch lines go to a file under the run dir's storage, which the driver prints as
    they come: workers' own stdout reaches the console only with --verbose (see cluster.runtime.init_ray)."""
    def say(line: str) -> None:
        with open(path, "a") as f:
            f.write(line + "\n")
    return say


class _Watch:
    """Called from the driver's wait loop: prints the lines the progress file gained, and names
    the newest checkpoint of this fit the latest (a driver killed mid-fit leaves it named)."""

    def __init__(self, progress: Path, storage: Path, fit: Path):
        self.progress, self.pos, self.storage, self.fit = progress, 0, storage, fit

    def __call__(self) -> None:
        self.tail()
        self.point()

    def tail(self) -> None:
        try:
            with open(self.progress) as f:
                f.seek(self.pos)
                text = f.read()
        except OSError:
            return
        done = text[:text.rfind("\n") + 1]  # whole lines only
        self.pos += len(done)
        if done:
            print(done, end="", flush=True)

    def point(self) -> None:
        point_at_newest(self.storage, self.fit)


def _worker_cpus(tcfg: TrainConfig, streamed: bool) -> float:
    """A streamed split is read by Ray Data tasks while the workers train: workers holding every
    CPU leave them none, and the fit waits forever (seen with 2 workers on 2 CPUs). Leave one."""
    import ray

    if not streamed:
        return 1.0
    return max(0.25, min(1.0, (ray.cluster_resources().get("CPU", 1) - 1) / tcfg.workers))
