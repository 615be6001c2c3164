"""The `aepipe` command: a thin typer layer. Each command parses, calls the library, and turns a
user error into one line on stderr and exit code 2 (bad input) or 1 (failed at run time)."""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Optional

import tomllib
import typer

from aepipe.checks import train_options, typed_options
from aepipe.demo import demo as demo_fn
from aepipe.errors import AepipeError
from aepipe.evaluate import format_table, probe as probe_fn
from aepipe.run import describe_run, is_run_dir, load_run
from aepipe.runtime import exit_now, leave, quiet_native_logs
from aepipe.stores.read import describe_store, verify_store
from aepipe.submit import submit as submit_fn

# The jobs (aepipe.training, aepipe.batch.*, aepipe.report, aepipe.tune) and aepipe.models are imported
# inside the commands that run them: they bring torch (1-1.5 s), which `--help`, `info` and every
# refused option need not wait for.

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  rich_markup_mode=None, help="""
Train autoencoders on Ray, stream datasets through them, and store the codes.

\b
  aepipe demo                                   the whole flow on scikit-learn's digits
  aepipe train builtin:digits --family dense --code-dim 16 --out runs/digits
  aepipe encode builtin:digits --model runs/digits --out codes.zarr --dtype int8
  aepipe decode codes.zarr --model runs/digits --out recon.npy --rows 0:100
  aepipe info runs/digits

DATA is a Parquet file or folder (numeric columns, or one list column), a CSV file or folder
(.csv, .csv.gz; numbers, and text columns one-hot encoded), a .npy or Zarr array shaped
(rows, ...), a folder of PNG/JPEG images or one image (--mode L|RGB, --image-size H[,W]; ids are
paths in the folder), builtin:digits (also builtin:digits-train / builtin:digits-test: the split
by train_test_split: 30 % test, random_state 0, stratified) or builtin:photos (32x32 grayscale patches of scikit-image's
photographs), by local path or URI (s3://, gs://, file://). Every command runs on an embedded
local Ray unless --address or RAY_ADDRESS names a cluster.
""")

BATCH_SIZE = typer.Option(1024, help="Rows per model call.")
GPUS = typer.Option(0, help="GPUs per model actor (0: run on CPUs).")
OVERWRITE = typer.Option(False, help="Replace OUT if it exists.")
MODEL_ID_COLUMN = typer.Option(None, help="Parquet or CSV column holding row ids (default: the model's).")
ADDRESS = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray).")
# How DATA is read, for every command that reads it (train, encode, score, denoise). Training
# keeps what it learned (categories, means, image size) in the run dir; the others reuse it.
READ_HELP = "Reading DATA"
CONCURRENCY = typer.Option(None, help="Model copies at work at once. On CPUs (default: one per CPU) each is a "
                           "task that reads a share of the rows, runs the model and writes its output; "
                           "with --gpus each is an actor holding the model on its GPU share (default 1).")
COLUMNS = typer.Option(None, help="Tables: feature columns to use, comma-separated (default: all but the id).",
                       rich_help_panel=READ_HELP)
MODE = typer.Option(None, help="Images: L (grayscale) or RGB. [default: L, or the model's]", rich_help_panel=READ_HELP)
IMAGE_SIZE = typer.Option(None, help="Images: H or H,W; resized and centre-cropped to it. [default: the first "
                                     "image's size, or the model's]", rich_help_panel=READ_HELP)
ON_BAD_ROW = typer.Option(None, help="fail: stop at a corrupt image or row, naming it; skip: leave it out and list "
                                     "it in the output's metadata. [default: fail]", rich_help_panel=READ_HELP)
FILL_MISSING = typer.Option(None, help="CSV: mean fills an empty cell with the training mean of its column, "
                                       "an empty category with an all-zero block (default: refuse, naming row and "
                                       "column).", rich_help_panel=READ_HELP)
READ_OPTIONS = ("columns", "mode", "image_size", "on_bad_row", "fill_missing")


def _read_options(columns=None, mode=None, image_size=None, on_bad_row=None, fill_missing=None) -> dict:
    """Command-line read options as open_source takes them; None where not given."""
    if isinstance(columns, str):
        columns = tuple(c.strip() for c in columns.split(",") if c.strip())
    if isinstance(image_size, str):
        hw = _ints(image_size, "--image-size")
        if len(hw) not in (1, 2):
            raise AepipeError(f'--image-size "{image_size}": expected H or H,W, e.g. 64 or 48,64')
        image_size = (hw[0], hw[-1])
    return dict(columns=columns, mode=mode, image_size=image_size, on_bad_row=on_bad_row, fill_missing=fill_missing)


