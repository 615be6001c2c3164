"""DATA through the whole autoencoder in one pass (no codes store in between): denoise and score.

    aepipe denoise: read -> Reconstructor (encode + decode) -> rows written as decode writes them
    aepipe score:   read -> Reconstructor (per-row error)   -> id, score [, per-feature errors, anomaly]

A score (--score, see aepipe.scores) is the reconstruction error in the model's own units (recon:
the per-row mean of its training loss on normalised inputs, which for mse models equals `aepipe
encode --scores`), the code's distance from the training codes (code), or both the code's and the
residual's (combined), or both of the model's linear part alone (linear, the default for
tables). Each compares with its training quantiles stored in
the run dir (`score_quantiles`, see aepipe.scores.training_quantiles).
"""

from __future__ import annotations

import math
from pathlib import Path

from aepipe.batch.actors import Reconstructor
from aepipe.batch.engine import check_job_options, model_job, provenance, write
from aepipe.batch.rows import png_range, rows_per_part, write_rows
from aepipe.checks import output_path
from aepipe.errors import AepipeError
from aepipe.run import load_run
from aepipe.scores import auto_threshold, score_kind
from aepipe.sources import open_matching
from aepipe.stores import chunk_rows_for, task_rows
from aepipe.stores.read import id_dtype
from aepipe.stores.parquet_sink import ParquetSink
from aepipe.stores.zarr_sink import ZarrSink


def parse_threshold(text: str | None, run, contamination: float, kind: str = "recon") -> float | None:
    if text is None:
        return None
    if text == "auto":
        return auto_threshold(run, contamination, kind)
    try:
        t = float(text)
    except ValueError:
        t = math.nan
    if not math.isfinite(t) or t < 0:
        raise AepipeError(f'--threshold "{text}": expected auto or a score >= 0')
    return t


def denoise(data: str, model: str, out: str | Path, id_column: str | None = None, batch_size: int = 1024,
            concurrency: int | None = None, num_gpus: float = 0, overwrite: bool = False, engine: str = "auto",
            address: str | None = None, read: dict | None = None) -> dict:
    """Encode and decode every row of DATA into OUT (.zarr, .parquet or .npy). Returns what it did;
    `note` says when the model was not trained to remove noise (it then only reconstructs)."""
    check_job_options(batch_size, concurrency, num_gpus, engine)
    run = load_run(model)
    src = open_matching(data, run, id_column, read)
    out = output_path(out, overwrite, (".zarr", ".parquet", ".npy", ""), inputs=(data, model))
    if out.suffix == "":  # a folder of PNG images: only for image models, refused before Ray starts
        png_range(run, out)
    if (read or {}).get("on_bad_row") == "skip" and out.suffix == ".npy":  # a .npy keeps every row's place
        raise AepipeError("--on-bad-row skip: write to .zarr or .parquet, which list the rows left out")
    ds = model_job(src, Reconstructor, dict(run_dir=str(run.path), want="x", num_gpus=num_gpus),
                   batch_size, concurrency, num_gpus, engine, address, part_rows=rows_per_part(out, 4 * run.schema.size, src.n_rows))
    skipped = write_rows(ds, out, src, run, provenance(run, data, n_rows=src.n_rows, shape=list(run.schema.shape)))
    note = None if run.meta["family"] == "denoising" else (
        f'{model} is a "{run.meta["family"]}" model, not trained as denoising: rows were reconstructed, '
        "not specifically cleaned of noise")
    return {"n_rows": src.n_rows - len(skipped), "note": note, "skipped": skipped, "notes": src.notes()}


def score(data: str, model: str, out: str | Path, per_feature: bool = False, threshold: str | None = None,
          contamination: float = 0.01, id_column: str | None = None, batch_size: int = 1024,
          concurrency: int | None = None, num_gpus: float = 0, overwrite: bool = False, engine: str = "auto",
          address: str | None = None, read: dict | None = None, kind: str | None = None) -> dict:
    """Per-row anomaly score of DATA into OUT (.parquet or .zarr), keyed by the input's id column.
    kind: one of SCORE_KINDS; None: see score_kind."""
    check_job_options(batch_size, concurrency, num_gpus, engine)
    run = load_run(model)
    kind, kind_note = score_kind(run, kind)
    t = parse_threshold(threshold, run, contamination, kind)
    if per_feature and not run.schema.tabular:
        raise AepipeError(f"--per-feature: only for tables; {model} takes arrays shaped {run.schema.shape}")
    src = open_matching(data, run, id_column, read)
    out = output_path(out, overwrite, (".zarr", ".parquet"), inputs=(data, model))
    id_name = getattr(src, "id_column", None) or "id"
    attrs = provenance(run, data, n_rows=src.n_rows, id_column=id_name, threshold=t, notes=src.notes() + kind_note,
                       contamination=contamination if threshold == "auto" else None, loss=run.meta["model"]["loss"],
                       score_kind=kind)
    chunk = chunk_rows_for(4 * (1 + (run.schema.size if per_feature else 0)))
    ds = model_job(src, Reconstructor, dict(run_dir=str(run.path), want="score", per_feature=per_feature,
                                            threshold=t, num_gpus=num_gpus, kind=kind),
                   batch_size, concurrency, num_gpus, engine, address, task_rows(chunk, 4 * src.schema.size, src.n_rows),
                   part_rows=rows_per_part(out, 4 * (1 + per_feature * run.schema.size), src.n_rows, chunk))
    sink = _score_sink(out, src, run, attrs, per_feature, t is not None, id_name, chunk)
    write(ds, sink)
    if sink.skipped:  # --on-bad-row skip: fewer rows scored, the others listed
        attrs.update(n_rows=src.n_rows - len(sink.skipped), skipped=sink.skipped)
    return attrs


def _score_sink(out: Path, src, run, attrs, per_feature: bool, anomaly: bool, id_name: str, chunk: int):
    if out.suffix == ".zarr":
        arrays = {"ids": ("id", (), id_dtype(src)), "scores": ("score", (), "float32")}
        if per_feature:
            arrays["errors"] = ("err", (run.schema.size,), "float32")
        if anomaly:
            arrays["anomaly"] = ("anomaly", (), "bool")
        return ZarrSink(out, src.n_rows, arrays, {**attrs, "columns": list(run.schema.columns)}, chunk)
    cols = {id_name: ("id", "scalar"), "score": ("score", "scalar")}
    if per_feature:
        cols["err"] = ("err", tuple(f"{c}_error" for c in run.schema.columns))
    if anomaly:
        cols["anomaly"] = ("anomaly", "scalar")
    return ParquetSink(out, src.n_rows, cols, attrs)
