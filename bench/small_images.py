"""Small image sets: `aepipe train` on a folder of a few hundred 16x16 grayscale patches of
scikit-image's photographs (camera, moon), held-out reconstruction on patches of another photograph
(coins), beside PCA with the same code size fitted on the same training rows.

Runs each family twice through the installed command: with the defaults (--init pca, the step
budget, cosine schedule) and with the settings before them (--init none --epochs 30 --patience 10
--schedule constant). Prints one table: held-out MSE and PSNR (dB, peak 1 after normalisation).

    .venv/bin/python bench/small_images.py                      # dense and conv, code 16
    .venv/bin/python bench/small_images.py --families dense,vae --code-dim 8
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from results import record  # bench/results.py: this script's section of bench/RESULTS.md

OLD = ["--init", "none", "--epochs", "30", "--patience", "10", "--schedule", "constant"]


def write_patches(folder: Path, names, size=16, step=2) -> Path:
    import skimage.data as skd
    from skimage.color import rgb2gray

    folder.mkdir(parents=True)
    for name in names:
        img = getattr(skd, name)()
        img = (rgb2gray(img) * 255 if img.ndim == 3 else img).astype(np.uint8)[::step, ::step]
        for i in range(0, img.shape[0] - size + 1, size):
            for j in range(0, img.shape[1] - size + 1, size):
                Image.fromarray(img[i:i + size, j:j + size]).save(folder / f"{name}-{i:03d}-{j:03d}.png")
    return folder


def held_out(run_dir: Path, train: Path, test: Path, k: int):
    """(model MSE, PCA MSE) on the test folder, in the run's normalised space."""
    import torch
    from sklearn.decomposition import PCA

    from aepipe.normalize import in_validation
    from aepipe.run import load_run
    from aepipe.sources import open_for_run, read_block

    run = load_run(run_dir)
    rows = lambda p: run.normalizer.apply(read_block(s := open_for_run(str(p), run.meta), 0, s.n_rows)["x"])  # noqa: E731
    xtr, xte = rows(train), rows(test)
    with torch.no_grad():
        t = torch.from_numpy(xte)
        mine = float((run.model.decode(run.model.encode(t)) - t).pow(2).mean())
    flat = xtr.reshape(len(xtr), -1)[~in_validation(np.arange(len(xtr)), 0.1)]
    p = PCA(k, random_state=0).fit(flat)
    te = xte.reshape(len(xte), -1)
    return mine, float(((p.inverse_transform(p.transform(te)) - te) ** 2).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="dense,conv")
    ap.add_argument("--code-dim", type=int, default=16)
    args = ap.parse_args()
    from aepipe.analysis.metrics import format_table

    aepipe = str(Path(sys.executable).with_name("aepipe"))
    psnr = lambda mse: 10 * np.log10(1 / mse)  # noqa: E731
    rows = []
    with tempfile.TemporaryDirectory() as d:
        train, test = write_patches(Path(d) / "train", ["camera", "moon"]), write_patches(Path(d) / "test", ["coins"])
        for family in args.families.split(","):
            for label, extra in (("before (none, 30 ep)", OLD), ("defaults", [])):
                out, t0 = Path(d) / f"{family}-{len(rows)}", time.time()
                subprocess.run([aepipe, "train", str(train), "--family", family, "--code-dim", str(args.code_dim),
                                "--out", str(out), *extra], check=True, capture_output=True)
                mine, pca = held_out(out, train, test, args.code_dim)
                rows.append([family, label, mine, psnr(mine), psnr(pca), f"{time.time() - t0:.0f}"])
                print(rows[-1], flush=True)
        sizes = f"{len(list(train.glob('*.png')))} training patches, {len(list(test.glob('*.png')))} held out"
    table = format_table(["family", "settings", "held-out MSE", "PSNR dB", f"PCA {args.code_dim} PSNR dB", "s"], rows)
    print(sizes + "\n" + table)
    record("small_images", sizes + "\n\n" + table)


if __name__ == "__main__":
    main()
