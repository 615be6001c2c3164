"""Real bitstreams for the compress family: the rounded latent, entropy-coded with constriction's ANS.

    model.latent_coder().encode(y (M, h, w) floats, unrounded) -> bytes   one image's bitstream
    model.latent_coder().decode(bytes, (M, h, w))              -> y_hat   the latent synthesis takes
    model.latent_coder().quantize(y)                           -> y_hat   the same, without coding

FactorizedCoder (--prior factorized) rounds y and codes it with LatentCoder(density), which codes
integers (M, h, w) and gives back exactly the same integers; HyperpriorCoder (--prior hyperprior)
and ContextCoder (--prior context) at the end of this module.

The probability tables come from the model's learned density (FactorizedDensity): for channel c,
P(k) = CDF_c(k + 0.5) - CDF_c(k - 0.5) at every integer k of one range [lo, hi] shared by all
channels, where lo and hi are the widest integers at which some channel's tail mass is still above
TAIL (1e-6). Encoder and decoder build the same table from the same weights, in float64 on the CPU.

Escape policy: a latent value outside [lo, hi] is coded as one of two escape symbols (lo - 1:
below, hi + 1: above; each carries its channel's tail mass as probability), followed by its distance
beyond the range, coded uniformly over 0..2^16 - 1. Nothing is clipped: the round trip is exact; a
distance of 2^16 or more (a broken model) is refused, not truncated.

Layout of one factorized bitstream: the ANS coder's 32-bit words, little-endian. The latent shape, the byte
length and a CRC32 are stored beside it (see encode.py), so a truncated or damaged bitstream is
refused before decoding: ANS decodes any words into some integers, silently.

The hyperprior's bitstream holds two streams: the length in bytes of z's (4 bytes, little-endian),
z's (a LatentCoder bitstream of the side latent's integers, (N, h/4, w/4) rounded up, from its
factorized density), then y's words: round(y - mean), each a QuantizedGaussian of zero mean and its
own scale over -RANGE..RANGE, means and scales computed by h_s from the decoded z in float64 on
the CPU, on both sides; values outside the range take the escapes above (edge symbols +-(RANGE + 1)).

The spatial context's bitstream holds two streams too: the length in bytes of pass 0's (4 bytes,
little-endian), pass 0's (a LatentCoder bitstream of the rounded latent at every fourth row and
column, (M, n) in row-major order), then the other passes' words, pass 1 first: each value a
QuantizedLaplace over -RANGE - 1..RANGE + 1 of the mean and scale its decoded neighbours give
(aepipe/models/context.py), from sums of the decoded integers (exact in any order) in float64 on
the CPU on both sides, each scale rounded up to a level of LAPLACE_SCALES; escapes as above, each
pass's after its values.
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
# the hyperprior's Gaussian range: each of its 2 * RANGE + 3 symbols keeps at least 2^-24 (constriction's
# leaky quantiser), which costs under 2e-4 bits a value; wider than any residual a sane model leaves
RANGE = 1023
# The hyperprior's scales as the coder takes them: each rounded up to one of these 64 levels
# (CompressAI's scale table, 0.11 to 256, 13 % apart). Encoder and decoder compute the scales
# apart (other threads, other CPUs: float64's last bits may differ), and ANS must see the same
# probabilities on both sides: only a scale within a rounding error of a level could differ now.
SCALE_TABLE = np.exp(np.linspace(np.log(0.11), np.log(256), 64))
# The spatial context's Laplace scales, likewise: from its own bound (models/context.py's
# SCALE_BOUND) to 256, 72 levels 13 % apart
LAPLACE_SCALES = np.exp(np.linspace(np.log(0.03), np.log(256), 72))


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


def escaped(y: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(y clipped to lo - 1..hi + 1, the escape symbols, and each escaped value's distance beyond the
    range, int32, in row-major order): the escape policy above; a distance of 2^16 or more is refused."""
    out = (y < lo) | (y > hi)
    far = np.where(y < lo, lo - 1 - y, y - hi - 1)[out]
    if far.size and far.max() >= 2 ** ESCAPE_BITS:
        raise BitstreamError(f"a latent value lies {int(far.max())} beyond the coder's range {lo}..{hi}")
    return np.clip(y, lo - 1, hi + 1), far.astype(np.int32)


def unescaped(clipped: np.ndarray, lo: int, hi: int, distances) -> np.ndarray:
    """escaped's inverse: distances(k) decodes the k escaped values' distances, in the order encoded."""
    y = clipped.astype(np.int64)
    below, above = y < lo, y > hi
    k = int(below.sum() + above.sum())
    if k:
        far = np.asarray(distances(k), dtype=np.int64)
        esc = below | above
        y[esc] = np.where(below[esc], lo - 1 - far, hi + 1 + far)
    return y


