"""Image folders: PNG, JPEG, GIF, TIFF and WebP files (searched recursively) or one image file, one row per image.

A row is the image converted to --mode (L: grayscale, shaped (H, W); RGB: (3, H, W), channels
first as the conv family takes them), resized to cover --image-size and centre-cropped to it,
with pixel values in [0, 255] like the digits' raw 0..16: the default "global" normaliser maps them
to [0, 1]. Images are read as a viewer shows them: turned by their EXIF orientation, 16-bit
grayscale scaled onto 0..255 (not clipped), CMYK and palettes converted, alpha dropped, and an
animated GIF or a multi-page TIFF by its first frame. Its id is the file's path relative to the folder. Every file is read through Location,
so a folder on S3 reads like a local one.

Mode and size are what training fits (`fitted()`): encoding reads new images the same way, but
for a codec (the compress family), which codes every image at its own size (`at_own_sizes()`): a
row is then the image as it is, of any size up to MAX_PIXELS, and a batch's "x" an object array of
them.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from aepipe.errors import AepipeError
from aepipe.sources import IMAGES, ROWS_PER_TASK, Location, Schema, Source, mark_bad

WHAT = "an image folder"
OPTIONS = ("mode", "image_size", "on_bad_row")
SUFFIXES = IMAGES  # as KINDS in __init__.py tests them
MODES = ("L", "RGB")
BAD_ROW = ("fail", "skip")
TASK_BYTES = 2 ** 26  # a read task holds at most ~64 MiB of decoded pixels
# at their own sizes, one image goes through the codec whole: its transforms hold ~200 bytes a pixel
# (64 channels at half resolution, with temporaries), so 4096 x 4096 pixels take ~3 GiB at most
MAX_PIXELS = 2 ** 24
OWN_STEP = 64  # at their own sizes, at most this many images a read step


def open(where: Location, id_column=None, fitted=None, mode=None, image_size=None, on_bad_row=None):
    if id_column:
        raise AepipeError(f"--id-column does not apply to {where.spec}: an image's id is its path in the folder")
    fitted = fitted or {}
    mode = mode or fitted.get("mode") or "L"
    if mode not in MODES:
        raise AepipeError(f'--mode "{mode}": choose one of {", ".join(MODES)}')
    on_bad_row = on_bad_row or "fail"
    if on_bad_row not in BAD_ROW:
        raise AepipeError(f'--on-bad-row "{on_bad_row}": choose one of {", ".join(BAD_ROW)}')
    size = image_size or fitted.get("image_size")
    if size is not None and min(size) < 1:
        raise AepipeError(f"--image-size {size[0]},{size[1]}: sizes are positive")
    return ImageSource(where, mode, tuple(size) if size else None, skip=on_bad_row == "skip")


class ImageSource(Source):
    id_kind = "path relative to the folder"  # what encode's provenance says the ids are

    def __init__(self, where: Location, mode: str, size: tuple[int, int] | None, skip: bool):
        self.spec, self.where, self.mode, self.skip = where.spec, where, mode, skip
        self.own_sizes = False  # see at_own_sizes
        self.paths = where.files(*SUFFIXES)  # sorted: the order fixes each image's global index
        self.n_rows = len(self.paths)
        self.size = size or (self._first_size() if self.paths else (1, 1))
        shape = self.size if mode == "L" else (3, *self.size)
        self.schema = Schema(("pixels",), tuple(shape), tabular=False)

    def fitted(self) -> dict:
        return {"mode": self.mode, "image_size": list(self.size)}

    def at_own_sizes(self) -> "ImageSource":
        """Read every image at its own size (a codec's input), not fitted to the model's: read()'s x
        is then an object array of float32 images, (H, W) or (3, H, W), each of at most MAX_PIXELS."""
        self.own_sizes = True
        return self

    def read(self, start, stop):
        if not self.own_sizes:
            return super().read(start, stop)
        return self._read(start, stop)

    def _name(self, path: str) -> str:
        """A file as the user would write it: DATA joined with its path inside the folder."""
        return f"{self.spec.rstrip('/')}/{self.where.relative(path)}" if self.where.is_dir else self.spec

    def _first_size(self) -> tuple[int, int]:
        """(H, W) of the first image whose header reads (with skip, a bad first file is passed over)."""
        for path in self.paths:
            try:
                with _open_image(self._bytes(path)) as img:
                    turned = img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)  # a quarter turn swaps H and W
                    return (img.width, img.height) if turned else (img.height, img.width)
            except Exception as e:
                if not self.skip:
                    raise AepipeError(f"{self._name(path)}: not a readable image ({_why(e)})") from None
        raise AepipeError(f"{self.spec}: none of its {self.n_rows} images is readable")

    def _bytes(self, path: str) -> bytes:
        with self.where.open(path) as f:  # whole file first: PIL reads lazily, after `with` would close it
            return f.read()

    def _pixels(self, path: str) -> np.ndarray:
        from PIL import Image, ImageOps

        with _open_image(self._bytes(path)) as img:
            img = _as_shown(img, self.mode)  # decodes every pixel: a truncated file fails here
        h, w = self.size
        if self.own_sizes and img.width * img.height > MAX_PIXELS:
            raise TooLarge(f"{img.width}x{img.height} pixels is more than the {MAX_PIXELS:,} an image may have "
                           "here (the codec takes each image whole): downscale or tile it first")
        if img.size != (w, h) and not self.own_sizes:  # cover (H, W), keeping the aspect ratio, then crop the centre
            img = ImageOps.fit(img, (w, h), method=Image.Resampling.BILINEAR)
        x = np.asarray(img, dtype=np.float32)
        if x.ndim == 2 and self.mode == "RGB":  # 16-bit grayscale, kept as floats: one plane three times
            return np.repeat(x[None], 3, axis=0)
        return x if self.mode == "L" else x.transpose(2, 0, 1)

    def _read(self, start, stop):
        ids = np.array([self.where.relative(p) for p in self.paths[start:stop]], dtype=object)
        if self.own_sizes:
            x = np.empty(stop - start, dtype=object)
            x[:] = [np.zeros(self.schema.shape, np.float32)] * len(x)  # what a skipped image leaves
        else:
            x = np.zeros((stop - start, *self.schema.shape), np.float32)
        for i, path in enumerate(self.paths[start:stop]):
            try:
                x[i] = self._pixels(path)
            except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... for bad files
                why = str(e) if isinstance(e, TooLarge) else f"not a readable image ({_why(e)})"
                if not self.skip:
                    raise AepipeError(f"{self._name(path)}: {why}") from None
                ids[i] = mark_bad(ids[i], why)  # keeps its place; sinks and training drop it
        return ids, x

    def ranges(self, rows_per_task: int = ROWS_PER_TASK) -> list[tuple[int, int]]:
        # big images: fewer per task, so no read task holds gigabytes of pixels (at their own sizes,
        # sized by the first image and at most OWN_STEP: the others' sizes are known only once read)
        pixels, most = self.schema.size, rows_per_task
        if self.own_sizes and self.paths:
            pixels = max(pixels, int(np.prod(self._first_size())) * (3 if self.mode == "RGB" else 1))
            most = min(most, OWN_STEP)
        return super().ranges(min(most, max(1, TASK_BYTES // (4 * pixels))))


ORIENTATION = 0x0112  # the EXIF tag saying how a camera held the picture
WIDE = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16-bit grayscale (PNG, TIFF): 0..65535


def _as_shown(img, mode: str):
    """The image upright, in `mode`, as a viewer shows it: 16-bit grayscale as floats on 0..255
    ("F": convert() would clip it at 255), a palette or alpha image through RGBA (its colours
    exact, no warning about transparency), the alpha then dropped."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in WIDE:
        return Image.fromarray(np.asarray(img, dtype=np.float32) * np.float32(255 / 65535), "F")
    if img.mode in ("P", "PA", "LA", "RGBa", "La") or "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert(mode)


def _open_image(data: bytes):
    """PIL's Image.open, with its decompression-bomb warning (a header claiming more than
    Image.MAX_IMAGE_PIXELS, about 89 million pixels) raised as the error it gives past twice that:
    a file claiming that many pixels is refused before they are decoded, whatever it really holds."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def read_as_shown(where: Location, path: str, name: str) -> np.ndarray:
    """One image file's pixels as encode reads them (upright, palettes and alpha resolved, 16-bit
    grayscale scaled onto 0..255), in the file's own colour: (H, W) for grayscale, (H, W, 3) for
    colour; float32. An unreadable file is one AepipeError naming it as `name`."""
    with where.open(path) as f:
        data = f.read()
    try:
        with _open_image(data) as img:
            gray = img.getbands()[0] in ("L", "1", "I", "F")  # with or without alpha; a palette counts as colour
            return np.asarray(_as_shown(img, "L" if gray else "RGB"), dtype=np.float32)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... for bad files
        raise AepipeError(f"{name}: not a readable image ({_why(e)})") from None


class TooLarge(ValueError):
    """An image bigger than MAX_PIXELS, read at its own size."""


def _why(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:160] or type(e).__name__
