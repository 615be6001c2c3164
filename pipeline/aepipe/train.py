"""Training: one fit loop (`fit`), run either in this process or on Ray Train workers.

With no cluster named, one CPU worker and data that fit in memory, the fit runs in the calling
process without starting Ray (Ray Train's fixed start-up was ~30 s of a 1-epoch digits fit here).
Otherwise a TorchTrainer with N workers (DDP) runs it. Both paths share the statistics,
normalisation and split functions, early stopping, metrics, run dir and checkpoint format, so
`--resume` continues from either. Checkpoints: every CHECKPOINT_EVERY_S and at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aepipe import remote
from aepipe.checks import run_dir_output, train_options
from aepipe.errors import AepipeError
from aepipe.models import ModelConfig, build_model
from aepipe.normalize import Normalizer, block_stats, combine_stats, default_normalizer, fingerprint, in_validation
from aepipe.pca import fit_pca, val_loss as pca_val_loss
from aepipe.run import META, load_state, save_run
from aepipe.runtime import Interrupted, init_ray, require, run_interruptibly, user_errors
from aepipe.scores import training_quantiles
from aepipe.sources import bad_rows, open_source, read_block, skipped_rows, to_dataset
from aepipe.version import __version__


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int | None = None  # None: enough epochs for `steps` optimiser steps (see budget)
    steps: int = 3000  # the default budget in optimiser steps: small data get more epochs
    batch_size: int = 64  # small data, small batches: more steps per epoch
    lr: float = 1e-3  # Adam's usual default; the peak of the cosine schedule
    schedule: str = "cosine"  # cosine: lr decays to LR_FLOOR * lr over the epochs; constant: lr throughout
    weight_decay: float = 0.0  # AdamW's decoupled decay (0: plain Adam)
    seed: int = 0
    workers: int = 1
    gpus_per_worker: float = 0.0
    val_fraction: float = 0.1  # rows held out by a fixed hash of their index
    patience: int | None = None  # epochs without a better val loss before stopping; 0: never; None: see budget
    normalize: str | None = None  # None: "global" for arrays/images, "feature" for tables
    ray_train: bool | None = None  # None: choose (see fit_path); True/False: force Ray Train / this process
    stream: bool | None = None  # None: choose (see _streams); True: reread every epoch; False: materialise


# The default budget: at least MIN_EPOCHS, at most MAX_EPOCHS epochs, enough for TrainConfig.steps
MIN_EPOCHS, MAX_EPOCHS = 30, 1000
LR_FLOOR = 0.05  # the cosine schedule ends at this share of --lr, not at zero
SCHEDULES = ("cosine", "constant")


def budget(tcfg: "TrainConfig", n_train: int) -> "TrainConfig":
    """Epochs and patience made concrete for n_train training rows. A fixed epoch count under-trains
    small data: 150 images at batch 64 are 3 steps an epoch, so 60 epochs are 180 steps. Counting in
    optimiser steps gives them more epochs; patience grows with the epochs (a tenth of them), since
    with a cosine schedule the validation loss still falls late, as the learning rate does."""
    epochs = tcfg.epochs
    if epochs is None:
        per_epoch = max(1, math.ceil(n_train / (tcfg.batch_size * tcfg.workers)))
        epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(tcfg.steps / per_epoch)))
    patience = tcfg.patience if tcfg.patience is not None else max(10, epochs // 10)
    return dataclasses.replace(tcfg, epochs=epochs, patience=patience)


def _set_lr(opt, tcfg: "TrainConfig", epoch: int) -> None:
    """The learning rate for whole-model epoch `epoch` (0-based) of tcfg.epochs."""
    if tcfg.schedule == "cosine":
        share = LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * epoch / max(tcfg.epochs, 1)))
    else:
        share = 1.0
    for g in opt.param_groups:
        g["lr"] = tcfg.lr * share


# Sub-second epochs would spend more time checkpointing than fitting: the best weights stay in
# memory (fit's st), a checkpoint is written when this much time passed since the last, and at the end.
# Read where the fit runs (a Ray Train worker's environment): tests that kill a worker set it low.
CHECKPOINT_EVERY_S = float(os.environ.get("AEPIPE_CHECKPOINT_EVERY_S", 30))
# Ray Train path: batches taken from Ray Data's iterator at a time (see train_loop's batches)
FETCH_BATCHES = 16
# The in-process path holds the raw and normalised rows: keep that under this share of free memory
MEMORY_SHARE = 0.25
# Ray Train path: a split bigger than this share of the object store is streamed, not materialised
# (the store also holds the blocks in flight, and spilling to disk would cost more than a reread)
STORE_SHARE = 0.5


def _prepare(batch: dict, norm: Normalizer, fraction: float, want_val: bool) -> dict:
    keep = (in_validation(batch["row"], fraction) == want_val) & ~bad_rows(batch["id"])  # --on-bad-row skip
    return {"x": norm.apply(batch["x"][keep])}


def _stats(batch: dict) -> dict:
    """A block's statistics over its good rows, and the rows --on-bad-row skip left out (as JSON)."""
    good = ~bad_rows(batch["id"])
    return {**block_stats({"x": batch["x"][good]}), "skipped": np.array([json.dumps(skipped_rows(batch["id"]))])}