ENGINE = typer.Option("auto", help="auto: in this process without starting Ray when the job is small (up to "
                                    "20,000 rows) or this process would finish it sooner than Ray (timed on the "
                                    "first rows; Ray costs ~10 s to start), else on Ray; or force local / ray. "
                                    "--address, --concurrency above 1 or --gpus always use Ray.")


def _run(fn, *args, **kwargs):
    """Call the library; a user error becomes one line and its exit code, never a traceback."""
    if not gc.isenabled():  # console() turned it off for the imports, which are done by now
        gc.freeze()  # and the collector need never walk the modules' objects again
        gc.enable()
    try:
        return fn(*args, **kwargs)
    except AepipeError as e:
        _die(f"aepipe: error: {e}", e.exit_code)
    except KeyboardInterrupt:
        _die("aepipe: error: interrupted", 130)
    except Exception as e:
        if os.environ.get("AEPIPE_DEBUG"):
            raise
        _die(f"aepipe: error: failed at run time: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
             "(set AEPIPE_DEBUG=1 for the traceback)", 1)


def _one_line(text: str) -> str:
    """A message as one line: control characters (a newline or an escape sequence in a file name)
    written as Python escapes, so a hostile name can neither split the line nor drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _die(line: str, code: int):
    """Print the one line and leave at once: Ray's exit hooks would otherwise print their own
    messages (or wait on a job being torn down) after ours."""
    typer.echo(_one_line(line), err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if code in (1, 130) and "ray" in sys.modules and _AS_COMMAND:  # in a test's CliRunner: exit normally,
        os._exit(code)  # or the whole test session would end here with no report
    raise typer.Exit(code)


_AS_COMMAND = False  # set by console(): this process is the `aepipe` command itself


def _notes(done: dict) -> str:
    """What the source said about reading the rows (unseen categories), for a summary line."""
    return "".join(f" ({n})" for n in done.get("notes") or [])


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise AepipeError(f'{name} "{text}": expected comma-separated integers, e.g. 256,64') from None


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


@app.command()
def train(
    data: str = typer.Argument(..., help="Training data: Parquet, CSV, .npy, Zarr, an image folder, builtin:digits "
                                          "or builtin:photos (path or URI)."),
    out: str = typer.Option(..., "--out", help="Run dir to create (path or URI): weights, aepipe.json, loss_curve.png."),
    family: Optional[str] = typer.Option(None, help="Autoencoder family (see `aepipe models`). [default: dense]"),
    code_dim: Optional[int] = typer.Option(None, help="Size of the code. [default: 16]"),
    hidden: Optional[str] = typer.Option(None, help="Hidden widths, outermost first, e.g. 256,64 (conv: channels)."),
    depth: Optional[int] = typer.Option(None, help="Shorthand for --hidden: this many layers of --width."),
    width: Optional[int] = typer.Option(None, help="Width of each hidden layer with --depth."),
    loss: Optional[str] = typer.Option(None, help="Reconstruction loss: mse, l1 or bce (inputs in [0, 1]). [default: mse]"),
    init: Optional[str] = typer.Option(None, help="pca: start as PCA with the same code size (fitted on the "
                                       "training rows) plus learned corrections that start at zero, and keep the best "
                                       "validation weights, so the model never ends worse than PCA; none: random "
                                       "weights. Refused for sparse --sparsity kl. [default: pca]"),
    epochs: Optional[int] = typer.Option(None, help="Epochs (most; early stopping may end sooner). [default: enough "
                                         "for --steps optimiser steps, at least 30 and at most 1000: small data get more]"),
    steps: Optional[int] = typer.Option(None, help="The default budget in optimiser steps, used when --epochs is not "
                                        "given (digits: 26 steps an epoch at batch 64, so 116 epochs). [default: 3000]"),
    schedule: Optional[str] = typer.Option(None, help="Learning rate schedule: cosine (from --lr down to 5% of it over "
                                           "the epochs) or constant. [default: cosine]"),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW's decoupled weight decay; 0 is plain Adam. [default: 0]"),
    batch_size: Optional[int] = typer.Option(None, help="Rows per step per worker. [default: 64]"),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate. [default: 0.001]"),
    seed: Optional[int] = typer.Option(None, help="Seed: same seed, same data, same weights on the CPU. [default: 0]"),
    workers: Optional[int] = typer.Option(None, help="Ray Train workers (DDP). [default: 1]"),
    gpus_per_worker: Optional[float] = typer.Option(None, help="GPUs per worker; 0 trains on CPUs. [default: 0]"),
    patience: Optional[int] = typer.Option(None, help="Early stopping: epochs without a better val loss; 0 off. [default: a tenth of the epochs, at least 10]"),
    val_fraction: Optional[float] = typer.Option(None, help="Rows held out for validation. [default: 0.1]"),
    normalize: Optional[str] = typer.Option(None, help="global, feature, standard or none. [default: global for arrays, feature for tables]"),
    id_column: Optional[str] = typer.Option(None, help="Parquet or CSV column holding row ids (default: a column named id)."),
    tied: Optional[bool] = typer.Option(None, "--tied/--untied", help="stacked: decoder uses the encoder's transposed weights."),
    layerwise: Optional[bool] = typer.Option(None, "--layerwise/--no-layerwise", help="stacked: greedy layer-wise pretraining first."),
    pretrain_epochs: Optional[int] = typer.Option(None, help="stacked --layerwise: epochs per layer. [default: 5]"),
    sparsity: Optional[str] = typer.Option(None, help="sparse: l1 or kl. [default: l1]"),
    sparsity_weight: Optional[float] = typer.Option(None, help="sparse: penalty weight. [default: 0.001]"),
    rho: Optional[float] = typer.Option(None, help="sparse --sparsity kl: target mean activation. [default: 0.05]"),
    contractive_weight: Optional[float] = typer.Option(None, help="contractive: weight of ||dz/dx||_F^2. [default: 0.001]"),
    noise: Optional[str] = typer.Option(None, help="denoising: gaussian or mask. [default: gaussian]"),
    noise_std: Optional[float] = typer.Option(None, help="denoising gaussian: noise sigma. [default: 0.25]"),
    mask_prob: Optional[float] = typer.Option(None, help="denoising mask: share of inputs zeroed. [default: 0.25]"),
    beta: Optional[float] = typer.Option(None, help="vae: weight of the KL term. [default: 1]"),
    up: Optional[str] = typer.Option(None, help="conv: transpose or upsample. [default: transpose]"),
    down: Optional[str] = typer.Option(None, help="conv: stride or pool. [default: stride]"),
    cell: Optional[str] = typer.Option(None, help="recurrent: gru or lstm. [default: gru]"),
    lmbda: Optional[float] = typer.Option(None, help="compress: rate-distortion trade-off, loss = bits per pixel + "
                                          "lmbda * 255^2 * MSE; larger spends more bits for a higher PSNR "
                                          "(0.0018 to 0.05 spans about 0.1 to 1.5 bpp). [default: 0.01]"),
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
            opts["hidden"] = _ints(opts["hidden"], "--hidden")
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
                _read_options(**{k: opts.get(k) for k in READ_OPTIONS}))


    mcfg, tcfg, id_column, read = _run(build)
    meta = _run(train_fn, data, out, mcfg, tcfg, id_column=id_column, resume=resume, address=address, read=read)
    m = meta["metrics"]
    versus = _versus_pca(mcfg, m)
    typer.echo(f"trained {meta['family']} (code {mcfg.code_dim}) in {m['seconds']:.1f} s: best val loss "
               f"{m['best_val_loss']:.5g} at epoch {m['best_epoch'] + 1}{versus} -> {out}"
               + _skipped_note(meta.get("skipped")))


@app.command()
def tune(
    data: str = typer.Argument(..., help="Training data, as for aepipe train."),
    out: str = typer.Option(..., "--out", help="Run dir to create: the best trial's, an ordinary run dir."),
    family: str = typer.Option("dense", help="Autoencoder family (see `aepipe models`)."),
    code_dim: str = typer.Option("8,16,32", help="Code sizes to try, comma-separated."),
    depth: str = typer.Option("1,2", help="Hidden layers to try (each --width wide; conv: levels of channels)."),
    width: str = typer.Option("64,256", help="Widths to try (nodes per hidden layer; conv: channels)."),
    loss: str = typer.Option("mse", help="Losses to try, comma-separated: mse, l1, bce."),
    trials: int = typer.Option(8, help="Trials sampled from the grid above (Ray Tune, one CPU each, as many at "
                                       "once as the cluster has CPUs); ASHA stops those that fall behind."),
    epochs: int = typer.Option(100, help="Most epochs per trial; ASHA's rungs are fractions of it."),
    batch_size: int = typer.Option(64, help="Rows per step."),
    lr: float = typer.Option(1e-3, help="Peak learning rate (cosine schedule)."),
    seed: int = typer.Option(0, help="Seed of every trial's weights."),
    init: str = typer.Option("pca", help="pca or none, as for aepipe train."),
    id_column: Optional[str] = typer.Option(None, help="Parquet or CSV column holding row ids."),
    mode: Optional[str] = MODE,
    image_size: Optional[str] = IMAGE_SIZE,
    columns: Optional[str] = COLUMNS,
    address: Optional[str] = ADDRESS,
):
    """Search code size, depth, width and loss with Ray Tune and ASHA, ranking trials by their
    validation reconstruction loss over PCA's with the same code size and loss ("vs PCA" < 1: better
    than PCA); prints the table of trials and writes the best as a run dir that encode/decode take."""
    from aepipe.models import ModelConfig
    from aepipe.training import TrainConfig, train as train_fn
    from aepipe.tune import tune as tune_fn

    def setup():
        space = {"code_dim": _ints(code_dim, "--code-dim"), "depth": _ints(depth, "--depth"),
                 "width": _ints(width, "--width"), "loss": tuple(v.strip() for v in loss.split(",") if v.strip())}
        empty = [k for k, v in space.items() if not v]
        if empty:
            raise AepipeError(f"--{empty[0].replace('_', '-')}: give at least one value")
        mcfg, tcfg = ModelConfig(family=family, init=init), TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr,
                                                                        seed=seed)
        train_options(mcfg, tcfg)
        if trials < 1:
            raise AepipeError("--trials must be a positive integer")
        return space, mcfg, tcfg, _read_options(columns=columns, mode=mode, image_size=image_size)

    space, mcfg, tcfg, read = _run(setup)
    local = Path(data)
    rows, meta = _run(tune_fn, str(local.resolve()) if local.exists() else data, out, mcfg, tcfg, space, trials,
                      id_column=id_column, address=address, read=read, train=train_fn)
    typer.echo(format_table(["code", "depth", "width", "loss", "val loss", "PCA val loss", "vs PCA", "trial"], rows))
    m = meta["metrics"]
    typer.echo(f"tuned {meta['family']}: best code {meta['model']['code_dim']}, hidden {meta['model']['hidden']}, "
               f"loss {meta['model']['loss']}: val {m['val_recon']:.4g}, PCA {m['pca']['code_dim']}: "
               f"{m['pca']['val_loss']:.4g} -> {out}")


def _versus_pca(mcfg, m: dict) -> str:
    """The summary's note: the model's validation reconstruction loss beside PCA's with the same
    code size (epoch 0 is PCA under --init pca); one warning line first when the model ends worse
    (possible only with --init none)."""
    pca = m.get("pca") or {}
    if m.get("val_recon") is None or pca.get("val_loss") is None:
        return ""
    mine, floor = m["val_recon"], pca["val_loss"]
    if mine > floor * (1 + 1e-6):
        typer.echo(f"aepipe: warning: the model ends worse than PCA {pca['code_dim']} on the validation rows "
                   f"({mine:.4g} > {floor:.4g}); --init pca starts from PCA and cannot end worse", err=True)
    return f" (val {mcfg.loss} {mine:.4g}, PCA {pca['code_dim']}: {floor:.4g})"


def _skipped_note(skipped: list[dict] | None, show: int = 3) -> str:
    """The end of a summary line under --on-bad-row skip: which rows were left out, and why."""
    if not skipped:
        return ""
    listed = "; ".join(f"{s['id']} ({s['reason']})" for s in skipped[:show])
    more = f"; and {len(skipped) - show} more, listed in the metadata" if len(skipped) > show else ""
    return f"; skipped {len(skipped)} bad row{'s' * (len(skipped) > 1)}: {listed}{more}"


@app.command()
def encode(
    data: str = typer.Argument(..., help="Data to encode, with the schema the model was trained on."),
    model: str = typer.Option(..., "--model", help="Run dir from aepipe train."),
    out: Optional[str] = typer.Option(None, "--out", help="CODES.zarr or CODES.parquet (or --append)."),
    append: Optional[str] = typer.Option(None, "--append", help="STORE.parquet: encode only DATA's files that the "
                                         "store does not hold yet (by path, size and modification time) and add "
                                         "their codes; starts the store if missing, a rerun with no new file is a "
                                         "no-op. Prints the new codes' drift from the training codes and keeps it "
                                         "in the store. For a folder that grows (Parquet/CSV with an id column, "
                                         "or images); the store's --dtype and --scores apply."),
    dtype: str = typer.Option("float32", help="float32, float16, or int8 (per-dimension scale from training)."),
    scores: bool = typer.Option(False, "--scores", help="Also store each row's reconstruction error."),
    batch_size: int = BATCH_SIZE,
    concurrency: Optional[int] = CONCURRENCY,
    gpus: float = GPUS,
    id_column: Optional[str] = typer.Option(None, help="Parquet or CSV column holding row ids (default: a column named id)."),
    chunk_rows: Optional[int] = typer.Option(None, help="Zarr rows per chunk (default: about 1 MiB)."),
    overwrite: bool = OVERWRITE,
    columns: Optional[str] = COLUMNS,
    mode: Optional[str] = MODE,
    image_size: Optional[str] = IMAGE_SIZE,
    on_bad_row: Optional[str] = ON_BAD_ROW,
    fill_missing: Optional[str] = FILL_MISSING,
    resume: bool = typer.Option(False, "--resume", help="Finish OUT.partial left by a killed run with the "
                                "same model, data and options: only its missing chunks or parts are written."),
    engine: str = ENGINE,
    address: Optional[str] = ADDRESS,
):
    """Stream DATA through the encoder; one code per row, keyed by its id."""
    from aepipe.batch.encode import encode as encode_fn

    if (out is None) == (append is None):
        _die("aepipe: error: give --out CODES (a new store) or --append STORE (add DATA's new files)"
             + (", not both" if out else ""), 2)
    if append:
        return _encode_append(data, model, append, dtype, scores, batch_size, concurrency, gpus, id_column,
                              address, _run(_read_options, columns, mode, image_size, on_bad_row, fill_missing))
    attrs = _run(encode_fn, data, str(model), out, dtype=dtype, scores=scores, batch_size=batch_size,
                 concurrency=concurrency, num_gpus=gpus, id_column=id_column, chunk_rows=chunk_rows,
                 overwrite=overwrite, address=address, resume=resume, engine=engine,
                 read=_run(_read_options, columns, mode, image_size, on_bad_row, fill_missing))
    what = (f"bitstreams, {attrs['bits_per_pixel']:.4f} bits per pixel" if attrs.get("code_kind") == "bitstream"
            else f"{attrs['code_dim']}-d {dtype} codes")
    typer.echo(f"encoded {attrs['n_rows']} rows to {what} -> {out}" + _notes(attrs)
               + _skipped_note(attrs.get("skipped")))


def _encode_append(data, model, store, dtype, scores, batch_size, concurrency, gpus, id_column, address, read):
    from aepipe.batch.append import append, describe_drift
    from aepipe.batch.encode import encode

    done = _run(append, data, str(model), store, dtype=dtype, scores=scores, batch_size=batch_size,
                concurrency=concurrency, num_gpus=gpus, id_column=id_column, address=address, read=read,
                encode=encode)
    if not done["files"]:
        typer.echo(f"nothing to append: {store} holds every file of {data} ({done['store_rows']} rows)")
        return
    typer.echo(f"appended {done['rows']} rows of {done['files']} new files -> {store} ({done['store_rows']} rows)")
    typer.echo(describe_drift(done["drift"]))


@app.command()
def decode(
    codes: str = typer.Argument(..., help="A codes store from aepipe encode."),
    model: str = typer.Option(..., "--model", help="The run dir that made the codes."),
    out: str = typer.Option(..., "--out", help="OUT.zarr, OUT.parquet, OUT.npy, or for image models a folder "
                            "name without a suffix: one PNG per row, named by its id."),
    rows: Optional[str] = typer.Option(None, help="Only store rows A:B (positions in the store)."),
    ids: Optional[str] = typer.Option(None, help="Only these ids, comma-separated, in this order."),
    ids_file: Optional[Path] = typer.Option(None, help="Only the ids in this text file, one a line, in its order."),
    batch_size: int = BATCH_SIZE,
    concurrency: Optional[int] = CONCURRENCY,
    gpus: float = GPUS,
    overwrite: bool = OVERWRITE,
    engine: str = ENGINE,
    address: Optional[str] = ADDRESS,
):
    """Reconstruct rows from their codes, in the data's original units."""
    from aepipe.batch.decode import decode as decode_fn

    wanted = _run(_id_list, ids, ids_file)
    n = _run(decode_fn, str(codes), str(model), out, rows=rows, ids=wanted, batch_size=batch_size,
             concurrency=concurrency, num_gpus=gpus, overwrite=overwrite, engine=engine, address=address)
    typer.echo(f"decoded {n} rows -> {out}")


