"""aepipe encode: stream DATA through the encoder in parallel, write one code per row.

    read a row range -> Encoder -> ZarrSink | ParquetSink     one fused Ray task per range on CPUs
    read -> Encoder on an actor pool -> write                  with --gpus (aepipe.batch.engine.model_job)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aepipe.batch.actors import BitstreamEncoder, Encoder
from aepipe.batch.engine import check_job_options, model_job, provenance, write
from aepipe.batch.rows import rows_per_part as part_size
from aepipe.checks import output_path, positive
from aepipe.errors import AepipeError
from aepipe.run import load_run
from aepipe import remote
from aepipe.sources import Source, input_files, open_for_run, plan, task_range
from aepipe.stores.bitstreams import encode_sink, stored_rate
from aepipe.stores import PART_BYTES, chunk_rows_for, part_rows, task_rows
from aepipe.stores.quantize import DTYPES, int8_scale
from aepipe.stores.read import id_dtype
from aepipe.stores.parquet_sink import ParquetSink
from aepipe.stores.zarr_sink import ZarrSink


MAX_CHUNK_BYTES = 2 ** 30  # --chunk-rows: input rows (float32) or codes per chunk, whichever is more


class Remaining(Source):
    """`src` read only over `todo`, the read ranges a resumed encode still has to run."""

    def __init__(self, src: Source, todo: list[tuple[int, int]]):
        self.src, self.todo = src, todo
        self.spec, self.schema, self.n_rows = src.spec, src.schema, src.n_rows

    def ranges(self, rows_per_task=None):
        """The source's own read ranges, cut to the ranges still to run."""
        steps, cut, i = self.src.ranges(*([rows_per_task] if rows_per_task else [])), [], 0
        for lo, hi in self.todo:  # both in row order
            while i < len(steps) and steps[i][1] <= lo:
                i += 1
            j = i
            while j < len(steps) and steps[j][0] < hi:
                cut.append((max(steps[j][0], lo), min(steps[j][1], hi)))
                j += 1
        return cut

    def read(self, start, stop):
        return self.src.read(start, stop)

    def __getstate__(self):
        # every read task ships its source, and a read task only reads: the ranges still to run stay
        # on the driver, or each of N tasks would carry all N (1.1 MiB a task at 100,000 tasks, so
        # the job's traffic grew with N squared: bench/driver_scale.py)
        return {**self.__dict__, "todo": None}


def resume_settings(run, src: Source, out: Path, **options) -> dict:
    """What a --resume must find unchanged: the model's weights, the input (path, size, every
    file's size and modification time) and every option that shapes the store."""
    data = src.spec if src.spec.startswith("builtin:") or "://" in src.spec else str(Path(src.spec).resolve())
    return {"model_fingerprint": run.fingerprint, "data": data, "input_files": input_files(src),
            "n_rows": src.n_rows, "format": out.suffix, **options}


def check_refine(run, model: str, refine: int) -> None:
    """--refine: a whole number of steps, for a compress model whose prior can refine (not the hyperprior)."""
    if refine < 0:
        raise AepipeError(f"--refine {refine}: give a number of steps, 0 (off) or more")
    if refine and run.meta["family"] != "compress":
        raise AepipeError(f"--refine: {model} is a {run.meta['family']} model; only compress models refine "
                          "their latents")
    if refine and run.meta["model"].get("prior") == "hyperprior":
        raise AepipeError(f"--refine: {model} has the hyperprior, which rounds about means the latent itself sets; "
                          "refining needs --prior context or factorized")


def cf_scale(dtype: str, sf: float, ao: float) -> dict:
    """CF's attributes that make readers (xarray) turn stored codes into float32 codes by themselves:
    int8 through the store's scale; float16 widened (1.0 and 0.0 tell xarray to give float32)."""
    return {"int8": {"scale_factor": sf, "add_offset": ao},
            "float16": {"scale_factor": 1.0, "add_offset": 0.0}}.get(dtype, {})


