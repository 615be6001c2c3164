"""The commands that stream rows through a trained model: encode (and encode --append), decode,
denoise, score, and sample. The model jobs share one block of options (options.JobOptions)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aepipe.cli.options import JOB_BLOCK, MODEL_ID_COLUMN, OVERWRITE, JobOptions, job_options
from aepipe.cli.output import call, die, notes, skipped_note
from aepipe.errors import AepipeError
from aepipe.stores import PART_BYTES

# aepipe.batch.* bring torch: imported inside the commands (see __init__.py).


@job_options()
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
    dtype: str = typer.Option("float32", help="float32, float16, or int8 (one scale per store, from the training codes' range)."),
    scores: bool = typer.Option(False, "--scores", help="Also store each row's reconstruction error."),
    id_column: Optional[str] = typer.Option(None, help="Parquet or CSV column holding row ids (default: a column named id)."),
    chunk_rows: Optional[int] = typer.Option(None, help="Zarr rows per chunk (default: about 1 MiB)."),
    part_mb: int = typer.Option(PART_BYTES >> 20, help="MiB of codes a task writes: one Parquet part, or one Zarr "
                                "shard (object stores and query engines want large objects, not thousands of "
                                "small ones); smaller when DATA is small, so every CPU has a task."),
    shards: Optional[bool] = typer.Option(None, "--shards/--no-shards", help="Zarr: store many chunks in one "
                                          "object, a shard of --part-mb. [default: on at a URI (s3://, gs://)]"),
    resume: bool = typer.Option(False, "--resume", help="Finish OUT.partial left by a killed run with the "
                                "same model, data and options: only its missing chunks or parts are written."),
    refine: int = typer.Option(0, "--refine", metavar="STEPS", help="Compress models: before coding, optimise each "
                               "image's own latent for STEPS steps (its bits + lmbda x distortion with the model "
                               "fixed, by stochastic Gumbel annealing); the usual decode decodes it. A slower "
                               "encode for fewer bits at the same quality: docs/compression.md gives the figures "
                               "(try 200). 0: off."),
    job: JobOptions = JOB_BLOCK,
):
    """Stream DATA through the encoder; one code per row, keyed by its id."""
    from aepipe.batch.encode import encode as encode_fn

    if (out is None) == (append is None):
        die("aepipe: error: give --out CODES (a new store) or --append STORE (add DATA's new files)"
            + (", not both" if out else ""), 2)
    if append:
        if refine:
            die("aepipe: error: --refine: give it with --out; --append codes new files as the store's first run did", 2)
        return _encode_append(data, model, append, dtype, scores, id_column, job, call(job.read))
    attrs = call(encode_fn, data, str(model), out, dtype=dtype, scores=scores, id_column=id_column,
                chunk_rows=chunk_rows, part_mb=part_mb, shards=shards, resume=resume, refine=refine, **job.kwargs(),
                read=call(job.read))
    what = (f"bitstreams, {attrs['bits_per_pixel']:.4f} bits per pixel" if attrs.get("code_kind") == "bitstream"
            else f"{attrs['code_dim']}-d {dtype} codes")
    typer.echo(f"encoded {attrs['n_rows']} rows to {what} -> {out}" + notes(attrs)
               + skipped_note(attrs.get("skipped")))


def _encode_append(data, model, store, dtype, scores, id_column, job: JobOptions, read):
    from aepipe.batch.append import append, describe_drift
    from aepipe.batch.encode import encode

    done = call(append, data, str(model), store, dtype=dtype, scores=scores, batch_size=job.batch_size,
               concurrency=job.concurrency, num_gpus=job.gpus, id_column=id_column, address=job.address, read=read,
               encode=encode)
    if not done["files"]:
        typer.echo(f"nothing to append: {store} holds every file of {data} ({done['store_rows']} rows)")
        return
    typer.echo(f"appended {done['rows']} rows of {done['files']} new files -> {store} ({done['store_rows']} rows)")
    typer.echo(describe_drift(done["drift"]))


@job_options(reads_data=False)
def decode(
    codes: str = typer.Argument(..., help="A codes store from aepipe encode."),
    model: str = typer.Option(..., "--model", help="The run dir that made the codes."),
    out: str = typer.Option(..., "--out", help="OUT.zarr, OUT.parquet, OUT.npy, or for image models a folder "
                            "name without a suffix: one PNG per row, named by its id."),
    rows: Optional[str] = typer.Option(None, help="Only store rows A:B (positions in the store)."),
    ids: Optional[str] = typer.Option(None, help="Only these ids, comma-separated, in this order."),
    ids_file: Optional[Path] = typer.Option(None, help="Only the ids in this text file, one a line, in its order."),
    job: JobOptions = JOB_BLOCK,
):
    """Reconstruct rows from their codes, in the data's original units."""
    from aepipe.batch.decode import decode as decode_fn

    wanted = call(_id_list, ids, ids_file)
    n = call(decode_fn, str(codes), str(model), out, rows=rows, ids=wanted, **job.kwargs())
    typer.echo(f"decoded {n} rows -> {out}")


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


