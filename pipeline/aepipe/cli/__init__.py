"""The `aepipe` command: a thin typer layer. Each command parses, calls the library, and turns a
user error into one line on stderr and exit code 2 (bad input) or 1 (failed at run time).

Here: the app, its top-level options, `main(argv) -> int` (one command in this process) and
`console()` (the installed command). The commands live in train_commands (train, tune, demo,
models), batch_commands (encode, decode, sample, score, denoise), analysis_commands (info, probe,
compare, report, export) and cluster_commands (submit); the options they share in options and
defaults, the error lines in output."""

from __future__ import annotations

import gc
import os
import signal
import sys
import warnings

import typer

from aepipe.cli import analysis_commands, batch_commands, cluster_commands, output, train_commands
from aepipe.cli.defaults import ConfigDefaults
from aepipe.cluster.runtime import exit_now, leave, quiet_native_logs

# The jobs (aepipe.training, aepipe.batch.*, aepipe.analysis.report, aepipe.cluster.tune) and aepipe.models are imported
# inside the commands that run them: they bring torch (1-1.5 s), which `--help`, `info` and every
# refused option need not wait for.

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  rich_markup_mode=None, help="""
Train autoencoders on Ray, stream datasets through them, and store the codes.

\b
  aepipe demo                                   the whole flow on scikit-learn's digits
  aepipe train builtin:digits --family dense --code-dim 16 --out runs/digits
  aepipe encode builtin:digits --model runs/digits --out codes.zarr --dtype int8
  aepipe decode codes.zarr --model runs/digits --out recon.npy --rows 0:100
  aepipe info runs/digits

DATA is a Parquet file or folder (numeric columns, or one list column), a CSV file or folder
(.csv, .csv.gz; numbers, and text columns one-hot encoded), a .npy or Zarr array shaped
(rows, ...), a folder of PNG/JPEG images or one image (--mode L|RGB, --image-size H[,W]; ids are
paths in the folder), builtin:digits (also builtin:digits-train / builtin:digits-test: the split
by train_test_split: 30 % test, random_state 0, stratified) or builtin:photos (32x32 grayscale patches of scikit-image's
photographs), by local path or URI (s3://, gs://, file://). Every command runs on an embedded
local Ray unless --address or RAY_ADDRESS names a cluster.
""")

# the commands, in the order `aepipe --help` lists them
app.command(cls=ConfigDefaults)(train_commands.train)
app.command(cls=ConfigDefaults)(train_commands.tune)
app.command()(batch_commands.encode)
app.command()(batch_commands.decode)
app.command()(batch_commands.sample)
app.command(cls=ConfigDefaults)(train_commands.demo)
app.command()(analysis_commands.export)
app.command()(analysis_commands.info)
app.command()(train_commands.models)
app.command()(batch_commands.score)
app.command()(batch_commands.denoise)
app.command()(analysis_commands.probe)
app.command()(analysis_commands.compare)
app.command()(analysis_commands.report)
app.command()(cluster_commands.submit)


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", help="Also show Ray's own log lines and progress.")):
    if verbose:
        os.environ["AEPIPE_VERBOSE"] = "1"


def main(argv: list[str] | None = None) -> int:
    """Run one aepipe command in this process and return its exit code: 0 done, 2 bad input,
    1 failed at run time, 130 interrupted. Usage mistakes (a missing option, a value that is not
    a number) end like any other bad input: one `aepipe: error:` line and exit 2. Tests and
    notebooks call this; the installed command is `console()`, which also leaves fast."""
    try:  # typer 0.2x carries its own click; older ones use click itself
        from typer._click.exceptions import NoArgsIsHelpError, UsageError
    except ImportError:  # pragma: no cover
        from click.exceptions import NoArgsIsHelp as NoArgsIsHelpError, UsageError

    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    try:
        code = app(args=argv, prog_name="aepipe", standalone_mode=False)  # Exit(n) returns n here
        return code if isinstance(code, int) else 0
    except NoArgsIsHelpError as e:
        typer.echo(e.ctx.get_help() if e.ctx else "")
        return 0
    except UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        typer.echo(output.one_line(f"aepipe: error: {e.format_message()}{hint}"), err=True)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aepipe: error: interrupted", err=True)
        return 130
    except typer.Exit as e:
        return e.exit_code


def _terminated(signum, frame):
    raise KeyboardInterrupt


def console() -> None:
    """The installed `aepipe` command: main() with the console kept for aepipe's own lines, and
    an exit that skips what a finished command need not wait for (Ray's shutdown, Python's
    teardown of torch)."""

    output.AS_COMMAND = True
    if "--verbose" not in sys.argv:
        quiet_native_logs()
        warnings.simplefilter("ignore")  # libraries' advice to developers is not the user's business
    # importing torch and the rest makes over a million objects, and the collector's passes over
    # them took 0.25 s of a 2 s ask here; none of them are garbage. output.call turns it back on.
    gc.disable()
    signal.signal(signal.SIGTERM, _terminated)  # a scheduler's stop ends the job as Ctrl-C does
    code = main()
    if "ray" in sys.modules:
        exit_now(code)  # an embedded Ray's shutdown would take seconds more
        sys.exit(code)  # connected to a cluster: let Ray's exit hooks disconnect it cleanly
    leave(code)