def _skipped(stats_rows: list[dict]) -> list[dict]:
    """The skipped rows of every block's _stats (batches here, rows from Ray's take_all), by id."""
    return sorted((s for r in stats_rows for s in json.loads(np.reshape(r["skipped"], -1)[0])), key=lambda s: s["id"])


def _epoch(model, batches, opt=None, stage=None) -> dict:
    """One pass over `batches` (x tensors); returns the loss parts averaged over all workers."""
    sums, n = {}, 0
    model.train(opt is not None)
    for x in batches:
        with torch.set_grad_enabled(opt is not None):
            out = model(x) if stage is None else model(x, stage=stage)
        if opt is not None:
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
        for k, v in {"loss": out["loss"], **out["loss_parts"]}.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(x)
        n += len(x)
    keys = sorted(sums)
    t = _all_reduce(torch.tensor([sums[k] for k in keys] + [n], dtype=torch.float64), model)
    return {k: float(v / max(t[-1], 1)) for k, v in zip(keys, t[:-1])}


def _all_reduce(t: torch.Tensor, model, op=None) -> torch.Tensor:
    """Sum (or op) over workers; a no-op on one. NCCL only reduces tensors on the GPU."""
    if not torch.distributed.is_initialized():
        return t
    t = t.to(next(model.parameters()).device)
    torch.distributed.all_reduce(t, op=op or torch.distributed.ReduceOp.SUM)
    return t.cpu()


def _code_range(model, batches):
    """Per-dimension min/max of the codes over the training rows: int8 quantisation's scale."""
    lo, hi = None, None
    model.eval()
    with torch.no_grad():
        for x in batches:
            z = model.encode(x)
            lo = z.min(0).values if lo is None else torch.minimum(lo, z.min(0).values)
            hi = z.max(0).values if hi is None else torch.maximum(hi, z.max(0).values)
    t = _all_reduce(torch.stack([-lo, hi]).cpu().double(), model, torch.distributed.ReduceOp.MAX)
    return (-t[0]).tolist(), t[1].tolist()


def _code_moments(model, batches):
    """Per-dimension mean and standard deviation of the codes over the training rows: what
    `encode --append` measures the drift of new codes against."""
    n, total, squares = 0, 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for x in batches:
            z = model.encode(x).double()
            n, total, squares = n + len(z), total + z.sum(0), squares + z.pow(2).sum(0)
    t = _all_reduce(torch.cat([torch.tensor([float(n)]), torch.as_tensor(total).cpu().double().reshape(-1),
                               torch.as_tensor(squares).cpu().double().reshape(-1)]), model)
    n, d = t[0], (len(t) - 1) // 2
    mean = t[1:1 + d] / n
    std = (t[1 + d:] / n - mean.pow(2)).clamp(min=0).sqrt()
    return mean.tolist(), std.tolist()


def _schedule(mcfg: ModelConfig, tcfg: TrainConfig) -> list:
    """Epochs in order: layer-wise stages first (stacked --layerwise), then the whole model (None)."""
    n_stages = len(mcfg.widths()) + 1 if mcfg.family == "stacked" and mcfg.layerwise else 0
    return [s for s in range(n_stages) for _ in range(mcfg.pretrain_epochs)] + [None] * tcfg.epochs


def new_state() -> dict:
    return {"step": 0, "history": [], "best_val": math.inf, "best_state": None, "bad": 0, "best_epoch": -1}