@app.command()
def sample(
    model: Path = typer.Option(..., "--model", help="A run dir of the vae family."),
    n: int = typer.Option(16, "--n", help="Rows to draw."),
    out: Path = typer.Option(..., "--out", help="OUT.npy"),
    seed: int = typer.Option(0, help="Seed of the prior draws."),
    overwrite: bool = OVERWRITE,
):
    """VAE only: draw new rows from the prior through the decoder."""
    from aepipe.batch.decode import sample as sample_fn

    x = _run(sample_fn, str(model), n, out, seed=seed, overwrite=overwrite)
    typer.echo(f"sampled {len(x)} rows shaped {x.shape[1:]} -> {out}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for the model, codes, reconstructions and plots."),
    code_dim: int = typer.Option(16, help="Code size (PCA gets the same)."),
    epochs: int = typer.Option(200, help="Most training epochs (early stopping usually ends sooner)."),
    address: Optional[str] = ADDRESS,
):
    """Digits end to end: train, encode (Zarr float32, Parquet int8), decode, compare with PCA."""
    from aepipe.batch.decode import decode as decode_fn
    from aepipe.batch.encode import encode as encode_fn
    from aepipe.models import ModelConfig
    from aepipe.training import TrainConfig, train as train_fn

    def fit(data, run_dir):
        train_fn(data, run_dir, ModelConfig(family="dense", code_dim=code_dim), TrainConfig(epochs=epochs),
                 address=address)

    table = _run(demo_fn, out, code_dim, train=fit, encode=functools.partial(encode_fn, overwrite=True),
                 decode=functools.partial(decode_fn, overwrite=True), address=address)  # starts Ray after the fit
    typer.echo("\n" + table)
    typer.echo(f"\nmodel, codes, loss_curve.png and reconstructions.png in {out}")


