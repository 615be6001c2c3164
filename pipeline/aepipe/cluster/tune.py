"""aepipe tune: Ray Tune over the four hyper-parameters the seeds name (code size, depth, width,
loss), ASHA stopping trials that fall behind, every trial an ordinary in-process `aepipe train`
(one CPU each) that reports every epoch; the best trial's run dir is copied to --out.

Trials are ranked by their validation reconstruction loss divided by PCA's with the same code size
and loss ("vs PCA"): raw losses would always crown the largest code, and mse and bce are not in
the same units, while the ratio says how far each model got past its own linear floor. A vae on
its PPCA floor is judged by its negative ELBO per value beside PPCA's negative log-likelihood, which
may be negative: its "vs PCA" is exp(difference), the floor's likelihood over the model's bound per
value (below 1: better, as the ratio)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import shutil
from pathlib import Path

from aepipe.checks import run_dir_output
from aepipe.cluster.runtime import init_ray, user_errors
from aepipe.errors import AepipeError
from aepipe.config import ModelConfig
from aepipe.models.base import build_model
from aepipe.run import META, read_meta


def _trial(config: dict, *, train, data, root, mcfg, tcfg, id_column, read):
    """One Ray Tune trial: `aepipe train` in this worker, one report per epoch."""
    from ray import tune

    m = dataclasses.replace(mcfg, code_dim=config["code_dim"], hidden=(config["width"],) * config["depth"],
                            loss=config["loss"])
    out = Path(root) / "trials" / tune.get_context().get_trial_id()

    def on_epoch(row, st):
        likelihood = "neg_elbo" in row["val_parts"]
        recon = row["val_parts"].get("neg_elbo" if likelihood else "recon", row["val_loss"])
        tune.report({"vs_pca": _versus(recon, st.pca_val, likelihood), "val_recon": recon, "pca_val": st.pca_val})

    meta = train(data, out, m, dataclasses.replace(tcfg, ray_train=False), id_column, read=read, on_epoch=on_epoch)
    mine, floor = meta["metrics"]["val_recon"], meta["metrics"]["pca"]["val_loss"]
    tune.report({"vs_pca": _versus(mine, floor, meta["metrics"]["pca"].get("figure") == "-ELBO"),
                 "val_recon": mine, "pca_val": floor, "run_dir": str(out)})


def _versus(mine: float, floor: float, likelihood: bool) -> float:
    """A trial's figure against its floor's, below 1 where better: the ratio of two losses, or for
    a negative ELBO beside PPCA's negative log-likelihood (per value, either sign) exp(mine - floor)."""
    return math.exp(mine - floor) if likelihood else mine / floor


def tune(data: str, out: str | Path, mcfg: ModelConfig, tcfg, space: dict, trials: int,
         id_column: str | None = None, address: str | None = None, read: dict | None = None, *, train):
    """Search `space` ({"code_dim": [...], "depth": [...], "width": [...], "loss": [...]}) with
    `trials` samples; returns (rows of the trial table, the best run dir's aepipe.json dict).

    `train` is aepipe.training.train with `tcfg` its TrainConfig, handed in by the command line (a job
    module imports no other); every trial calls it in its own Ray worker."""
    import ray
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler

    out = run_dir_output(out, data, False).resolve()
    if (out / META).exists():
        raise AepipeError(f"{out} already holds a trained model; choose another --out")
    for code_dim, depth, width, loss in itertools.product(*space.values()):  # refuse any bad value before Ray
        try:
            build_model(dataclasses.replace(mcfg, code_dim=code_dim, hidden=(width,) * depth, loss=loss))
        except ValueError as e:
            raise AepipeError(str(e)) from None
    import os

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's new console output ignores verbose=0
    root = out.parent / f".{out.name}.tune"
    shutil.rmtree(root, ignore_errors=True)
    init_ray(address)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # the longest a trial may run, in epochs: ASHA's rungs are fractions of it
    epochs = tcfg.epochs or 100
    trainable = rt.with_parameters(_trial, train=train, data=data, root=str(root), mcfg=mcfg,
                                   tcfg=dataclasses.replace(tcfg, epochs=epochs), id_column=id_column, read=read)
    tuner = rt.Tuner(
        rt.with_resources(trainable, {"cpu": 1}),
        param_space={k: rt.choice(list(v)) for k, v in space.items()},
        tune_config=rt.TuneConfig(metric="vs_pca", mode="min", num_samples=trials, max_concurrent_trials=cpus,
                                  scheduler=ASHAScheduler(max_t=epochs + 1, grace_period=max(1, epochs // 8))),
        run_config=rt.RunConfig(storage_path=str(root / "ray"), name="tune", verbose=0),
    )
    try:
        with user_errors():
            results = tuner.fit()
        rows, best = [], None
        for r in results:
            if r.error or not r.metrics:
                rows.append([r.config.get("code_dim"), r.config.get("depth"), r.config.get("width"),
                             r.config.get("loss"), "-", "-", "-", f"failed: {type(r.error).__name__}"])
                continue
            done = "run_dir" in r.metrics
            rows.append([r.config["code_dim"], r.config["depth"], r.config["width"], r.config["loss"],
                         r.metrics["val_recon"], r.metrics["pca_val"], r.metrics["vs_pca"],
                         "finished" if done else f"stopped by ASHA at epoch {r.metrics['training_iteration']}"])
            if done and (best is None or r.metrics["vs_pca"] < best.metrics["vs_pca"]):
                best = r
        if best is None:
            raise AepipeError("no trial finished; see the table, or try more --trials or --epochs", exit_code=1)
        shutil.copytree(best.metrics["run_dir"], out, ignore=shutil.ignore_patterns("checkpoints"), dirs_exist_ok=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows.sort(key=lambda row: row[6] if isinstance(row[6], float) else float("inf"))

    return rows, read_meta(out)
