"""Metrics, the classical baselines they are compared with, plots, and the digits demo.

Baselines and the split are the classical ones, computed here: digits / 16, train_test_split with
test_size 0.3, random_state 0, stratified; standardised features and logistic regression
(max_iter 5000) as the probe, the same for codes, raw inputs and PCA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aepipe.errors import AepipeError
from aepipe.normalize import default_normalizer
from aepipe.sources import open_source
from aepipe.sources.arrays import builtin
from aepipe.stores.read import load_codes


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    return float(10 * np.log10(peak ** 2 / np.mean((a - b) ** 2)))


# MS-SSIM as CompressAI reports it (pytorch-msssim): Wang, Simoncelli & Bovik 2003
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # scale 1 (full size) to 5
SSIM_WINDOW, SSIM_SIGMA, SSIM_K = 11, 1.5, (0.01, 0.03)


def ms_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, scales: int | None = None) -> float:
    """MS-SSIM of two grayscale images (H, W): contrast-structure at every scale and luminance at the
    last, each scale half the one before (2x2 mean), combined with MS_SSIM_WEIGHTS. Five scales need
    a side of at least 161 pixels (the 11-pixel window must fit the fifth); a smaller image uses as
    many scales as fit (or the first `scales`), their weights renormalised to sum to 1, so scales=1
    is plain SSIM. NaN for an image under 11 pixels on a side."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    fit, side = 0, min(a.shape)
    while fit < len(MS_SSIM_WEIGHTS) and side >= SSIM_WINDOW:
        fit, side = fit + 1, -(-side // 2)
    n = min(fit, scales or fit)
    if n == 0:
        return float("nan")
    weights = np.array(MS_SSIM_WEIGHTS[:n])  # all five as published (they sum to 1.0001), fewer renormalised
    weights = weights if n == len(MS_SSIM_WEIGHTS) else weights / weights.sum()
    values = []
    for _ in range(n - 1):
        values.append(ssim_terms(a, b, data_range)[1])  # contrast-structure
        a, b = _halve(a), _halve(b)
    values.append(ssim_terms(a, b, data_range)[0])  # and luminance too, at the last scale
    # negative values (anticorrelated images) count as 0, as in pytorch-msssim: the power needs x >= 0
    return float(np.prod(np.maximum(values, 0) ** weights))


def ssim_terms(a: np.ndarray, b: np.ndarray, data_range: float) -> tuple[float, float]:
    """SSIM at one scale, in two factors: (mean of luminance x contrast-structure, mean of
    contrast-structure), over the windows that lie wholly inside the image (no padding)."""
    c1, c2 = (SSIM_K[0] * data_range) ** 2, (SSIM_K[1] * data_range) ** 2
    mu_a, mu_b = _blur(a), _blur(b)
    var_a, var_b, cov = _blur(a * a) - mu_a ** 2, _blur(b * b) - mu_b ** 2, _blur(a * b) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
    return float(np.mean(luminance * cs)), float(np.mean(cs))


def _blur(x: np.ndarray) -> np.ndarray:
    """The 11-tap Gaussian window (sigma 1.5), rows then columns, valid part only."""
    from numpy.lib.stride_tricks import sliding_window_view

    g = np.exp(-((np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2) ** 2) / (2 * SSIM_SIGMA ** 2))
    g /= g.sum()
    return sliding_window_view(sliding_window_view(x, SSIM_WINDOW, axis=0) @ g, SSIM_WINDOW, axis=1) @ g


def _halve(x: np.ndarray) -> np.ndarray:
    """2x2 mean pooling as pytorch-msssim does it (so the figures are CompressAI's): an odd side is
    padded with a zero at both ends, which counts in the mean of its pair."""
    x = np.pad(x, [(s % 2, s % 2) for s in x.shape])
    h, w = x.shape[0] // 2, x.shape[1] // 2
    return x[:2 * h, :2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))


