"""A fit's data, on either path: statistics over the good rows, the normaliser fitted on them and
the train/validation split by a fixed hash of the row index. In this process they come from the
source read once into memory (prepare_here); for Ray Train, from Ray Data jobs (prepare_on_ray), materialised
in the object store or streamed every epoch. fit_path chooses between the two."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from aepipe.errors import AepipeError
from aepipe.config import ModelConfig
from aepipe.normalize import Normalizer, block_stats, combine_stats, default_normalizer, in_validation
from aepipe.sources import bad_rows, read_block, skipped_rows, to_dataset
from aepipe.training.config import TrainConfig

# The in-process path holds the raw and normalised rows: keep that under this share of free memory
MEMORY_SHARE = 0.25
# Ray Train path: a split bigger than this share of the object store is streamed, not materialised
# (the store also holds the blocks in flight, and spilling to disk would cost more than a reread)
STORE_SHARE = 0.5


class Laps(dict):
    """Seconds per phase, for the metrics' timings: lap(name) ends the phase begun at the last lap."""

    def __init__(self):
        super().__init__()
        self.t = time.time()

    def lap(self, name: str) -> None:
        now = time.time()
        self[name], self.t = now - self.t, now


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


def prepare_here(src, mcfg: ModelConfig, tcfg: TrainConfig, laps: Laps):
    """Statistics, normaliser and normalised splits without Ray: the source read once, range by
    range, into memory. Returns (stats, normaliser, {"train": array, "val": array})."""
    blocks = [read_block(src, a, b) for a, b in src.ranges()]  # the blocks to_dataset would make
    parts = [batch_stats(b) for b in blocks]
    stats = {**combine_stats(parts), "skipped": skipped(parts)}
    norm = normalizer(src, mcfg, tcfg, stats)
    laps.lap("statistics")
    arrays = {}
    for name in ("train", "val"):
        arrays[name] = np.concatenate([prepare(b, norm, tcfg.val_fraction, name == "val")["x"] for b in blocks])
        _check_split(src, name, len(arrays[name]))
    laps.lap("datasets")
    return stats, norm, arrays


def prepare_on_ray(src, mcfg: ModelConfig, tcfg: TrainConfig, laps: Laps):
    """The same as Ray Data jobs (Ray started). Returns (stats, normaliser, {"train": dataset,
    "val": dataset}, whether the training split streams)."""
    import ray

    parts = to_dataset(src).map_batches(batch_stats, batch_size=None).take_all()
    stats = {**combine_stats(parts), "skipped": skipped(parts)}
    norm = normalizer(src, mcfg, tcfg, stats)
    laps.lap("statistics")
    stream = streams(src, tcfg)
    if stream["train"]:
        print(f"streaming the data every epoch ({src.n_rows * src.schema.size * 4 / 2**30:.2f} GiB as float32, "
              f"object store {ray.cluster_resources().get('object_store_memory', 0) / 2**30:.2f} GiB)", flush=True)
    splits = datasets(src, norm, tcfg.val_fraction, stream)
    laps.lap("datasets")
    return stats, norm, splits, stream["train"]


def prepare(batch: dict, norm: Normalizer, fraction: float, want_val: bool) -> dict:
    keep = (in_validation(batch["row"], fraction) == want_val) & ~bad_rows(batch["id"])  # --on-bad-row skip
    return {"x": norm.apply(batch["x"][keep])}


def batch_stats(batch: dict) -> dict:
    """A block's statistics over its good rows, and the rows --on-bad-row skip left out (as JSON)."""
    good = ~bad_rows(batch["id"])
    return {**block_stats({"x": batch["x"][good]}), "skipped": np.array([json.dumps(skipped_rows(batch["id"]))])}


def skipped(stats_rows: list[dict]) -> list[dict]:
    """The skipped rows of every block's batch_stats (batches here, rows from Ray's take_all), by id."""
    return sorted((s for r in stats_rows for s in json.loads(np.reshape(r["skipped"], -1)[0])), key=lambda s: s["id"])


def datasets(src, norm: Normalizer, fraction: float, stream: dict):
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
                prepare, fn_kwargs=dict(norm=norm, fraction=fraction, want_val=want_val), batch_format="numpy")
            if stream[name]:
                _check_split(src, name, split_rows(src.n_rows, fraction, want_val))
            else:
                ds = ds.materialize()
                _check_split(src, name, ds.count())
            out[name] = ds
        return out
    finally:
        ctx.enable_progress_bars = bars


def streams(src, tcfg: TrainConfig) -> dict:
    """Which splits stream: --stream/--no-stream, else those bigger than STORE_SHARE of the
    cluster's object store (estimated from the schema: float32 rows)."""
    import ray

    size = {"train": (1 - tcfg.val_fraction), "val": tcfg.val_fraction}
    size = {k: v * src.n_rows * src.schema.size * 4 for k, v in size.items()}
    if tcfg.stream is not None:
        return {"train": tcfg.stream, "val": tcfg.stream and size["val"] > 0}
    store = ray.cluster_resources().get("object_store_memory", 0)
    return {k: v > STORE_SHARE * store for k, v in size.items()}


def split_rows(n_rows: int, fraction: float, want_val: bool, step: int = 1 << 22) -> int:
    """Rows in a split, from the row indices alone (in_validation), without reading any data."""
    val = sum(int(in_validation(np.arange(a, min(a + step, n_rows)), fraction).sum()) for a in range(0, n_rows, step))
    return val if want_val else n_rows - val


def _check_split(src, name: str, n: int) -> None:
    if n == 0:
        raise AepipeError(f"{src.spec}: too few rows ({src.n_rows}) for a {name} split")


def normalizer(src, mcfg: ModelConfig, tcfg: TrainConfig, stats: dict) -> Normalizer:
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
