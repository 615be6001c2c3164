"""Training on Ray Train: a TorchTrainer with N workers (DDP), a checkpoint every epoch,
validation on a fixed held-out split, early stopping, resume from the run dir's checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pipeline
from pipeline import AepipeError
from pipeline.data import (Normalizer, block_stats, combine_stats, default_normalizer, fingerprint,
                           in_validation, open_source, to_dataset)
from pipeline.models import ModelConfig, build_model
from pipeline.run import META, load_state, save_run, weights_fingerprint
from pipeline.checks import run_dir_output, train_options
from pipeline.runtime import Interrupted, init_ray, require, run_interruptibly, user_errors


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # digits reach their best validation loss in 20-40 epochs
    batch_size: int = 64  # small data, small batches: more steps per epoch
    lr: float = 1e-3  # Adam's usual default
    seed: int = 0
    workers: int = 1
    gpus_per_worker: float = 0.0
    val_fraction: float = 0.1  # rows held out by a fixed hash of their index
    patience: int = 10  # stop after this many epochs without a better validation loss; 0: never
    normalize: str | None = None  # None: "global" for arrays/images, "feature" for tables


def _prepare(batch: dict, norm: Normalizer, fraction: float, want_val: bool) -> dict:
    keep = in_validation(batch["row"], fraction) == want_val
    return {"x": norm.apply(batch["x"][keep])}


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
    while st["step"] < len(schedule) and not (tcfg.patience and st["bad"] >= tcfg.patience):
        stage, t0 = schedule[st["step"]], time.time()
        tr = _epoch(model, batches("train", tcfg.seed * 100003 + st["step"]), opt, stage)
        va = _epoch(model, batches("val", None), None, stage)
        row = {"epoch": st["step"], "stage": stage, "train_loss": tr["loss"], "val_loss": va["loss"],
               "val_parts": {k: v for k, v in va.items() if k != "loss"}, "seconds": time.time() - t0}
        st["history"].append(row)
        st["step"] += 1
        if stage is None:  # early stopping and best weights only count on the whole model
            if va["loss"] < st["best_val"]:
                st.update(best_val=va["loss"], best_epoch=row["epoch"], bad=0,
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


def fit_local(mcfg: ModelConfig, tcfg: TrainConfig, x_train: np.ndarray, x_val: np.ndarray):
    """The same fit in this process, on arrays already normalised: for benchmarks that train
    a hundred small models, where Ray Train's start-up (~10 s a fit here) would dominate."""
    torch.manual_seed(tcfg.seed)
    model = build_model(mcfg)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    data = {"train": torch.from_numpy(x_train), "val": torch.from_numpy(x_val)}

    def batches(split, seed):
        x = data[split]
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) if seed is not None else None
        for i in range(0, len(x), tcfg.batch_size):
            yield x[order[i:i + tcfg.batch_size]] if order is not None else x[i:i + tcfg.batch_size]

    st = fit(model, opt, batches, mcfg, tcfg, new_state())
    return model.eval(), st


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker. Rank 0 writes checkpoints; every rank reports."""
    import ray.train
    import ray.train.torch

    # Ray Train logs each report at INFO through a logger that propagates to the root
    logging.getLogger().setLevel(logging.WARNING)
    mcfg, tcfg = ModelConfig(**config["model"]), TrainConfig(**config["train"])
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(tcfg.seed)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(
        build_model(mcfg), parallel_strategy_kwargs={"find_unused_parameters": mcfg.layerwise})
    inner = getattr(model, "module", model)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    st = new_state()
    # a restart after a worker failure gets its checkpoint from Ray; --resume names one from an earlier fit
    ckpt = ray.train.get_checkpoint() or (config["resume_from"] and ray.train.Checkpoint(config["resume_from"]))
    if ckpt:
        with ckpt.as_directory() as d:
            saved = load_state(Path(d) / "state.pt")
        inner.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        st = saved["st"]
    shards = {s: ray.train.get_dataset_shard(s) for s in ("train", "val")}

    def batches(split, seed):
        shuffle = dict(local_shuffle_buffer_size=tcfg.batch_size * 16, local_shuffle_seed=seed) if seed is not None else {}
        for b in shards[split].iter_torch_batches(batch_size=tcfg.batch_size, device=device, **shuffle):
            yield b["x"]

    n_epochs = len(_schedule(mcfg, tcfg))

    def after_epoch(row, st):
        if rank == 0:
            stage = "" if row["stage"] is None else f" (layer {row['stage']})"
            print(f"epoch {row['epoch'] + 1}/{n_epochs}{stage}  train {row['train_loss']:.5f}"
                  f"  val {row['val_loss']:.5f}", flush=True)
        _report(row, inner, opt, st, rank)

    st = fit(model, opt, batches, mcfg, tcfg, st, after_epoch)
    st["device"] = str(device)
    st["code_lo"], st["code_hi"] = _code_range(inner, batches("train", None))
    from pipeline.reconstruct import training_quantiles  # score --threshold auto reads these
    st["score_quantiles"] = training_quantiles(inner, batches("train", None))
    _report({"epoch": st["step"], "final": True}, inner, opt, st, rank)


def _report(metrics: dict, inner, opt, st: dict, rank: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            torch.save({"model": inner.state_dict(), "opt": opt.state_dict(), "st": st}, Path(d) / "state.pt")
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report({k: v for k, v in metrics.items() if not isinstance(v, dict)}, checkpoint=checkpoint)


def _datasets(src, norm: Normalizer, fraction: float):
    """Normalised train/val splits, materialised once: each epoch rereads memory, not the source,
    and train workers holding every CPU need no Ray Data tasks while they run."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # datasets keep this context:
    try:  # with bars on, every worker would draw one per epoch
        out = {}
        for name, want_val in (("train", False), ("val", True)):
            out[name] = to_dataset(src).map_batches(
                _prepare, fn_kwargs=dict(norm=norm, fraction=fraction, want_val=want_val),
                batch_format="numpy").materialize()
            if out[name].count() == 0:
                raise AepipeError(f"{src.spec}: too few rows ({src.n_rows}) for a {name} split")
        return out
    finally:
        ctx.enable_progress_bars = bars


