"""Learned compression (the compress family) against JPEG, WebP, AVIF and PCA on held-out photographs.

The eleven photographs that builtin:photos cuts up (scikit-image's skimage.data: camera, astronaut, coffee,
chelsea, rocket, horse, coins, moon, grass, gravel, brick), converted to grayscale as gray() below
does (ITU-R 601 luma, 0..255), are split by name: the model trains on random crops of TRAIN and is
scored on the whole images of HELD_OUT (cropped to a multiple of 8). Every figure is measured on
the held-out images only, pooled over them (total bits / total pixels; PSNR of the MSE over every value):

  compress   bits per pixel = bytes of the real bitstreams (aepipe.bitstream, constriction ANS)
             x 8 / pixels; PSNR of the decoded image rounded to 0..255
  DCT floor  the model before training (--init pca): JPEG's 8x8 block DCT, the uniform step --lmbda
             sets, and its density fitted alone (steps / 5 of them); real bitstreams as above
  JPEG       Pillow (libjpeg), qualities 5, 10..90
  WebP       Pillow (libwebp), method=6 (its slowest and best), qualities 5, 10..90, 95
  AVIF       Pillow (libavif with its default AV1 encoder, speed 6), qualities 10..70, 75: about
             0.1-1.5 bpp on these images
             The three anchors: file bytes x 8 / pixels, PSNR of the decoded file. Grayscale: JPEG and
             AVIF code the L image itself (AVIF as monochrome 4:0:0); WebP has no grayscale mode, so
             Pillow codes it as RGB and the decode is taken back to L (equal channels give the value
             itself). Colour (--rgb): Pillow's defaults (4:2:0), PSNR over the three channels. An anchor
             this Pillow was built without is left out with a printed note.
  PCA 8x8    PCA fitted on TRAIN's 8x8 blocks, k = 1, 2, 4 float16 coefficients a block (grayscale only)

Below the pooled table: the compress model's bytes, bpp and PSNR on each held-out image, and the
BD-rate (Bjontegaard delta rate, bd_rate below) of the compress points and of the DCT floor's against
JPEG, WebP and AVIF: how many more bits (in %) they need than the anchor at equal PSNR, averaged over
the PSNR range both cover; negative = fewer bits than the anchor.

With --init pca (the default) each lambda trains from its own DCT floor; with --init none
(CompressAI's transforms from random weights) lambdas are trained in increasing order, each starting
from the previous one's weights, the first for twice the steps. --anchors-only measures and records
the anchors alone (JPEG, WebP, AVIF, PCA) without training, in seconds, as their own section of
bench/RESULTS.md (rate_distortion_anchors[_rgb]), so a full run's section is kept. --prior picks
the latent's entropy model as aepipe train's does, each recorded as its own section: context (the
default: a sixteenth of the latent by the per-channel density, the rest priced by its decoded
neighbours) as rate_distortion_context[_rgb], factorized as rate_distortion[_rgb], hyperprior (its
bpp counts the side information's bytes too: one bitstream holds both) as
rate_distortion_hyperprior[_rgb]. --refine STEPS codes every held-out image a second time with its
latent refined for STEPS steps (aepipe encode --refine: each image's own bits + lambda x distortion
optimised, the model fixed), the "refined" rows and their BD-rates beside the plain ones, recorded as
..._refine; --models DIR takes the weights an earlier run saved in its --out instead of training.

    .venv/bin/python bench/rate_distortion.py --out runs/rd     # about 20 min on 2 quiet cores
    .venv/bin/python bench/rate_distortion.py --lmbdas 0.005 --steps 200 --out /tmp/rd  # a smoke run
    .venv/bin/python bench/rate_distortion.py --prior hyperprior --out runs/rd_hp  # the hyperprior
    .venv/bin/python bench/rate_distortion.py --prior factorized --out runs/rd_f   # the factorized prior
    .venv/bin/python bench/rate_distortion.py --anchors-only --rgb --out /tmp/rd        # seconds
    .venv/bin/python bench/rate_distortion.py --refine 200 --models runs/rd_ctx --out runs/rd_ctx_refine
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rd_anchors import ANCHORS, anchor_curves, bd_rate_text, codec_versions, pooled
from results import record  # bench/results.py: this script's section of bench/RESULTS.md

from aepipe.models import ModelConfig, build_model

TRAIN = ["astronaut", "chelsea", "rocket", "horse", "moon", "grass", "brick"]
HELD_OUT = ["camera", "coffee", "coins", "gravel"]
# --rgb: every colour photograph scikit-image ships without a download (colorwheel and logo are
# drawings), coffee held out as in grayscale
TRAIN_RGB = ["astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
HELD_OUT_RGB = ["coffee"]
# crops are drawn with each image weighted by its area, up to rocket's (427 x 640, the largest of
# the everyday photographs): retina's 1411 x 1411 would otherwise take half of the colour crops
MOST_AREA = 427 * 640


def rgb(name: str) -> np.ndarray:
    """uint8 (H, W, 3), cropped to a multiple of 8."""
    import skimage.data as skd

    a = getattr(skd, name)()
    return a[:a.shape[0] // 8 * 8, :a.shape[1] // 8 * 8]


def gray(name: str) -> np.ndarray:
    """uint8 grayscale (0.299 R + 0.587 G + 0.114 B; [0, 1] images scaled to 0..255), cropped to a multiple of 8."""
    import skimage.data as skd

    a = getattr(skd, name)()
    if a.ndim == 3:
        a = 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
    a = a.astype(np.float64)
    if a.max() <= 1.0:
        a = a * 255
    h, w = (a.shape[0] // 8) * 8, (a.shape[1] // 8) * 8
    return np.clip(a[:h, :w], 0, 255).astype(np.uint8)


def blocks(im):
    h, w = im.shape
    return im.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 64) / 255.0


def pca_curve(train_images, images, ks=(1, 2, 4)):
    from sklearn.decomposition import PCA

    P = np.concatenate([blocks(i) for i in train_images])
    rows = []
    for k in ks:
        p = PCA(k, random_state=0).fit(P)
        res = []
        for im in images:
            b = blocks(im)
            rec = np.clip(p.inverse_transform(p.transform(b).astype(np.float16).astype(np.float64)), 0, 1)
            res.append((b.shape[0] * k * 16, ((rec - b) ** 2).sum() * 255 ** 2, im))
        rows.append((f"PCA 8x8 k{k} f16", *map(float, pooled(res))))
    return rows


def crops(images, n, size, rng):
    """n random size x size crops in [0, 1], drawn with the images weighted by their area (at most
    MOST_AREA)."""
    sizes = np.array([min(i.shape[0] * i.shape[1], MOST_AREA) for i in images], float)
    which = rng.choice(len(images), n, p=sizes / sizes.sum())
    out = np.empty((n, *images[0].shape[2:], size, size), np.float32)  # colour: channels first
    for j, k in enumerate(which):
        im = images[k]
        y, x = rng.integers(0, im.shape[0] - size + 1), rng.integers(0, im.shape[1] - size + 1)
        crop = im[y:y + size, x:x + size] / 255.0
        out[j] = np.moveaxis(crop, -1, 0) if im.ndim == 3 else crop
    return out


def train(model, images, steps, batch, size, lr, seed, density_lr):
    """Adam on random crops; returns seconds. The same loss as `aepipe train`: model.loss(x)."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.param_groups(lr, density_lr))  # as aepipe train: the density at 10x
    model.train()
    t0 = time.time()
    for step in range(steps):
        if step == int(steps * 0.8):  # a lower rate for the last fifth, as CompressAI's schedules end
            for g in opt.param_groups:
                g["lr"] /= 5
        x = torch.from_numpy(crops(images, batch, size, rng))
        loss, parts = model.loss(x)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 200 == 0:
            print(f"  step {step}: loss {loss.item():.4f} bpp {parts['bpp'].item():.3f} "
                  f"distortion {parts['distortion'].item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    return time.time() - t0


def evaluate(model, images, refine: int = 0):
    """Real bitstreams: encode each whole image (its latent refined for `refine` steps, as `aepipe
    encode --refine` does), decode it back from the bytes alone, count bytes.
    Returns (bits, squared error, image) per image, as pooled() takes them."""
    model.eval()
    coder = model.latent_coder()
    res = []
    for im in images:
        chw = np.moveaxis(im, -1, 0) if im.ndim == 3 else im[None]
        x = torch.from_numpy(chw[None] / 255.0).float()
        y = model.refine(x, refine)[0].numpy()  # 0 steps: the analysis transform's latent
        data = coder.encode(y)
        y_back = coder.decode(data, y.shape)
        assert np.array_equal(y_back, coder.quantize(y)), "entropy-coded round trip differs"
        with torch.no_grad():
            x_hat = model.synthesis(torch.from_numpy(y_back[None]).float(), im.shape[:2])[0].numpy()
        dec = np.clip(np.round(x_hat * 255), 0, 255)
        res.append((len(data) * 8, ((dec - chw) ** 2).sum(), im))
    return res


def plot(rows, title: str, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    styles = (("compress", "o-"), ("refined", "o:"), ("DCT floor", "x-."), ("JPEG", "s--"), ("WebP", "D--"),
              ("AVIF", "v--"), ("PCA", "^:"))
    for prefix, style in styles:
        pts = points(rows, prefix)
        if pts:
            ax.plot(*zip(*pts), style, label=prefix if prefix != "compress" else "compress (learned, real bytes)")
    ax.axvspan(0.3, 1.0, color="0.9", zorder=0, label="goal: above JPEG in 0.3-1.0 bpp")
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR dB")
    ax.set_xlim(0, 2.2)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lmbdas", default="0.0025,0.005,0.01,0.02", help="comma-separated, trained in increasing order")
    ap.add_argument("--steps", type=int, default=6000,
                    help="Adam steps per lambda (--init none: the first gets twice as many)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--channels", type=int, default=48, help="N, the transforms' width")
    ap.add_argument("--latent", type=int, default=64, help="M, the latent's channels (--code-dim)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--density-lr", type=float, default=10.0, help="the density's learning rate, times --lr")
    ap.add_argument("--init", default="pca", choices=("pca", "none"),
                    help="pca: the block-DCT floor under the model (each lambda from it); none: CompressAI's "
                         "transforms from random weights (each lambda warm-starts from the previous one)")
    ap.add_argument("--prior", default="context", choices=("context", "factorized", "hyperprior"),
                    help="the latent's entropy model (aepipe train --prior): the spatial context, the "
                         "factorized density or the mean-scale hyperprior (its side bits count in its bpp); "
                         "recorded as rate_distortion_context[_rgb], rate_distortion[_rgb] or "
                         "rate_distortion_hyperprior[_rgb]")
    ap.add_argument("--refine", type=int, default=0, metavar="STEPS",
                    help="also code every held-out image with its latent refined for STEPS steps (aepipe encode "
                         "--refine): the refined rows beside the plain ones; recorded with _refine in the section's name")
    ap.add_argument("--models", type=Path, default=None, metavar="DIR",
                    help="no training: the compress_LAMBDA.pt weights an earlier run of the same options saved in DIR")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/rd"))
    ap.add_argument("--rgb", action="store_true", help=f"colour: train on {', '.join(TRAIN_RGB)}, score "
                                                        f"{', '.join(HELD_OUT_RGB)} (anchors: Pillow's default 4:2:0)")
    ap.add_argument("--anchors-only", action="store_true",
                    help="JPEG, WebP, AVIF and PCA alone, no training (seconds); recorded as rate_distortion_anchors")
    return ap.parse_args()


def train_models(args, train_images, test_images, test_names):
    """Each lambda's DCT floor (--init pca) and trained model on the held-out images (--models: the
    weights an earlier run saved, no floor, no training): the pooled rows, the compress model's figure
    on each image, the training seconds per lambda and, with --refine, the refinement's seconds."""
    shape = (3, args.crop, args.crop) if args.rgb else (args.crop, args.crop)
    model, rows, per_image, times, refine_times = None, [], [], {}, {}
    for i, lmbda in enumerate(float(v) for v in args.lmbdas.split(",")):
        cfg = ModelConfig(family="compress", input_shape=shape, code_dim=args.latent,
                          hidden=(args.channels,), lmbda=lmbda, init=args.init, prior=args.prior)
        fresh = build_model(cfg)
        if args.models:
            fresh.load_state_dict(torch.load(args.models / f"compress_{lmbda}.pt"))
        elif model is not None and args.init == "none":  # warm start from the previous lambda
            fresh.load_state_dict(model.state_dict())
        model = fresh
        if not args.models:
            train_one(args, model, lmbda, i, train_images, test_images, rows, times)
        # the plain encode, then (--refine) the same model with each image's latent refined first
        for label, steps in [("compress", 0)] + ([("refined", args.refine)] if args.refine else []):
            t0 = time.time()
            res = evaluate(model, test_images, steps)
            if steps:
                refine_times[lmbda] = time.time() - t0
            bpp, db = pooled(res)
            rows.append((f"{label} lmbda {lmbda}", float(bpp), float(db)))
            per_image += [(f"{label} lmbda {lmbda}", name, *image_figures(*r)) for name, r in zip(test_names, res)]
            print(f"lmbda {lmbda}: {label}: {bpp:.3f} bpp, {db:.2f} dB ({time.time() - t0:.0f} s)", flush=True)
        if not args.models:
            torch.save(model.state_dict(), args.out / f"compress_{lmbda}.pt")
    return rows, per_image, times, refine_times


def train_one(args, model, lmbda, i, train_images, test_images, rows, times):
    """One lambda's training (--init pca: from its DCT floor, whose figure is a row of its own)."""
    if args.init == "pca":  # where the floor starts: the DCT with the density fitted alone
        train(model, train_images, args.steps // 5, args.batch, args.crop, 0.0, seed=100 + i,
              density_lr=args.lr * args.density_lr)
        bpp, db = pooled(evaluate(model, test_images))
        rows.append((f"DCT floor lmbda {lmbda}", float(bpp), float(db)))
        print(f"lmbda {lmbda}: the floor alone (DCT, density fitted): {bpp:.3f} bpp, {db:.2f} dB", flush=True)
    print(f"lmbda {lmbda}: training", flush=True)
    steps = args.steps * (2 if i == 0 and args.init == "none" else 1)
    times[lmbda] = train(model, train_images, steps, args.batch, args.crop, args.lr, seed=i,
                         density_lr=args.lr * args.density_lr)
    print(f"lmbda {lmbda}: trained {times[lmbda]:.0f} s", flush=True)


def image_figures(bits, se, im):
    """One image's (bytes, bpp, PSNR dB), from evaluate's (bits, squared error, image)."""
    return bits // 8, bits / (im.shape[0] * im.shape[1]), float(10 * np.log10(255 ** 2 / (se / im.size)))


def points(rows, prefix: str):
    """The (bpp, PSNR) points of one method's rows, by bpp."""
    return sorted((b, p) for n, b, p in rows if n.startswith(prefix))


def per_image_table(per_image):
    """Every held-out image's figure: a pooled figure can hide one image the codec does badly."""
    out = ["compress on each held-out image (real bitstreams):", "",
           "| method | image | bytes | bpp | PSNR dB |", "|---|---|---|---|---|"]
    return out + [f"| {m} | {name} | {nbytes} | {bpp:.3f} | {db:.2f} |" for m, name, nbytes, bpp, db in per_image]


def vs_jpeg_lines(rows):
    """Each compress point against JPEG at its own bpp: the plain reading of the plot."""
    jpeg = points(rows, "JPEG")
    out = ["compress vs JPEG at the same bpp (JPEG's PSNR interpolated between qualities):", ""]
    for name, bpp, db in rows:
        if name.startswith("compress"):
            if not jpeg or not jpeg[0][0] <= bpp <= jpeg[-1][0]:
                out.append(f"- {name}: {bpp:.3f} bpp, outside JPEG's measured range")
                continue
            ref = float(np.interp(bpp, *zip(*jpeg)))
            out.append(f"- {name}: {bpp:.3f} bpp, {db - ref:+.2f} dB vs JPEG ({ref:.2f} dB)")
    return out


def bd_rate_lines(rows):
    """BD-rate of the compress points (plain and refined) and of the DCT floor's against each anchor measured."""
    anchors = [name for name, *_ in ANCHORS if points(rows, name + " q")]
    out = ["BD-rate (Bjontegaard, VCEG-M33: log rate cubic in PSNR): % more bits than the anchor at equal PSNR, "
           "negative = fewer:", ""]
    for tested in ("compress", "refined", "DCT floor"):
        test = points(rows, tested)
        out += [f"- {tested} vs {a}: {bd_rate_text(points(rows, a + ' q'), test)}" for a in anchors if test]
    return out


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    train_names, test_names = (TRAIN_RGB, HELD_OUT_RGB) if args.rgb else (TRAIN, HELD_OUT)
    load = rgb if args.rgb else gray
    train_images, test_images = [load(n) for n in train_names], [load(n) for n in test_names]
    rows = anchor_curves(test_images) + ([] if args.rgb else pca_curve(train_images, test_images))
    per_image, times, refine_times = [], {}, {}
    if not args.anchors_only:
        model_rows, per_image, times, refine_times = train_models(args, train_images, test_images, test_names)
        rows += model_rows
    trained = "anchors only, no training" if args.anchors_only else f"trained on crops of: {', '.join(train_names)}"
    out = [f"held out: {', '.join(test_names)}; {trained}", f"anchors: {codec_versions()}", "",
           "| method | bpp | PSNR dB |", "|---|---|---|"]
    out += [f"| {name} | {bpp:.3f} | {db:.2f} |" for name, bpp, db in rows]
    if not args.anchors_only:
        out += ["", *per_image_table(per_image), "", *vs_jpeg_lines(rows), "", *bd_rate_lines(rows),
                "", f"training seconds per lambda: {json.dumps(times) if times else f'none, weights from {args.models}'}"]
        if args.refine:
            out.append(f"refinement seconds per lambda ({args.refine} steps, every held-out image): "
                       f"{json.dumps(refine_times)}")
    print("\n" + "\n".join(out))
    prior = f"_{args.prior}" if args.prior != "factorized" and not args.anchors_only else ""
    prior += "_refine" if args.refine and not args.anchors_only else ""
    record("rate_distortion" + ("_anchors" if args.anchors_only else "") + prior + ("_rgb" if args.rgb else ""),
           "\n".join(out))
    plot(rows, f"held-out {'colour' if args.rgb else 'grayscale'} photos: {', '.join(test_names)}",
         args.out / "rate_distortion.png")
    (args.out / "rate_distortion.json").write_text(json.dumps({"rows": rows, "per_image": per_image,
                                                               "train_seconds": times, "refine_seconds": refine_times,
                                                               "args": vars(args) | {"out": str(args.out)}}, indent=1))
    print(f"curves -> {args.out / 'rate_distortion.png'}")


if __name__ == "__main__":
    main()
