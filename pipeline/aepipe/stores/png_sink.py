"""PNG folders, for image models' decode and denoise: PngSink. Staging and commit:
aepipe.stores.staging.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np

from aepipe.errors import AepipeError
from aepipe.sources import bad_rows, skipped_rows
from aepipe.stores import JSON_MANIFEST
from aepipe.stores.staging import _Staged, _to_numpy


class PngSink(_Staged):
    """A folder of 8-bit PNG images, one per row, for image models (decode, denoise). A row's file is
    its id as a relative path (an image folder's ids are; others become `ID.png`), its image suffix
    changed to .png. Pixels: the data's units mapped from [lo, lo + span] (the training images'
    range, as the global normaliser keeps it) onto 0..255. The manifest lists every file."""

    def __init__(self, path, n_rows: int, metadata: dict, lo: float, span: float):
        super().__init__(path, n_rows)
        self.metadata, self.lo, self.span = metadata, lo, span

    def _create(self) -> None:
        if not self.remote:
            self.tmp.mkdir(parents=True)

    @staticmethod
    def name_for(row_id) -> str:
        name = str(row_id)
        stem, dot, suffix = name.rpartition(".")
        name = (stem if dot and suffix.lower() in ("png", "jpg", "jpeg") else name) + ".png"
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts:
            raise AepipeError(f'row id "{row_id}" cannot name a file inside the output folder')
        return name

    def _image(self, x: np.ndarray):
        from PIL import Image

        pixels = np.clip(np.rint((x - self.lo) / self.span * 255), 0, 255).astype(np.uint8)
        if pixels.ndim == 3:  # (C, H, W), channels first as the models take them
            pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
        return Image.fromarray(pixels)

    def write(self, blocks) -> dict:
        batch = _to_numpy(blocks)
        if not batch:
            return {"files": [], "skipped": []}
        good = ~bad_rows(batch["id"])
        names = []
        for row_id, x in zip(batch["id"][good], batch["x"][good]):
            name, image = self.name_for(row_id), self._image(x)
            if not self.remote:
                (self.tmp / name).parent.mkdir(parents=True, exist_ok=True)
            self._put_file(name, lambda p, fs, image=image: _save_png(image, p, fs))
            names.append(name)
        return {"files": names, "skipped": skipped_rows(batch["id"])}

    def on_write_complete(self, results: list) -> None:
        results = [r for r in results if r]
        files = [f for r in results for f in r["files"]]
        skipped = [s for r in results for s in r["skipped"]]
        twice = [f for f, n in collections.Counter(files).items() if n > 1]
        if twice:  # two ids named one file (a.jpg and a.png): one image would be lost
            raise AepipeError(f"two rows would both be written as {twice[0]} (ids that differ only in their "
                              "image suffix); write to .zarr or .parquet instead")
        self._check_count(len(files) + len(skipped))
        self._note_skipped(skipped)
        manifest = json.dumps({**self.metadata, "n_rows": len(files), "files": sorted(files),
                               **({"skipped": self.skipped} if skipped else {})}).encode()
        self._put_file(JSON_MANIFEST, lambda p, fs: _write_bytes(manifest, p, fs))
        self._commit()


def _save_png(image, path: str, fs) -> None:
    if fs is None:
        image.save(path, format="PNG")
    else:
        with fs.open_output_stream(path) as f:
            image.save(f, format="PNG")


def _write_bytes(data: bytes, path: str, fs) -> None:
    if fs is None:
        Path(path).write_bytes(data)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)
