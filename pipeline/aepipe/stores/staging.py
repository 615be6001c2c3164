"""Writing a store all-or-nothing, shared by every sink (zarr_sink, parquet_sink, png_sink): the
staging in OUT.partial, the row count, the commit, --resume, one writer per output, URI outputs.

Sinks are started, fed and committed by a job's engine (aepipe.batch.engine): on Ray, Ray Data's
write tasks call `write` (through `aepipe.stores.raydata.as_datasink`) in waves of tasks, and the job
commits once; a small job in this process (LocalRows) never imports Ray Data (over a second of a
small ask's start-up).

Every sink writes into `OUT.partial` and renames it to OUT only once every row is in and counted,
so a store at OUT is always complete; a failed job removes its `.partial`. A store at a URI
(s3://, gs://) is written in place instead, its completion marker last (see "URI outputs").

--resume (local stores): a run killed on the way leaves OUT.partial with the settings it started
with and its finished units (Zarr: chunks with a marker file; Parquet: parts, each renamed into
place whole); a rerun with the same settings runs only the read ranges that hold unfinished units.

Rows skipped under --on-bad-row skip arrive marked (see pipeline/aepipe/sources: mark_bad) and count as
written; the sinks leave them out of the store and list them (id, reason) as "skipped" in its
metadata: Parquet drops them before writing a part, Zarr closes their gaps at commit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from aepipe import remote
from aepipe.errors import FULL, AepipeError, disk_error
from aepipe.stores import NEW_ONLY


def _to_numpy(blocks) -> dict:
    """Blocks (dicts of numpy arrays, one per row range) as one dict of arrays."""
    parts = [b for b in blocks if len(b["row"])]
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


RESUME = "_aepipe_resume.json"  # in OUT.partial: the settings it was started with


_LOCKS: dict[str, int] = {}  # a local output's path -> the lock file this process holds for it


def _lock(final: Path) -> None:
    """One writer per local output: an exclusive lock on OUT.lock from prepare to the commit (or a
    failure), so a second aepipe writing the same OUT at the same time refuses in one line instead
    of interleaving chunks with the first. The OS drops a lock when its holder dies, SIGKILL
    included: a lock file a killed run left never blocks the next. (Object stores have no locks:
    two writers of one URI are the caller's to avoid.)"""
    import fcntl

    key = str(final.absolute())
    if key in _LOCKS:  # this process holds it already (a retry after Ctrl-C in a notebook)
        return
    path = final.with_name(final.name + ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise AepipeError(f"{final}: cannot write beside it ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AepipeError(f"{final} is being written by another aepipe right now; let it finish, or choose "
                          "another --out") from None
    _LOCKS[key] = fd


def _unlock(final: Path) -> None:
    NEW_ONLY.discard(str(final.absolute()))  # this run is over: the next one checks OUT again
    fd = _LOCKS.pop(str(final.absolute()), None)
    if fd is not None:
        Path(str(final) + ".lock").unlink(missing_ok=True)
        os.close(fd)


class _Staged:
    """Shared by both sinks: write into OUT.partial, count rows, rename into place (a URI: in
    place, the completion marker last; see "URI outputs" below).

    Resumable: `ranges` are the job's read ranges, `settings` what must not change between a run
    and its --resume. prepare() starts a fresh partial or, resuming, keeps its finished units
    (Zarr chunks, Parquet parts) and returns the read ranges still to run."""

    def __init__(self, path: str | Path, n_rows: int, ranges=None, settings: dict | None = None):
        self.remote = remote.is_uri(path)
        if self.remote:  # see "URI outputs" below: written in place, the marker last
            self.final = self.tmp = remote.URI(path)
        else:
            self.final = Path(path)
            self.tmp = self.final.with_name(self.final.name + ".partial")
        self.n_rows, self.ranges = n_rows, ranges
        self.settings = json.loads(json.dumps(settings or {}))  # as a resumed run reads them back
        self.done: set[int] = set()  # finished units, skipped by every write
        self.prepared = False
        self.skipped: list[dict] = []  # bad rows left out, known once the write completes
        self.kept: Path | None = None  # OUT.partial, kept for --resume after a full disk

    def prepare(self, resume: bool = False) -> list[tuple[int, int]]:
        self.prepared = True
        self.lock()  # before anything is cleared: another writer's partial is not ours
        try:
            self._check_still_free()
            return self._prepare(resume)
        except BaseException:
            self.unlock()
            raise

    def _prepare(self, resume: bool) -> list[tuple[int, int]]:
        if not resume:
            self._clear()
            self._create()
            if not self.remote:
                (self.tmp / RESUME).write_text(json.dumps(self.settings))
            return list(self.ranges or [])
        self._check_resumable()
        self.done = self._finished()
        return [(a, b) for a, b in self.ranges if not all(u in self.done for u in self._units(a, b))]

    def _check_still_free(self) -> None:
        if not self.remote and str(self.final.absolute()) in NEW_ONLY and self.final.exists():
            raise AepipeError(f"{self.final} already exists (another aepipe wrote it while this one started); "
                              "pass --overwrite to replace it")

    def _check_resumable(self) -> None:
        if self.remote:
            raise AepipeError(f"--resume: {self.final} is at a URI, written in place; --resume finishes "
                              "local stores only: run without --resume")
        if not self.tmp.is_dir():
            raise AepipeError(f"--resume: {self.tmp} does not exist, so there is nothing to resume; "
                              "run without --resume")
        try:
            was = json.loads((self.tmp / RESUME).read_text())
        except (OSError, ValueError):
            raise AepipeError(f"--resume: {self.tmp} has no readable {RESUME} (not started by this aepipe); "
                              "run without --resume") from None
        for key in sorted(set(was) | set(self.settings)):
            if was.get(key) != self.settings.get(key):
                raise AepipeError(f"--resume: {self.tmp} was started with {key} = {json.dumps(was.get(key))}, "
                                  f"this run has {json.dumps(self.settings.get(key))}; rerun with the same "
                                  "model, data and options, or without --resume")

    def on_write_start(self, schema=None) -> None:
        if not self.prepared:  # jobs that never resume (decode, denoise, ...)
            self.prepare()

    def _check_count(self, written: int) -> None:
        if written != self.n_rows:  # a dropped or doubled block: refuse to present it as done
            raise AepipeError(f"{self.final}: wrote {written} rows, expected {self.n_rows}", exit_code=1)

    def _commit(self) -> None:
        if self.remote:
            return  # the completion marker, just written, is the commit
        (self.tmp / RESUME).unlink(missing_ok=True)
        # --overwrite: the old store is renamed aside before the new one takes its name and removed
        # after, so OUT is at every moment the whole old store, nothing, or the whole new one, never
        # an old store half removed (a reader's check, stores.read.StoreGuard, relies on this)
        old = self.final.with_name(self.final.name + ".replaced")
        _remove(old)  # left by a run killed between the two renames
        if self.final.is_dir() or self.final.exists() or self.final.is_symlink():
            self.final.rename(old)
        self.tmp.rename(self.final)
        _remove(old)
        self.unlock()

    def lock(self) -> None:
        """Hold OUT against other writers (see _lock); refuses in one line while another holds it."""
        if not self.remote:
            _lock(self.final)

    def unlock(self) -> None:
        """Let another writer have OUT (after the commit, a failure or Ctrl-C; a no-op otherwise)."""
        if not self.remote:
            _unlock(self.final)

    def _note_skipped(self, skipped: list[dict]) -> None:
        self.skipped = sorted(skipped, key=lambda r: r["id"])
        if self.skipped and len(self.skipped) == self.n_rows:
            first = self.skipped[0]
            raise AepipeError(f"every row was bad and skipped (the first, {first['id']}: {first['reason']})")

    def on_write_failed(self, error: Exception) -> None:
        if self.keeps(error):
            self.kept = self.tmp
            for half in self.tmp.rglob("*.tmp"):  # a part cut short by the full disk (see _put_file)
                half.unlink()
        else:
            self._clear()
        self.unlock()

    def keeps(self, error: Exception) -> bool:
        """A full disk: a resumable job (encode) keeps its finished units for --resume, since what
        it lacks is space, not a fix; any other failure removes the partial."""
        return (not self.remote and bool(self.settings) and disk_error(error, FULL) is not None
                and (self.tmp / RESUME).is_file())

    # ---- URI outputs (s3://, gs://): an object store has no rename, so the store is written in
    # place under OUT. What was there goes first (its marker with it); the completion marker (Zarr's
    # "complete" attribute, Parquet's manifest) is written last, after the row count is checked, and
    # readers refuse a store without it: a partial store never looks complete.

    def _clear(self) -> None:
        if self.remote:
            remote.remove(self.tmp)
        else:  # a link or file left by something else is unlinked: never removed through
            _remove(self.tmp, ignore_errors=True)

    def _put_file(self, name: str, write) -> None:
        """write(path, filesystem) makes the file `name` in the store: on a URI directly (an object
        appears whole once uploaded), locally through name.tmp and a rename."""
        if self.remote:
            fs, path = remote.resolve(self.tmp / name)
            write(path, fs)
        else:
            dest = self.tmp / name
            write(str(dest) + ".tmp", None)
            Path(str(dest) + ".tmp").replace(dest)


def _remove(path: Path, ignore_errors: bool = False) -> None:
    """A local file, link (never followed) or folder, if there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=ignore_errors)
