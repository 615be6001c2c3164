"""How codes are stored: their dtypes, and int8's one affine map per store (CF's scale_factor and
add_offset, which xarray and netCDF tools apply by themselves)."""

from __future__ import annotations

import numpy as np

DTYPES = ("float32", "float16", "int8")


def int8_scale(lo: np.ndarray, hi: np.ndarray) -> tuple[float, float]:
    """int8 codes: one affine map for the whole store, the training codes' overall [min lo, max hi]
    onto [-127, 127], as CF's (scale_factor, add_offset): code = q * scale_factor + add_offset. One
    number each, because that is what CF readers (xarray, netCDF tools) apply by themselves; against
    a scale per dimension it cost 0.0004 dB on digits (dense 16: 19.3849 -> 19.3845 dB)."""
    lo, hi = float(np.min(lo)), float(np.max(hi))
    scale = (hi - lo) / 254 if hi > lo else 1 / 254
    return scale, lo + 127 * scale


def quantize(z: np.ndarray, dtype: str, scale: tuple) -> np.ndarray:
    """Codes as stored: int8 through `scale` (scale_factor, add_offset); float16 and float32 cast."""
    if dtype == "int8":
        sf, ao = (np.asarray(v, np.float64) for v in scale)
        return np.clip(np.round((z - ao) / sf), -127, 127).astype(np.int8)
    return z.astype(dtype)


def dequantize(q: np.ndarray, dtype: str, scale: tuple) -> np.ndarray:
    """Stored codes as float32: int8 as CF readers decode scale_factor and add_offset (xarray: in
    float64), rounded to float32."""
    if dtype == "int8":
        sf, ao = (np.asarray(v, np.float64) for v in scale)
        return (q.astype(np.float64) * sf + ao).astype(np.float32)
    return q.astype(np.float32)


def quant_scale(attrs: dict) -> tuple:
    """A store's int8 (scale_factor, add_offset); a placeholder for float stores. Stores written before
    the one-scale layout hold per-dimension ranges (lo, hi): the same map, one per dimension."""
    q = attrs.get("quantization") or {"scale_factor": 1.0, "add_offset": 0.0}
    if "scale_factor" in q:
        return q["scale_factor"], q["add_offset"]
    lo, hi = np.asarray(q["lo"], np.float64), np.asarray(q["hi"], np.float64)
    sf = np.where(hi > lo, hi - lo, 1.0) / 254
    return sf, lo + 127 * sf