def sample(
    model: Path = typer.Option(..., "--model", help="A run dir of the vae family."),
    n: int = typer.Option(16, "--n", help="Rows to draw."),
    out: Path = typer.Option(..., "--out", help="OUT.npy"),
    seed: int = typer.Option(0, help="Seed of the prior draws."),
    overwrite: bool = OVERWRITE,
):
    """VAE only: draw new rows from the prior through the decoder."""
    from aepipe.batch.decode import sample as sample_fn

    x = call(sample_fn, str(model), n, out, seed=seed, overwrite=overwrite)
    typer.echo(f"sampled {len(x)} rows shaped {x.shape[1:]} -> {out}")


@job_options()
def score(
    data: str = typer.Argument(..., help="Data to score, with the schema the model was trained on."),
    model: str = typer.Option(..., "--model", help="Run dir from aepipe train."),
    out: str = typer.Option(..., "--out", help="SCORES.parquet or SCORES.zarr."),
    per_feature: bool = typer.Option(False, "--per-feature", help="Tables: also each column's error (COLUMN_error)."),
    threshold: Optional[str] = typer.Option(None, help="auto (training scores' 1 - contamination quantile) or a "
                                                        "number: adds a boolean anomaly column."),
    contamination: float = typer.Option(0.01, help="With --threshold auto: share of training rows above it."),
    kind: Optional[str] = typer.Option(None, "--score", help="recon: the reconstruction error in the model's "
                                       "units (its training loss per feature); code: the code's distance from the "
                                       "training codes; combined: the code's and the residual's, per dimension "
                                       "(about 1 for a training row); linear: the classical PCA detector, combined "
                                       "for a PCA with the code size fitted on every training row. Default: linear "
                                       "for tables, recon for images and arrays (see the README: which score "
                                       "when)."),
    id_column: Optional[str] = MODEL_ID_COLUMN,
    job: JobOptions = JOB_BLOCK,
):
    """Per-row anomaly score: larger for rows less like the training rows."""
    from aepipe.batch.reconstruct import score as score_fn

    attrs = call(score_fn, data, str(model), out, per_feature=per_feature, threshold=threshold,
                contamination=contamination, id_column=id_column, **job.kwargs(), read=call(job.read), kind=kind)
    t = attrs["threshold"]
    from aepipe.scores import describe

    what = describe(attrs["score_kind"], attrs["loss"])
    typer.echo(f"scored {attrs['n_rows']} rows ({what})"
               + (f", threshold {t:.6g}" if t is not None else "") + f" -> {out}" + notes(attrs)
               + skipped_note(attrs.get("skipped")))


@job_options()
def denoise(
    data: str = typer.Argument(..., help="Noisy data, with the schema the model was trained on."),
    model: str = typer.Option(..., "--model", help="Run dir, ideally of the denoising family."),
    out: str = typer.Option(..., "--out", help="OUT.zarr, OUT.parquet, OUT.npy, or a folder of PNG images (as "
                            "decode writes them; an image folder's files keep their relative paths)."),
    id_column: Optional[str] = MODEL_ID_COLUMN,
    job: JobOptions = JOB_BLOCK,
):
    """Encode and decode DATA in one pass (no codes store): the model's clean version of each row."""
    from aepipe.batch.reconstruct import denoise as denoise_fn

    done = call(denoise_fn, data, str(model), out, id_column=id_column, **job.kwargs(), read=call(job.read))
    if done["note"]:
        typer.echo(f"aepipe: note: {done['note']}", err=True)
    typer.echo(f"denoised {done['n_rows']} rows -> {out}" + notes(done) + skipped_note(done["skipped"]))