@app.command()
def export(
    model: str = typer.Argument(..., help="Run dir whose encoder to export."),
    out: Path = typer.Option(..., "--out", help="The program to write (.pt2)."),
    overwrite: bool = OVERWRITE,
):
    """Write a run dir's encoder (normalisation included) as a torch.export program, for serving
    without aepipe: torch.export.load(OUT).module()(rows) gives the codes `aepipe encode` writes
    (rows: (n, features) float32 in the data's units)."""
    from aepipe.export import export as export_fn  # torch

    done = _run(export_fn, model, out, overwrite=overwrite)
    typer.echo(f"exported the {done['family']} encoder ({done['features']} features -> {done['code_dim']} codes, "
               f"{done['bytes'] / 2**20:.2f} MiB) -> {done['out']}")


@app.command()
def info(path: str = typer.Argument(..., help="A run dir or a codes store."),
         verify: bool = typer.Option(False, "--verify", help="Read every chunk or file and check it: "
                                     "missing or damaged chunks, row counts, checksums.")):
    """Show what a run dir or a codes/reconstruction store holds (--verify: check all of it)."""
    is_run = _run(is_run_dir, path)
    rows = _run(describe_run, path) if is_run else _run(describe_store, path)
    if verify:
        _run(load_run, path) if is_run else _run(verify_store, path)
        rows.append(("verified", "every chunk present and its checksum correct" if not is_run
                     else "weights match the fingerprint in aepipe.json"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"{k.ljust(width)}  {v}")


@app.command()
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


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", help="Also show Ray's own log lines and progress.")):
    if verbose:
        os.environ["AEPIPE_VERBOSE"] = "1"


# ---------------------------------------------------------------- decoder jobs and downstream use (issue 9)

def _id_list(ids: Optional[str], ids_file: Optional[Path]) -> Optional[list[str]]:
    """--ids a,b,c or --ids-file (one id a line); not both."""
    if ids and ids_file:
        raise AepipeError("--ids and --ids-file: give one of them")
    if ids_file is None:
        return ids.split(",") if ids else None
    try:
        wanted = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise AepipeError(f"--ids-file {ids_file}: cannot read it ({e.strerror})") from None
    if not wanted:
        raise AepipeError(f"--ids-file {ids_file}: holds no ids")
    return wanted


@app.command()
def score(
    data: str = typer.Argument(..., help="Data to score, with the schema the model was trained on."),
    model: str = typer.Option(..., "--model", help="Run dir from aepipe train."),
    out: str = typer.Option(..., "--out", help="SCORES.parquet or SCORES.zarr."),
    per_feature: bool = typer.Option(False, "--per-feature", help="Tables: also each column's error (COLUMN_error)."),
    threshold: Optional[str] = typer.Option(None, help="auto (training scores' 1 - contamination quantile) or a "
                                                        "number: adds a boolean anomaly column."),
    contamination: float = typer.Option(0.01, help="With --threshold auto: share of training rows above it."),
    id_column: Optional[str] = MODEL_ID_COLUMN,
    batch_size: int = BATCH_SIZE,
    concurrency: Optional[int] = CONCURRENCY,
    gpus: float = GPUS,
    overwrite: bool = OVERWRITE,
    columns: Optional[str] = COLUMNS,
    mode: Optional[str] = MODE,
    image_size: Optional[str] = IMAGE_SIZE,
    on_bad_row: Optional[str] = ON_BAD_ROW,
    fill_missing: Optional[str] = FILL_MISSING,
    engine: str = ENGINE,
    address: Optional[str] = ADDRESS,
):
    """Per-row anomaly score: the reconstruction error in the model's units (its training loss)."""
    from aepipe.batch.reconstruct import score as score_fn

    attrs = _run(score_fn, data, str(model), out, per_feature=per_feature, threshold=threshold,
                 contamination=contamination, id_column=id_column, batch_size=batch_size, concurrency=concurrency,
                 num_gpus=gpus, overwrite=overwrite, engine=engine, address=address,
                 read=_run(_read_options, columns, mode, image_size, on_bad_row, fill_missing))
    t = attrs["threshold"]
    typer.echo(f"scored {attrs['n_rows']} rows ({attrs['loss']} per feature)"
               + (f", threshold {t:.6g}" if t is not None else "") + f" -> {out}" + _notes(attrs)
               + _skipped_note(attrs.get("skipped")))


@app.command()
def denoise(
    data: str = typer.Argument(..., help="Noisy data, with the schema the model was trained on."),
    model: str = typer.Option(..., "--model", help="Run dir, ideally of the denoising family."),
    out: str = typer.Option(..., "--out", help="OUT.zarr, OUT.parquet, OUT.npy, or a folder of PNG images (as "
                            "decode writes them; an image folder's files keep their relative paths)."),
    id_column: Optional[str] = MODEL_ID_COLUMN,
    batch_size: int = BATCH_SIZE,
    concurrency: Optional[int] = CONCURRENCY,
    gpus: float = GPUS,
    overwrite: bool = OVERWRITE,
    columns: Optional[str] = COLUMNS,
    mode: Optional[str] = MODE,
    image_size: Optional[str] = IMAGE_SIZE,
    on_bad_row: Optional[str] = ON_BAD_ROW,
    fill_missing: Optional[str] = FILL_MISSING,
    engine: str = ENGINE,
    address: Optional[str] = ADDRESS,
):
    """Encode and decode DATA in one pass (no codes store): the model's clean version of each row."""
    from aepipe.batch.reconstruct import denoise as denoise_fn

    done = _run(denoise_fn, data, str(model), out, id_column=id_column, batch_size=batch_size,
                concurrency=concurrency, num_gpus=gpus, overwrite=overwrite, engine=engine, address=address,
                read=_run(_read_options, columns, mode, image_size, on_bad_row, fill_missing))
    if done["note"]:
        typer.echo(f"aepipe: note: {done['note']}", err=True)
    typer.echo(f"denoised {done['n_rows']} rows -> {out}" + _notes(done) + _skipped_note(done["skipped"]))


@app.command()
def probe(
    codes: Path = typer.Argument(..., help="A codes store from aepipe encode."),
    labels: str = typer.Option(..., "--labels", help="CSV or Parquet with an id and a label column, or builtin:digits."),
    label_column: str = typer.Option("y", help="The labels' column."),
    labels_id_column: str = typer.Option("id", help="The labels' id column (joined to the store's ids)."),
    data: Optional[str] = typer.Option(None, help="The encoded DATA: adds the same probe on raw inputs and on PCA."),
):
    """Linear probe: logistic regression on the codes, one fixed 70/30 split, accuracy and macro-F1."""
    rows = _run(probe_fn, str(codes), labels, label_column=label_column, data=data, labels_id_column=labels_id_column)
    typer.echo(f"{rows[0]['n_train']} train / {rows[0]['n_test']} test rows, joined by id\n")
    typer.echo(format_table(["features", "dims", "accuracy", "macro-F1"],
                            [[r["features"], r["dims"], r["accuracy"], r["macro_f1"]] for r in rows]))


@app.command()
def report(
    model: Path = typer.Option(..., "--model", help="Run dir from aepipe train."),
    out: Path = typer.Option(..., "--out", help="Folder for report.png and report.html."),
    data: Optional[str] = typer.Option(None, help="Rows to show (default: the data the model was trained on)."),
    labels: Optional[str] = typer.Option(None, help="CSV or Parquet of id and label, to colour the code map "
                                                    "(built-in sets bring their own)."),
    label_column: str = typer.Option("y", help="The labels' column."),
    labels_id_column: str = typer.Option("id", help="The labels' id column."),
    rows: int = typer.Option(2000, help="How many of DATA's first rows to show."),
    tsne: bool = typer.Option(False, "--tsne", help="Map the codes with t-SNE instead of PCA."),
    overwrite: bool = typer.Option(False, help="Replace an earlier report in OUT."),
):
    """One page on a model: loss, reconstructions, scores, code map, error per code dtype (PNG + HTML)."""
    from aepipe.report import report as report_fn

    done = _run(report_fn, str(model), out, data=data, labels=labels, label_column=label_column,
                labels_id_column=labels_id_column, rows=rows, tsne=tsne, overwrite=overwrite)
    typer.echo(f"report -> {done['png']} and {done['html']}")


@app.command()
def submit(
    jobspec: str = typer.Argument(..., help="A job spec, e.g. jobs/train.yaml: submit_job's fields plus params."),
    address: Optional[str] = typer.Option(None, "--address", help="The cluster's job server, e.g. http://HEAD:8265 "
                                          "(default: RAY_API_SERVER_ADDRESS, an http:// RAY_ADDRESS, else "
                                          "http://127.0.0.1:8265)."),
    wait: bool = typer.Option(False, "--wait", help="Stream the job's logs and exit with its status: 0 if it "
                                                    "SUCCEEDED, 1 if it FAILED or was STOPPED."),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="NAME=VALUE", help="NAME=VALUE: fill the entrypoint's {NAME} "
                                             "(default: the spec's params), or replace a field, dotted for "
                                             "nested ones (entrypoint_num_gpus=1, runtime_env.env_vars.X=1). "
                                             "Repeat for more."),
):
    """Run a job spec on a Ray cluster through Ray Jobs; prints the job id.

    \b
      ray up cluster.yaml && ray dashboard cluster.yaml       # job server on localhost:8265
      aepipe submit jobs/train.yaml --set data=s3://bucket/t.parquet --wait
      aepipe submit jobs/encode_nightly.yaml --address http://head:8265

    A cluster with token auth (RAY_AUTH_MODE=token, as cluster.yaml starts it) takes the submit only
    with its token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH to a file holding it). Scheduling is
    cron's or Kubernetes' job: see jobs/crontab and jobs/rayjob.yaml.
    """

    _run(submit_fn, jobspec, address, sets=set_ or (), follow=wait)


