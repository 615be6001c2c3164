"""Connecting to Ray, checking what the cluster offers, keeping Ray's own messages off the console,
stopping cleanly on Ctrl-C, and turning errors raised inside Ray workers back into user errors."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

from aepipe import remote
from aepipe.errors import AepipeError, disk_error
from aepipe.cluster.ray_workarounds import (GLOG_LINE, recording_started_processes, keeping_sigterm_handler, shorten_data_wait,
                                     stop_started_ray, train_env)

CONNECT_TIMEOUT_S = 10  # a cluster that does not answer a TCP connect in this long is not there
RESOURCE_WAIT_S = float(os.environ.get("AEPIPE_RESOURCE_WAIT_S", 300))  # autoscaling clusters: how long to wait
_JOINED = {"remote": False}  # True once connected to a cluster by address (it may autoscale)


def verbose() -> bool:
    return bool(os.environ.get("AEPIPE_VERBOSE"))


def _quiet_env() -> dict:
    """Environment for the driver and every Ray worker: Ray Data logs at its usual level only with
    --verbose; otherwise the user sees aepipe's lines, and errors arrive as exceptions."""
    env = train_env()
    if not verbose():
        env.update(RAY_DATA_LOG_LEVEL="CRITICAL")
    return env


def held_cpus() -> int:
    """CPUs this Ray actor holds, rounded, at least 1; 0 outside a Ray worker (in-process jobs keep
    torch's default). Ray only sets OMP_NUM_THREADS=1, so without this an actor holding 4 CPUs
    would run its model on one thread, and one holding a fraction would fight the read tasks."""
    if "ray" not in sys.modules:  # an in-process small job: importing Ray would cost it a second
        return 0
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return 0
    return max(1, round(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def usable_cpus() -> int:
    """CPUs this process may keep busy: those its Ray actor holds (an `aepipe tune` trial), else
    those the OS lets it run on."""
    return held_cpus() or len(os.sched_getaffinity(0))


def check_address(address: str) -> None:
    """Refuse an address nothing answers at, in seconds instead of Ray's minutes of retries."""
    if address in ("auto", "local") or address.startswith(("ray://", "anyscale://")):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AepipeError(f'--address "{address}": expected HOST:PORT of a Ray head, e.g. 10.0.0.5:6379')
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise AepipeError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); "
                          "is `ray start --head` running there?", exit_code=1) from None


