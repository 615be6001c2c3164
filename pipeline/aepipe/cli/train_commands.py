"""The commands that fit models: train, tune and demo, and models (the families train offers).
Their model and training settings default to ModelConfig's and TrainConfig's (see defaults.py)."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Optional

import tomllib
import typer

from aepipe.analysis.demo import demo as demo_fn
from aepipe.analysis.metrics import format_table
from aepipe.checks import train_options, typed_options
from aepipe.cli.options import (ADDRESS, COLUMNS, FILL_MISSING, IMAGE_SIZE, MODE, ON_BAD_ROW, READ_OPTIONS, ints,
                                read_options)
from aepipe.cli.output import call, skipped_note
from aepipe.errors import AepipeError

# aepipe.training, aepipe.cluster.tune and aepipe.models bring torch: imported inside the commands (see __init__.py).


def _config_file(path: Optional[Path]) -> dict:
    if path is None:
        return {}
    try:
        text = path.read_text()
        cfg = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as e:
        raise AepipeError(f"--config {path}: cannot read it ({e})") from None
    if not isinstance(cfg, dict):
        raise AepipeError(f"--config {path}: expected a table of options, e.g. {{\"epochs\": 50}}")
    return {k.replace("-", "_"): v for k, v in cfg.items()}


def train(
    data: str = typer.Argument(..., help="Training data: Parquet, CSV, .npy, Zarr, an image folder, builtin:digits "
                                          "or builtin:photos (path or URI)."),
    out: str = typer.Option(..., "--out", help="Run dir to create (path or URI): weights, aepipe.json, loss_curve.png."),
    family: Optional[str] = typer.Option(None, help="Autoencoder family (see `aepipe models`)."),
    code_dim: Optional[int] = typer.Option(None, help="Size of the code."),
    hidden: Optional[str] = typer.Option(None, help="Hidden widths, outermost first, e.g. 256,64 (conv: channels)."),
    depth: Optional[int] = typer.Option(None, help="Shorthand for --hidden: this many layers of --width."),
    width: Optional[int] = typer.Option(None, help="Width of each hidden layer with --depth."),
    loss: Optional[str] = typer.Option(None, help="Reconstruction loss: mse, l1 or bce (inputs in [0, 1])."),
    init: Optional[str] = typer.Option(None, help="pca: start as PCA with the same code size (fitted on the "
                                       "training rows) plus learned corrections that start at zero, and keep the best "
                                       "validation weights, so the model never ends worse than PCA; none: random "
                                       "weights. Refused for sparse --sparsity kl."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (most; early stopping may end sooner). [default: enough "
                                         "for --steps optimiser steps, at least 30 and at most 1000: small data get more]"),
    steps: Optional[int] = typer.Option(None, help="The default budget in optimiser steps, used when --epochs is not "
                                        "given (digits: 26 steps an epoch at batch 64, so 116 epochs)."),
    schedule: Optional[str] = typer.Option(None, help="Learning rate schedule: cosine (from --lr down to 5% of it over "
                                           "the epochs) or constant."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW's decoupled weight decay; 0 is plain Adam."),
    batch_size: Optional[int] = typer.Option(None, help="Rows per step per worker."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate."),
    seed: Optional[int] = typer.Option(None, help="Seed: same seed, same data, same weights on the CPU."),
    workers: Optional[int] = typer.Option(None, help="Ray Train workers (DDP)."),
    gpus_per_worker: Optional[float] = typer.Option(None, help="GPUs per worker; 0 trains on CPUs."),
    patience: Optional[int] = typer.Option(None, help="Early stopping: epochs without a better val loss; 0 off. [default: a tenth of the epochs, at least 10]"),
    val_fraction: Optional[float] = typer.Option(None, help="Rows held out for validation (a learned "
                                                "correction is kept where it beats PCA on them clear of their noise; sets of at "
                                                "most 1000 rows where they cannot tell are checked over 10 folds of every row)."),
    normalize: Optional[str] = typer.Option(None, help="global, feature, standard or none. [default: global for arrays, feature for tables]"),
    id_column: Optional[str] = typer.Option(None, help="Parquet or CSV column holding row ids (default: a column named id)."),
    tied: Optional[bool] = typer.Option(None, "--tied/--untied", help="stacked: decoder uses the encoder's transposed weights."),
    layerwise: Optional[bool] = typer.Option(None, "--layerwise/--no-layerwise", help="stacked: greedy layer-wise pretraining first."),
    pretrain_epochs: Optional[int] = typer.Option(None, help="stacked --layerwise: epochs per layer."),
    sparsity: Optional[str] = typer.Option(None, help="sparse: l1 or kl."),
    sparsity_weight: Optional[float] = typer.Option(None, help="sparse: penalty weight."),
    rho: Optional[float] = typer.Option(None, help="sparse --sparsity kl: target mean activation."),
    contractive_weight: Optional[float] = typer.Option(None, help="contractive: weight of ||dz/dx||_F^2."),
    noise: Optional[str] = typer.Option(None, help="denoising: gaussian or mask."),
    noise_std: Optional[float] = typer.Option(None, help="denoising gaussian: noise sigma."),
    mask_prob: Optional[float] = typer.Option(None, help="denoising mask: share of inputs zeroed."),
    beta: Optional[float] = typer.Option(None, help="vae: weight of the KL term."),
    up: Optional[str] = typer.Option(None, help="conv: transpose or upsample."),
    down: Optional[str] = typer.Option(None, help="conv: stride or pool."),
    cell: Optional[str] = typer.Option(None, help="recurrent: gru or lstm."),
    lmbda: Optional[float] = typer.Option(None, help="compress: rate-distortion trade-off, loss = bits per pixel + "
                                          "lmbda * 255^2 * MSE; larger spends more bits for a higher PSNR "
                                          "(0.0018 to 0.05 spans about 0.1 to 1.5 bpp)."),
    prior: Optional[str] = typer.Option(None, help="compress: the latent's entropy model. context (the default): "
                                        "a sixteenth of the latent by one learned density per channel, every other "
                                        "value by a Laplace whose mean and scale come from its already-decoded "
                                        "neighbours (five passes, no side bits). factorized: the learned densities "
                                        "for all of it; in the same training budget it spends more bits for the same "
                                        "PSNR (bench/RESULTS.md). hyperprior: a mean-scale hyperprior (Minnen et al. "
                                        "2018) sends a small side latent first, from which every latent value gets "
                                        "its own Gaussian mean and scale (the side bits count in bits per pixel); it "
                                        "needs long training to pay for its side bits: after 1000 steps it still "
                                        "spends more bits than factorized."),
    config: Optional[Path] = typer.Option(None, help="JSON or TOML file of these options; flags given here win."),
    resume: bool = typer.Option(False, help="Continue from the run dir's last checkpoint."),
    columns: Optional[str] = COLUMNS,
    mode: Optional[str] = MODE,
    image_size: Optional[str] = IMAGE_SIZE,
    on_bad_row: Optional[str] = ON_BAD_ROW,
    fill_missing: Optional[str] = FILL_MISSING,
    ray_train: Optional[bool] = typer.Option(None, "--ray-train/--in-process", help="Force the fit path. [default: in this process for 1 CPU worker, data in memory and no --address; else Ray Train]"),
    stream: Optional[bool] = typer.Option(None, "--stream/--no-stream", help="Ray Train: read the data again every "
                                          "epoch instead of holding it in Ray's object store. [default: stream when "
                                          "the data exceed half the object store]"),
    address: Optional[str] = ADDRESS,
):
    """Fit an autoencoder (in this process, or with Ray Train) and write a self-describing run dir."""
    given = {k: v for k, v in locals().items() if v is not None}  # flags given here beat --config
    from aepipe.models import ModelConfig
    from aepipe.training import TrainConfig, train as train_fn

    def build():
        opts = {**_config_file(config), **given}
        if "hidden" in opts and isinstance(opts["hidden"], str):
            opts["hidden"] = ints(opts["hidden"], "--hidden")
        if opts.get("depth") or opts.get("width"):
            opts["hidden"] = (opts.get("width") or 64,) * (opts.get("depth") or 1)
        mfields = {f.name for f in dataclasses.fields(ModelConfig)}
        tfields = {f.name for f in dataclasses.fields(TrainConfig)}
        known = mfields | tfields | {"data", "out", "config", "resume", "address", "depth", "width", "id_column",
                                     *READ_OPTIONS}
        opts.pop("resume", None)  # a flag of this call, not a setting a config file carries
        unknown = sorted(set(opts) - known)
        if unknown:
            raise AepipeError(f'--config: unknown option "{unknown[0]}"')
        where = f"--config {config}" if config else "options"
        return (ModelConfig(**typed_options(ModelConfig, opts, where)),
                TrainConfig(**typed_options(TrainConfig, opts, where)), opts.get("id_column"),
                read_options(**{k: opts.get(k) for k in READ_OPTIONS}))


    mcfg, tcfg, id_column, read = call(build)
    meta = call(train_fn, data, out, mcfg, tcfg, id_column=id_column, resume=resume, address=address, read=read)
    m = meta["metrics"]
    versus = _versus_pca(mcfg, m)
    typer.echo(f"trained {meta['family']} (code {mcfg.code_dim}) in {m['seconds']:.1f} s: best val loss "
               f"{m['best_val_loss']:.5g} at epoch {m['best_epoch'] + 1}{versus} -> {out}"
               + skipped_note(meta.get("skipped")))


def tune(
    data: str = typer.Argument(..., help="Training data, as for aepipe train."),
    out: str = typer.Option(..., "--out", help="Run dir to create: the best trial's, an ordinary run dir."),
    family: Optional[str] = typer.Option(None, help="Autoencoder family (see `aepipe models`)."),
    code_dim: str = typer.Option("8,16,32", help="Code sizes to try, comma-separated."),
    depth: str = typer.Option("1,2", help="Hidden layers to try (each --width wide; conv: levels of channels)."),
    width: str = typer.Option("64,256", help="Widths to try (nodes per hidden layer; conv: channels)."),
    loss: Optional[str] = typer.Option(None, help="Losses to try, comma-separated: mse, l1, bce."),
    trials: int = typer.Option(8, help="Trials sampled from the grid above (Ray Tune, one CPU each, as many at "
                                       "once as the cluster has CPUs); ASHA stops those that fall behind."),
    epochs: int = typer.Option(100, help="Most epochs per trial; ASHA's rungs are fractions of it."),
    batch_size: Optional[int] = typer.Option(None, help="Rows per step."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (cosine schedule)."),
    seed: Optional[int] = typer.Option(None, help="Seed of every trial's weights."),
    init: Optional[str] = typer.Option(None, help="pca or none, as for aepipe train."),
    id_column: Optional[str] = typer.Option(None, help="Parquet or CSV column holding row ids."),
    mode: Optional[str] = MODE,
    image_size: Optional[str] = IMAGE_SIZE,
    columns: Optional[str] = COLUMNS,
    address: Optional[str] = ADDRESS,
):
    """Search code size, depth, width and loss with Ray Tune and ASHA, ranking trials by their
    validation reconstruction loss over PCA's with the same code size and loss ("vs PCA" < 1: better
    than PCA); prints the table of trials and writes the best as a run dir that encode/decode take."""
    from aepipe.cluster.tune import tune as tune_fn
    from aepipe.models import ModelConfig
    from aepipe.training import TrainConfig, train as train_fn

    def setup():
        losses = ModelConfig.loss if loss is None else loss
        space = {"code_dim": ints(code_dim, "--code-dim"), "depth": ints(depth, "--depth"),
                 "width": ints(width, "--width"), "loss": tuple(v.strip() for v in losses.split(",") if v.strip())}
        empty = [k for k, v in space.items() if not v]
        if empty:
            raise AepipeError(f"--{empty[0].replace('_', '-')}: give at least one value")
        mcfg = ModelConfig(**_given(family=family, init=init))
        tcfg = TrainConfig(epochs=epochs, **_given(batch_size=batch_size, lr=lr, seed=seed))
        train_options(mcfg, tcfg)
        if trials < 1:
            raise AepipeError("--trials must be a positive integer")
        return space, mcfg, tcfg, read_options(columns=columns, mode=mode, image_size=image_size)

    space, mcfg, tcfg, read = call(setup)
    local = Path(data)
    rows, meta = call(tune_fn, str(local.resolve()) if local.exists() else data, out, mcfg, tcfg, space, trials,
                      id_column=id_column, address=address, read=read, train=train_fn)
    typer.echo(format_table(["code", "depth", "width", "loss", "val loss", "PCA val loss", "vs PCA", "trial"], rows))
    m = meta["metrics"]
    typer.echo(f"tuned {meta['family']}: best code {meta['model']['code_dim']}, hidden {meta['model']['hidden']}, "
               f"loss {meta['model']['loss']}: val {m['val_recon']:.4g}, PCA {m['pca']['code_dim']}: "
               f"{m['pca']['val_loss']:.4g} -> {out}")


def _given(**values) -> dict:
    """The options given on the command line: those left at None take the dataclass's default."""
    return {k: v for k, v in values.items() if v is not None}


