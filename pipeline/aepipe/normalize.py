"""Normalisation fitted once at training time, the statistics pass behind it, the fixed
validation split, and the training data's fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from typing import TYPE_CHECKING

from aepipe.errors import AepipeError

if TYPE_CHECKING:
    from aepipe.sources import Schema, Source


def block_stats(batch: dict) -> dict:
    """Per-block partial sums, combined on the driver: one small row per block, never the data."""
    x = batch["x"].reshape(len(batch["x"]), -1).astype(np.float64)
    # a block can be empty (every row in it skipped as bad): min/max that any other block beats
    lo = x.min(0) if len(x) else np.full(x.shape[1], np.inf)
    hi = x.max(0) if len(x) else np.full(x.shape[1], -np.inf)
    return {"count": np.array([len(x)]), "sum": x.sum(0)[None], "sumsq": (x * x).sum(0)[None],
            "min": lo[None], "max": hi[None]}


def combine_stats(rows: list[dict]) -> dict:
    """rows: block_stats outputs, as batches or as the rows Dataset.take_all gives back."""
    get = lambda key: np.stack([np.reshape(r[key], -1) for r in rows])  # noqa: E731
    return {"count": int(get("count").sum()), "sum": get("sum").sum(0), "sumsq": get("sumsq").sum(0),
            "min": get("min").min(0), "max": get("max").max(0)}


NORMALIZERS = ("global", "feature", "standard", "none")


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """x_model = (x - shift) / scale, per feature (flattened) or one scalar for the whole row."""

    kind: str
    shift: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, kind: str, stats: dict) -> "Normalizer":
        if kind == "global":  # images: one range for all pixels keeps their relative contrast
            lo, hi = float(stats["min"].min()), float(stats["max"].max())
            return cls(kind, (lo,), (hi - lo or 1.0,))
        if kind == "feature":  # tables: every column to [0, 1] whatever its unit
            lo, hi = stats["min"], stats["max"]
            return cls(kind, tuple(lo.tolist()), tuple(np.where(hi > lo, hi - lo, 1.0).tolist()))
        if kind == "standard":
            mean = stats["sum"] / stats["count"]
            std = np.sqrt(np.maximum(stats["sumsq"] / stats["count"] - mean ** 2, 0))
            return cls(kind, tuple(mean.tolist()), tuple(np.where(std > 0, std, 1.0).tolist()))
        if kind == "none":
            return cls(kind, (0.0,), (1.0,))
        raise AepipeError(f'unknown normalisation "{kind}"; choose one of {", ".join(NORMALIZERS)}')

    def _arrays(self, shape):
        shift, scale = np.asarray(self.shift, np.float32), np.asarray(self.scale, np.float32)
        if shift.size > 1:
            shift, scale = shift.reshape(shape), scale.reshape(shape)
        return shift, scale

    def apply(self, x: np.ndarray) -> np.ndarray:
        shift, scale = self._arrays(x.shape[1:])
        out = np.subtract(x, shift, dtype=np.float32)  # one new array, divided in place: a model
        out /= scale  # job's task holds 100 MB blocks, and each temporary is another 100 MB
        return out

    def invert(self, y: np.ndarray) -> np.ndarray:
        shift, scale = self._arrays(y.shape[1:])
        return (y * scale + shift).astype(np.float32)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Normalizer":
        return cls(d["kind"], tuple(d["shift"]), tuple(d["scale"]))


def default_normalizer(schema: Schema) -> str:
    return "feature" if schema.tabular else "global"


def in_validation(rows: np.ndarray, fraction: float) -> np.ndarray:
    """A fixed pseudo-random split by global row index: same rows every run, no shuffle needed."""
    h = (rows.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2 ** 32)
    return h.astype(np.float64) / 2 ** 32 < fraction


def fingerprint(src: Source, stats: dict) -> str:
    """Identifies the training data by its schema, size and moments, without rereading it."""
    blob = json.dumps({"schema": src.schema.to_json(), "n": src.n_rows,
                       "sum": np.round(stats["sum"], 6).tolist(), "sumsq": np.round(stats["sumsq"], 6).tolist()})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
