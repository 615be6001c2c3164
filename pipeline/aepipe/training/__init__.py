"""aepipe train: fit a model on data and write a self-describing run dir (see aepipe.run).

With no cluster named, one CPU worker and data that fit in memory, the fit runs in the calling
process without starting Ray (Ray Train's fixed start-up was ~30 s of a 1-epoch digits fit here).
Otherwise a TorchTrainer with N workers (DDP) runs it. Both paths share the statistics,
normalisation and split (data), the epoch loop (loop), the run dir's checkpoints (rundir) and
their format (state), so `--resume` continues from either. Checkpoints: every
CHECKPOINT_EVERY_S and at the end.

    config   TrainConfig, the step budget, the learning-rate schedule
    state    FitState: where a fit stands, as a checkpoint keeps it
    loop     the epoch loop, the PCA floor before it and the code statistics after it
    data     statistics, normaliser and splits, in memory or as Ray Data; which path a fit takes
    local    the in-process driver, and its k-fold check of small sets' corrections
    on_ray   the Ray Train driver and its workers' loop
    rundir   checkpoints/ (and latest.txt, naming the latest) and loss_curve.png
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from aepipe import remote
from aepipe.checks import run_dir_output, train_options
from aepipe.errors import AepipeError
from aepipe.config import ModelConfig
from aepipe.models.base import build_model
from aepipe.normalize import Normalizer, fingerprint
from aepipe.run import META, save_run
from aepipe.cluster.runtime import Interrupted, user_errors
from aepipe.sources import open_source
from aepipe.training.config import TrainConfig, budget
from aepipe.training.data import Laps, fit_path, prepare_here, prepare_on_ray, split_rows
from aepipe.training.local import fit_here, fit_local
from aepipe.training.loop import schedule
from aepipe.training.on_ray import fit_on_ray, start_ray
from aepipe.training.rundir import latest_checkpoint, load_checkpoint, plot_loss
from aepipe.training.state import FitState
from aepipe.version import __version__

__all__ = ["FitState", "TrainConfig", "budget", "fit_local", "fit_path", "plot_loss", "train"]


@dataclasses.dataclass
class Fitted:
    """What either path hands the run dir: the data's statistics and normaliser, the fit's final
    state, where the time went, and how."""
    stats: dict
    norm: Normalizer
    st: FitState
    timings: dict
    path: str  # "process" or "ray train"
    streamed: bool = False


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
    tcfg = budget(tcfg, split_rows(src.n_rows, tcfg.val_fraction, False))  # aepipe.json keeps the concrete values
    why_ray = fit_path(src, tcfg, address)
    storage = out / "checkpoints"
    latest = latest_checkpoint(storage) if resume else None
    if resume and latest is None:
        raise AepipeError(f"{out}: nothing to resume (no checkpoints under {storage})")
    saved = load_checkpoint(latest) if latest else None  # refuse an unsafe one before any work
    t0 = time.time()
    fitted = _fit(src, mcfg, tcfg, why_ray, saved, latest, storage, address, on_epoch)
    return _write_run(out, data, src, mcfg, tcfg, fitted, started, t0)


def _fit(src, mcfg, tcfg, why_ray, saved, latest, storage: Path, address, on_epoch) -> Fitted:
    """The fit on the path fit_path chose. Interrupted: the checkpoints stay for --resume; failed
    on a first fit: no half run dir is left behind."""
    fresh = not storage.exists()
    try:
        if why_ray:
            print(f"fitting with Ray Train ({why_ray}; {tcfg.workers} worker{'s' * (tcfg.workers > 1)})", flush=True)
            return _fit_on_ray(src, mcfg, tcfg, latest, storage, address)
        print("fitting in this process (1 worker, data in memory); --workers 2 or --address uses Ray Train", flush=True)
        return _fit_here(src, mcfg, tcfg, saved, storage, on_epoch)
    except (Interrupted, KeyboardInterrupt):
        if storage.exists():
            raise Interrupted(f"interrupted; checkpoints kept in {storage}: `aepipe train ... --resume` continues") from None
        raise Interrupted("interrupted") from None
    except BaseException:
        if fresh:
            shutil.rmtree(storage, ignore_errors=True)
            with contextlib.suppress(OSError):
                storage.parent.rmdir()
        raise


def _fit_here(src, mcfg, tcfg, saved, storage: Path, on_epoch) -> Fitted:
    laps = Laps()
    stats, norm, arrays = prepare_here(src, mcfg, tcfg, laps)
    st = fit_here(mcfg, tcfg, arrays, saved, storage, on_epoch)
    laps.lap("fit")
    return Fitted(stats, norm, st, laps, "process")


def _fit_on_ray(src, mcfg, tcfg, latest, storage: Path, address) -> Fitted:
    laps = Laps()  # "ray_start" counts importing Ray too
    start_ray(address, tcfg)
    laps.lap("ray_start")
    with user_errors():
        stats, norm, datasets, streamed = prepare_on_ray(src, mcfg, tcfg, laps)
    st = fit_on_ray(mcfg, tcfg, datasets, streamed, latest, storage)
    laps.lap("fit")
    return Fitted(stats, norm, st, laps, "ray train", streamed)


def _write_run(out: Path, data: str, src, mcfg, tcfg, fitted: Fitted, started: float, t0: float) -> dict:
    """The run dir: loss curve, PCA baseline, weights and aepipe.json (last, whole)."""
    st, stats = fitted.st, fitted.stats
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    plot_loss(st.history, out / "loss_curve.png", title=f"{mcfg.family}, code {mcfg.code_dim}")
    tm = {**fitted.timings, **st.timings, "plot": time.time() - t, "started_at": started}
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
        "normalizer": fitted.norm.to_json(),
        "data_fingerprint": fingerprint(src, stats),
        "code_range": {"lo": st.code_lo, "hi": st.code_hi},
        "score_quantiles": st.score_quantiles,
        "code_stats": {"mean": st.code_mean, "std": st.code_std} if st.code_mean else None,
        "metrics": {"history": st.history, "best_epoch": st.best_epoch, "best_val_loss": st.best_val,
                    # the linear floor beside the model, on the same validation rows and loss
                    "val_recon": st.best_recon, "pca": {"code_dim": mcfg.code_dim, "val_loss": st.pca_val,
                                                       "init_val_loss": st.init_val, "floor": floor_name(st.pca),
                                                       "figure": figure_name(st.pca, mcfg)},
                    "stopped_early": len(st.history) < len(schedule(mcfg, tcfg)), "device": st.device,
                    **({"cross_check": st.cross_check} if st.cross_check else {}),
                    "path": fitted.path, "seconds": time.time() - t0, "streamed": bool(fitted.streamed),
                    # where this call's wall time went (bench/train_overhead.py reads it)
                    "timings": {**tm, "before_save": time.time()}},
    }
    if st.pca is not None:  # the baseline itself, for anyone who wants to compare codes with PCA's
        np.savez(out / "pca.npz", **{k: v.numpy() for k, v in st.pca.items()})
    # with the weights' (and the density's) fingerprints it computed
    return save_run(out, meta, st.best_state, st.density)


def floor_name(pca: dict | None) -> str:
    """What the linear floor is: PCA, (its components weighed by a gain, for a denoiser's objective)
    the linear denoiser, or (with a posterior's log-variance, the vae's) PPCA."""
    pca = pca or {}
    if "logvar" in pca:
        return "PPCA"
    gain = pca.get("gain")
    return "PCA" if gain is None or bool((gain == 1).all()) else "linear denoiser"


def figure_name(pca: dict | None, mcfg: ModelConfig) -> str:
    """What val_recon and the floor's val_loss measure: the loss (mse, l1, bce) per value, or, on
    PPCA's floor, the negative ELBO per value (PPCA's: its negative log-likelihood), in nats."""
    return "-ELBO" if floor_name(pca) == "PPCA" else mcfg.loss


def _train_to_uri(data, out, mcfg, tcfg, id_column, resume, address, read) -> dict:
    """train --out s3://...: fit into a local temporary run dir, then upload it, aepipe.json last
    (its presence at the URI means the rest is there). --resume downloads the run dir first,
    checkpoints included (checkpoints/latest.txt names the latest: file times do not survive the
    trip); an interrupted fit uploads its checkpoints so --resume can continue."""
    train_options(mcfg, tcfg)
    uri = run_dir_output(out, data, resume)
    if remote.is_file(uri / META) and not resume:
        raise AepipeError(f"{uri} already holds a trained model; choose another --out or pass --resume")
    with tempfile.TemporaryDirectory(prefix="aepipe-train-") as d:
        local_run = Path(d) / "run"
        if resume:
            remote.download(uri, local_run)
        try:
            meta = train(data, local_run, mcfg, tcfg, id_column, resume, address, read)
        except Interrupted:
            if (local_run / "checkpoints").exists():
                remote.upload(local_run, uri, last=META)  # no aepipe.json yet: not mistaken for a model
                raise Interrupted(f"interrupted; checkpoints kept in {uri}/checkpoints: "
                                  "`aepipe train ... --resume` continues") from None
            raise
        except AepipeError as e:  # name the URI, not the temporary folder
            raise AepipeError(str(e).replace(str(local_run), uri.rstrip("/")), e.exit_code) from None
        remote.upload(local_run, uri, last=META)
    return meta