def _check_loss_range(loss: str, norm: Normalizer, stats: dict) -> None:
    if loss != "bce":
        return
    shift, scale = np.asarray(norm.shift), np.asarray(norm.scale)
    lo, hi = ((stats["min"] - shift) / scale).min(), ((stats["max"] - shift) / scale).max()
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise AepipeError(f"--loss bce needs inputs in [0, 1], but after --normalize {norm.kind} they span "
                          f"[{lo:.3g}, {hi:.3g}]; use --normalize global or feature, or --loss mse")


def train(data: str, out: str | Path, mcfg: ModelConfig, tcfg: TrainConfig, id_column: str | None = None,
          resume: bool = False, address: str | None = None) -> dict:
    """Fit a model on DATA and write a self-describing run dir at `out`. Returns aepipe.json's dict."""
    if isinstance(tcfg.epochs, int) and not isinstance(tcfg.epochs, bool) and tcfg.epochs < 1:
        raise AepipeError(f"--epochs {tcfg.epochs}: train for at least one epoch")
    train_options(mcfg, tcfg)
    out = run_dir_output(out, data, resume).resolve()
    if (out / META).exists() and not resume:
        raise AepipeError(f"{out} already holds a trained model; choose another --out or pass --resume")
    src = open_source(data, id_column)
    mcfg = dataclasses.replace(mcfg, input_shape=src.schema.shape)
    try:
        build_model(mcfg)  # refuse a bad family/option/shape here, before any Ray work
    except ValueError as e:
        raise AepipeError(str(e)) from None
    storage = out / "checkpoints"
    latest = _latest_checkpoint(storage) if resume else None
    if resume and latest is None:
        raise AepipeError(f"{out}: nothing to resume (no checkpoints under {storage})")
    if latest:
        load_state(Path(latest) / "state.pt")  # refuse an unsafe checkpoint here, before any worker starts
    init_ray(address)
    require(cpus=tcfg.workers, gpus=tcfg.workers * tcfg.gpus_per_worker,
            what=f"--workers {tcfg.workers}" + (f" --gpus-per-worker {tcfg.gpus_per_worker:g}" if tcfg.gpus_per_worker else ""))
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t0 = time.time()
    with user_errors():
        stats = combine_stats(to_dataset(src).map_batches(block_stats, batch_size=None).take_all())
        norm = Normalizer.fit(tcfg.normalize or default_normalizer(src.schema), stats)
        _check_loss_range(mcfg.loss, norm, stats)
        datasets = _datasets(src, norm, tcfg.val_fraction)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"model": dataclasses.asdict(mcfg), "train": dataclasses.asdict(tcfg),
                           "resume_from": latest},
        scaling_config=ScalingConfig(num_workers=tcfg.workers, use_gpu=tcfg.gpus_per_worker > 0,
                                     resources_per_worker={"CPU": 1, **({"GPU": tcfg.gpus_per_worker}
                                                                        if tcfg.gpus_per_worker else {})}),
        run_config=RunConfig(storage_path=str(storage), name=f"train-{int(time.time())}",
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=2),
                             # one line per epoch from us, not Ray Train's INFO line per checkpoint
                             logging_config=LoggingConfig(log_level="WARNING")),
        datasets=datasets,
    )
    fresh = not storage.exists()
    try:
        with user_errors():
            result = run_interruptibly(trainer.fit)
    except Interrupted:
        raise Interrupted(f"interrupted; checkpoints kept in {storage}: `aepipe train ... --resume` continues")
    except BaseException:
        if fresh:  # a failed first fit leaves no half run dir behind
            shutil.rmtree(storage, ignore_errors=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    with result.checkpoint.as_directory() as d:
        st = load_state(Path(d) / "state.pt")["st"]
    state = st["best_state"]
    meta = {
        "aepipe_version": pipeline.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "family": mcfg.family,
        "model": dataclasses.asdict(mcfg),
        "train": dataclasses.asdict(tcfg),
        "source": data,
        "n_rows": src.n_rows,
        "id_column": getattr(src, "id_column", None),
        "schema": src.schema.to_json(),
        "normalizer": norm.to_json(),
        "data_fingerprint": fingerprint(src, stats),
        "model_fingerprint": weights_fingerprint(state),
        "code_range": {"lo": st["code_lo"], "hi": st["code_hi"]},
        "score_quantiles": st.get("score_quantiles"),
        "metrics": {"history": st["history"], "best_epoch": st["best_epoch"], "best_val_loss": st["best_val"],
                    "stopped_early": len(st["history"]) < len(_schedule(mcfg, tcfg)), "device": st["device"],
                    "seconds": time.time() - t0},
    }
    save_run(out, meta, state)
    plot_loss(meta["metrics"]["history"], out / "loss_curve.png", title=f"{mcfg.family}, code {mcfg.code_dim}")
    return meta


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
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