def quiet_native_logs() -> None:
    """Ray's C++ core writes its log lines (actor restarts, leases, ...) straight to file
    descriptor 2, below Python. In the command-line process, fd 2 becomes a pipe read by a thread
    that drops lines in that log format and passes everything else on; Python's own stderr
    (aepipe's messages, warnings, tracebacks) keeps the real terminal. Off with --verbose."""
    # The pump needs the GIL; Python's own C-level writes to fd 2 (-X importtime) hold it, so a
    # full pipe would deadlock them: skip those runs, and give the pipe room (1 MiB) for bursts.
    if verbose() or "importtime" in sys._xoptions:
        return
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    with contextlib.suppress(Exception):
        import fcntl

        fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), 2 ** 20)
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = io.TextIOWrapper(io.FileIO(real, "w", closefd=False), line_buffering=True,
                                  encoding=sys.stderr.encoding, errors="backslashreplace")
    # a crash's stack goes straight to the terminal: through the pipe it would die with the process
    faulthandler.enable(file=sys.stderr)

    def pump():
        with io.FileIO(read_end, "r") as pipe:
            for line in pipe:
                if not GLOG_LINE.match(line):
                    os.write(real, line)

    threading.Thread(target=pump, daemon=True, name="aepipe-stderr").start()


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the cluster at `address` (or RAY_ADDRESS), else start an embedded local Ray."""
    import ray

    if ray.is_initialized():
        return
    env = _quiet_env()
    os.environ.update(env)
    # workers open s3:// and gs:// DATA and stores themselves: a cluster's workers get this shell's
    # endpoint and credentials through runtime_env; an embedded Ray's inherit them with the rest of
    # os.environ. Only a cluster gets a runtime_env: with one, Ray cannot hand a job the workers it
    # started ahead, and starting fresh ones cost the first tasks 1-3 s (measured 2026-11-24)
    env.update({k: v for k, v in os.environ.items() if k.startswith(("AWS_", "GOOGLE_", "GCS_"))})
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address)
    # Ray's workers log at INFO/WARNING every checkpoint, execution and controller poll (each second):
    # keep the console for aepipe's own lines; errors still arrive, as exceptions
    # Workers' stdout/stderr reach this console only with --verbose: Ray's internal actors print
    # warnings and tracebacks of their own there; errors that matter come back as exceptions
    quiet = dict(logging_level="warning" if verbose() else "error",
                 log_to_driver=verbose(),
                 logging_config=ray.LoggingConfig(encoding="TEXT", log_level="WARNING" if verbose() else "ERROR"))
    try:
        with keeping_sigterm_handler():  # the command line's: SIGTERM stops a job as Ctrl-C does
            if address:
                ray.init(address=address, runtime_env={"env_vars": env}, **quiet)
            else:
                # "local": a new embedded Ray even when a `ray start` cluster runs on this machine (plain
                # ray.init() would join that one, with its own workers and Python)
                with recording_started_processes():  # what Ctrl-C and the command's end stop
                    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
    except ConnectionError as e:
        raise AepipeError(f"cannot reach the Ray cluster at {address}: {e}", exit_code=1) from None
    _JOINED["remote"] = bool(address)
    import logging
    import warnings

    if not verbose():
        warnings.filterwarnings("ignore", module=r"ray(\.|$)")

    from ray.data import DataContext

    # without a terminal Ray Data logs its progress at INFO, several lines a second; bars stay on a tty
    logging.getLogger("ray.data").setLevel(logging.WARNING if verbose() else logging.CRITICAL)
    shorten_data_wait()
    ctx = DataContext.get_current()
    ctx.enable_operator_progress_bars = False  # one bar per dataset is enough
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False


def exit_now(code: int) -> None:
    """End the command without ray.shutdown(), which took ~3 s here after an embedded Ray's job
    was done: kill its processes (this process's children; waiting for them took 1.5 s more) and
    leave. Called only when the command has finished: every output is written and closed."""
    import ray

    if ray.is_initialized() and not _JOINED["remote"]:
        stop_started_ray(wait=False)  # SIGKILL is final: nothing to wait for when this process ends next
        leave(code)


def leave(code: int) -> None:
    """End a finished command without Python's teardown: clearing torch's modules at exit took
    0.5 s here (2.0 s against 1.5 s for `import torch` alone), a quarter of a small ask. Every
    output is written and closed by now, so only the standard streams need flushing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def require(cpus: float = 0, gpus: float = 0, what: str = "this job") -> None:
    """Refuse work the cluster can never schedule (Ray would wait for it forever). A remote cluster
    may be autoscaling: wait for it, saying so, up to AEPIPE_RESOURCE_WAIT_S."""
    import ray

    def short():
        have = ray.cluster_resources()
        return [(name, need, have.get(name, 0)) for name, need in (("CPU", cpus), ("GPU", gpus))
                if need and have.get(name, 0) + 1e-9 < need]

    missing = short()
    deadline = time.time() + (RESOURCE_WAIT_S if _JOINED["remote"] else 0)  # an embedded Ray never grows
    while missing and time.time() < deadline:
        name, need, have = missing[0]
        print(f"waiting for the cluster to offer {need:g} {name}s for {what} (it has {have:g}) ...", flush=True)
        time.sleep(min(10, max(deadline - time.time(), 0)))
        missing = short()
    if missing:
        name, need, have = missing[0]
        raise AepipeError(f"{what} needs {need:g} {name}s but the Ray cluster has {have:g}"
                          + ("" if name == "CPU" else " (no CUDA device was found)" if have == 0 else ""))


def find_user_error(e: BaseException) -> AepipeError | None:
    """Ray wraps a worker's exception (RayTaskError, UserCodeException...); find ours inside."""
    from ray.exceptions import RayTaskError

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        # RayTaskError(AepipeError) is both classes, with Ray's traceback as its text: look inside it
        if isinstance(e, AepipeError) and not isinstance(e, RayTaskError):
            # our messages are one line; Ray Data appends retry advice to args[0] after a newline
            return AepipeError(str(e.args[0] if e.args else e).split("\n")[0], e.exit_code)
        # Ray Train's WorkerGroupError keeps each failed worker's exception by rank
        failures = list(getattr(e, "worker_failures", {}).values())
        found = next((f for f in map(find_user_error, failures) if f), None)
        if found:
            return found
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def user_errors(out=None, kept=lambda: None):
    """Re-raise an AepipeError hidden in a Ray exception as itself, without Ray's traceback; with
    out, a full or read-only disk under it as one line naming it. The writers remove the partial,
    except that a resumable job on a full disk keeps its finished part: kept() names it."""
    try:
        yield
    except Exception as e:
        err = find_user_error(e)
        if err is None and out is not None and (disk := disk_error(e)) is not None:
            err = AepipeError(f"--out {out}: cannot write it ({os.strerror(disk.errno)}); " + (
                f"what was written is kept in {kept()}: free some space and run the same command with "
                "--resume to finish it" if kept() else "the partial output was removed"), exit_code=1)
        if err is None:
            raise
        raise err from None


class Interrupted(AepipeError):
    def __init__(self, message: str):
        super().__init__(message, exit_code=130)


# Set when Ctrl-C stopped a job: its thread (left running: Python cannot kill it) checks this
# between its steps (a wave of Ray tasks, an in-process task) and starts no more work
STOPPED = threading.Event()


def stop_if_interrupted() -> None:
    """Between a job's steps: after Ctrl-C (STOPPED) its partial is gone, so it starts no more work."""
    if STOPPED.is_set():
        raise Interrupted("interrupted")


def run_interruptibly(fn, *args, partial: list[Path] = (), poll=None, kept=lambda: None, **kwargs):
    """Run a Ray job so that Ctrl-C stops it. The driver's main thread would sit in a blocking Ray
    call that only notices SIGINT when the job is done; here the job runs in a thread and the main
    thread waits in short, interruptible steps (calling `poll()` at each, e.g. to print progress).
    On Ctrl-C the job's work is stopped (ray_workarounds.stop_started_ray) and the `partial` outputs are removed;
    on a failure too, except the one kept() names (kept for --resume, see stores.staging)."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread as is
            box["error"] = e

    STOPPED.clear()
    t = threading.Thread(target=target, daemon=True, name="aepipe-job")
    t.start()
    try:
        while t.is_alive():
            t.join(0.2)
            if poll:
                poll()
        if poll:
            poll()  # what came in the last step
    except KeyboardInterrupt:
        STOPPED.set()
        stop_started_ray()  # an embedded Ray's processes; a cluster stops a job's work when its driver exits
        removed = [p for p in partial if _remove(p)]
        _keep_removed(partial)  # (removes again: a no-op when the first removal took)
        raise Interrupted("interrupted" + (f"; removed {', '.join(map(str, removed))}" if removed else "")) from None
    if "error" in box:
        # a failed job leaves no output: the sink removed its partial, but a write task still running
        # then may have written into it again (or the job failed before the sink was called)
        _keep_removed([p for p in partial if p != kept()], quiet_s=0.5)
        raise box["error"]
    return box.get("value")


def _keep_removed(partial, quiet_s: float = 1.0, most_s: float = 10.0) -> None:
    """A cluster's workers live until this driver exits: one caught mid-write may finish its chunk
    after the partial is gone (its next write finds no store and fails). Remove again until the
    partials have stayed gone for quiet_s (an embedded Ray's workers are already dead: one pause)."""
    if not partial:
        return
    for p in partial:
        _remove(p)
    deadline, quiet_since = time.time() + most_s, time.time()
    while time.time() < deadline and time.time() - quiet_since < quiet_s:
        time.sleep(0.2)
        if any(_remove(p) for p in partial):
            quiet_since = time.time()


def _remove(p: Path) -> bool:
    if remote.is_uri(p):  # a store written in place at a URI (its marker never came)
        found = remote.exists(p)
        remote.remove(p)
        return found
    p = Path(p)
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
        return True
    if p.exists():
        p.unlink(missing_ok=True)
        return True
    return False
