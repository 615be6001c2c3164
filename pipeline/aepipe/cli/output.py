"""What a command prints besides its summary: a user error as one `aepipe: error:` line and its exit
code (2 bad input, 1 failed at run time, 130 interrupted), never a traceback; and the notes that
end a summary line."""

from __future__ import annotations

import gc
import os
import sys

import typer

from aepipe.errors import AepipeError

AS_COMMAND = False  # set by console(): this process is the `aepipe` command itself


def call(fn, *args, **kwargs):
    """Call the library; a user error becomes one line and its exit code, never a traceback."""
    if not gc.isenabled():  # console() turned it off for the imports, which are done by now
        gc.freeze()  # and the collector need never walk the modules' objects again
        gc.enable()
    try:
        return fn(*args, **kwargs)
    except AepipeError as e:
        die(f"aepipe: error: {e}", e.exit_code)
    except KeyboardInterrupt:
        die("aepipe: error: interrupted", 130)
    except Exception as e:
        if os.environ.get("AEPIPE_DEBUG"):
            raise
        die(f"aepipe: error: failed at run time: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            "(set AEPIPE_DEBUG=1 for the traceback)", 1)


def one_line(text: str) -> str:
    """A message as one line: control characters (a newline or an escape sequence in a file name)
    written as Python escapes, so a hostile name can neither split the line nor drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def die(line: str, code: int):
    """Print the one line and leave at once: Ray's exit hooks would otherwise print their own
    messages (or wait on a job being torn down) after ours."""
    typer.echo(one_line(line), err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if code in (1, 130) and "ray" in sys.modules and AS_COMMAND:  # in a test's CliRunner: exit normally,
        os._exit(code)  # or the whole test session would end here with no report
    raise typer.Exit(code)


def notes(done: dict) -> str:
    """What the source said about reading the rows (unseen categories), for a summary line."""
    return "".join(f" ({n})" for n in done.get("notes") or [])


def skipped_note(skipped: list[dict] | None, show: int = 3) -> str:
    """The end of a summary line under --on-bad-row skip: which rows were left out, and why."""
    if not skipped:
        return ""
    listed = "; ".join(f"{s['id']} ({s['reason']})" for s in skipped[:show])
    more = f"; and {len(skipped) - show} more, listed in the metadata" if len(skipped) > show else ""
    return f"; skipped {len(skipped)} bad row{'s' * (len(skipped) > 1)}: {listed}{more}"
