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

import numpy as np
import torch

from aepipe.bitstream import BitstreamError, crc32, unrecord
from aepipe.cluster.runtime import held_cpus
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
    """Images -> latents -> one bitstream each (the coder's tables built once per actor; it quantises).
    Images of the model's size come as one array and go through the model together; images at
    their own sizes (an object array of them: sources.images at_own_sizes) one at a time."""

    def __init__(self, run_dir: str, num_gpus: float = 0, refine: int = 0):
        super().__init__(run_dir, num_gpus)
        self.model.eval()
        self.coder = self.model.latent_coder()
        self.refine = refine  # encode --refine: steps of each image's own latent optimisation (Compress.refine)

    def _latents(self, x: np.ndarray):
        """(latent, unrounded: the coder quantises, (H, W)) of each image of x, a batch of one size (N, [C,] H, W)."""
        x = torch.from_numpy(self.run.normalizer.apply(x)).to(self.device)
        y = self.model.refine(x, self.refine).cpu().numpy()  # 0 steps: the analysis transform's latent
        return [(yi, tuple(x.shape[-2:])) for yi in y]

    def __call__(self, batch: dict) -> dict:
        x = batch["x"]
        coded = self._latents(x) if x.dtype != object else [self._latents(xi[None])[0] for xi in x]
        streams = np.empty(len(coded), dtype=object)
        for i, (yi, _) in enumerate(coded):
            try:
                streams[i] = self.coder.encode(yi)
            except BitstreamError as e:
                raise AepipeError(f"image {batch['id'][i]}: {e}") from None
        return {"row": batch["row"], "id": batch["id"], "bitstream": streams,
                "latent_shape": np.array([yi.shape for yi, _ in coded], np.int32).reshape(-1, 3),
                "image_size": np.array([hw for _, hw in coded], np.int32).reshape(-1, 2),
                "nbytes": np.array([len(s) for s in streams], np.int64),
                "crc32": np.array([crc32(s) for s in streams], np.int64)}


class BitstreamDecoder(ModelActor):
    """Records (bitstreams checked by their source, with their latent shapes and image sizes:
    aepipe.bitstream.record) -> latents -> images in the data's units: one array where every image
    has the model's size, else an object array of images at their own sizes. Images of one size go
    through the synthesis together."""

    def __init__(self, run_dir: str, num_gpus: float = 0):
        super().__init__(run_dir, num_gpus)
        self.model.eval()
        self.coder = self.model.latent_coder()

    def _images(self, records: list, size: tuple[int, int]) -> np.ndarray:
        """Records of images of one size -> those images, (N, [C,] H, W) in the data's units."""
        y = np.stack([self.coder.decode(stream, shape) for stream, shape, _ in records])
        with torch.inference_mode():
            x_hat = self.model.synthesis(torch.from_numpy(y).float().to(self.device), size)
        x_hat = x_hat[:, 0] if len(self.run.schema.shape) == 2 else x_hat  # grayscale rows are (H, W)
        return self.run.normalizer.invert(x_hat.cpu().numpy())

    def __call__(self, batch: dict) -> dict:
        records = [unrecord(r) for r in batch["x"]]
        by_size: dict[tuple, list[int]] = {}
        for i, (_, _, size) in enumerate(records):
            by_size.setdefault(size, []).append(i)
        images = [None] * len(records)
        for size, rows in by_size.items():
            for i, image in zip(rows, self._images([records[i] for i in rows], size)):
                images[i] = image
        if all(im.shape == tuple(self.run.schema.shape) for im in images):
            x = np.stack(images) if images else np.zeros((0, *self.run.schema.shape), np.float32)
        else:
            x = np.empty(len(images), dtype=object)
            for i, im in enumerate(images):  # one by one: numpy would stack images of one size into a block
                x[i] = im
        return {"row": batch["row"], "id": batch["id"], "x": x}


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