def encode(data: str, model: str, out: str | Path, dtype: str = "float32", scores: bool = False,
           batch_size: int = 1024, concurrency: int | None = None, num_gpus: float = 0, id_column: str | None = None,
           chunk_rows: int | None = None, overwrite: bool = False, address: str | None = None,
           read: dict | None = None, resume: bool = False, select=None, engine: str = "auto",
           part_mb: int = PART_BYTES >> 20, shards: bool | None = None, refine: int = 0) -> dict:
    """Write one code per input row, keyed by id, to OUT (.zarr or .parquet). Returns provenance.
    resume: finish OUT.partial, left by a run that was killed, instead of starting again.
    select: a function of the opened source that returns the rows to encode (encode --append).
    engine: auto (in this process when that is faster, else Ray), local or ray (aepipe.batch.engine).
    part_mb: MiB of codes per task: one Parquet part, or one Zarr shard. shards: Zarr shards (None: at a URI).
    refine: compress models: steps of each image's own latent optimisation before coding (Compress.refine)."""
    if dtype not in DTYPES:
        raise AepipeError(f'unknown --dtype "{dtype}"; choose one of {", ".join(DTYPES)}')
    check_job_options(batch_size, concurrency, num_gpus, engine)
    positive("chunk_rows", chunk_rows)
    positive("part_mb", part_mb)
    run = load_run(model)
    check_refine(run, model, refine)
    src = open_for_run(data, run.meta, id_column, **(read or {}))
    src = select(src) if select else src
    out = output_path(out, overwrite, (".zarr", ".parquet"), inputs=(data, model))
    src.schema.check_matches(run.schema, data)
    src.schema = run.schema  # columns are read by name, in the order the model was trained on
    own_sizes = run.meta["family"] == "compress" and hasattr(src, "at_own_sizes") and not (read or {}).get("image_size")
    if own_sizes:  # a codec codes every image at its own size, unless --image-size asks for one
        src.at_own_sizes()
    d = run.code_dim
    sf, ao = int8_scale(*run.code_range())
    files = input_files(src)
    attrs = provenance(run, data, n_rows=src.n_rows, code_dim=d, dtype=dtype, scores=scores, notes=src.notes(),
                       ids=getattr(src, "id_column", None) or getattr(src, "id_kind", "row index"),
                       quantization={"scale_factor": sf, "add_offset": ao} if dtype == "int8" else None,
                       # what `aepipe info` compares the store with
                       input_bytes=None if own_sizes else src.n_rows * src.schema.size * 4,
                       input_file_bytes=sum(size for _, size, _ in files) if files else None,
                       **({"image_sizes": "own"} if own_sizes else {}))
    # a bitstream's size is not known ahead: chunks are sized for one at about 1 bit per pixel
    row_bytes = run.schema.size // 8 if run.meta["family"] == "compress" else d * np.dtype(dtype).itemsize
    if chunk_rows and chunk_rows * max(row_bytes, 4 * src.schema.size) > MAX_CHUNK_BYTES:
        most = MAX_CHUNK_BYTES // max(row_bytes, 4 * src.schema.size)
        raise AepipeError(f"--chunk-rows {chunk_rows}: a chunk that long holds more than {MAX_CHUNK_BYTES >> 30} GiB "
                          f"(one task reads, encodes and writes a whole chunk); at most {most} rows here")
    chunk_rows = chunk_rows or chunk_rows_for(row_bytes)
    ids_kind = id_dtype(src)
    step_rows = task_rows(chunk_rows, 4 * src.schema.size, src.n_rows)  # input held at once
    shard_rows = rows_per_part = None
    # with --gpus an actor pool stands between read and write, so a write task holds one read
    # step, not a whole task: parts and shards of a task would come back through the driver
    if out.suffix == ".zarr" and not num_gpus and (remote.is_uri(str(out)) if shards is None else shards):
        shard_rows = part_rows(chunk_rows, row_bytes, src.n_rows, part_mb << 20)  # many chunks an object
    if not num_gpus:
        rows_per_part = shard_rows or part_size(out, row_bytes, src.n_rows, chunk_rows, part_mb << 20)
    ranges = [task_range(t) for t in plan(src, step_rows, rows_per_part)]
    settings = resume_settings(run, src, out, dtype=dtype, scores=scores, ids=attrs["ids"], ids_kind=ids_kind,
                               chunk_rows=chunk_rows if out.suffix == ".zarr" else None, ranges=len(ranges),
                               part_rows=rows_per_part, shard_rows=shard_rows, **({"refine": refine} if refine else {}))

    actor, kwargs = Encoder, dict(run_dir=str(run.path), dtype=dtype, scores=scores, num_gpus=num_gpus)
    if run.meta["family"] == "compress":  # one entropy-coded bitstream per image instead of a code row
        if scores or dtype != "float32":
            raise AepipeError(f"--scores and --dtype: {model} is a compress model; it writes bitstreams, whose "
                              "size is set by its --lmbda")
        sink = encode_sink(out, src, attrs, ids_kind, chunk_rows, ranges, settings)
        actor, kwargs = BitstreamEncoder, dict(run_dir=str(run.path), num_gpus=num_gpus, refine=refine)
    elif out.suffix == ".zarr":
        arrays = {"codes": ("code", (d,), dtype, cf_scale(dtype, sf, ao)), "ids": ("id", (), ids_kind)}
        if scores:
            arrays["scores"] = ("score", (), "float32")
        sink = ZarrSink(out, src.n_rows, arrays, attrs, chunk_rows, ranges, settings, shard_rows=shard_rows)
    else:
        cols = {"id": ("id", "scalar"), "code": ("code", "list")}
        if scores:
            cols["score"] = ("score", "scalar")
        sink = ParquetSink(out, src.n_rows, cols, attrs, ranges, settings, fields={"code": cf_scale(dtype, sf, ao)})
    try:
        todo = sink.prepare(resume=True) if resume else ranges
        # everything above is checked without Ray: a mistake costs a second, not a start-up
        if todo:  # (none: killed after its last range, before the commit)
            ds = model_job(Remaining(src, todo), actor, kwargs, batch_size, concurrency, num_gpus, engine=engine,
                           address=address, rows_per_task=step_rows, part_rows=rows_per_part)
            write(ds, sink)
        else:
            sink.on_write_complete([])
    finally:
        sink.unlock()  # a resumed run locked OUT in prepare, before the job started
    if attrs.get("code_kind") == "bitstream":  # the rate the store really holds, for the summary line
        bits, pixels = stored_rate(out)
        attrs["bits_per_pixel"] = bits / max(pixels, 1)
    if sink.skipped:  # --on-bad-row skip: the store holds fewer rows, and lists the others
        attrs.update(n_rows=src.n_rows - len(sink.skipped), skipped=sink.skipped)
    return attrs
