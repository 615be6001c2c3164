"""The classical anchors of bench/rate_distortion.py and the figure that compares codecs.

JPEG, WebP and AVIF from Pillow, measured alike (file bytes x 8 / pixels; PSNR of the decoded file,
pooled over the images), and Bjontegaard's delta rate (BD-rate): how many more bits a codec needs
than an anchor at equal PSNR.

    cd bench && python -m doctest rd_anchors.py     # bd_rate's checks
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, features


def psnr(a, b) -> float:
    return float(10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def pooled(results):
    """(bpp, PSNR) over all held-out images together: total bits / total pixels (H x W, whatever the
    channels), PSNR of the MSE over every value. results: (bits, squared error, image array)."""
    bits = sum(b for b, _, _ in results)
    se = sum(s for _, s, _ in results)
    pixels = sum(im.shape[0] * im.shape[1] for _, _, im in results)
    values = sum(im.size for _, _, im in results)
    return bits / pixels, 10 * np.log10(255 ** 2 / (se / values))


# The classical anchors: (name, Pillow feature, Pillow format, qualities, save options). The
# qualities span about 0.1-2 bpp on these images; AVIF's bits grow faster with quality (q75 ~ 1.5 bpp).
ANCHORS = (
    ("JPEG", "jpg", "JPEG", (5, *range(10, 100, 10)), {}),
    ("WebP", "webp", "WEBP", (5, *range(10, 100, 10), 95), {"method": 6}),
    ("AVIF", "avif", "AVIF", (*range(10, 80, 10), 75), {}),
)


def codec_versions() -> str:
    """The library behind each anchor: a figure depends on the encoder's version."""
    import PIL

    libs = [f"{name} {features.version(feature)}" for name, feature, *_ in ANCHORS if features.check(feature)]
    return f"Pillow {PIL.__version__} ({', '.join(libs)})"


def file_bytes(im, fmt: str, quality: int, **options) -> bytes:
    """The file Pillow writes. Grayscale goes in as mode L; WebP, which has no grayscale, has Pillow make it RGB."""
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, fmt, quality=quality, **options)
    return buf.getvalue()


def decoded(data: bytes, like) -> np.ndarray:
    """The file decoded in the original's mode, float64: a grayscale original is compared on L even
    where the file decodes to RGB (WebP; Pillow's L from equal channels is the value itself)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("L" if like.ndim == 2 else "RGB"), dtype=np.float64)


def codec_curve(images, name: str, fmt: str, qualities, **options):
    """One anchor at each quality: file bytes x 8 / pixels and PSNR of the decoded files, pooled."""
    rows = []
    for q in qualities:
        res = []
        for im in images:
            data = file_bytes(im, fmt, q, **options)
            res.append((len(data) * 8, ((decoded(data, im) - im) ** 2).sum(), im))
        rows.append((f"{name} q{q}", *map(float, pooled(res))))
    return rows


def anchor_curves(images):
    """JPEG, WebP and AVIF rows; a format this Pillow was built without is left out, with a note."""
    rows = []
    for name, feature, fmt, qualities, options in ANCHORS:
        if not features.check(feature):
            print(f"note: this Pillow has no {name} support ('{feature}'); its curve is left out", flush=True)
            continue
        rows += codec_curve(images, name, fmt, qualities, **options)
    return rows


def bd_rate(anchor, test) -> float:
    """Bjontegaard delta rate of `test` against `anchor`, in %: how many more bits `test` needs at
    equal PSNR, averaged over the PSNR interval both curves cover (negative: fewer bits).

    anchor, test: (bpp, PSNR dB) points. As G. Bjontegaard, "Calculation of average PSNR differences
    between RD-curves", ITU-T VCEG-M33 (2001), and the bd_rate scripts that copy its spreadsheet
    (later common test conditions interpolate piecewise instead; this is the original): each curve's
    log(rate) is fitted as a cubic polynomial of PSNR (degree len - 1 where a curve has fewer than 4
    points), both fits are integrated over the overlap of the two PSNR ranges, and exp(mean difference) - 1 is the
    rate ratio. ValueError where a curve has under 2 points or the ranges do not overlap.

    >>> curve = [(0.25, 28.0), (0.5, 31.0), (1.0, 34.5), (2.0, 38.0)]
    >>> round(bd_rate(curve, curve), 6)
    0.0
    >>> round(bd_rate(curve, [(1.1 * r, p) for r, p in curve]), 6)  # 10 % more bits everywhere
    10.0
    >>> round(bd_rate([(1.1 * r, p) for r, p in curve], curve), 2)  # against it: 1 / 1.1 - 1
    -9.09
    >>> jpeg_like, better = [(0.2, 27.1), (0.45, 30.2), (0.9, 33.9), (1.7, 37.5)], [(0.15, 26.8), (0.33, 29.9),
    ...                                                                              (0.7, 33.1), (1.3, 36.0)]
    >>> round(bd_rate(jpeg_like, better), 2)  # as the bjontegaard package (PyPI 1.3.0) with method="cubic"
    -14.71
    """
    if min(len(anchor), len(test)) < 2:
        raise ValueError("BD-rate needs at least 2 points a curve (4 for the cubic fit)")
    lo = max(min(p for _, p in anchor), min(p for _, p in test))
    hi = min(max(p for _, p in anchor), max(p for _, p in test))
    if hi <= lo:
        raise ValueError("the curves share no PSNR range")

    def mean_log_rate(points):
        deg = min(3, len(points) - 1)
        fit = np.polyint(np.polyfit([p for _, p in points], np.log([r for r, _ in points]), deg))
        return (np.polyval(fit, hi) - np.polyval(fit, lo)) / (hi - lo)

    return float((np.exp(mean_log_rate(test) - mean_log_rate(anchor)) - 1) * 100)


def bracketing(points, lo: float, hi: float):
    """The points with PSNR in [lo, hi] plus the nearest one on each side, widened to 4 where there are
    more (a cubic needs 4). An anchor's ten qualities span 20 dB; one cubic through all of them would
    trade fit where the curves are compared for fit where they are not (VCEG-M33 fits 4 points a curve)."""
    pts = sorted(points, key=lambda bp: bp[1])
    first = next((i for i, (_, p) in enumerate(pts) if p >= lo), len(pts))  # the first at or above lo
    last = max((i for i, (_, p) in enumerate(pts) if p <= hi), default=-1)  # the last at or below hi
    a, b = max(first - 1, 0), min(last + 2, len(pts))
    while b - a < 4 and b - a < len(pts):
        a, b = max(a - 1, 0), min(b + 1, len(pts))
    return pts[a:b]


def bd_rate_text(anchor, test) -> str:
    """One BD-rate figure with the PSNR interval it averages over, and the fit where it is not the cubic."""
    if len(test) < 2:
        return f"needs 4 points (has {len(test)})"
    lo, hi = min(p for _, p in test), max(p for _, p in test)
    anchor = bracketing(anchor, lo, hi)
    try:
        value = bd_rate(anchor, test)
    except ValueError as e:
        return f"none: {e}"
    lo, hi = max(lo, min(p for _, p in anchor)), min(hi, max(p for _, p in anchor))
    short = [f"{who} {len(c)} points" for who, c in (("anchor", anchor), ("tested", test)) if len(c) < 4]
    fit = f" (lower-order fit: {', '.join(short)}; the standard cubic needs 4)" if short else ""
    return f"{value:+.1f} % over {lo:.2f}-{hi:.2f} dB{fit}"