def fit(model, opt, batches, mcfg: ModelConfig, tcfg: TrainConfig, st: dict, after_epoch=None) -> dict:
    """The epoch loop that Ray Train workers and in-process fits share: the schedule, validation,
    early stopping, the best weights kept and restored at the end. batches(split, seed) yields x
    tensors of "train" (shuffled by seed) or "val"; after_epoch(row, st) reports and checkpoints."""
    inner = getattr(model, "module", model)  # DDP wraps the model; its state dict is the inner one's
    schedule = _schedule(mcfg, tcfg)
    _floor(inner, batches, mcfg, st)
    # the floor is a promise about reconstruction: with it, penalties shape the path, not the pick
    monitor = "recon" if inner.has_pca_floor else "loss"
    while st["step"] < len(schedule) and not (tcfg.patience and st["bad"] >= tcfg.patience):
        stage, t0 = schedule[st["step"]], time.time()
        whole = st["step"] - (len(schedule) - tcfg.epochs)  # the whole model's epoch, < 0 in layer-wise stages
        _set_lr(opt, tcfg, max(whole, 0))
        tr = _epoch(model, batches("train", tcfg.seed * 100003 + st["step"]), opt, stage)
        va = _epoch(model, batches("val", None), None, stage)
        row = {"epoch": st["step"], "stage": stage, "train_loss": tr["loss"], "val_loss": va["loss"],
               "val_parts": {k: v for k, v in va.items() if k != "loss"}, "seconds": time.time() - t0}
        st["history"].append(row)
        st["step"] += 1
        if stage is None:  # early stopping and best weights only count on the whole model
            if va[monitor] < st["best_val"]:
                st.update(best_val=va[monitor], best_recon=va.get("recon"), best_epoch=row["epoch"], bad=0,
                          best_state={k: v.detach().cpu().clone() for k, v in inner.state_dict().items()})
            else:
                st["bad"] += 1
        if not math.isfinite(tr["loss"]):
            raise AepipeError(f"training loss became {tr['loss']} at epoch {row['epoch'] + 1}; "
                              "try a lower --lr or --normalize standard")
        if after_epoch:
            after_epoch(row, st)
    if st["best_state"] is None:
        # train() refuses --epochs 0, so only a validation loss that was never finite lands here
        raise AepipeError("the validation loss was never finite; try a lower --lr or --normalize standard")
    inner.load_state_dict(st["best_state"])
    return st


def _floor(inner, batches, mcfg: ModelConfig, st: dict) -> None:
    """Before the first epoch: PCA with the code size on the training rows (kept in st, so the run
    dir gets pca.npz), its loss on the validation rows, and, under --init pca, the model set to it
    and scored as epoch 0, its weights the best so far. A resumed fit has all of these already."""
    if "pca" in st or not inner.pca_floor:  # resumed, or a family PCA means nothing to (compress)
        return
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    reduce = lambda t: _all_reduce(t, inner)  # noqa: E731
    st["pca"] = fit_pca(batches("train", None), inner.n_in, mcfg.code_dim, reduce, rank)
    st["pca_val"] = pca_val_loss(st["pca"], batches("val", None), mcfg.loss, reduce)
    if inner.has_pca_floor and st["step"] == 0:
        inner.set_pca({k: v.to(inner.pca_mean.device) for k, v in st["pca"].items()})
        va = _epoch(inner, batches("val", None))
        st.update(best_val=va["recon"], best_recon=va["recon"], best_epoch=-1, init_val=va["recon"],
                  best_state={k: v.detach().cpu().clone() for k, v in inner.state_dict().items()})


def _start(mcfg: ModelConfig, tcfg: TrainConfig, saved: dict | None, prepare=lambda m: m):
    """Model, optimiser and fit state: fresh for the seed, or continued from a checkpoint's dict."""
    torch.manual_seed(tcfg.seed)
    model = prepare(build_model(mcfg))
    inner = getattr(model, "module", model)  # DDP wraps the model; its state dict is the inner one's
    opt = torch.optim.AdamW(inner.param_groups(tcfg.lr), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    st = new_state()
    if saved:
        inner.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        st = saved["st"]
    st["timings"] = {"epochs": 0.0, "checkpoints": 0.0}  # this call's, not an earlier fit's
    return model, inner, opt, st


def _array_batches(arrays: dict, batch_size: int):
    """fit's batches(split, seed) over in-memory arrays: train shuffled by seed, val in order."""
    data = {k: torch.from_numpy(v) for k, v in arrays.items()}

    def batches(split, seed):
        x = data[split]
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) if seed is not None else None
        for i in range(0, len(x), batch_size):
            yield x[order[i:i + batch_size]] if order is not None else x[i:i + batch_size]

    return batches


