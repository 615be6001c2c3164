"""The options several commands share, each declared once: how DATA is read, and the job block
that every model job (encode, decode, denoise, score) takes, handed to the command as JobOptions."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Optional

import typer

from aepipe.errors import AepipeError

BATCH_SIZE = typer.Option(1024, help="Rows per model call.")
GPUS = typer.Option(0, help="GPUs per model actor (0: run on CPUs).")
OVERWRITE = typer.Option(False, help="Replace OUT if it exists.")
MODEL_ID_COLUMN = typer.Option(None, help="Parquet or CSV column holding row ids (default: the model's).")
ADDRESS = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray).")
CONCURRENCY = typer.Option(None, help="Model copies at work at once. On CPUs (default: one per CPU) each is a "
                           "task that reads a share of the rows, runs the model and writes its output; "
                           "with --gpus each is an actor holding the model on its GPU share (default 1).")
ENGINE = typer.Option("auto", help="auto: in this process without starting Ray when the job is small (up to "
                                    "20,000 rows) or this process would finish it sooner than Ray (timed on the "
                                    "first rows; Ray costs ~10 s to start), else on Ray; or force local / ray. "
                                    "--address, --concurrency above 1 or --gpus always use Ray.")

# How DATA is read, for every command that reads it (train, encode, score, denoise). Training
# keeps what it learned (categories, means, image size) in the run dir; the others reuse it.
READ_HELP = "Reading DATA"
COLUMNS = typer.Option(None, help="Tables: feature columns to use, comma-separated (default: all but the id).",
                       rich_help_panel=READ_HELP)
MODE = typer.Option(None, help="Images: L (grayscale) or RGB. [default: L, or the model's]", rich_help_panel=READ_HELP)
IMAGE_SIZE = typer.Option(None, help="Images: H or H,W; resized and centre-cropped to it. [default: the first "
                                     "image's size, or the model's]", rich_help_panel=READ_HELP)
ON_BAD_ROW = typer.Option(None, help="fail: stop at a corrupt image or row, naming it; skip: leave it out and list "
                                     "it in the output's metadata. [default: fail]", rich_help_panel=READ_HELP)
FILL_MISSING = typer.Option(None, help="CSV: mean fills an empty cell with the training mean of its column, "
                                       "an empty category with an all-zero block (default: refuse, naming row and "
                                       "column).", rich_help_panel=READ_HELP)
READ_OPTIONS = ("columns", "mode", "image_size", "on_bad_row", "fill_missing")


def read_options(columns=None, mode=None, image_size=None, on_bad_row=None, fill_missing=None) -> dict:
    """Command-line read options as open_source takes them; None where not given."""
    if isinstance(columns, str):
        columns = tuple(c.strip() for c in columns.split(",") if c.strip())
    if isinstance(image_size, str):
        hw = ints(image_size, "--image-size")
        if len(hw) not in (1, 2):
            raise AepipeError(f'--image-size "{image_size}": expected H or H,W, e.g. 64 or 48,64')
        image_size = (hw[0], hw[-1])
    return dict(columns=columns, mode=mode, image_size=image_size, on_bad_row=on_bad_row, fill_missing=fill_missing)


def ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise AepipeError(f'{name} "{text}": expected comma-separated integers, e.g. 256,64') from None


def _shown_as(option) -> dataclasses.Field:
    """A JobOptions field that the command line shows as this typer option."""
    return dataclasses.field(metadata={"option": option})


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """The job block: how a model job runs (rows per call, copies, GPUs, engine, cluster), whether
    it may replace OUT, and how DATA is read (all None for decode, which reads a codes store).
    The command line shows the fields in this order, after each command's own options."""

    batch_size: int = _shown_as(BATCH_SIZE)
    concurrency: Optional[int] = _shown_as(CONCURRENCY)
    gpus: float = _shown_as(GPUS)
    overwrite: bool = _shown_as(OVERWRITE)
    columns: Optional[str] = _shown_as(COLUMNS)
    mode: Optional[str] = _shown_as(MODE)
    image_size: Optional[str] = _shown_as(IMAGE_SIZE)
    on_bad_row: Optional[str] = _shown_as(ON_BAD_ROW)
    fill_missing: Optional[str] = _shown_as(FILL_MISSING)
    engine: str = _shown_as(ENGINE)
    address: Optional[str] = _shown_as(ADDRESS)

    def kwargs(self) -> dict:
        """The keywords every model job of aepipe.batch takes for these options."""
        return dict(batch_size=self.batch_size, concurrency=self.concurrency, num_gpus=self.gpus,
                    overwrite=self.overwrite, engine=self.engine, address=self.address)

    def read(self) -> dict:
        """The read options as open_source takes them (raises AepipeError on a bad --image-size)."""
        return read_options(**{name: getattr(self, name) for name in READ_OPTIONS})


_TYPES = typing.get_type_hints(JobOptions)
_JOB_PARAMETERS = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.metadata["option"],
                                     annotation=_TYPES[f.name]) for f in dataclasses.fields(JobOptions)]

JOB_BLOCK = object()  # a command's `job: JobOptions = JOB_BLOCK`: job_options shows the block there


def job_options(reads_data: bool = True):
    """Give a command the job block: its last parameter, `job: JobOptions = JOB_BLOCK`, becomes the block's
    options on the command line (without the read options unless reads_data), and the command is
    called with them gathered into one JobOptions."""

    def with_block(command):
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        if own[-1].default is not JOB_BLOCK:
            raise TypeError(f"{command.__name__}: job_options needs a last parameter `job: JobOptions = JOB_BLOCK`")
        block = [p for p in _JOB_PARAMETERS if reads_data or p.name not in READ_OPTIONS]
        shown = own[:-1] + block

        @functools.wraps(command)
        def parsed(**given):
            job = JobOptions(**{p.name: given.pop(p.name, None) for p in _JOB_PARAMETERS})
            return command(**given, job=job)

        parsed.__signature__ = inspect.Signature(shown)  # what typer reads the options from
        parsed.__annotations__ = {p.name: p.annotation for p in shown}
        return parsed

    return with_block