def linear_probe(train_x, train_y):
    """The linear probe: features standardised on the training rows, then logistic regression
    (max_iter 5000). Standardised, because the regression's penalty is on the weights: codes 4x
    smaller in scale than PCA's need 4x larger weights and were penalised for it (UCR GunPoint,
    recurrent codes: 0.747 raw against 0.887 standardised, PCA 0.840 / 0.880)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(train_x, train_y)


def probe_accuracy(train_x, train_y, test_x, test_y) -> float:
    """The linear probe (linear_probe) on the codes: test accuracy."""
    return float(linear_probe(train_x, train_y).score(test_x, test_y))


def digits_split():
    """(x_train, y_train, ids_train, x_test, y_test, ids_test), x flattened and scaled to [0, 1]."""
    tr, te = builtin("digits-train"), builtin("digits-test")
    return (tr.x.reshape(len(tr.x), -1) / 16, tr.labels, tr.ids, te.x.reshape(len(te.x), -1) / 16, te.labels, te.ids)


def by_id(ids: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """values reordered to follow `wanted` ids (every wanted id must be present)."""
    pos = {int(i): k for k, i in enumerate(ids)}
    return values[[pos[int(i)] for i in wanted]]


def pca_baseline(k: int, xtr, xte):
    from sklearn.decomposition import PCA

    p = PCA(k, random_state=0).fit(xtr)
    return p.transform(xtr), p.transform(xte), p.inverse_transform(p.transform(xte))


def format_table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def plot_reconstructions(originals: np.ndarray, recons: dict, path: Path, n: int = 10) -> None:
    """A grid: originals on top, one row per reconstruction (digits as 8x8 images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"original": originals, **recons}
    fig, axes = plt.subplots(len(rows), n, figsize=(n, 1.1 * len(rows)))
    for r, (name, imgs) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(imgs[c].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- aepipe probe

def read_labels(spec: str, label_column: str = "y", id_column: str = "id") -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) from a CSV or Parquet file, or from a built-in set (builtin:digits)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if spec.startswith("builtin:"):
        src = open_source(spec)
        return src.ids, src.labels
    path = Path(spec)
    if not path.exists():
        raise AepipeError(f"--labels {spec}: no such file")
    try:
        table = pacsv.read_csv(path) if path.suffix == ".csv" else pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise AepipeError(f"--labels {spec}: not a readable CSV or Parquet file ({str(e).splitlines()[0]})") from None
    for col, flag in ((id_column, "--labels-id-column"), (label_column, "--label-column")):
        if col not in table.column_names:
            raise AepipeError(f'--labels {spec}: no column "{col}" (columns: {", ".join(table.column_names[:8])}); '
                              f"name it with {flag}")
    return (table.column(id_column).to_numpy(zero_copy_only=False),
            table.column(label_column).to_numpy(zero_copy_only=False))


def join_by_id(ids: np.ndarray, label_ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions into ids, their labels) for the ids that have a label, in the store's order.
    Ids are compared as text, so 7 in a CSV meets 7 in an int64 store."""
    lookup = dict(zip(map(str, label_ids), labels))
    pos = np.array([i for i, v in enumerate(map(str, ids)) if v in lookup], dtype=np.int64)
    if len(pos) < 10:
        raise AepipeError(f"only {len(pos)} rows of the codes have a label (joined by id); need at least 10")
    return pos, np.array([lookup[str(ids[i])] for i in pos])


def fixed_split(y: np.ndarray):
    """The fixed split: 30 % test, random_state 0, stratified when every class has two rows."""
    from sklearn.model_selection import train_test_split

    _, counts = np.unique(y, return_counts=True)
    return train_test_split(np.arange(len(y)), test_size=0.3, random_state=0,
                            stratify=y if counts.min() >= 2 else None)


def probe_scores(train_x, train_y, test_x, test_y) -> dict:
    """The linear probe (linear_probe): accuracy and macro-F1."""
    from sklearn.metrics import f1_score

    pred = linear_probe(train_x, train_y).predict(test_x)
    return {"accuracy": float(np.mean(pred == test_y)), "macro_f1": float(f1_score(test_y, pred, average="macro"))}


def raw_rows(data: str, ids: np.ndarray, id_column: str | None = None) -> np.ndarray:
    """DATA's rows for `ids`, flattened and scaled as aepipe normalises by default (global range for
    arrays, per column for tables), so raw digits are pixels / 16 as in digits_split."""
    src = open_source(data, id_column)
    src_ids, x = src.read(0, src.n_rows)
    where = {str(v): i for i, v in enumerate(src_ids)}
    missing = [v for v in map(str, ids) if v not in where]
    if missing:
        raise AepipeError(f'--data {data}: no row with id "{missing[0]}" of the codes store')
    x = x[[where[str(v)] for v in ids]].reshape(len(ids), -1).astype(np.float64)
    per_column = default_normalizer(src.schema) == "feature"
    lo, hi = (x.min(0), x.max(0)) if per_column else (x.min(), x.max())
    return (x - lo) / np.where(np.asarray(hi - lo) > 0, hi - lo, 1.0)


def probe(codes: str, labels: str, label_column: str = "y", data: str | None = None,
          labels_id_column: str = "id") -> list[dict]:
    """Logistic-regression probe on the codes (and, with DATA, on raw inputs and PCA of the same
    size) on one fixed split of the labelled rows. Returns one dict per feature set."""
    ids, z = load_codes(codes)
    pos, y = join_by_id(ids, *read_labels(labels, label_column, labels_id_column))
    tr, te = fixed_split(y)
    z = z[pos]
    rows = [{"features": f"codes ({Path(codes).name})", "dims": z.shape[1], **probe_scores(z[tr], y[tr], z[te], y[te])}]
    if data:
        x = raw_rows(data, ids[pos])
        rows.append({"features": "raw inputs", "dims": x.shape[1], **probe_scores(x[tr], y[tr], x[te], y[te])})
        ptr, pte, _ = pca_baseline(z.shape[1], x[tr], x[te])
        rows.append({"features": f"PCA {z.shape[1]}", "dims": z.shape[1], **probe_scores(ptr, y[tr], pte, y[te])})
    for r in rows:
        r.update(n_train=len(tr), n_test=len(te))
    return rows