def main(argv: list[str] | None = None) -> int:
    """Run one aepipe command in this process and return its exit code: 0 done, 2 bad input,
    1 failed at run time, 130 interrupted. Usage mistakes (a missing option, a value that is not
    a number) end like any other bad input: one `aepipe: error:` line and exit 2. Tests and
    notebooks call this; the installed command is `console()`, which also leaves fast."""
    try:  # typer 0.2x carries its own click; older ones use click itself
        from typer._click.exceptions import NoArgsIsHelpError, UsageError
    except ImportError:  # pragma: no cover
        from click.exceptions import NoArgsIsHelp as NoArgsIsHelpError, UsageError

    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    try:
        code = app(args=argv, prog_name="aepipe", standalone_mode=False)  # Exit(n) returns n here
        return code if isinstance(code, int) else 0
    except NoArgsIsHelpError as e:
        typer.echo(e.ctx.get_help() if e.ctx else "")
        return 0
    except UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        typer.echo(_one_line(f"aepipe: error: {e.format_message()}{hint}"), err=True)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aepipe: error: interrupted", err=True)
        return 130
    except typer.Exit as e:
        return e.exit_code


def _terminated(signum, frame):
    raise KeyboardInterrupt


def console() -> None:
    """The installed `aepipe` command: main() with the console kept for aepipe's own lines, and
    an exit that skips what a finished command need not wait for (Ray's shutdown, Python's
    teardown of torch)."""

    global _AS_COMMAND
    _AS_COMMAND = True
    if "--verbose" not in sys.argv:
        quiet_native_logs()
        warnings.simplefilter("ignore")  # libraries' advice to developers is not the user's business
    # importing torch and the rest makes over a million objects, and the collector's passes over
    # them took 0.25 s of a 2 s ask here; none of them are garbage. _run turns it back on.
    gc.disable()
    signal.signal(signal.SIGTERM, _terminated)  # a scheduler's stop ends the job as Ctrl-C does
    code = main()
    if "ray" in sys.modules:
        exit_now(code)  # an embedded Ray's shutdown would take seconds more
        sys.exit(code)  # connected to a cluster: let Ray's exit hooks disconnect it cleanly
    leave(code)


if __name__ == "__main__":
    console()