def _versus_pca(mcfg, m: dict) -> str:
    """The summary's note: the model's validation reconstruction loss beside its linear floor's with
    the same code size (PCA; a denoiser's: the linear denoiser, both on noisy rows; the vae's: its
    negative ELBO beside PPCA's negative log-likelihood, per value), which is epoch 0 under --init
    pca; one warning line first when the model ends worse (possible only with --init none)."""
    pca = m.get("pca") or {}
    if m.get("val_recon") is None or pca.get("val_loss") is None:
        return ""
    mine, floor, name = m["val_recon"], pca["val_loss"], f"{pca.get('floor', 'PCA')} {pca['code_dim']}"
    if mine > floor + 1e-6 * abs(floor):  # a likelihood's figure may be negative
        typer.echo(f"aepipe: warning: the model ends worse than {name} on the validation rows "
                   f"({mine:.4g} > {floor:.4g}); --init pca starts from it and cannot end worse", err=True)
    return f" (val {pca.get('figure', mcfg.loss)} {mine:.4g}, {name}: {floor:.4g})"


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for the model, codes, reconstructions and plots."),
    code_dim: Optional[int] = typer.Option(None, help="Code size (PCA gets the same)."),
    epochs: int = typer.Option(200, help="Most training epochs (early stopping usually ends sooner)."),
    address: Optional[str] = ADDRESS,
):
    """Digits end to end: train, encode (Zarr float32, Parquet int8), decode, compare with PCA."""
    from aepipe.batch.decode import decode as decode_fn
    from aepipe.batch.encode import encode as encode_fn
    from aepipe.models import ModelConfig
    from aepipe.training import TrainConfig, train as train_fn

    code_dim = ModelConfig.code_dim if code_dim is None else code_dim

    def fit(data, run_dir):
        train_fn(data, run_dir, ModelConfig(family="dense", code_dim=code_dim), TrainConfig(epochs=epochs),
                 address=address)

    table = call(demo_fn, out, code_dim, train=fit, encode=functools.partial(encode_fn, overwrite=True),
                 decode=functools.partial(decode_fn, overwrite=True), address=address)  # starts Ray after the fit
    typer.echo("\n" + table)
    typer.echo(f"\nmodel, codes, loss_curve.png and reconstructions.png in {out}")


def models():
    """List the autoencoder families and the options each takes."""
    from aepipe.models import REGISTRY, ModelConfig

    defaults = ModelConfig()
    typer.echo("every family: --code-dim, --hidden (or --depth/--width), --loss mse|l1|bce, --init pca|none\n"
               "--init pca (the default): the model starts as PCA with its code size and learns a nonlinear\n"
               "correction on top; its best validation weights are kept, so it never ends worse than PCA.\n")
    for name, cls in REGISTRY.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        opts = ", ".join(f"--{o.replace('_', '-')} ({getattr(defaults, o)})" for o in cls.options)
        typer.echo(f"{name:12s} {doc}\n{'':12s} hidden default {cls.default_hidden}"
                   + (f"; options: {opts}" if opts else "") + "\n")

