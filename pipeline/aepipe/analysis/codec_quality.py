"""`aepipe compare`: a codec's figures per image, as CompressAI's eval reports them. Each decoded
image against its original: PSNR (peak 255, over every channel of the 8-bit values), MS-SSIM
(metrics.ms_ssim; a colour image on its luma Y = 0.299 R + 0.587 G + 0.114 B) and, given the codes
store, its bitstream's bytes and bits per pixel.

Images are matched by their path with the suffix left off, as decode names them: photos/sub/b.jpg
against restored/sub/b.png. The original's path is its id in the codes store.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

import numpy as np

from aepipe.analysis.metrics import format_table, ms_ssim, psnr
from aepipe.errors import AepipeError
from aepipe.sources import IMAGES, Location, locate
from aepipe.sources.images import read_as_shown

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as JPEG's Y
COLUMNS = ("image", "height", "width", "bytes", "bpp", "psnr", "ms_ssim")


def compare(originals: str, decoded: str, codes: str | None = None) -> list[dict]:
    """One row per original (COLUMNS; bytes and bpp only with codes), sorted by name, then the
    mean row: bits over all pixels, PSNR and MS-SSIM averaged over the images."""
    pairs = matched(locate(originals), locate(decoded))
    nbytes = None
    if codes:
        from aepipe.stores.bitstreams import stored_bytes  # brings torch (aepipe.bitstream)

        nbytes = stored_bytes(codes)
    rows = []
    for name, a, b in pairs:
        if nbytes is not None and name not in nbytes:
            raise AepipeError(f'--codes {codes}: no bitstream with id "{name}" (was it encoded from {originals}?)')
        row = quality(name, *a, *b)
        if nbytes is not None:
            row.update(bytes=nbytes[name], bpp=8 * nbytes[name] / (row["height"] * row["width"]))
        rows.append(row)
    return rows + [mean_row(rows)]


def matched(originals: Location, decoded: Location) -> list[tuple[str, tuple, tuple]]:
    """(id, (Location, path) of the original, (Location, path) of its decoded image) for every
    original, sorted by id; an original with no decoded image is refused, naming it."""
    ours = _by_name(originals)
    if not ours:
        raise AepipeError(f"{originals.spec}: holds no images ({', '.join(IMAGES)})")
    if not originals.is_dir and not decoded.is_dir:  # two files: compared whatever their names
        return [(originals.relative(originals.path), (originals, originals.path), (decoded, decoded.path))]
    theirs = _by_name(decoded)
    pairs = []
    for key, (name, path) in sorted(ours.items(), key=lambda kv: kv[1][0]):
        if key not in theirs:
            raise AepipeError(f"{decoded.spec}: no decoded image for {_shown(originals, name)} (expected {key}.png)")
        pairs.append((name, (originals, path), (decoded, theirs[key][1])))
    return pairs


def _by_name(where: Location) -> dict[str, tuple[str, str]]:
    """{path without its suffix: (path relative to the folder, full path)} of a folder's images."""
    found = {}
    for path in where.files(*IMAGES):
        name = where.relative(path)
        key = str(PurePosixPath(name).with_suffix(""))
        if key in found:
            raise AepipeError(f"{where.spec}: {found[key][0]} and {name} have one name but for the suffix; "
                              "compare matches images by name without it")
        found[key] = (name, path)
    return found


def _shown(where: Location, name: str) -> str:
    """A file as the user would write it: the folder given joined with its path inside."""
    return f"{where.spec.rstrip('/')}/{name}" if where.is_dir else where.spec


def quality(name: str, where_a: Location, a_path: str, where_b: Location, b_path: str) -> dict:
    """PSNR and MS-SSIM of one decoded image against its original; sizes and colour must agree."""
    shown_a, shown_b = _shown(where_a, where_a.relative(a_path)), _shown(where_b, where_b.relative(b_path))
    a, b = read_as_shown(where_a, a_path, shown_a), read_as_shown(where_b, b_path, shown_b)
    if a.shape[:2] != b.shape[:2]:
        raise AepipeError(f"{shown_b} is {b.shape[1]}x{b.shape[0]} pixels, its original {shown_a} "
                          f"{a.shape[1]}x{a.shape[0]}: not the same image")
    if a.ndim != b.ndim:
        colour = {2: "grayscale", 3: "colour"}
        raise AepipeError(f"{shown_b} is {colour[b.ndim]}, its original {shown_a} {colour[a.ndim]}: "
                          "decode with a model of the originals' --mode")
    a, b = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(divide="ignore"):  # the same pixels: PSNR inf
        p = psnr(a, b, peak=255.0)
    s = ms_ssim(a @ LUMA, b @ LUMA) if a.ndim == 3 else ms_ssim(a, b)
    return {"image": name, "height": a.shape[0], "width": a.shape[1], "psnr": p, "ms_ssim": s}


def mean_row(rows: list[dict]) -> dict:
    """bpp as all bits over all pixels, bytes per image, PSNR and MS-SSIM as means over the images
    (MS-SSIM over those with one: none under 11 pixels on a side)."""
    pixels = sum(r["height"] * r["width"] for r in rows)
    row = {"image": "mean", "height": None, "width": None, "psnr": float(np.mean([r["psnr"] for r in rows]))}
    s = [r["ms_ssim"] for r in rows if not np.isnan(r["ms_ssim"])]
    row["ms_ssim"] = float(np.mean(s)) if s else float("nan")
    if rows and "bytes" in rows[0]:
        total = sum(r["bytes"] for r in rows)
        row.update(bytes=total / len(rows), bpp=8 * total / pixels)
    return row


def table(rows: list[dict]) -> str:
    """The rows as aepipe prints its tables (format_table)."""
    rate = "bytes" in rows[0]
    header = ["image", "size (WxH)", *(["bytes", "bpp"] if rate else []), "PSNR (dB)", "MS-SSIM"]
    cells = [[r["image"], f"{r['width']}x{r['height']}" if r["width"] else "",
              *([f"{r['bytes']:.0f}", f"{r['bpp']:.4f}"] if rate else []), f"{r['psnr']:.2f}", f"{r['ms_ssim']:.4f}"]
             for r in rows]
    return format_table(header, cells)


def write_csv(rows: list[dict], path: Path) -> None:
    """The rows as CSV, every number in full (the mean row's height and width empty)."""
    columns = [c for c in COLUMNS if c in rows[0]]
    try:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    except OSError as e:
        raise AepipeError(f"--csv {path}: cannot write it ({e.strerror})") from None
