"""The model actors: what one model call does to a batch of rows, for each job. Each loads its run
dir once (per Ray worker process, per GPU actor, or once in this process) and maps a batch dict of
numpy arrays {"row", "id", "x"} to the job's output columns, as Ray's batch-inference examples do.

    Encoder            rows -> codes (quantised to the store's dtype) [+ scores]      encode
    BitstreamEncoder   images -> one entropy-coded bitstream each (compress models)   encode
    Decoder            codes -> rows in the data's units                              decode
    BitstreamDecoder   bitstreams (checked by their store) -> images                  decode
    Reconstructor      rows -> denoised rows, or per-row (and per-feature) scores     denoise, score
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from aepipe.bitstream import BitstreamError, crc32
from aepipe.errors import AepipeError
from aepipe.run import load_run
from aepipe.scores import row_errors, row_scores
from aepipe.stores.quantize import dequantize, int8_scale, quantize


class ModelActor:
    """What every model job's actor shares: the run loaded once, the model on its device."""

    def __init__(self, run_dir: str, num_gpus: float = 0):
        torch.set_num_threads(held_cpus() or torch.get_num_threads())
        self.run = load_run(run_dir)
        self.device = torch.device("cuda" if num_gpus and torch.cuda.is_available() else "cpu")
        self.model = self.run.model.to(self.device)


def held_cpus() -> int:
    """CPUs this Ray actor holds, rounded, at least 1; 0 outside a Ray worker (in-process jobs keep
    torch's default). Ray only sets OMP_NUM_THREADS=1, so without this an actor holding 4 CPUs
    would run its model on one thread, and one holding a fraction would fight the read tasks."""
    if "ray" not in sys.modules:  # an in-process small job: importing Ray would cost it a second
        return 0
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return 0
    return max(1, round(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


class Encoder(ModelActor):
    """Holds the model (once per CPU worker process, or on a GPU actor); each call encodes one batch."""

    def __init__(self, run_dir: str, dtype: str, scores: bool, num_gpus: float = 0):
        super().__init__(run_dir, num_gpus)
        self.dtype, self.scores = dtype, scores
        self.scale = int8_scale(*self.run.code_range())

    def __call__(self, batch: dict) -> dict:
        x = torch.from_numpy(self.run.normalizer.apply(batch["x"])).to(self.device)
        with torch.inference_mode():
            z = self.model.encode(x)
            out = {"row": batch["row"], "id": batch["id"],
                   "code": quantize(z.cpu().numpy(), self.dtype, self.scale)}
            if self.scores:  # mean squared reconstruction error per row, in the model's units
                err = (self.model.decode(z) - x).pow(2).flatten(1).mean(1)
                out["score"] = err.cpu().numpy()
        return out


class BitstreamEncoder(ModelActor):
    """Images -> latents -> one bitstream each (the coder's tables built once per actor)."""

    def __init__(self, run_dir: str, num_gpus: float = 0):
        super().__init__(run_dir, num_gpus)
        self.model.eval()
        self.coder = self.model.latent_coder()

    def __call__(self, batch: dict) -> dict:
        x = torch.from_numpy(self.run.normalizer.apply(batch["x"])).to(self.device)
        with torch.inference_mode():
            y = self.model.analysis(x).cpu().numpy()  # unrounded: the coder quantises
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
        self.coder = self.model.latent_coder()
        self.shape = (self.model.latent_channels, *self.model.latent_hw)

    def __call__(self, batch: dict) -> dict:
        y = np.stack([self.coder.decode(s, self.shape) for s in batch["x"]])
        with torch.inference_mode():
            x_hat = self.model.decode_logits(torch.from_numpy(y).float().to(self.device).flatten(1))
        return {"row": batch["row"], "id": batch["id"], "x": self.run.normalizer.invert(x_hat.cpu().numpy())}


class Decoder(ModelActor):
    def __init__(self, run_dir: str, dtype: str, scale: tuple, num_gpus: float = 0):
        super().__init__(run_dir, num_gpus)
        self.dtype, self.scale = dtype, scale

    def __call__(self, batch: dict) -> dict:
        z = torch.from_numpy(dequantize(batch["x"], self.dtype, self.scale)).to(self.device)
        with torch.inference_mode():
            x_hat = self.model.decode(z).cpu().numpy()
        return {"row": batch["row"], "id": batch["id"], "x": self.run.normalizer.invert(x_hat)}


class Reconstructor(ModelActor):
    """Per batch: the denoised rows in the data's units (want="x"), or each row's score of a kind
    (want="score", see aepipe.scores)."""

    def __init__(self, run_dir: str, want: str, per_feature: bool = False, threshold: float | None = None,
                 num_gpus: float = 0, kind: str = "recon"):
        super().__init__(run_dir, num_gpus)
        self.want, self.per_feature, self.threshold, self.kind = want, per_feature, threshold, kind

    def __call__(self, batch: dict) -> dict:
        x = torch.from_numpy(self.run.normalizer.apply(batch["x"])).to(self.device)
        out = {"row": batch["row"], "id": batch["id"]}
        with torch.inference_mode():
            if self.want == "x":
                out["x"] = self.run.normalizer.invert(self.model.decode(self.model.encode(x)).cpu().numpy())
                return out
            density = self.run.density if self.kind != "recon" else None
            out["score"] = row_scores(self.model, x, density)[self.kind].cpu().numpy()
            if self.per_feature:  # each column's share of the reconstruction error
                out["err"] = row_errors(self.model, x).cpu().numpy()
        if self.threshold is not None:
            out["anomaly"] = out["score"] > self.threshold
        return out