def rounded_up(scales: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Each scale rounded up to one of the coder's fixed levels (the widest where beyond them): the
    probabilities both sides see, whatever the last bits of their float arithmetic."""
    return levels[np.searchsorted(levels, scales).clip(0, len(levels) - 1)]


def two_streams(first: bytes, coder) -> bytes:
    """One bitstream of two: the first's length in bytes (4, little-endian), the first, then the
    ANS coder's words (the hyperprior's z then y; the context's pass 0 then the others)."""
    return len(first).to_bytes(4, "little") + first + coder.get_compressed().astype("<u4").tobytes()


def split_streams(data: bytes, first: str) -> tuple[bytes, np.ndarray]:
    """two_streams' inverse: (the first stream's bytes, the words after it), refused where the
    length does not fit or the rest is not whole 32-bit words."""
    n = int.from_bytes(data[:4], "little")
    if len(data) < 4 or n > len(data) - 4 or (len(data) - 4 - n) % 4:
        raise BitstreamError(f"{len(data)} bytes is not {first} and whole 32-bit words")
    return data[4:4 + n], np.frombuffer(data[4 + n:], "<u4").astype(np.uint32)


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
        clipped, far = escaped(y, self.lo, self.hi)
        symbols = (clipped - (self.lo - 1)).astype(np.int32)
        coder = self.cs.stream.stack.AnsCoder()
        # ANS is a stack: what is encoded last is decoded first, so escapes go in before the channels,
        # and the channels in reverse, for the decoder to read channel 0 first and escapes last
        if far.size:
            coder.encode_reverse(far, self.escape)
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
        y = unescaped(symbols + (self.lo - 1), self.lo, self.hi, lambda k: coder.decode(self.escape, k))
        if not coder.is_empty():
            raise BitstreamError("words are left after the last symbol")
        return y.reshape(shape)


class FactorizedCoder:
    """The factorized prior's latent_coder(): the latent rounded, coded by LatentCoder."""

    def __init__(self, density):
        self.coder = LatentCoder(density)

    def quantize(self, y: np.ndarray) -> np.ndarray:
        """The latent decode gives back for y: round(y), float32."""
        return np.round(y).astype(np.float32)

    def encode(self, y: np.ndarray) -> bytes:
        return self.coder.encode(np.round(y).astype(np.int64))

    def decode(self, data: bytes, shape) -> np.ndarray:
        return self.coder.decode(data, shape).astype(np.float32)


class HyperpriorCoder:
    """The hyperprior's latent_coder() (see the module's doc): z = round(h_a(y)) coded by a
    LatentCoder of z's density, then round(y - mean) by QuantizedGaussian(-RANGE - 1, RANGE + 1)
    with zero means and the scales, both from h_s(z) (the edge symbols are the escapes)."""

    def __init__(self, hyper):
        import constriction

        self.cs = constriction
        # float64 on the CPU, a copy frozen at these weights: encoder and decoder compute the same
        # means and scales from the same z (ANS decodes any mismatch into wrong values, silently)
        self.hyper = copy.deepcopy(hyper).cpu().double().eval()
        self.z_coder = LatentCoder(hyper.density)
        self.gaussian = constriction.stream.model.QuantizedGaussian(-RANGE - 1, RANGE + 1)
        self.escape = constriction.stream.model.Uniform(2 ** ESCAPE_BITS)

    @torch.no_grad()
    def side(self, y: np.ndarray) -> np.ndarray:  # (M, h, w) -> z's integers (N, h / 4, w / 4)
        z = self.hyper.side(torch.from_numpy(np.asarray(y, np.float64))[None])[0]
        return torch.round(z).numpy().astype(np.int64)

    @torch.no_grad()
    def params(self, z: np.ndarray, hw) -> tuple[np.ndarray, np.ndarray]:
        """y's means (float64) and scales (levels of SCALE_TABLE), computed on one thread: a
        convolution's sums in one order wherever it runs."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            means, scales = self.hyper.params(torch.from_numpy(z.astype(np.float64))[None], hw)
        finally:
            torch.set_num_threads(threads)
        if not torch.isfinite(scales).all():
            raise BitstreamError("the hyperprior predicts an infinite scale: a broken model")
        return means[0].numpy(), rounded_up(scales[0].numpy(), SCALE_TABLE)

    def quantize(self, y: np.ndarray) -> np.ndarray:
        """The latent decode gives back for y: round(y - mean) + mean, float32."""
        means, _ = self.params(self.side(y), y.shape[1:])
        return (np.round(y - means) + means).astype(np.float32)

    def encode(self, y: np.ndarray) -> bytes:
        z = self.side(y)
        z_bytes = self.z_coder.encode(z)
        means, scales = self.params(z, y.shape[1:])
        clipped, far = escaped(np.round(y - means).astype(np.int64).ravel(), -RANGE, RANGE)
        coder = self.cs.stream.stack.AnsCoder()
        if far.size:  # decoded last
            coder.encode_reverse(far, self.escape)
        coder.encode_reverse(clipped.astype(np.int32), self.gaussian, np.zeros(clipped.size), scales.ravel())
        return two_streams(z_bytes, coder)

    def decode(self, data: bytes, shape) -> np.ndarray:
        m, hw = shape[0], tuple(shape[1:])
        z_bytes, words = split_streams(data, "a side stream")
        if m != self.hyper.log_scale.shape[0]:
            raise BitstreamError(f"latent has {m} channels, the model {self.hyper.log_scale.shape[0]}")
        z = self.z_coder.decode(z_bytes, self.hyper.z_shape(hw))
        means, scales = self.params(z, hw)
        coder = self.cs.stream.stack.AnsCoder(words)
        clipped = coder.decode(self.gaussian, np.zeros(means.size), scales.ravel())
        q = unescaped(clipped, -RANGE, RANGE, lambda k: coder.decode(self.escape, k))
        if not coder.is_empty():
            raise BitstreamError("words are left after the last symbol")
        return (q.reshape(shape) + means).astype(np.float32)


class ContextCoder:
    """The spatial context's latent_coder() (--prior context; see the module's doc and
    aepipe/models/context.py): round(y), coded in five passes. Pass 0's values by a LatentCoder of
    the factorized density; each value of the others by QuantizedLaplace(-RANGE - 1, RANGE + 1)
    of the mean and scale its decoded neighbours give, computed in float64 on both sides, scales
    rounded up to LAPLACE_SCALES' levels (the edge symbols are the escapes)."""

    def __init__(self, density, context):
        import constriction

        self.cs = constriction
        self.first = LatentCoder(density)
        self.context = copy.deepcopy(context).cpu().double().eval()  # frozen at these weights, as the hyperprior's
        self.laplace = constriction.stream.model.QuantizedLaplace(-RANGE - 1, RANGE + 1)
        self.escape = constriction.stream.model.Uniform(2 ** ESCAPE_BITS)

    def quantize(self, y: np.ndarray) -> np.ndarray:
        """The latent decode gives back for y: round(y), float32."""
        return np.round(y).astype(np.float32)

    @torch.no_grad()
    def params(self, q: np.ndarray, masks: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Means (float64) and scales (levels of LAPLACE_SCALES) of pass k's values, in the order
        q[:, masks[k]] lists them, from the values of q (M, h, w) that passes 0..k-1 decoded: sums of
        integers (exact in any order) then elementwise functions, in float64."""
        means, scales = self.context.params_at(torch.from_numpy(q.astype(np.float64)), masks[:k].any(0), masks[k], k)
        means, scales = means.numpy().ravel(), scales.numpy().ravel()
        if not np.isfinite(scales).all():
            raise BitstreamError("the context predicts an infinite scale: a broken model")
        return means, rounded_up(scales, LAPLACE_SCALES)

    def encode(self, y: np.ndarray) -> bytes:
        from aepipe.models.context import PASSES, pass_masks

        q = np.round(y).astype(np.int64)
        masks = pass_masks(*q.shape[1:])
        first = self.first.encode(q[:, masks[0].numpy()])
        coder = self.cs.stream.stack.AnsCoder()
        # a stack: the last pass goes in first, each pass's escapes before its values, so the decoder
        # reads pass 1's values, its escapes, then pass 2's (whose means need pass 1's values), ...
        for k in reversed(range(1, PASSES)):
            means, scales = self.params(q, masks, k)
            clipped, far = escaped(q[:, masks[k].numpy()].ravel(), -RANGE, RANGE)
            if far.size:
                coder.encode_reverse(far, self.escape)
            coder.encode_reverse(clipped.astype(np.int32), self.laplace, means, scales)
        return two_streams(first, coder)

    def decode(self, data: bytes, shape) -> np.ndarray:
        from aepipe.models.context import PASSES, pass_masks

        m, hw = shape[0], tuple(shape[1:])
        first, words = split_streams(data, "a first pass")
        if m != self.context.log_scale.shape[1]:
            raise BitstreamError(f"latent has {m} channels, the model {self.context.log_scale.shape[1]}")
        masks = pass_masks(*hw)
        q = np.zeros(shape, np.int64)
        q[:, masks[0].numpy()] = self.first.decode(first, (m, int(masks[0].sum()))).reshape(m, -1)
        coder = self.cs.stream.stack.AnsCoder(words)
        for k in range(1, PASSES):
            means, scales = self.params(q, masks, k)
            clipped = coder.decode(self.laplace, means, scales)
            q[:, masks[k].numpy()] = unescaped(clipped, -RANGE, RANGE,
                                               lambda n: coder.decode(self.escape, n)).reshape(m, -1)
        if not coder.is_empty():
            raise BitstreamError("words are left after the last symbol")
        return q.astype(np.float32)
