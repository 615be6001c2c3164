"""aepipe decode: codes back to data through the decoder, on an actor pool, to Zarr/Parquet/.npy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from aepipe.errors import AepipeError
from aepipe.checks import output_path, positive
from aepipe.batch.actors import BitstreamDecoder, Decoder
from aepipe.batch.engine import check_job_options, model_job, provenance
from aepipe.batch.rows import png_range, rows_per_part, select, write_rows
from aepipe.run import load_run
from aepipe.stores.bitstreams import BitstreamSource, image_sizes
from aepipe.sources import locate
from aepipe.stores.quantize import quant_scale
from aepipe.stores.read import StoreGuard, open_codes, read_metadata


SAMPLE_MAX_BYTES = 2 ** 30  # sample draws in memory on the driver: keep one call under 1 GiB


def decode(codes: str, model: str, out: str | Path, rows: str | None = None, ids: list[str] | None = None,
           batch_size: int = 1024, concurrency: int | None = None, num_gpus: float = 0, overwrite: bool = False,
           engine: str = "auto", address: str | None = None) -> int:
    """Reconstruct rows from a codes store into OUT (.zarr, .parquet or .npy). Returns rows written.
    Small selections run in this process (aepipe.batch.engine.model_job), large ones on Ray."""
    check_job_options(batch_size, concurrency, num_gpus, engine)
    run = load_run(model)
    guard = StoreGuard(locate(str(codes)))  # before the metadata: a store replaced from here on is refused
    kind, attrs = read_metadata(codes)
    out = output_path(out, overwrite, (".zarr", ".parquet", ".npy", ""), inputs=(codes, model))
    if out.suffix == "":  # a folder of PNG images: only for image models, refused before Ray starts
        png_range(run, out)
    if attrs["model_fingerprint"] != run.fingerprint:
        raise AepipeError(f"{codes} was encoded by model {attrs['model_fingerprint']} ({attrs.get('model')}), "
                          f"not by {model} ({run.fingerprint})")
    if attrs.get("code_kind") == "bitstream":  # a compress model's store: entropy-coded images
        if out.suffix != "":
            _same_sizes(codes, kind, tuple(run.model.chw[1:]), out)
        src = _bitstream_rows(codes, kind, attrs, run.model, rows, ids)
        actor, kwargs = BitstreamDecoder, dict(run_dir=str(run.path), num_gpus=num_gpus)
    else:
        src, attrs = open_codes(codes, (kind, attrs), guard)
        src = select(src, rows, ids)
        actor, kwargs = Decoder, dict(run_dir=str(run.path), dtype=attrs["dtype"], scale=quant_scale(attrs),
                                      num_gpus=num_gpus)
    ds = model_job(src, actor, kwargs, batch_size, concurrency, num_gpus, engine, address,
                   part_rows=rows_per_part(out, 4 * run.schema.size, src.n_rows))
    write_rows(ds, out, src, run, provenance(run, str(codes), n_rows=src.n_rows, shape=list(run.schema.shape)))
    return src.n_rows


def _same_sizes(codes: str, kind: str, size: tuple[int, int], out: Path) -> None:
    """Arrays (.npy, Zarr, Parquet) hold rows of one shape: refuse a store of images at their own
    sizes unless every one has the model's."""
    other = [tuple(s) for s in image_sizes(codes, kind) if tuple(s) != size]
    if other:
        raise AepipeError(f"--out {out}: {codes} holds images at their own sizes ({other[0][0]}x{other[0][1]} "
                          f"among them), which rows of {size[0]}x{size[1]} cannot hold; decode to a folder of "
                          "PNG images (--out without a suffix)")


def _bitstream_rows(codes: str, kind: str, attrs: dict, model, rows: str | None, ids) -> BitstreamSource:
    """The selected images of a bitstream store, each bitstream checked as it is read."""
    shape = (model.latent_channels, model.factor, tuple(model.chw[1:]))
    src = BitstreamSource(codes, kind, attrs, shape)
    if rows:  # positions as in any store; select() checks and parses A:B
        picked = select(src, rows, None).positions
        return BitstreamSource(codes, kind, attrs, shape, (int(picked[0]), int(picked[-1]) + 1))
    if ids:  # only the named images' bitstreams are read (and checked)
        return select(src, None, ids)
    return src


def sample(model: str, n: int, out: str | Path, seed: int = 0, overwrite: bool = False) -> np.ndarray:
    """VAE only: n rows drawn from the prior and decoded, in the data's units, saved as .npy."""
    positive("n", n)
    run = load_run(model)
    out = output_path(out, overwrite, (".npy",), inputs=(model,))
    if not hasattr(run.model, "sample"):
        raise AepipeError(f'{model}: family "{run.meta["family"]}" cannot sample; only vae can')
    if n * run.schema.size * 4 > SAMPLE_MAX_BYTES:
        raise AepipeError(f"--n {n}: {n} rows of {run.schema.size} floats is {n * run.schema.size * 4 / 2**30:.1f} GiB; "
                          f"sample at most {SAMPLE_MAX_BYTES // (run.schema.size * 4):,} rows per call")
    x = run.normalizer.invert(run.model.sample(n, torch.Generator().manual_seed(seed)).numpy())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    try:
        with open(tmp, "wb") as f:  # written whole, then renamed: no half file at OUT
            np.save(f, x)
        tmp.replace(out)
    except OSError as e:  # a full or read-only disk
        tmp.unlink(missing_ok=True)
        raise AepipeError(f"--out {out}: cannot write it ({e.strerror}); the partial output was removed",
                          exit_code=1) from None
    return x