def fit_local(mcfg: ModelConfig, tcfg: TrainConfig, x_train: np.ndarray, x_val: np.ndarray):
    """The same fit in this process, on arrays already normalised, writing nothing: for benchmarks
    that train a hundred small models."""
    tcfg = budget(tcfg, len(x_train))
    model, _, opt, st = _start(mcfg, tcfg, None)
    st = fit(model, opt, _array_batches({"train": x_train, "val": x_val}, tcfg.batch_size), mcfg, tcfg, st)
    return model.eval(), st


def _epoch_line(row: dict, n_epochs: int) -> str:
    stage = "" if row["stage"] is None else f" (layer {row['stage']})"
    return f"epoch {row['epoch'] + 1}/{n_epochs}{stage}  train {row['train_loss']:.5f}  val {row['val_loss']:.5f}"


def _after_epoch(n_epochs: int, save, say=print):
    """fit's after_epoch on both paths: say the epoch's line, then save(row, st, due), where due
    says a checkpoint is wanted (CHECKPOINT_EVERY_S since the last); time both for the metrics."""
    last = [time.time()]

    def after_epoch(row, st):
        if say:
            say(_epoch_line(row, n_epochs))
        t0 = time.time()
        due = t0 - last[0] >= CHECKPOINT_EVERY_S
        save(row, st, due)
        if due:
            last[0] = time.time()
        st["timings"]["epochs"] += row["seconds"]
        st["timings"]["checkpoints"] += time.time() - t0

    return after_epoch


def _checkpoint(inner, opt, st) -> dict:
    """What a checkpoint's state.pt holds, on either path: tensors and plain values (see load_state)."""
    return {"model": inner.state_dict(), "opt": opt.state_dict(), "st": st}


def _fit_here(mcfg: ModelConfig, tcfg: TrainConfig, arrays: dict, saved: dict | None, ckpt_dir: Path,
              on_epoch=None) -> dict:
    """The in-process path: fit on normalised arrays, checkpoint on the interval and at the end."""
    model, inner, opt, st = _start(mcfg, tcfg, saved)
    batches = _array_batches(arrays, tcfg.batch_size)

    def save(row, st, due):
        if on_epoch:  # aepipe tune reports every epoch to Ray Tune (which may stop the trial here)
            on_epoch(row, st)
        if due:
            _save_checkpoint(ckpt_dir, inner, opt, st)

    # one worker, one CPU thread, as Ray Train gives a 1-CPU worker (OMP_NUM_THREADS=1): on this
    # busy 2-core machine torch's idle threads spinning made a digits epoch 10x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        st = fit(model, opt, batches, mcfg, tcfg, st, _after_epoch(len(_schedule(mcfg, tcfg)), save))
        st["code_lo"], st["code_hi"] = _code_range(inner, batches("train", None))
        st["code_mean"], st["code_std"] = _code_moments(inner, batches("train", None))
        st["score_quantiles"] = training_quantiles(inner, batches("train", None))
    finally:
        torch.set_num_threads(threads)
    st["device"] = "cpu"
    _save_checkpoint(ckpt_dir, inner, opt, st)
    return st


def _save_checkpoint(ckpt_dir: Path, inner, opt, st: dict) -> None:
    """Ray Train's checkpoint layout (DIR/checkpoint_*/state.pt), so _latest_checkpoint finds either."""
    d = ckpt_dir / "checkpoint_latest"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "state.pt.tmp"
    torch.save(_checkpoint(inner, opt, st), tmp)
    tmp.replace(d / "state.pt")  # a crash mid-write leaves the previous checkpoint whole


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
            saved = load_state(Path(d) / "state.pt")
    model, inner, opt, st = _start(mcfg, tcfg, saved, lambda m: ray.train.torch.prepare_model(
        m, parallel_strategy_kwargs={"find_unused_parameters": mcfg.layerwise}))
    shards = {s: ray.train.get_dataset_shard(s) for s in ("train", "val")}

    def batches(split, seed):
        # Ray Data's iterator costs a few ms per batch it yields (a 300k-row epoch at batch 64 took 1.8x
        # a plain loop's): take FETCH_BATCHES batches at a time, already shuffled, and cut them here
        fetch = tcfg.batch_size * FETCH_BATCHES
        shuffle = dict(local_shuffle_buffer_size=fetch * 4, local_shuffle_seed=seed) if seed is not None else {}
        for b in shards[split].iter_torch_batches(batch_size=fetch, device=device, **shuffle):
            yield from b["x"].split(tcfg.batch_size)

    report = _after_epoch(len(_schedule(mcfg, tcfg)), lambda row, st, due: _report(row, inner, opt, st, rank, due),
                          say=rank == 0 and _appender(config["progress"]))
    st = fit(model, opt, batches, mcfg, tcfg, st, report)
    st["device"] = str(device)
    st["code_lo"], st["code_hi"] = _code_range(inner, batches("train", None))
    st["code_mean"], st["code_std"] = _code_moments(inner, batches("train", None))
    st["score_quantiles"] = training_quantiles(inner, batches("train", None))
    _report({"epoch": st["step"], "final": True}, inner, opt, st, rank, True)


