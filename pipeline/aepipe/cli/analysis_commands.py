"""The commands that look at what the jobs made: info (a run dir or a store), probe (codes against
labels), compare (a codec's decoded images against the originals), report (a page on a model) and
export (a run dir's encoder for serving)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aepipe.analysis.metrics import format_table, probe as probe_fn
from aepipe.cli.options import OVERWRITE
from aepipe.cli.output import call
from aepipe.run import describe_run, is_run_dir, load_run
from aepipe.stores.read import describe_store, verify_store

# aepipe.analysis.report and aepipe.export bring torch: imported inside the commands (see __init__.py).


def info(path: str = typer.Argument(..., help="A run dir or a codes store."),
         verify: bool = typer.Option(False, "--verify", help="Read every chunk or file and check it: "
                                     "missing or damaged chunks, row counts, checksums.")):
    """Show what a run dir or a codes/reconstruction store holds (--verify: check all of it)."""
    from aepipe.stores.bitstreams import describe_rate  # brings torch (aepipe.bitstream)

    is_run = call(is_run_dir, path)
    rows = call(describe_run, path) if is_run else call(describe_store, path) + call(describe_rate, path)
    if verify:
        call(load_run, path) if is_run else call(verify_store, path)
        rows.append(("verified", "every chunk present and its checksum correct" if not is_run
                     else "weights match the fingerprint in aepipe.json"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"{k.ljust(width)}  {v}")



def probe(
    codes: Path = typer.Argument(..., help="A codes store from aepipe encode."),
    labels: str = typer.Option(..., "--labels", help="CSV or Parquet with an id and a label column, or builtin:digits."),
    label_column: str = typer.Option("y", help="The labels' column."),
    labels_id_column: str = typer.Option("id", help="The labels' id column (joined to the store's ids)."),
    data: Optional[str] = typer.Option(None, help="The encoded DATA: adds the same probe on raw inputs and on PCA."),
):
    """Linear probe: logistic regression on the standardised codes (and --data's raw inputs and PCA,
    standardised alike), one fixed 70/30 split, accuracy and macro-F1."""
    rows = call(probe_fn, str(codes), labels, label_column=label_column, data=data, labels_id_column=labels_id_column)
    typer.echo(f"{rows[0]['n_train']} train / {rows[0]['n_test']} test rows, joined by id; each feature set "
               "standardised on the train rows\n")
    typer.echo(format_table(["features", "dims", "accuracy", "macro-F1"],
                            [[r["features"], r["dims"], r["accuracy"], r["macro_f1"]] for r in rows]))


def compare(
    originals: str = typer.Argument(..., help="The images that were encoded: a folder (or one image)."),
    decoded: str = typer.Argument(..., help="What decode wrote of them: a folder of PNGs (or one image)."),
    codes: Optional[str] = typer.Option(None, "--codes", help="The bitstream store they were decoded from: adds "
                                        "each image's bytes and bits per pixel."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Also write the table as CSV, numbers in full "
                                           "(replaced if it exists)."),
):
    """A codec's table, one row per image: bytes, bits per pixel, PSNR and MS-SSIM.

    \b
      aepipe encode photos --model runs/codec --out bits.zarr
      aepipe decode bits.zarr --model runs/codec --out restored
      aepipe compare photos restored --codes bits.zarr --csv quality.csv

    Images are matched by their path without its suffix (photos/sub/b.jpg against restored/sub/b.png);
    every original needs its decoded image, of the same size and colour. PSNR: peak 255, over every
    channel. MS-SSIM: Wang et al. 2003 as CompressAI reports it (pytorch-msssim: 11-pixel Gaussian
    window, 5 scales), on the luma Y = 0.299 R + 0.587 G + 0.114 B for colour images; an image under
    161 pixels on a side gets as many scales as fit, their weights renormalised (under 11: nan).
    The mean row: bits per pixel over all pixels, PSNR and MS-SSIM averaged over the images.
    """
    from aepipe.analysis.codec_quality import compare as compare_fn, table, write_csv

    rows = call(compare_fn, originals, decoded, codes=codes)
    typer.echo(f"{len(rows) - 1} images of {originals} against {decoded}"
               + (f", bitstreams of {codes}" if codes else "") + "\n")
    typer.echo(table(rows))
    if any(r["ms_ssim"] != r["ms_ssim"] for r in rows[:-1]):  # nan
        typer.echo("MS-SSIM nan: an image under 11 pixels on a side (the mean leaves it out)")
    if csv_out:
        call(write_csv, rows, csv_out)
        typer.echo(f"\ntable -> {csv_out}")


def report(
    model: Path = typer.Option(..., "--model", help="Run dir from aepipe train."),
    out: Path = typer.Option(..., "--out", help="Folder for report.png and report.html."),
    data: Optional[str] = typer.Option(None, help="Rows to show (default: the data the model was trained on)."),
    labels: Optional[str] = typer.Option(None, help="CSV or Parquet of id and label, to colour the code map "
                                                    "(built-in sets bring their own)."),
    label_column: str = typer.Option("y", help="The labels' column."),
    labels_id_column: str = typer.Option("id", help="The labels' id column."),
    rows: int = typer.Option(2000, help="How many of DATA's first rows to show."),
    tsne: bool = typer.Option(False, "--tsne", help="Map the codes with t-SNE instead of PCA."),
    overwrite: bool = typer.Option(False, help="Replace an earlier report in OUT."),
):
    """One page on a model: loss, reconstructions, scores, code map, error per code dtype (PNG + HTML)."""
    from aepipe.analysis.report import report as report_fn

    done = call(report_fn, str(model), out, data=data, labels=labels, label_column=label_column,
                labels_id_column=labels_id_column, rows=rows, tsne=tsne, overwrite=overwrite)
    typer.echo(f"report -> {done['png']} and {done['html']}")



def export(
    model: str = typer.Argument(..., help="Run dir whose encoder to export."),
    out: Path = typer.Option(..., "--out", help="The program to write (.pt2)."),
    overwrite: bool = OVERWRITE,
):
    """Write a run dir's encoder (normalisation included) as a torch.export program, for serving
    without aepipe: torch.export.load(OUT).module()(rows) gives the codes `aepipe encode` writes
    (rows: (n, features) float32 in the data's units)."""
    from aepipe.export import export as export_fn  # torch

    done = call(export_fn, model, out, overwrite=overwrite)
    typer.echo(f"exported the {done['family']} encoder ({done['features']} features -> {done['code_dim']} codes, "
               f"{done['bytes'] / 2**20:.2f} MiB) -> {done['out']}")

