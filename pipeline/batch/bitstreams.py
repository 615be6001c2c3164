"""The compress family's model jobs: images to one entropy-coded bitstream each (encode sends a
compress model's rows here) and bitstreams back to images (decode sends a bitstream store here).
The store itself is pipeline.stores.bitstreams.

    aepipe encode IMAGES --model RUN(compress) --out B.zarr|B.parquet
    aepipe decode B.zarr --model RUN --out OUT
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import AepipeError
from pipeline.batch.engine import ModelActor, model_job, provenance
from pipeline.batch.rows import select, write_rows
from pipeline.bitstream import BitstreamError, LatentCoder, crc32
from pipeline.stores.bitstreams import BitstreamSource


class BitstreamEncoder(ModelActor):
    """Images -> rounded latents -> one bitstream each (the coder's tables built once per actor)."""

    def __init__(self, run_dir: str, num_gpus: float = 0):
        super().__init__(run_dir, num_gpus)
        self.model.eval()
        self.coder = LatentCoder(self.model.density)

    def __call__(self, batch: dict) -> dict:
        x = torch.from_numpy(self.run.normalizer.apply(batch["x"])).to(self.device)
        with torch.inference_mode():
            y = torch.round(self.model.analysis(x)).cpu().numpy().astype(np.int64)
        streams = np.empty(len(y), dtype=object)
        for i, yi in enumerate(y):
            try:
                streams[i] = self.coder.encode(yi)
            except BitstreamError as e:
                raise AepipeError(f"image {batch['id'][i]}: {e}") from None
        return {"row": batch["row"], "id": batch["id"], "bitstream": streams,
                "latent_shape": np.tile(np.array(y.shape[1:], np.int32), (len(y), 1)),
                "nbytes": np.array([len(s) for s in streams], np.int64),
                "crc32": np.array([crc32(s) for s in streams], np.int64)}


class BitstreamDecoder(ModelActor):
    """Bitstreams (checked by the source) -> latents -> images in the data's units."""

    def __init__(self, run_dir: str, num_gpus: float = 0):
        super().__init__(run_dir, num_gpus)
        self.model.eval()
        self.coder = LatentCoder(self.model.density)
        self.shape = (self.model.latent_channels, *self.model.latent_hw)

    def __call__(self, batch: dict) -> dict:
        y = np.stack([self.coder.decode(s, self.shape) for s in batch["x"]])
        with torch.inference_mode():
            x_hat = self.model.decode_logits(torch.from_numpy(y).float().to(self.device).flatten(1))
        return {"row": batch["row"], "id": batch["id"], "x": self.run.normalizer.invert(x_hat.cpu().numpy())}


def decode(codes: str, kind: str, attrs: dict, run, out, rows: str | None, ids, batch_size: int,
           concurrency: int, num_gpus: float, engine: str, address: str | None) -> int:
    """decode.decode for a bitstream store: same output paths (write_rows), bitstreams checked first."""

    model = run.model
    src = BitstreamSource(codes, kind, attrs, (model.latent_channels, *model.latent_hw))
    if rows:  # positions as in any store; select() checks and parses A:B
        picked = select(src, rows, None).positions
        src = BitstreamSource(codes, kind, attrs, src.latent_shape, (int(picked[0]), int(picked[-1]) + 1))
    elif ids:  # only the named images' bitstreams are read (and checked)
        src = select(src, None, ids)
    ds = model_job(src, BitstreamDecoder, dict(run_dir=str(run.path), num_gpus=num_gpus), batch_size, concurrency,
                   num_gpus, engine, address)
    write_rows(ds, out, src, run, provenance(run, str(codes), n_rows=src.n_rows, shape=list(run.schema.shape)))
    return src.n_rows