def _appender(path: str):
    """Rank 0's epoch lines go to a file under the run dir's storage, which the driver prints as
    they come: workers' own stdout reaches the console only with --verbose (see runtime.init_ray)."""
    def say(line: str) -> None:
        with open(path, "a") as f:
            f.write(line + "\n")
    return say


class _Tail:
    """Prints the lines a file gains, from the driver's wait loop."""

    def __init__(self, path: Path):
        self.path, self.pos = path, 0

    def __call__(self) -> None:
        try:
            with open(self.path) as f:
                f.seek(self.pos)
                text = f.read()
        except OSError:
            return
        done = text[:text.rfind("\n") + 1]  # whole lines only
        self.pos += len(done)
        if done:
            print(done, end="", flush=True)


def _report(metrics: dict, inner, opt, st: dict, rank: int, checkpoint: bool) -> None:
    """Every rank reports (Ray Train expects it); rank 0 attaches a checkpoint when one is due."""
    import ray.train

    metrics = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    if not (checkpoint and rank == 0):
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save(_checkpoint(inner, opt, st), Path(d) / "state.pt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _datasets(src, norm: Normalizer, fraction: float, stream: dict):
    """Normalised train/val splits. Materialised once where they fit the object store: each epoch
    rereads memory, not the source. Streamed (stream[name] True): every epoch reads and normalises
    the source again, so data past memory train with a flat footprint."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # datasets keep this context:
    try:  # with bars on, every worker would draw one per epoch
        out = {}
        for name, want_val in (("train", False), ("val", True)):
            ds = to_dataset(src).map_batches(
                _prepare, fn_kwargs=dict(norm=norm, fraction=fraction, want_val=want_val), batch_format="numpy")
            if stream[name]:
                _check_split(src, name, _split_rows(src.n_rows, fraction, want_val))
            else:
                ds = ds.materialize()
                _check_split(src, name, ds.count())
            out[name] = ds
        return out
    finally:
        ctx.enable_progress_bars = bars


def _worker_cpus(tcfg: TrainConfig, streamed: bool) -> float:
    """A streamed split is read by Ray Data tasks while the workers train: workers holding every
    CPU leave them none, and the fit waits forever (seen with 2 workers on 2 CPUs). Leave one."""
    import ray

    if not streamed:
        return 1.0
    return max(0.25, min(1.0, (ray.cluster_resources().get("CPU", 1) - 1) / tcfg.workers))


def _split_rows(n_rows: int, fraction: float, want_val: bool, step: int = 1 << 22) -> int:
    """Rows in a split, from the row indices alone (in_validation), without reading any data."""
    val = sum(int(in_validation(np.arange(a, min(a + step, n_rows)), fraction).sum()) for a in range(0, n_rows, step))
    return val if want_val else n_rows - val


def _streams(src, tcfg: TrainConfig) -> dict:
    """Which splits stream: --stream/--no-stream, else those bigger than STORE_SHARE of the
    cluster's object store (estimated from the schema: float32 rows)."""
    import ray

    size = {"train": (1 - tcfg.val_fraction), "val": tcfg.val_fraction}
    size = {k: v * src.n_rows * src.schema.size * 4 for k, v in size.items()}
    if tcfg.stream is not None:
        return {"train": tcfg.stream, "val": tcfg.stream and size["val"] > 0}
    store = ray.cluster_resources().get("object_store_memory", 0)
    return {k: v > STORE_SHARE * store for k, v in size.items()}


def _check_split(src, name: str, n: int) -> None:
    if n == 0:
        raise AepipeError(f"{src.spec}: too few rows ({src.n_rows}) for a {name} split")


def _normalizer(src, mcfg: ModelConfig, tcfg: TrainConfig, stats: dict) -> Normalizer:
    if stats["count"] == 0:
        first = stats["skipped"][0]
        raise AepipeError(f"{src.spec}: every row was bad and skipped (the first, {first['id']}: {first['reason']})")
    norm = Normalizer.fit(tcfg.normalize or default_normalizer(src.schema), stats)
    _check_loss_range(mcfg.loss, norm, stats)
    return norm


def _check_loss_range(loss: str, norm: Normalizer, stats: dict) -> None:
    if loss != "bce":
        return
    shift, scale = np.asarray(norm.shift), np.asarray(norm.scale)
    lo, hi = ((stats["min"] - shift) / scale).min(), ((stats["max"] - shift) / scale).max()
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise AepipeError(f"--loss bce needs inputs in [0, 1], but after --normalize {norm.kind} they span "
                          f"[{lo:.3g}, {hi:.3g}]; use --normalize global or feature, or --loss mse")


def _free_memory() -> int:
    """Bytes this machine can still hand out (Linux MemAvailable; elsewhere half the RAM)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
        except (ValueError, OSError, AttributeError):
            return 0  # unknown: Ray Train, which streams


def fit_path(src, tcfg: TrainConfig, address: str | None = None) -> str:
    """Why the fit runs on Ray Train, or "" to run it in this process."""
    if tcfg.ray_train is False:
        if tcfg.workers > 1 or tcfg.gpus_per_worker or tcfg.stream:
            raise AepipeError("--in-process fits with one CPU worker on data in memory; "
                              "drop --workers / --gpus-per-worker / --stream")
        return ""
    cluster = address or os.environ.get("RAY_ADDRESS")
    held = 2 * src.n_rows * src.schema.size * 4  # raw and normalised float32 rows
    why = [("--ray-train", tcfg.ray_train), ("--stream", tcfg.stream), (f"--workers {tcfg.workers}", tcfg.workers > 1),
           ("GPUs asked", tcfg.gpus_per_worker > 0), (f"cluster {cluster}", cluster),
           (f"data ({held / 2**30:.1f} GiB) past memory", held > MEMORY_SHARE * _free_memory())]
    return ", ".join(w for w, yes in why if yes)


def _train_here(src, mcfg: ModelConfig, tcfg: TrainConfig, saved: dict | None, storage: Path, on_epoch=None):
    """Statistics, split and fit without Ray: the source read once, range by range, into memory."""
    tm, t = {}, time.time()
    blocks = [read_block(src, a, b) for a, b in src.ranges()]  # the blocks to_dataset would make
    parts = [_stats(b) for b in blocks]
    stats = {**combine_stats(parts), "skipped": _skipped(parts)}
    norm = _normalizer(src, mcfg, tcfg, stats)
    tm["statistics"], t = time.time() - t, time.time()
    arrays = {}
    for name in ("train", "val"):
        arrays[name] = np.concatenate([_prepare(b, norm, tcfg.val_fraction, name == "val")["x"] for b in blocks])
        _check_split(src, name, len(arrays[name]))
    del blocks
    tm["datasets"], t = time.time() - t, time.time()
    st = _fit_here(mcfg, tcfg, arrays, saved, storage / "process", on_epoch)
    tm["fit"] = time.time() - t
    return stats, norm, st, tm


def _train_on_ray(src, mcfg: ModelConfig, tcfg: TrainConfig, latest: str | None, storage: Path, address):
    """Statistics and split as Ray Data jobs, the fit on a TorchTrainer's workers."""
    tm, t = {}, time.time()  # "ray_start" counts importing Ray too
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray(address)
    require(cpus=tcfg.workers, gpus=tcfg.workers * tcfg.gpus_per_worker,
            what=f"--workers {tcfg.workers}" + (f" --gpus-per-worker {tcfg.gpus_per_worker:g}" if tcfg.gpus_per_worker else ""))
    tm["ray_start"], t = time.time() - t, time.time()
    with user_errors():
        parts = to_dataset(src).map_batches(_stats, batch_size=None).take_all()
        stats = {**combine_stats(parts), "skipped": _skipped(parts)}
        norm = _normalizer(src, mcfg, tcfg, stats)
        tm["statistics"], t = time.time() - t, time.time()
        stream = _streams(src, tcfg)
        if stream["train"]:
            print(f"streaming the data every epoch ({src.n_rows * src.schema.size * 4 / 2**30:.2f} GiB as float32, "
                  f"object store {ray.cluster_resources().get('object_store_memory', 0) / 2**30:.2f} GiB)", flush=True)
        datasets = _datasets(src, norm, tcfg.val_fraction, stream)
    tm["datasets"], t = time.time() - t, time.time()
    storage.mkdir(parents=True, exist_ok=True)
    progress = storage / f"progress-{int(time.time())}.txt"
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"model": dataclasses.asdict(mcfg), "train": dataclasses.asdict(tcfg),
                           "resume_from": latest, "progress": str(progress)},
        scaling_config=ScalingConfig(num_workers=tcfg.workers, use_gpu=tcfg.gpus_per_worker > 0,
                                     resources_per_worker={"CPU": _worker_cpus(tcfg, stream["train"]),
                                                           **({"GPU": tcfg.gpus_per_worker}
                                                                        if tcfg.gpus_per_worker else {})}),
        run_config=RunConfig(storage_path=str(storage), name=f"train-{int(time.time())}",
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=2),
                             # one line per epoch from us, not Ray Train's INFO line per checkpoint
                             logging_config=LoggingConfig(log_level="WARNING")),
        datasets=datasets,
    )
    with user_errors():
        result = run_interruptibly(trainer.fit, poll=_Tail(progress))
    with result.checkpoint.as_directory() as d:
        st = load_state(Path(d) / "state.pt")["st"]
    st["streamed"] = stream["train"]
    tm["fit"] = time.time() - t
    return stats, norm, st, tm


