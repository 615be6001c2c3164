"""Real bitstreams for the compress family: the rounded latent, entropy-coded with constriction's ANS.

    LatentCoder(model).encode(y_hat (M, h, w) ints) -> bytes      one image's bitstream
    LatentCoder(model).decode(bytes, (M, h, w))     -> y_hat      exactly the same integers

The probability tables come from the model's learned density (FactorizedDensity): for channel c,
P(k) = CDF_c(k + 0.5) - CDF_c(k - 0.5) at every integer k of one range [lo, hi] shared by all
channels, where lo and hi are the widest integers at which some channel's tail mass is still above
TAIL (1e-6). Encoder and decoder build the same table from the same weights, in float64 on the CPU.

Escape policy: a latent value outside [lo, hi] is coded as one of two escape symbols (lo - 1:
below, hi + 1: above; each carries its channel's tail mass as probability), followed by its distance
beyond the range, coded uniformly over 0..2^16 - 1. Nothing is clipped: the round trip is exact; a
distance of 2^16 or more (a broken model) is refused, not truncated.

Layout of one bitstream: the ANS coder's 32-bit words, little-endian. The latent shape, the byte
length and a CRC32 are stored beside it (see encode.py), so a truncated or damaged bitstream is
refused before decoding: ANS decodes any words into some integers, silently.
"""

from __future__ import annotations

import copy
import struct
import zlib

import numpy as np
import torch

TAIL = 1e-6  # the coded range ends where no channel has more than this mass beyond it
SEARCH = 1024  # the range is looked for within -SEARCH..SEARCH
ESCAPE_BITS = 16  # an escaped value's distance beyond the range, coded uniformly in this many bits


class BitstreamError(ValueError):
    """A bitstream that fails its length or CRC check, or a latent the coder cannot represent."""


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


# One image as a decode task receives it: its latent (M, h, w) and image (H, W) sizes ahead of its
# bitstream, in one bytes object (which Ray Data carries as it is). Never stored: a store keeps them
# as columns (aepipe.stores.bitstreams).
RECORD = struct.Struct("<5i")


def record(stream: bytes, latent_shape, image_size) -> bytes:
    """One image's bitstream with its latent shape and image size, as a decode task takes it."""
    return RECORD.pack(*latent_shape, *image_size) + stream


def unrecord(data: bytes) -> tuple[bytes, tuple[int, int, int], tuple[int, int]]:
    """(bitstream, latent shape, image size) of a record."""
    v = RECORD.unpack_from(data)
    return data[RECORD.size:], v[:3], v[3:]


@torch.no_grad()
def probability_table(density) -> tuple[int, np.ndarray]:
    """(lo, P) with P (M, hi - lo + 3): column 0 the mass below lo, the last the mass above hi,
    column j in between the mass of the integer lo + j - 1, per channel; rows sum to 1."""
    m = density.matrices[0].shape[0]
    k = torch.arange(-SEARCH, SEARCH + 1, dtype=torch.float64)
    dens = copy.deepcopy(density).cpu().double()  # float64 on the CPU: the same table on every run
    edges = torch.sigmoid(dens.logits_cdf(torch.cat([k - 0.5, k[-1:] + 0.5]).expand(m, 1, -1)))[:, 0]  # (M, n+1)
    below, above = edges[:, :-1], 1 - edges[:, 1:]  # mass below k - 0.5, above k + 0.5
    lo = int(k[(below > TAIL).any(0)].min()) if (below > TAIL).any() else -SEARCH
    hi = int(k[(above > TAIL).any(0)].max()) if (above > TAIL).any() else SEARCH
    lo, hi = max(lo - 1, -SEARCH), min(hi + 1, SEARCH)  # the first integers with tails under TAIL
    i, j = lo + SEARCH, hi + SEARCH
    inner = (edges[:, i + 1:j + 2] - edges[:, i:j + 1]).clamp_min(0)
    table = torch.cat([edges[:, i:i + 1], inner, 1 - edges[:, j + 1:j + 2]], 1).clamp_min(0)
    return lo, (table / table.sum(1, keepdim=True)).numpy()


class LatentCoder:
    """Encodes and decodes one image's latent (M, h, w) of integers with per-channel Categorical
    models (constriction, perfect=False: every symbol keeps a nonzero probability)."""

    def __init__(self, density):
        import constriction

        self.cs = constriction
        self.lo, self.table = probability_table(density)
        self.hi = self.lo + self.table.shape[1] - 3
        self.models = [constriction.stream.model.Categorical(p, perfect=False) for p in self.table]
        self.escape = constriction.stream.model.Uniform(2 ** ESCAPE_BITS)

    def encode(self, y: np.ndarray) -> bytes:
        y = np.asarray(y, dtype=np.int64).reshape(len(self.models), -1)
        symbols = (np.clip(y, self.lo - 1, self.hi + 1) - (self.lo - 1)).astype(np.int32)
        far = np.where(y < self.lo, self.lo - 1 - y, y - self.hi - 1)[(y < self.lo) | (y > self.hi)]
        if far.size and far.max() >= 2 ** ESCAPE_BITS:
            raise BitstreamError(f"a latent value lies {int(far.max())} beyond the coder's range {self.lo}..{self.hi}")
        coder = self.cs.stream.stack.AnsCoder()
        # ANS is a stack: what is encoded last is decoded first, so escapes go in before the channels,
        # and the channels in reverse, for the decoder to read channel 0 first and escapes last
        if far.size:
            coder.encode_reverse(far.astype(np.int32), self.escape)
        for c in reversed(range(len(self.models))):
            coder.encode_reverse(symbols[c], self.models[c])
        return coder.get_compressed().astype("<u4").tobytes()

    def decode(self, data: bytes, shape) -> np.ndarray:
        m, n = shape[0], int(np.prod(shape[1:]))
        if m != len(self.models):
            raise BitstreamError(f"latent has {m} channels, the model {len(self.models)}")
        if len(data) % 4:
            raise BitstreamError(f"{len(data)} bytes is not a whole number of 32-bit words")
        coder = self.cs.stream.stack.AnsCoder(np.frombuffer(data, "<u4").astype(np.uint32))
        symbols = np.stack([coder.decode(self.models[c], n) for c in range(m)]).astype(np.int64)
        y = symbols + (self.lo - 1)
        below, above = symbols == 0, symbols == self.table.shape[1] - 1
        k = int(below.sum() + above.sum())
        if k:  # escapes in the order they were encoded: row-major over (channel, position)
            far = coder.decode(self.escape, k).astype(np.int64)
            esc = below | above
            y[esc] = np.where(below[esc], self.lo - 1 - far, self.hi + 1 + far)
        if not coder.is_empty():
            raise BitstreamError("words are left after the last symbol")
        return y.reshape(shape)
