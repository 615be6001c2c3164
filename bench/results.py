"""bench/RESULTS.md, written by the bench scripts themselves.

Each script ends with record(SECTION, table): its section of RESULTS.md, between the markers

    <!-- section: NAME -->
    ...
    <!-- end: NAME -->

is replaced by the new run (date, commit, the machine's cores, memory and load, the exact command
and the table). The rest of the file is left as it was; a section not there yet is appended under
a heading of its name.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"


def commit() -> str:
    """The checkout's short commit hash, "+ uncommitted changes" when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:  # no git on this machine
        return "unknown"
    return (head or "unknown") + (" + uncommitted changes" if dirty else "")


def memory_gib() -> float | None:
    """Total memory from /proc/meminfo (Linux), None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2 ** 20
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine() -> str:
    """Cores, memory and load: what a timing depends on."""
    mem = memory_gib()
    parts = [f"{os.cpu_count()} cores"] + ([f"{mem:.1f} GiB memory"] if mem else [])
    parts.append(f"{platform.system()} {platform.machine()}")
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.1f} at the end")
    return ", ".join(parts)


def this_command() -> str:
    """The command that ran this script, as typed from the repository root."""
    exe = Path(sys.executable)
    try:
        exe = exe.relative_to(ROOT)
    except ValueError:
        pass
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join([str(exe), str(script), *sys.argv[1:]])


def section(name: str, text: str, command: str) -> str:
    """One section's body, markers included."""
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"<!-- section: {name} -->\n"
            f"Measured {when} at commit {commit()} on {machine()}:\n\n"
            f"    {command}\n\n"
            f"{text.strip()}\n"
            f"<!-- end: {name} -->")


def record(name: str, text: str, command: str | None = None, path: Path = RESULTS) -> Path:
    """Rewrite section `name` of RESULTS.md with `text` (a table, as the script printed it) and the
    run's context; command defaults to this process's own (sys.argv)."""
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"section name {name!r}: letters, digits, '_', '.' and '-' only")
    body = section(name, text, command or this_command())
    old = path.read_text() if path.exists() else "# Measurements\n"
    pattern = re.compile(rf"<!-- section: {re.escape(name)} -->.*?<!-- end: {re.escape(name)} -->", re.S)
    new = pattern.sub(lambda _: body, old, count=1) if pattern.search(old) else \
        old.rstrip("\n") + f"\n\n## {name}\n\n{body}\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    tmp.replace(path)  # never half a file, should the script be stopped while writing
    print(f"\nrecorded in {path} (section {name})", file=sys.stderr)
    return path
