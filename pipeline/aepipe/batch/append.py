"""aepipe encode DATA --append STORE: encode only the input files the store does not hold yet.

For scheduled runs over a growing folder (Parquet, CSV or image files). The store's manifest
records every input file it holds by path, size and modification time; a run encodes the other
files into a staging store beside it (an ordinary encode, with every guarantee of one), measures
the drift of their codes against the training codes, then moves the staged parts into the store
and rewrites the manifest last. A rerun with no new file writes nothing.

Parquet stores only: their parts append as new files, while a Zarr store would have to rewrite
its last chunk and every array's shape in place.
"""

from __future__ import annotations

import bisect
import datetime

import numpy as np

from aepipe.errors import AepipeError
from aepipe.run import load_run
from aepipe.scores import auto_threshold
from aepipe.sources import Source, input_files, locate, open_for_run
from aepipe.sources.parquet import parquet_files
from aepipe.stores import read_manifest
from aepipe.stores.quantize import dequantize, quant_scale
from aepipe.stores.read import read_metadata
from aepipe.stores.parquet_sink import write_manifest

FILES = "encoded_files"  # in the manifest: {path: [bytes, mtime_ns]} of every input file it holds


class FileRows(Source):
    """The rows of some of `src`'s files, renumbered 0..n-1 (a sink places rows by that number);
    `spans` are their (start, stop) global rows in `src`, in order."""

    def __init__(self, src: Source, spans: list[tuple[int, int]], files: list[str]):
        self.src, self.spans, self.files, self.where = src, spans, files, src.where
        self.spec, self.schema = src.spec, src.schema
        self.id_column = getattr(src, "id_column", None)
        self.offsets = np.cumsum([0] + [b - a for a, b in spans])
        self.n_rows = int(self.offsets[-1])

    def _global(self, start: int, stop: int) -> list[tuple[int, int]]:
        out = []
        for (a, b), o in zip(self.spans, self.offsets):
            lo, hi = max(start, o), min(stop, o + b - a)
            if lo < hi:
                out.append((a + lo - o, a + hi - o))
        return out

    def read(self, start, stop):
        parts = [self.src.read(a, b) for a, b in self._global(start, stop)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def notes(self):
        return self.src.notes()

    def ranges(self, rows_per_task=None):
        """The source's own read ranges (Parquet: whole row groups) cut at file edges, renumbered."""
        ranges = self.src.ranges(*([rows_per_task] if rows_per_task else []))
        starts = [ra for ra, _ in ranges]
        out = []
        for (a, b), o in zip(self.spans, self.offsets):
            i = max(0, bisect.bisect_right(starts, a) - 1)  # the range holding row a, then on
            while i < len(ranges) and ranges[i][0] < b:
                lo, hi = max(a, ranges[i][0]), min(b, ranges[i][1])
                if lo < hi:
                    out.append((int(o + lo - a), int(o + hi - a)))
                i += 1
        return sorted(out)


def file_spans(src: Source) -> dict[str, tuple[int, int]]:
    """Each input file's global rows (start, stop) in `src`; refuses sources without files."""
    kind = type(src).__name__
    spans: dict[str, list[int]] = {}
    if kind == "ParquetSource":
        pieces = [(src.files[fi], start, start + n) for start, n, fi, _ in src.groups]
    elif kind == "CsvSource":
        pieces = [(src.files[b.file], b.start, b.start + b.n) for b in src.blocks]
    elif kind == "ImageSource":
        pieces = [(p, i, i + 1) for i, p in enumerate(src.paths)]
    else:
        raise AepipeError(f"--append: {src.spec} is not a folder of Parquet, CSV or image files; "
                          "--append encodes the files a folder gains")
    for path, a, b in pieces:
        lo, hi = spans.get(path, [a, b])
        spans[path] = [min(lo, a), max(hi, b)]
    return {p: tuple(v) for p, v in spans.items()}


def _manifest(store) -> dict | None:
    """The store's manifest, None when there is no store yet; refuses a store it cannot append to."""
    try:
        where = locate(str(store))
    except AepipeError:
        return None  # no store yet: this run starts it
    read_metadata(str(store))  # a damaged store is refused here, naming what is wrong
    m = read_manifest(where) or {}
    if FILES not in m:
        raise AepipeError(f"--append {store}: the store records no input files (it was written by encode "
                          "--out); start a store for appending with --append")
    return m


def _drift(run, staged, attrs: dict) -> dict:
    """The new codes against the training codes: each dimension's mean shift in training standard
    deviations; and the share of new rows scored above the run's threshold (--threshold auto at
    the default contamination) where the store keeps scores and the model's loss is mse (the
    encoder's scores are squared errors)."""
    import pyarrow.parquet as pq

    where = locate(str(staged))
    n, total, above = 0, 0.0, 0
    threshold = None
    if attrs.get("scores") and run.meta.get("score_quantiles") and run.meta.get("loss", "mse") == "mse":
        threshold = auto_threshold(run, 0.01)
    for f in parquet_files(where):  # part by part: memory stays flat
        table = pq.read_table(where.open(f))
        codes = np.stack(table.column("code").to_numpy(zero_copy_only=False)).astype(np.float64)
        codes = dequantize(codes, attrs["dtype"], quant_scale(attrs))
        n, total = n + len(codes), total + codes.sum(0)
        if threshold is not None:
            above += int((table.column("score").to_numpy() > threshold).sum())
    stats = run.meta.get("code_stats") or {}
    out = {"n_rows": n, "mean_shift_sd": None, "max_abs_shift_sd": None,
           "above_threshold": above / n if threshold is not None and n else None, "threshold": threshold}
    if stats.get("mean") and n:
        std = np.maximum(np.asarray(stats["std"]), 1e-12)
        shift = (total / n - np.asarray(stats["mean"])) / std
        out.update(mean_shift_sd=[round(float(s), 4) for s in shift], max_abs_shift_sd=float(np.abs(shift).max()))
    return out


def describe_drift(d: dict) -> str:
    parts = []
    if d["max_abs_shift_sd"] is not None:
        parts.append(f"code mean shift up to {d['max_abs_shift_sd']:.3f} training sd "
                     f"(mean {np.mean(np.abs(d['mean_shift_sd'])):.3f} over dims)")
    else:
        parts.append("no code shift (the run dir predates code statistics: retrain to get it)")
    if d["above_threshold"] is not None:
        parts.append(f"{100 * d['above_threshold']:.2f}% of new rows above the score threshold {d['threshold']:.4g}"
                     " (1% of training rows are)")
    return "drift: " + "; ".join(parts)


def _move_parts(staged, store, base: int, fresh: bool) -> dict:
    """Move the staged parts into the store, renamed after the store's rows so far; returns
    {new name: rows}. Through pyarrow's filesystem: a rename on disk, copy and delete on S3."""
    where = locate(str(staged))
    files = read_manifest(where)["files"]
    target = locate(str(store)) if not fresh else None
    fs = where.fs
    dest = target.path if target else _path_in_fs(store)
    fs.create_dir(dest)
    moved = {}
    for name, rows in sorted(files.items()):
        new = f"part-{base + int(name[5:-8]):012d}.parquet"
        fs.move(f"{where.path}/{name}", f"{dest}/{new}")
        moved[new] = rows
    return moved


def _path_in_fs(spec) -> str:
    from pathlib import Path

    import pyarrow.fs as pafs

    spec = str(spec)
    return pafs.FileSystem.from_uri(spec)[1] if "://" in spec else str(Path(spec).absolute())


def _drop_unlisted(store, manifest: dict) -> None:
    """Parts of a killed --append that the manifest never listed."""
    where = locate(str(store))
    for f in parquet_files(where):
        if where.relative(f) not in manifest["files"]:
            where.fs.delete_file(f)


def append(data: str, model: str, store: str, dtype: str = "float32", scores: bool = False, batch_size: int = 1024,
           concurrency: int = 1, num_gpus: float = 0, id_column: str | None = None, address: str | None = None,
           read: dict | None = None, *, encode) -> dict:
    """Encode DATA's files that STORE does not hold, append their codes. Returns a summary dict.
    encode: the encode job (aepipe.batch.encode.encode), which the caller hands in: append chooses the
    rows and merges the parts; the encode job writes them."""
    if not str(store).rstrip("/").endswith(".parquet"):
        raise AepipeError(f"--append {store}: appending needs a Parquet store (.parquet), whose parts are "
                          "added as new files; a Zarr store would rewrite its arrays in place")
    run = load_run(model)
    old = _manifest(store)
    if old is not None:
        _drop_unlisted(store, old)
        attrs = read_metadata(str(store))[1]
        if attrs["model_fingerprint"] != run.fingerprint:
            raise AepipeError(f"--append {store}: its codes come from another model ({attrs['model']}); "
                              "codes of two models do not mix in one store")
        dtype, scores = attrs["dtype"], bool(attrs.get("scores"))  # every part alike
    src = open_for_run(data, run.meta, id_column, **(read or {}))
    if type(src).__name__ != "ImageSource" and not getattr(src, "id_column", None):
        raise AepipeError(f"--append: {data} has no id column (--id-column); without one a row's id is its "
                          "index, which changes as files arrive")
    spans = file_spans(src)
    known = (old or {}).get(FILES, {})
    seen = {p: [size, mtime] for p, size, mtime in input_files(src)}
    changed = [p for p in seen if p in known and known[p] != seen[p]]
    if changed:
        raise AepipeError(f"--append: {src.where.show(changed[0])} changed since it was encoded (size or "
                          "modification time); its rows are in the store already: give changed data a new file name")
    new = [p for p in sorted(spans, key=lambda p: spans[p]) if p not in known]
    summary = {"files": len(new), "rows": 0, "store_rows": (old or {}).get("n_rows", 0), "drift": None}
    if not new:
        return summary
    staged = f"{str(store).rstrip('/')[:-len('.parquet')]}.append-staging.parquet"
    select = lambda s: FileRows(s, [spans[p] for p in new], new)  # noqa: E731
    attrs = encode(data, model, staged, dtype=dtype, scores=scores, batch_size=batch_size, concurrency=concurrency,
                   num_gpus=num_gpus, id_column=id_column, overwrite=True, address=address, read=read,
                   select=select)
    drift = _drift(run, staged, attrs)
    staged_manifest = read_manifest(locate(staged))
    base = 0 if old is None else max(int(n[5:-8]) + r for n, r in old["files"].items()) + len(old.get("skipped", []))
    moved = _move_parts(staged, store, base, fresh=old is None)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest = {"n_rows": (old or {}).get("n_rows", 0) + staged_manifest["n_rows"],
                "files": dict(sorted({**(old or {}).get("files", {}), **moved}.items())),
                FILES: {**known, **{p: seen[p] for p in new}},
                "drift": [*(old or {}).get("drift", []), {"at": now, "files": len(new), **drift}]}
    skipped = [*(old or {}).get("skipped", []), *staged_manifest.get("skipped", [])]
    if skipped:
        manifest["skipped"] = skipped
    # last: until it lands the store is the one before this run (moved parts it does not list are
    # removed by the next --append)
    write_manifest(store, manifest)
    _remove(staged)
    summary.update(rows=staged_manifest["n_rows"], store_rows=manifest["n_rows"], drift=drift)
    return summary


def _remove(staged: str) -> None:
    where = locate(staged)
    where.fs.delete_dir(where.path)