def train(data: str, out: str | Path, mcfg: ModelConfig, tcfg: TrainConfig, id_column: str | None = None,
          resume: bool = False, address: str | None = None, read: dict | None = None, on_epoch=None) -> dict:
    """Fit a model on DATA and write a self-describing run dir at `out`. Returns aepipe.json's dict.
    address (or RAY_ADDRESS) names a Ray cluster, which sends the fit to Ray Train (see fit_path).
    on_epoch(row, st): called after every epoch of an in-process fit (aepipe tune's trials)."""
    if remote.is_uri(out):
        return _train_to_uri(data, out, mcfg, tcfg, id_column, resume, address, read)
    started = time.time()
    train_options(mcfg, tcfg)
    out = run_dir_output(out, data, resume).resolve()
    if (out / META).exists() and not resume:
        raise AepipeError(f"{out} already holds a trained model; choose another --out or pass --resume")
    src = open_source(data, id_column, **(read or {}))
    mcfg = dataclasses.replace(mcfg, input_shape=src.schema.shape)
    try:
        build_model(mcfg)  # refuse a bad family/option/shape here, before any work
    except ValueError as e:
        raise AepipeError(str(e)) from None
    tcfg = budget(tcfg, _split_rows(src.n_rows, tcfg.val_fraction, False))  # aepipe.json keeps the concrete values
    why_ray = fit_path(src, tcfg, address)
    storage = out / "checkpoints"
    latest = _latest_checkpoint(storage) if resume else None
    if resume and latest is None:
        raise AepipeError(f"{out}: nothing to resume (no checkpoints under {storage})")
    saved = load_state(Path(latest) / "state.pt") if latest else None  # refuse an unsafe one before any work
    t0 = time.time()
    fresh = not storage.exists()
    try:
        if why_ray:
            print(f"fitting with Ray Train ({why_ray}; {tcfg.workers} worker{'s' * (tcfg.workers > 1)})", flush=True)
            stats, norm, st, tm = _train_on_ray(src, mcfg, tcfg, latest, storage, address)
        else:
            print("fitting in this process (1 worker, data in memory); --workers 2 or --address uses Ray Train",
                  flush=True)
            stats, norm, st, tm = _train_here(src, mcfg, tcfg, saved, storage, on_epoch)
    except (Interrupted, KeyboardInterrupt):
        if storage.exists():
            raise Interrupted(f"interrupted; checkpoints kept in {storage}: `aepipe train ... --resume` continues") from None
        raise Interrupted("interrupted") from None
    except BaseException:
        if fresh:  # a failed first fit leaves no half run dir behind
            shutil.rmtree(storage, ignore_errors=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    state = st["best_state"]
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    plot_loss(st["history"], out / "loss_curve.png", title=f"{mcfg.family}, code {mcfg.code_dim}")
    tm.update(st.get("timings", {}), plot=time.time() - t, started_at=started)
    meta = {
        "aepipe_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "family": mcfg.family,
        "model": dataclasses.asdict(mcfg),
        "train": dataclasses.asdict(tcfg),
        "source": data,
        "n_rows": src.n_rows - len(stats["skipped"]),
        **({"skipped": stats["skipped"]} if stats["skipped"] else {}),  # --on-bad-row skip
        "id_column": getattr(src, "id_column", None),
        "reader": src.fitted(),
        "schema": src.schema.to_json(),
        "normalizer": norm.to_json(),
        "data_fingerprint": fingerprint(src, stats),
        "code_range": {"lo": st["code_lo"], "hi": st["code_hi"]},
        "score_quantiles": st.get("score_quantiles"),
        "code_stats": {"mean": st.get("code_mean"), "std": st.get("code_std")} if st.get("code_mean") else None,
        "metrics": {"history": st["history"], "best_epoch": st["best_epoch"], "best_val_loss": st["best_val"],
                    # the linear floor beside the model, on the same validation rows and loss
                    "val_recon": st.get("best_recon"), "pca": {"code_dim": mcfg.code_dim, "val_loss": st.get("pca_val"),
                                                              "init_val_loss": st.get("init_val")},
                    "stopped_early": len(st["history"]) < len(_schedule(mcfg, tcfg)), "device": st["device"],
                    "path": "ray train" if why_ray else "process", "seconds": time.time() - t0,
                    "streamed": bool(st.get("streamed")),
                    # where this call's wall time went (bench/train_overhead.py reads it)
                    "timings": {**tm, "before_save": time.time()}},
    }
    if "pca" in st:  # the baseline itself, for anyone who wants to compare codes with PCA's
        np.savez(out / "pca.npz", **{k: v.numpy() for k, v in st["pca"].items()})
    meta = save_run(out, meta, state)  # with the weights fingerprint it computed
    return meta


def _train_to_uri(data, out, mcfg, tcfg, id_column, resume, address, read) -> dict:
    """train --out s3://...: fit into a local temporary run dir, then upload it, aepipe.json last
    (its presence at the URI means the rest is there). --resume downloads the run dir first,
    checkpoints included; an interrupted fit uploads its checkpoints so --resume can continue."""
    train_options(mcfg, tcfg)
    uri = run_dir_output(out, data, resume)
    if remote.is_file(uri / META) and not resume:
        raise AepipeError(f"{uri} already holds a trained model; choose another --out or pass --resume")
    with tempfile.TemporaryDirectory(prefix="aepipe-train-") as d:
        local = Path(d) / "run"
        if resume:
            remote.download(uri, local)
            _mark_latest(local / "checkpoints", restore=True)
        try:
            meta = train(data, local, mcfg, tcfg, id_column, resume, address, read)
        except Interrupted:
            if (local / "checkpoints").exists():
                _mark_latest(local / "checkpoints")
                remote.upload(local, uri, last=META)  # no aepipe.json yet: not mistaken for a model
                raise Interrupted(f"interrupted; checkpoints kept in {uri}/checkpoints: "
                                  "`aepipe train ... --resume` continues") from None
            raise
        except AepipeError as e:  # name the URI, not the temporary folder
            raise AepipeError(str(e).replace(str(local), uri.rstrip("/")), e.exit_code) from None
        _mark_latest(local / "checkpoints")
        remote.upload(local, uri, last=META)
    return meta


LATEST = "latest.txt"


def _mark_latest(storage: Path, restore: bool = False) -> None:
    """_latest_checkpoint goes by file times, which a download does not keep: before an upload,
    name the latest checkpoint in checkpoints/latest.txt; after a download, make it the newest."""
    if not restore:
        latest = _latest_checkpoint(storage) if storage.exists() else None
        if latest:
            (storage / LATEST).write_text(Path(latest).relative_to(storage).as_posix())
        return
    mark = storage / LATEST
    if mark.is_file():
        state = (storage / mark.read_text().strip() / "state.pt").resolve()
        if storage.resolve() in state.parents and state.is_file():  # never touch a file outside it
            t = time.time() + 1
            os.utime(state, (t, t))


def _latest_checkpoint(storage: Path):
    """The newest checkpoint any earlier fit left under the run dir (Ray names them checkpoint_*)."""
    found = sorted(storage.glob("*/checkpoint_*/state.pt"), key=lambda p: p.stat().st_mtime)
    return str(found[-1].parent) if found else None


def plot_loss(history: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [h["epoch"] + 1 for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], label="train")
    ax.plot(ep, [h["val_loss"] for h in history], label="validation")
    losses = [h[k] for h in history for k in ("train_loss", "val_loss")]
    positive = all(v > 0 for v in losses)  # a loss of exactly 0 (a row or two) has no log scale
    ax.set(xlabel="epoch", ylabel="loss", yscale="log" if positive else "linear", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
