"""aepipe report: one page about a run dir, as report.png and a self-contained report.html.

Six panels: loss curves; inputs beside reconstructions (noisy and denoised rows for the denoising
family); the score histogram with its threshold; a 2-D map of the codes coloured by label;
reconstruction error per code dtype beside PCA of the same size; a summary. Everything but the loss
curves comes from the first --rows rows of DATA (default: the data the model was trained on),
computed in this process: a report is a look at a sample, not a pass over a large set.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import torch

from aepipe.analysis.metrics import read_labels
from aepipe.errors import AepipeError
from aepipe.run import load_run
from aepipe.scores import auto_threshold, describe, row_scores, score_kind
from aepipe.sources import open_matching
from aepipe.stores.quantize import dequantize, int8_scale, quantize

DTYPE_COLORS = {"float32": "#4c72b0", "float16": "#55a868", "int8": "#c44e52"}


def _sample(run, data: str | None, rows: int):
    """(spec, ids, x, labels or None) of the first `rows` rows of DATA, or of the training source."""
    spec = data or run.meta["source"]
    try:
        src = open_matching(spec, run)
    except AepipeError:
        if data:
            raise
        raise AepipeError(f"{run.path} was trained on {spec}, which is not readable here; pass --data") from None
    n = min(rows, src.n_rows)
    ids, x = src.read(0, n)
    return spec, ids, x, None if src.labels is None else src.labels[:n]


def _labels_for(ids, labels: str | None, label_column: str, labels_id_column: str, builtin_labels):
    if labels is None:
        return builtin_labels
    lookup = dict(zip(map(str, (pair := read_labels(labels, label_column, labels_id_column))[0]), pair[1]))
    return np.array([lookup.get(str(i)) for i in ids], dtype=object)


def _model_outputs(run, x: np.ndarray, kind: str) -> dict:
    """The codes, reconstructions and scores (of the kind `aepipe score` gives by default) of rows x."""
    model, xn = run.model, torch.from_numpy(run.normalizer.apply(x))
    scale = int8_scale(*run.code_range())
    with torch.inference_mode():
        z = model.encode(xn)
        score = row_scores(model, xn, None if kind == "recon" else run.density)[kind]
        out = {"z": z.numpy(), "x_hat": run.normalizer.invert(model.decode(z).numpy()),
               "score": score.numpy(), "kind": kind, "dtype_error": {}}
        for dtype in DTYPE_COLORS:  # the same codes stored at each dtype, decoded back
            zq = torch.from_numpy(dequantize(quantize(out["z"], dtype, scale), dtype, scale))
            out["dtype_error"][dtype] = float((model.decode(zq) - xn).pow(2).mean())
        if run.meta["family"] == "denoising":  # the corruption the model was trained to remove
            noisy = model.corrupt(xn[:8].clone())
            out["noisy"] = run.normalizer.invert(noisy.numpy())
            out["denoised"] = run.normalizer.invert(model.decode(model.encode(noisy)).numpy())
    from sklearn.decomposition import PCA

    flat = xn.numpy().reshape(len(xn), -1)
    k = min(run.code_dim, *flat.shape)
    pca = PCA(k, random_state=0).fit(flat)
    out["pca_error"] = float(np.mean((pca.inverse_transform(pca.transform(flat)) - flat) ** 2))
    return out


def report(model: str, out_dir: str | Path, data: str | None = None, labels: str | None = None,
           label_column: str = "y", labels_id_column: str = "id", rows: int = 2000, tsne: bool = False,
           overwrite: bool = False) -> dict:
    """Write OUT_DIR/report.png and OUT_DIR/report.html. Returns the figures it shows."""
    out_dir = Path(out_dir)
    if (out_dir / "report.png").exists() and not overwrite:
        raise AepipeError(f"{out_dir} already holds a report; pass --overwrite to replace it")
    if rows < 10:
        raise AepipeError(f"--rows {rows}: a report needs at least 10 rows")
    run = load_run(model)
    spec, ids, x, builtin_labels = _sample(run, data, rows)
    y = _labels_for(ids, labels, label_column, labels_id_column, builtin_labels)

    kind, _ = score_kind(run, None)  # the score `aepipe score` writes by default
    threshold = auto_threshold(run, 0.01, kind) if run.meta.get("score_quantiles") else None
    res = _model_outputs(run, x, kind)
    summary = _summary(run, spec, len(x), res, threshold)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "report.png"
    _figure(run, x, y, res, threshold, summary, png, tsne)
    _html(png, summary, out_dir / "report.html", run)
    return {"png": str(png), "html": str(out_dir / "report.html"), "summary": summary}


def _summary(run, spec, n, res, threshold) -> list[tuple[str, str]]:
    m = run.meta["metrics"]
    rows = [("model", f'{run.meta["family"]}, code {run.code_dim}, loss {run.meta["model"]["loss"]}'),
            ("trained", f'{len(m["history"])} epochs, best val loss {m["best_val_loss"]:.4g} (epoch {m["best_epoch"] + 1})'),
            ("rows shown", f"first {n} of {spec}"),
            ("mean score", f'{res["score"].mean():.4g} ({describe(res["kind"], run.meta["model"]["loss"])}, '
                           "normalised units)")]
    if threshold is not None:
        rows.append(("threshold", f'{threshold:.4g}: {np.mean(res["score"] > threshold):.1%} of these rows above '
                                  "(1% of training rows)"))
    rows += [(f"error {d}", f"{e:.4g}") for d, e in res["dtype_error"].items()]
    rows.append((f"error PCA {run.code_dim}", f'{res["pca_error"]:.4g} (fitted on these rows)'))
    return rows


def _figure(run, x, y, res, threshold, summary, png: Path, tsne: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9.6))
    fig.suptitle(f"aepipe report: {run.path.name} ({run.meta['family']}, code {run.code_dim})", fontsize=14)
    _loss_panel(axes[0, 0], run.meta["metrics"])
    _recon_panel(axes[0, 1], run, x, res)
    _score_panel(axes[0, 2], res["score"], threshold, res["kind"], run.meta["model"]["loss"])
    _code_map_panel(axes[1, 0], res["z"], y, tsne)
    _dtype_panel(axes[1, 1], res, run.code_dim)
    ax = axes[1, 2]
    ax.axis("off")
    ax.set_title("summary", loc="left")
    import textwrap

    text = "\n".join(textwrap.fill(f"{k}: {v}", 52, subsequent_indent="    ") for k, v in summary)
    ax.text(0, 1, text, va="top", ha="left", fontsize=9.5, family="monospace", transform=ax.transAxes)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _loss_panel(ax, metrics) -> None:
    hist = [h for h in metrics["history"] if h.get("stage") is None]
    ep = [h["epoch"] + 1 for h in hist]
    ax.plot(ep, [h["train_loss"] for h in hist], label="train")
    ax.plot(ep, [h["val_loss"] for h in hist], label="validation")
    ax.axvline(metrics["best_epoch"] + 1, color="grey", ls=":", label="best (weights kept)")
    ax.set(title="loss per epoch", xlabel="epoch", ylabel="loss (log scale)", yscale="log")
    ax.xaxis.set_major_locator(__import__("matplotlib").ticker.MaxNLocator(integer=True))
    ax.legend(loc="upper right")


def _recon_panel(ax, run, x, res) -> None:
    """Images as a montage (one row per kind); table rows as lines over their columns."""
    shape = run.schema.shape
    kinds = {"input": x[:12], "reconstruction": res["x_hat"][:12]}
    if "noisy" in res:
        kinds = {"input": x[:8], "noisy input": res["noisy"], "denoised": res["denoised"],
                 "reconstruction": res["x_hat"][:8]}
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3)):
        _montage(ax, kinds, shape, float(x.min()), float(x.max()))
        return
    flat = {k: v.reshape(len(v), -1) for k, v in kinds.items()}
    scale = np.asarray(run.normalizer.scale, np.float32).reshape(-1)
    shift = np.asarray(run.normalizer.shift, np.float32).reshape(-1)
    for i, color in zip(range(min(3, len(x))), ("#4c72b0", "#55a868", "#c44e52")):
        ax.plot((flat["input"][i] - shift) / scale, color=color, marker="o", label=f"row {i} input")
        ax.plot((flat["reconstruction"][i] - shift) / scale, color=color, ls="--", label=f"row {i} reconstruction")
    names = run.schema.columns if run.schema.tabular else [str(i) for i in range(flat["input"].shape[1])]
    if len(names) <= 20:
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set(title="first rows: input (solid) vs reconstruction (dashed)", ylabel="value (normalised)")
    ax.legend(fontsize=7, ncol=2)


def _montage(ax, kinds: dict, shape, lo: float, hi: float) -> None:
    """Examples side by side, each a column of its kinds (input above reconstruction), wrapped into
    block rows so the panel stays near 3:2 whatever the number of kinds."""
    h, w = shape[:2]
    n = min(len(v) for v in kinds.values())
    k = len(kinds)
    blocks = max(1, min(n, round(np.sqrt(n * (w + 1) / (k * (h + 1) * 1.5)))))
    per_row = -(-n // blocks)
    canvas = np.full((blocks * (k * (h + 1) + 1), per_row * (w + 1)) + tuple(shape[2:]), np.nan, np.float32)
    ticks, names = [], []
    for i in range(n):
        b, c = divmod(i, per_row)
        for r, (name, imgs) in enumerate(kinds.items()):
            top = b * (k * (h + 1) + 1) + r * (h + 1)
            canvas[top:top + h, c * (w + 1):c * (w + 1) + w] = np.clip(imgs[i], lo, hi)
            if c == 0:
                ticks.append(top + h / 2 - 0.5)
                names.append(name)
    cmap = __import__("matplotlib").colormaps["gray_r"].copy()
    cmap.set_bad("white")
    ax.imshow((canvas - lo) / (hi - lo or 1), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set_xticks([])
    ax.set_title(f"first {n} rows, one per column (kinds on the left)")


def _score_panel(ax, score, threshold, kind: str, loss: str) -> None:
    # distances have long tails (breast cancer's malignant rows: 100x the median): then log bins
    wide = score.min() > 0 and score.max() > 50 * np.median(score)
    bins = np.geomspace(score.min(), score.max(), 50) if wide else 50
    ax.hist(score, bins=bins, color="#4c72b0")
    if wide:
        ax.set_xscale("log")
    if threshold is not None:
        ax.axvline(threshold, color="#c44e52", lw=2,
                   label=f"threshold {threshold:.3g}\n({np.mean(score > threshold):.1%} of rows above)")
        ax.legend(loc="best")
    what = f"reconstruction error ({loss}, normalised units)" if kind == "recon" else \
        f"{kind} score (distance per dimension{', log scale' if wide else ''})"
    ax.set(title="anomaly score per row", xlabel=what, ylabel="rows")


def _code_map_panel(ax, z, y, tsne: bool) -> None:
    if z.shape[1] < 2:
        ax.plot(z[:, 0], np.zeros(len(z)), "|")
        ax.set_title("codes (1-D)")
        return
    if tsne:
        from sklearn.manifold import TSNE

        xy, how = TSNE(2, random_state=0, init="pca").fit_transform(z), "t-SNE"
    else:
        from sklearn.decomposition import PCA

        pca = PCA(2, random_state=0).fit(z)
        xy = pca.transform(z)
        how = f"PCA ({pca.explained_variance_ratio_.sum():.0%} of the code variance)"
    if y is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6)
        ax.set_title(f"codes, {how}; no labels (--labels)")
    else:
        classes = sorted({str(v) for v in y})
        cmap = __import__("matplotlib").colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for k, c in enumerate(classes):
            m = np.array([str(v) == c for v in y])
            ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.7, color=cmap(k % cmap.N), label=c)
        if len(classes) <= 20:
            ax.legend(title="label", fontsize=7, markerscale=2, loc="best", ncol=2)
        ax.set_title(f"codes, {how}, coloured by label")
    ax.set(xlabel="component 1", ylabel="component 2")


def _dtype_panel(ax, res, code_dim: int) -> None:
    names = list(res["dtype_error"])
    vals = [res["dtype_error"][d] for d in names]
    bars = ax.bar(names, vals, color=[DTYPE_COLORS[d] for d in names])
    ax.bar_label(bars, [f"{v:.4g}" for v in vals])
    ax.axhline(res["pca_error"], color="black", ls="--", label=f"PCA {code_dim} (float32)")
    ax.set(title="reconstruction error by stored code dtype", ylabel="mean squared error (normalised)",
           ylim=(0, max(vals + [res["pca_error"]]) * 1.25))
    ax.legend(loc="upper left")


def _html(png: Path, summary, path: Path, run) -> None:
    b64 = base64.b64encode(png.read_bytes()).decode()
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary)
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>aepipe report: {html.escape(run.path.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:1em}}img{{max-width:100%}}</style>
</head><body><h1>aepipe report: {html.escape(str(run.path))}</h1>
<img alt="report" src="data:image/png;base64,{b64}"><table>{rows}</table></body></html>
""")
